"""Pinned files (source.files: sha256 + size): offline verification, `modeldeck verify`, runtime.load(verify=True).

Files are built in tmp dirs; no network. The registry side is checked without torch too.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from modeldeck.registry.schema import Card, PinnedFile, Source
from modeldeck.registry.weights import (
    NoPinsError,
    VerificationError,
    check_files,
    compute_pins,
    pinned_revisions,
    pins_yaml,
    require_verified,
    sha256_file,
)

from .conftest import run_python_without

FILES = {
    "config.json": b'{"model_type": "gpt_neox"}',
    "generation_config.json": b'{"do_sample": false}',
    "model-00001-of-00002.safetensors": bytes(range(256)) * 40,
    "model-00002-of-00002.safetensors": b"\x07" * 3000,
    "model.safetensors.index.json": b'{"weight_map": {}}',
    "tokenizer.json": b'{"version": "1.0"}' * 10,
}


def write_folder(folder: Path, files: dict[str, bytes] = FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def pin(name: str, data: bytes) -> dict[str, Any]:
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@pytest.fixture
def pinned_card(card_data: Callable[[str], dict[str, Any]]) -> Callable[..., Card]:
    """pythia-1.4b with its source.files pinned to FILES (or to `pins`), as an unregistered Card."""

    def make(pins: list[dict[str, Any]] | None = None, **source: Any) -> Card:
        data = card_data("pythia-1.4b")
        files = [pin(n, d) for n, d in FILES.items()] if pins is None else pins
        data["source"] = {**data["source"], "files": files, **source}
        return Card.model_validate(data)

    return make


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- hashing and checking --------------------------------------------------------------------------


def test_sha256_is_computed_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 1000 + b"tail"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=7) == expected  # chunk boundaries anywhere give the same digest
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_an_untouched_folder_is_ok(tmp_path: Path, pinned_card: Callable[..., Card]) -> None:
    folder = write_folder(tmp_path / "w")
    checks = check_files(pinned_card(), folder)
    assert [(c.path, c.status) for c in checks] == [(name, "ok") for name in FILES]
    assert checks[2].sha256 == hashlib.sha256(FILES["model-00001-of-00002.safetensors"]).hexdigest()
    assert require_verified(pinned_card(), folder) == checks


def test_one_flipped_byte_a_truncated_file_and_a_missing_file_are_each_reported(
    tmp_path: Path, pinned_card: Callable[..., Card]
) -> None:
    folder = write_folder(tmp_path / "w")
    flip_byte(folder / "model-00001-of-00002.safetensors", 5000)  # one bit of one byte, size unchanged
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x07" * 2999)  # truncated by one byte
    (folder / "tokenizer.json").unlink()
    (folder / "extra.safetensors").write_bytes(b"not pinned")

    card = pinned_card()
    checks = {c.path: c for c in check_files(card, folder)}
    assert {p: c.status for p, c in checks.items()} == {
        "config.json": "ok",
        "generation_config.json": "ok",
        "model-00001-of-00002.safetensors": "wrong hash",
        "model-00002-of-00002.safetensors": "wrong size",
        "model.safetensors.index.json": "ok",
        "tokenizer.json": "missing",
        "extra.safetensors": "not pinned",
    }
    flipped = checks["model-00001-of-00002.safetensors"]
    assert flipped.size == flipped.expected_size == 10240 and flipped.sha256 != flipped.expected_sha256
    assert checks["model-00002-of-00002.safetensors"].sha256 is None  # a wrong size is not hashed

    with pytest.raises(VerificationError) as info:
        require_verified(card, folder)
    message = str(info.value)
    assert message.startswith(f"4 of 7 files of card pythia-1.4b in {folder} failed verification")
    expected_hash = pin("x", FILES["model-00001-of-00002.safetensors"])["sha256"]
    assert (
        f"  - model-00001-of-00002.safetensors: wrong hash: sha256 {flipped.sha256}, expected {expected_hash} "
        "(same size: corrupted or altered)\n" in message
    )
    assert "  - model-00002-of-00002.safetensors: wrong size: 2,999 bytes, expected 3,000 (truncated" in message
    assert "  - tokenizer.json: missing (expected 180 bytes)\n" in message
    assert "  - extra.safetensors: not pinned: a weight file (10 bytes) that source.files does not list" in message
    assert "`modeldeck download pythia-1.4b --force-download`" in message
    assert "config.json" not in message  # only the bad files are named
    assert [c.status for c in info.value.checks].count("ok") == 3


def test_a_card_that_pins_nothing_says_how_to_pin(tmp_path: Path, pinned_card: Callable[..., Card]) -> None:
    with pytest.raises(NoPinsError) as info:
        require_verified(pinned_card(pins=[]), write_folder(tmp_path / "w"))
    assert str(info.value) == (
        "card pythia-1.4b pins no files (source.files is empty), so there is nothing to verify; pin them with "
        "`modeldeck verify pythia-1.4b --print-pins DIR` on a folder you trust and add the printed `files:` block "
        "under the card's source section"
    )


def test_pins_cover_the_default_revision_and_its_aliases_only(tmp_path: Path, pinned_card: Callable[..., Card]) -> None:
    card = pinned_card()
    assert card.source.revision == "main" and card.source.revision_aliases == {"main": "step143000"}
    assert pinned_revisions(card) == {"main", "step143000"}
    folder = write_folder(tmp_path / "w")
    assert len(require_verified(card, folder, "step143000")) == len(FILES)
    with pytest.raises(NoPinsError, match=r"pins the files of revision main = step143000 only, not 'step3000'"):
        require_verified(card, folder, "step3000")


def test_print_pins_round_trips_through_the_schema(tmp_path: Path, pinned_card: Callable[..., Card]) -> None:
    folder = write_folder(tmp_path / "w", {**FILES, "pytorch_model.bin": b"pickle", "notes.md": b"x"})
    card = pinned_card(pins=[])
    pins = compute_pins(card, folder)
    # the files the card needs: no pickle (a safetensors card), no unrelated file
    assert [p.path for p in pins] == list(FILES)
    text = pins_yaml(card, pins, folder)
    assert text.startswith("  # source.files for card pythia-1.4b")
    assert all(line.startswith("  ") for line in text.splitlines())  # indented to paste under `source:`
    files = yaml.safe_load(text)["files"]
    assert [PinnedFile.model_validate(f) for f in files] == pins
    repinned = pinned_card(pins=files)
    assert all(c.ok for c in check_files(repinned, folder))


@pytest.mark.parametrize("path", ["../model.safetensors", "/etc/passwd", "a//b", "./config.json", "a\\b", ""])
def test_a_pinned_path_must_stay_inside_the_folder(path: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="must be relative to the checkpoint folder"):
        PinnedFile(path=path, sha256="0" * 64, size=1)
    assert PinnedFile(path="sub/model.safetensors", sha256="0" * 64, size=1).path == "sub/model.safetensors"


def test_a_file_pinned_twice_is_an_error() -> None:
    twice = [pin("config.json", b"a"), pin("config.json", b"b")]
    with pytest.raises(pydantic.ValidationError, match=r"files pins config\.json more than once"):
        Source(repo="a/b", format="safetensors", files=twice)


# --- the CLI ---------------------------------------------------------------------------------------


def write_card(tmp_path: Path, card: Card) -> Path:
    path = tmp_path / "card.yaml"
    data = card.model_dump(mode="json")
    if not data["source"]["files"]:
        del data["source"]["files"]  # so that printed pins can be pasted in
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows(stdout: str) -> dict[str, list[str]]:
    """The verify table: file -> the rest of its row, split on runs of 2+ spaces."""
    table = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3 and cells[1] in ("ok", "missing", "wrong size", "wrong hash", "not pinned"):
            table[cells[0]] = cells[1:]
    return table


def test_verify_cli_reports_each_file(tmp_path: Path, pinned_card: Callable[..., Card], run_cli: Any) -> None:
    card_file = write_card(tmp_path, pinned_card())
    folder = write_folder(tmp_path / "w")
    ok = run_cli("verify", str(card_file), "--weights", str(folder))
    assert ok.returncode == 0, ok.stderr
    assert f"card pythia-1.4b: 6 pinned files in {folder}" in ok.stdout
    assert set(rows(ok.stdout)) == set(FILES) and all(r[0] == "ok" for r in rows(ok.stdout).values())
    assert ok.stdout.rstrip().endswith("6 of 6 files ok")

    flip_byte(folder / "model-00001-of-00002.safetensors", 0)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x07" * 10)
    (folder / "config.json").unlink()
    bad = run_cli("verify", str(card_file), "--weights", str(folder))
    assert bad.returncode == 1
    table = rows(bad.stdout)
    first = hashlib.sha256((folder / "model-00001-of-00002.safetensors").read_bytes()).hexdigest()
    expected = pin("x", FILES["model-00001-of-00002.safetensors"])["sha256"]
    assert table["model-00001-of-00002.safetensors"] == [
        "wrong hash",
        "10,240",
        f"{first[:16]} (expected {expected[:16]})",
    ]
    assert table["model-00002-of-00002.safetensors"] == ["wrong size", "10 (expected 3,000)", "not computed"]
    assert table["config.json"] == ["missing", "- (expected 26)", "-"]
    assert table["tokenizer.json"][0] == "ok"
    assert "3 of 6 files ok; 1 missing; 1 wrong hash; 1 wrong size" in bad.stdout
    assert bad.stderr.startswith("error: 3 of 6 files of card pythia-1.4b in ")
    assert "config.json (missing)" in bad.stderr and "Traceback" not in bad.stderr

    as_json = run_cli("verify", str(card_file), "--weights", str(folder), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["folder"] == str(folder)
    statuses = {f["path"]: f["status"] for f in report["files"]}
    assert statuses["model-00001-of-00002.safetensors"] == "wrong hash" and statuses["config.json"] == "missing"


def test_verify_cli_without_pins_and_print_pins(tmp_path: Path, pinned_card: Callable[..., Card], run_cli: Any) -> None:
    card_file = write_card(tmp_path, pinned_card(pins=[]))
    folder = write_folder(tmp_path / "w")
    nothing = run_cli("verify", str(card_file), "--weights", str(folder))
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "pins no files (source.files is empty)" in nothing.stderr
    assert "modeldeck verify pythia-1.4b --print-pins DIR" in nothing.stderr

    printed = run_cli("verify", str(card_file), "--print-pins", str(folder))
    assert printed.returncode == 0, printed.stderr
    files = yaml.safe_load(printed.stdout)["files"]
    assert {f["path"]: f["size"] for f in files} == {n: len(d) for n, d in FILES.items()}

    # pasted into the card, the pins verify the folder they came from
    card_file.write_text(card_file.read_text().replace("source:\n", "source:\n" + printed.stdout, 1))
    assert run_cli("verify", str(card_file), "--weights", str(folder)).returncode == 0


def test_verify_needs_no_torch(tmp_path: Path, pinned_card: Callable[..., Card]) -> None:
    """A plugin author's CI: pin and verify a folder with torch, safetensors and huggingface_hub unavailable."""
    card_file = write_card(tmp_path, pinned_card())
    folder = write_folder(tmp_path / "w")
    script = f"""
        from modeldeck.registry import cli
        for args in (["verify", {str(card_file)!r}, "--weights", {str(folder)!r}],
                     ["verify", {str(card_file)!r}, "--print-pins", {str(folder)!r}]):
            try:
                cli.main(args)
            except SystemExit as exc:
                assert exc.code in (0, None), (args, exc.code)
        print("done")
        """
    result = run_python_without(("torch", "transformers", "safetensors", "huggingface_hub"), script)
    assert result.returncode == 0, result.stderr
    assert "6 of 6 files ok" in result.stdout and result.stdout.rstrip().endswith("done")


