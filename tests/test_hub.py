"""modeldeck.registry.weights: finding a card's checkpoint in a folder, a package, or the Hugging Face cache, offline.

No test touches the network: every socket connect raises. The hub cache is built by hand under tmp_path in the
layout huggingface_hub writes (refs/, snapshots/ with symlinks into blobs/).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils.tqdm import are_progress_bars_disabled
from safetensors.numpy import save_file

from modeldeck import registry
from modeldeck.registry import weights
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import Card
from modeldeck.registry.weights import (
    HubError,
    PickleRefusedError,
    UnknownRevisionError,
    WeightsNotFoundError,
    resolve_weights,
)

from .conftest import refuse_network


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_network(monkeypatch)


PYTHIA = "pythia-1.4b"
COMMIT_MAIN = "a" * 40
COMMIT_STEP3000 = "b" * 40


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME in offline mode. huggingface_hub reads its env vars once, at import: patch its constants."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_TOKEN_PATH": home / "token"}.items():
        monkeypatch.setenv(name, str(value))
        monkeypatch.setattr(huggingface_hub.constants, name, str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


CHECKPOINT = ("config.json", "model.safetensors", "tokenizer.json")
SMALL_FILES = {
    "config.json": json.dumps({"model_type": "gpt_neox", "hidden_size": 4}).encode(),
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}).encode(),
}


def write_checkpoint(folder: Path, names: tuple[str, ...] = CHECKPOINT) -> Path:
    """A tiny but well-formed checkpoint: a config, real safetensors weights, a tokenizer (other names: dummies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith(".safetensors"):
            save_file({"embed.weight": np.zeros((2, 4), dtype=np.float32)}, str(folder / name))
        else:
            (folder / name).write_bytes(SMALL_FILES.get(name, b"dummy"))
    return folder


def add_to_cache(
    hf_home: Path, repo: str, ref: str, commit: str, names: tuple[str, ...] = CHECKPOINT, source: Path | None = None
) -> Path:
    """Lay out a snapshot exactly as huggingface_hub does: blobs/{sha256}, snapshots/{commit}/NAME -> blob, refs/REF.

    The files are `source`'s (a real checkpoint folder), or small ones named `names`.
    """
    storage = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    staging = storage / ".staging" / commit
    if source is None:
        write_checkpoint(staging, names)
    else:
        shutil.copytree(source, staging)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in sorted(staging.iterdir()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
        file.unlink()
    staging.rmdir()
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)  # no newline: huggingface_hub reads the file verbatim
    return snapshot


@pytest.fixture
def no_hub_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**kwargs: object) -> str:
        raise AssertionError(f"snapshot_download must not be called: {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)


# --- the hub cache, offline ------------------------------------------------------------------------


def test_offline_cache_hit_returns_the_snapshot_folder(hf_home: Path) -> None:
    card = registry.get(PYTHIA)
    main = add_to_cache(hf_home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)
    step3000 = add_to_cache(hf_home, "EleutherAI/pythia-1.4b", "step3000", COMMIT_STEP3000)

    folder = resolve_weights(card, progress=False)
    assert folder == main
    assert (folder / "config.json").is_symlink()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt_neox"
    assert resolve_weights(card, revision="step3000") == step3000


def test_offline_cache_miss_says_what_and_where(hf_home: Path) -> None:
    card = registry.get(PYTHIA)
    add_to_cache(hf_home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(card, revision="step4000")
    assert str(info.value) == (
        f"EleutherAI/pythia-1.4b@step4000 (card pythia-1.4b) is not in the Hugging Face cache ({hf_home / 'hub'}) "
        "and offline mode is on (HF_HUB_OFFLINE=1); download it first (`modeldeck download pythia-1.4b "
        "--revision step4000` with HF_HUB_OFFLINE unset), point HF_HOME/HF_HUB_CACHE at a cache that "
        "has it, or pass weights=DIR"
    )
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ModeldeckError)


def test_cached_snapshot_without_weights_lists_what_it_holds(hf_home: Path) -> None:
    add_to_cache(hf_home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN, names=("config.json", "tokenizer.json"))
    with pytest.raises(WeightsNotFoundError, match=r"no weights file .*holds: config\.json, tokenizer\.json"):
        resolve_weights(registry.get(PYTHIA))


def test_download_asks_only_for_the_files_the_card_needs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append({**kwargs, "bars_disabled": are_progress_bars_disabled()})
        return str(write_checkpoint(tmp_path / "snap"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    disabled_before = are_progress_bars_disabled()
    resolve_weights(registry.get(PYTHIA), revision="main", progress=False)
    resolve_weights(registry.get("astrid-1b"), allow_pickle=True)

    pythia, astrid = calls
    assert pythia["repo_id"] == "EleutherAI/pythia-1.4b" and pythia["revision"] == "main"
    assert set(pythia["allow_patterns"]) == {
        *weights.SAFETENSORS,
        *("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"),
        "tokenizer.json",  # the card's tokenizer.files
    }
    assert not any(p.endswith(".bin") or p.endswith(".bin.index.json") for p in pythia["allow_patterns"])
    assert {"pytorch_model*.bin", "pytorch_model.bin.index.json"} <= set(astrid["allow_patterns"])
    assert pythia["bars_disabled"] is True and astrid["bars_disabled"] is disabled_before
    assert are_progress_bars_disabled() is disabled_before  # progress=False restored the global state


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GatedRepoError, r"is gated: accept its terms on https://huggingface\.co/EleutherAI/pythia-1\.4b"),
        (RepositoryNotFoundError, r"no repository EleutherAI/pythia-1\.4b \(card pythia-1\.4b\), or it is private"),
        (RevisionNotFoundError, r"has no revision 'step1000' on the hub"),
    ],
)
def test_hub_errors_become_modeldeck_errors(
    monkeypatch: pytest.MonkeyPatch, error: Callable[..., Exception], expected: str
) -> None:
    def fake_download(**kwargs: object) -> str:
        raise error("upstream message", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(HubError, match=expected):
        resolve_weights(registry.get(PYTHIA), revision="step1000")


# --- checks before any hub call --------------------------------------------------------------------


@pytest.mark.usefixtures("no_hub_call")
def test_unlisted_pythia_revision_names_the_nearest_listed() -> None:
    with pytest.raises(UnknownRevisionError) as info:
        resolve_weights(registry.get(PYTHIA), revision="step3001")
    message = str(info.value)
    assert message.startswith("card pythia-1.4b lists no revision 'step3001' of EleutherAI/pythia-1.4b")
    assert "nearest listed: step3000, step4000, step2000" in message
    assert "154 revisions" in message


@pytest.mark.usefixtures("no_hub_call")
def test_unlisted_non_step_revision_uses_close_matches() -> None:
    with pytest.raises(UnknownRevisionError, match=r"'mian'.*nearest listed: main"):
        resolve_weights(registry.get(PYTHIA), revision="mian")


@pytest.mark.usefixtures("no_hub_call")
def test_pickle_checkpoint_is_refused_without_opt_in() -> None:
    with pytest.raises(PickleRefusedError) as info:
        resolve_weights(registry.get("astrid-1b"))
    message = str(info.value)
    assert "PAIXAI/Astrid-1B (card astrid-1b) only ships pickle checkpoints" in message
    assert "can execute arbitrary code" in message
    assert "allow_pickle=True" in message and "safetensors" in message
    assert "`modeldeck download astrid-1b --revision main --allow-pickle`" in message
    assert "`modeldeck convert DIR --allow-pickle --out OUT`" in message


# --- weights=DIR -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_hub_call")
def test_weights_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    assert resolve_weights(registry.get(PYTHIA), weights=folder) == folder.resolve()
    assert resolve_weights(registry.get(PYTHIA), weights=str(folder), revision="step3001") == folder.resolve()


@pytest.mark.usefixtures("no_hub_call")
def test_weights_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError, match=rf"weights folder {missing} does not exist; pass weights="):
        resolve_weights(registry.get(PYTHIA), weights=missing)


