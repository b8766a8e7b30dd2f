"""Hostile input, cause 5 (checkpoint details) and the checkpoint limits: only regular files are read, by plain
name and bounded (registry/reading.py); an index cannot point outside its folder; the stored dtype must be one the
decoder converts from; `inspect`/`validate` refuse the metadata `runtime.load` refuses; a legacy pickle loads;
`convert` never overwrites without --force, writes atomically and copies no link that leaves the checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from modeldeck import registry  # noqa: E402
from modeldeck.registry.checkpoint import MAX_HEADER, CheckpointError, read_checkpoint  # noqa: E402
from modeldeck.registry.reading import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, MAX_INT_DIGITS, MAX_JSON_DEPTH  # noqa: E402
from modeldeck.runtime.convert import ConvertError, convert_checkpoint  # noqa: E402
from modeldeck.runtime.loading import load_decoder  # noqa: E402

from ..conftest import TINY_FAMILIES, tiny_card_data  # noqa: E402, TID252 - the tiny cards of tests/conftest.py

NEOX_QKV = "gpt_neox.layers.0.attention.query_key_value.weight"


def copy(ckpt: Any, tmp_path: Path, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(ckpt.directory, tmp_path / name))


def card_file(tmp_path: Path, family: str = "gpt-neox") -> Path:
    seed, changes = TINY_FAMILIES[family]
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(tiny_card_data(seed, changes), sort_keys=False), encoding="utf-8")
    return path


def load(card_path: Path, directory: Path) -> Any:
    card = registry.default().resolve_card(registry.load_card_file(card_path), str(card_path))
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    return load_decoder(card, layout, directory, torch.float32, torch.device("cpu"))


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def peak_kib(body: str) -> int:
    """VmHWM of a fresh interpreter after `body` (which must not raise anything but ModeldeckError)."""
    probe = (
        "import re\nfrom modeldeck.registry.diagnostics import ModeldeckError\n"
        f"try:\n    {body}\nexcept ModeldeckError:\n    pass\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


# --- only regular files, bounded ------------------------------------------------------------------


def test_a_fifo_named_model_safetensors_is_refused_not_waited_on(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    (directory / "model.safetensors").unlink()
    os.mkfifo(directory / "model.safetensors")  # opened for reading, a FIFO blocks until a writer comes: never
    why = "model.safetensors is a FIFO (named pipe), not a regular file"
    refused(run_cli("inspect", str(directory)), why, "only regular files (or symbolic links to one) are read")
    refused(run_cli("validate", str(card_file(tmp_path)), "--weights", str(directory)), why)
    with pytest.raises(CheckpointError, match=r"cannot be read:\n  - model\.safetensors is a FIFO"):
        load(card_file(tmp_path), directory)


def test_config_json_linked_to_dev_zero_is_refused_before_a_byte_is_read(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    (directory / "config.json").unlink()
    (directory / "config.json").symlink_to("/dev/zero")
    why = "config.json is a symbolic link to /dev/zero, a character device, not a regular file"
    shown = run_cli("inspect", str(directory))  # inspect shows what is there, the config's problem included
    assert shown.returncode == 0 and why in shown.stdout, shown.stderr
    refused(run_cli("validate", str(card_file(tmp_path)), "--weights", str(directory)), why)
    assert peak_kib(
        f"from modeldeck.registry.checkpoint import read_config; import pathlib; read_config(pathlib.Path({str(directory)!r}))"
    ) < (200 * 1024)  # read until MemoryError before (7.5-13.7 GB)


def test_a_config_json_over_its_size_limit_is_refused_unread(tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    with (directory / "config.json").open("r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs nothing to make
    checkpoint = read_checkpoint(directory)
    assert checkpoint.config is None
    assert checkpoint.config_error == (
        f"config.json is {MAX_CONFIG_BYTES + 1:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit for this file; "
        "a checkpoint's config.json and index files are far smaller: download it again"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, f"config.json nests deeper than {MAX_JSON_DEPTH} levels"),
        ('{"a": ' * 40 + "1" + "}" * 40, f"config.json nests deeper than {MAX_JSON_DEPTH} levels"),
        ('{"hidden_size": ' + "9" * 100_000 + "}", f"config.json holds an integer of 100,000 digits (the limit is "
         f"{MAX_INT_DIGITS})"),
        ('{"a": "\u0000"' + "x" * 10, "config.json is not JSON (Invalid control character at: line 1 column 8"),
        ('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', None),  # brackets in a string are not nesting
    ],
    # short ids: pytest puts the test id in PYTEST_CURRENT_TEST, and a 200 KB one makes the environment too large
    # for the subprocesses the test starts (E2BIG)
    ids=["100k-deep", "40-deep-objects", "100k-digits", "nul", "brackets-in-a-string"],
)  # fmt: skip
def test_config_json_nesting_and_integers_are_bounded(run_cli, tiny_checkpoint, tmp_path, text, reason):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    (directory / "config.json").write_text(text, encoding="utf-8")
    checkpoint = read_checkpoint(directory)
    if reason is None:
        assert checkpoint.config == json.loads(text)
        return
    assert checkpoint.config is None and checkpoint.config_error is not None
    assert checkpoint.config_error.startswith(reason)
    result = run_cli("validate", str(card_file(tmp_path)), "--weights", str(directory))
    refused(result, reason)


def test_a_deeply_nested_safetensors_header_is_named_not_a_recursion_error(tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    header = b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match=f"its header nests deeper than {MAX_JSON_DEPTH} levels"):
        read_checkpoint(directory)


# --- indexes point inside their folder ------------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.safetensors", "sub/model.safetensors", "config.json"])
def test_an_index_entry_that_is_not_a_shard_of_the_folder_is_refused_unread(run_cli, tiny_checkpoint, tmp_path, target):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    directory = tmp_path / "sharded"
    ckpt.reference.save_pretrained(directory, max_shard_size="200KB")
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][NEOX_QKV] = target
    index_path.write_text(json.dumps(index))
    result = run_cli("inspect", str(directory))
    refused(
        result,
        f"model.safetensors.index.json maps tensor '{NEOX_QKV}' to '{target}', which is not the plain file name of "
        "a *.safetensors file in the checkpoint folder",
        "never by a path",
    )
    assert "root:" not in result.stderr  # nothing of /etc/passwd is read, let alone echoed


# --- dtypes and metadata: validate agrees with load ----------------------------------------------


def test_an_integer_tensor_where_floats_are_expected_fails_validate_and_load(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    tensors = load_file(directory / "model.safetensors")
    tensors[NEOX_QKV] = tensors[NEOX_QKV].view(torch.int32)  # the same bytes, the same shape: only the dtype differs
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    line = f"tensor {NEOX_QKV}: stored as I32, expected F32, F16 or BF16"
    refused(run_cli("validate", str(card_file(tmp_path)), "--weights", str(directory)), line)
    with pytest.raises(CheckpointError) as caught:
        load(card_file(tmp_path), directory)
    assert any(problem.startswith(line) for problem in caught.value.problems)


def test_non_string_metadata_is_refused_by_inspect_as_by_load(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {"format": "pt", "step": 1000}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])
    why = "__metadata__ must map names to strings (as the safetensors library requires): its value for 'step'"
    refused(run_cli("inspect", str(directory)), why)
    refused(run_cli("validate", str(card_file(tmp_path)), "--weights", str(directory)), why)
    with pytest.raises(CheckpointError, match=r"__metadata__ must map names to strings"):
        load(card_file(tmp_path), directory)


# --- pickles ----------------------------------------------------------------------------------------


def test_a_legacy_non_zip_pickle_loads_and_converts(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    directory = copy(ckpt, tmp_path)
    state = load_file(directory / "model.safetensors")
    torch.save(state, directory / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (directory / "model.safetensors").unlink()
    assert not (directory / "pytorch_model.bin").read_bytes().startswith(b"PK")  # the pre-1.6 format
    card = registry.default().resolve_card(registry.load_card_file(card_file(tmp_path)), "card")
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    decoder = load_decoder(card, layout, directory, torch.float32, torch.device("cpu"), allow_pickle=True)
    reference = load_decoder(card, layout, ckpt.directory, torch.float32, torch.device("cpu"))
    loaded, expected = decoder.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)  # the stored bits, loaded
    result = convert_checkpoint(directory, tmp_path / "converted", allow_pickle=True)
    assert load_file(result.out / "model.safetensors").keys() == state.keys()


# --- convert: no overwrite without --force, atomic, no links out -----------------------------------


def pickled(tiny_checkpoint: Any, tmp_path: Path) -> Path:
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path, "pickled")
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


def test_convert_does_not_overwrite_without_force(run_cli, tiny_checkpoint, tmp_path):
    source = pickled(tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    (out / "notes.txt").write_text("my notes")
    result = run_cli("convert", str(source), "--out", str(out), "--allow-pickle")
    refused(result, f"{out} already holds config.json, which converting would overwrite; pass --force to replace")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]  # nothing written
    assert (out / "config.json").read_text() == "mine"
    result = run_cli("convert", str(source), "--out", str(out), "--allow-pickle", "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    assert (out / "notes.txt").read_text() == "my notes"  # other files are left alone
    assert not [p.name for p in out.iterdir() if p.name.endswith(".incomplete")]


def test_a_failed_conversion_leaves_the_output_folder_as_it_was(tiny_checkpoint, tmp_path, monkeypatch):
    source = pickled(tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    import modeldeck.runtime.convert as convert

    real = shutil.copyfileobj
    calls = []

    def failing(source_file: Any, target_file: Any, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(source_file, target_file, *args)

    monkeypatch.setattr(convert.shutil, "copyfileobj", failing)
    with pytest.raises(ConvertError, match=r"cannot write the safetensors checkpoint to .*No space left on device"):
        convert_checkpoint(source, out, allow_pickle=True, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no weights, no temporary files
    assert (out / "config.json").read_text() == "mine"  # replaced only when every file was written


def test_convert_refuses_a_link_that_leaves_the_checkpoint(run_cli, tiny_checkpoint, tmp_path):
    source = pickled(tiny_checkpoint, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (source / "notes.txt").symlink_to(secret)
    out = tmp_path / "out"
    result = run_cli("convert", str(source), "--out", str(out), "--allow-pickle")
    refused(result, f"notes.txt is a symbolic link to {secret}, outside {source}")
    assert not out.exists() or not any(out.iterdir())


def test_convert_copies_a_link_inside_the_checkpoint_as_its_file(tiny_checkpoint, tmp_path):
    source = pickled(tiny_checkpoint, tmp_path)
    (source / "extra.json").symlink_to(source / "config.json")
    out = tmp_path / "out"
    convert_checkpoint(source, out, allow_pickle=True)
    assert not (out / "extra.json").is_symlink()
    assert (out / "extra.json").read_text() == (source / "config.json").read_text()


def test_convert_into_a_folder_that_cannot_be_made_says_so(run_cli, tiny_checkpoint, tmp_path):
    source = pickled(tiny_checkpoint, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("convert", str(source), "--out", str(blocker / "out"), "--allow-pickle")
    refused(
        result, f"cannot write the safetensors checkpoint to {blocker / 'out'} (Not a directory); nothing was converted"
    )


def test_an_index_over_its_size_limit_is_refused_unread(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    directory = tmp_path / "sharded"
    ckpt.reference.save_pretrained(directory, max_shard_size="200KB")
    with (directory / "model.safetensors.index.json").open("r+b") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse
    refused(
        run_cli("inspect", str(directory)),
        f"model.safetensors.index.json is {MAX_INDEX_BYTES + 1:,} bytes, over the {MAX_INDEX_BYTES:,}-byte limit",
    )


def test_a_header_length_over_the_safetensors_limit_is_refused_unread(tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False), tmp_path)
    with (directory / "model.safetensors").open("r+b") as f:
        f.write((MAX_HEADER + 1).to_bytes(8, "little"))  # a length the safetensors library would refuse too
    with pytest.raises(CheckpointError, match=f"its header length is over the {MAX_HEADER:,} bytes"):
        read_checkpoint(directory)