# --- runtime.load(verify=True) ---------------------------------------------------------------------


@pytest.fixture
def neox_pinned(tiny_checkpoint: Any, tmp_path: Path) -> tuple[Card, Path]:
    """A copy of the tiny GPT-NeoX checkpoint and its card with every file pinned."""
    ckpt = tiny_checkpoint("gpt-neox")
    folder = Path(shutil.copytree(ckpt.directory, tmp_path / "ckpt"))
    pins = [p.model_dump() for p in compute_pins(ckpt.card, folder)]
    data = ckpt.card.model_dump(mode="json")
    data["source"]["files"] = pins
    return Card.model_validate(data), folder


def test_load_with_verify_refuses_a_tampered_file_before_reading_weights(
    neox_pinned: tuple[Card, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from modeldeck import runtime
    from modeldeck.runtime import engine

    card, folder = neox_pinned
    assert {p.path for p in card.source.files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = runtime.load(card, weights=folder, device="cpu", verify=True)
    reference = runtime.load(card, weights=folder, device="cpu")
    prompt = torch.tensor([[5, 6, 7]])
    assert torch.equal(model.decoder.embed(prompt), reference.decoder.embed(prompt))

    weights = folder / "model.safetensors"
    flip_byte(weights, weights.stat().st_size - 3)  # inside the last tensor's data: still a valid file
    assert runtime.load(card, weights=folder, device="cpu") is not None  # without verify=True it loads

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were read before verification")

    monkeypatch.setattr(engine, "load_decoder", must_not_run)
    monkeypatch.setattr(engine, "load_tokenizer", must_not_run)
    with pytest.raises(VerificationError) as info:
        runtime.load(card, weights=folder, device="cpu", verify=True)
    message = str(info.value)
    assert message.startswith(f"1 of {len(card.source.files)} files of card {card.id} in {folder} failed verification")
    assert "  - model.safetensors: wrong hash: sha256 " in message

    unpinned = card.model_copy(update={"source": card.source.model_copy(update={"files": []})})
    with pytest.raises(NoPinsError, match="pins no files"):
        runtime.load(unpinned, weights=folder, device="cpu", verify=True)