@pytest.mark.usefixtures("no_hub_call")
def test_weights_folder_without_config_lists_its_contents(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", ("model.safetensors", "tokenizer.json"))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(registry.get(PYTHIA), weights=folder)
    assert f"weights folder {folder} has no config.json (it holds: model.safetensors, tokenizer.json)" in str(
        info.value
    )


@pytest.mark.usefixtures("no_hub_call")
def test_pickle_only_folder_needs_opt_in(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", ("config.json", "pytorch_model.bin"))
    card = registry.get("astrid-1b")
    with pytest.raises(PickleRefusedError, match=r"only pickle checkpoints \(pytorch_model\.bin\)"):
        resolve_weights(card, weights=folder)
    assert resolve_weights(card, weights=folder, allow_pickle=True) == folder


# --- bundled ---------------------------------------------------------------------------------------


@pytest.fixture
def bundled_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, card_data: Callable[[str], dict[str, Any]]
) -> Iterator[Callable[[str], Card]]:
    package = f"mdk_bundle_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "site"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    write_checkpoint(root / package / "weights" / "tiny")
    monkeypatch.syspath_prepend(str(root))

    def make(bundled: str) -> Card:
        data = card_data(PYTHIA)
        data["source"]["bundled"] = bundled.replace("PKG", package)
        return Card.model_validate(data)

    yield make
    sys.modules.pop(package, None)


@pytest.mark.usefixtures("no_hub_call")
def test_bundled_weights_resolve_to_the_package_folder(tmp_path: Path, bundled_card: Callable[[str], Card]) -> None:
    card = bundled_card("PKG:weights/tiny")
    folder = resolve_weights(card)
    assert folder.parent.parent.parent == (tmp_path / "site").resolve()
    assert folder.relative_to((tmp_path / "site").resolve()).parts[1:] == ("weights", "tiny")


@pytest.mark.usefixtures("no_hub_call")
def test_bundled_weights_missing(bundled_card: Callable[[str], Card]) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"weights/nothing is not a folder on disk"):
        resolve_weights(bundled_card("PKG:weights/nothing"))
    with pytest.raises(WeightsNotFoundError, match=r"package 'no_such_pkg_xyz', which is not installed"):
        resolve_weights(bundled_card("no_such_pkg_xyz:weights"))


def test_runtime_load_reads_the_offline_cache(hf_home: Path, tiny_checkpoint: Any) -> None:
    """runtime.load with no weights= finds the card's repository in the cache, with no network at all."""
    from modeldeck import runtime

    ckpt = tiny_checkpoint("gpt-neox")  # a tiny pythia-1.4b: the card's repo is EleutherAI/pythia-1.4b
    add_to_cache(hf_home, ckpt.card.source.repo, "main", "c" * 40, source=ckpt.directory)
    model = runtime.load(ckpt.card, device="cpu")
    reference = runtime.load(ckpt.card, weights=ckpt.directory, device="cpu")
    assert model.generate("Hello", max_new_tokens=4).text == reference.generate("Hello", max_new_tokens=4).text


# --- a revision on a card without revisions; options spelled the caller's way ----------------------


@pytest.mark.usefixtures("no_hub_call")
def test_a_revision_on_a_card_without_revisions_is_refused() -> None:
    card = registry.get("tiny-neox")  # bundled, lists no revisions
    assert resolve_weights(card, revision="main") == resolve_weights(card)  # its own revision
    with pytest.raises(UnknownRevisionError) as info:
        resolve_weights(card, revision="foo")
    assert str(info.value) == (
        "card tiny-neox lists no revisions: only its own revision ('main') can be used, not 'foo'; leave out "
        "revision=foo (its weights ship in modeldeck.cards:tiny-neox)"
    )


def test_runtime_load_refuses_a_revision_the_card_does_not_list() -> None:
    pytest.importorskip("torch")
    from modeldeck import runtime

    with pytest.raises(UnknownRevisionError, match=r"card tiny-neox lists no revisions: .* not 'foo'"):
        runtime.load("tiny-neox", revision="foo", device="cpu")


def test_errors_say_options_the_callers_way(tmp_path: Path, run_cli: Any) -> None:
    """The same error names `weights=DIR` / `allow_pickle=True` in Python and `--weights DIR` / `--allow-pickle` on
    the command line."""
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError) as python:
        resolve_weights(registry.get("tiny-neox"), weights=missing)
    assert f"weights folder {missing} does not exist; pass weights=DIR naming a folder" in str(python.value)
    assert "--weights" not in str(python.value)
    cli = run_cli("verify", "tiny-neox", "--weights", str(missing))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert f"error: weights folder {missing} does not exist; pass --weights DIR naming a folder" in cli.stderr
    assert "weights=" not in cli.stderr

    pickles = write_checkpoint(tmp_path / "pickles", ("config.json", "pytorch_model.bin", "tokenizer.json"))
    with pytest.raises(PickleRefusedError) as python:
        resolve_weights(registry.get("astrid-1b"), weights=pickles)
    message = str(python.value)
    assert "Pass allow_pickle=True if you trust it" in message and "then load OUT with weights=OUT" in message
    assert "--allow-pickle if" not in message and "--weights" not in message
    pytest.importorskip("torch")
    cli = run_cli("generate", "astrid-1b", "Hi", "--weights", str(pickles))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "holds only pickle checkpoints (pytorch_model.bin)" in cli.stderr
    assert "Pass --allow-pickle if you trust it" in cli.stderr and "then load OUT with --weights OUT" in cli.stderr
    assert "allow_pickle" not in cli.stderr and "weights=" not in cli.stderr
