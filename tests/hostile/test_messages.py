"""Hostile input, cause 6 (weak messages): what used to end in "internal error ... bug" is a user's mistake or the
environment's, and gets an error naming it and what to do (exit code 1, no traceback)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modeldeck.registry.schema import Card
from modeldeck.registry.weights import pins
from modeldeck.registry.weights.files import WeightsNotFoundError


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# --- pins: a file that cannot be read -------------------------------------------------------------


@pytest.fixture
def pinned(tmp_path: Path, card_data: Any) -> tuple[Card, Path]:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x07" * 64)
    data = card_data("pythia-1.4b")
    data["source"] = {
        **data["source"],
        "files": [{"path": "model.safetensors", "sha256": hashlib.sha256(b"\x07" * 64).hexdigest(), "size": 64}],
    }
    return Card.model_validate(data), folder


def test_an_unreadable_pinned_file_is_named_with_the_reason(
    pinned: tuple[Card, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    card, folder = pinned

    def denied(path: Path, chunk: int = pins.CHUNK) -> str:  # what a file without read permission gives (not root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pins, "sha256_file", denied)
    [check] = pins.check_files(card, folder)
    assert (check.status, check.reason) == ("unreadable", "Permission denied")
    with pytest.raises(pins.VerificationError) as caught:
        pins.require_verified(card, folder)
    assert "  - model.safetensors: unreadable: Permission denied (check the file's permissions and the disk)" in str(
        caught.value
    )
    assert "make the unreadable files readable by this user" in str(caught.value)
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors \(card pythia-1\.4b\) cannot be read: Perm"):
        pins.compute_pins(card, folder)


def test_a_pinned_path_that_is_a_fifo_is_unreadable_not_hashed_forever(pinned: tuple[Card, Path]) -> None:
    card, folder = pinned
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    [check] = pins.check_files(card, folder)
    assert (check.status, check.reason) == ("unreadable", "it is not a regular file")
    assert check.to_json()["reason"] == "it is not a regular file"


# --- the environment and the command line -----------------------------------------------------------


def test_hf_home_pointing_at_a_file_is_named(run_cli: Any, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    home.write_text("not a folder")
    for args in (("download", "pythia-1.4b"), ("generate", "pythia-1.4b", "Hello")):
        refused(
            run_cli(*args, env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}),
            f"HF_HOME is {home}, which is not a folder (card pythia-1.4b needs the Hugging Face cache); point "
            "HF_HOME at a folder, or unset it",
        )


def test_a_device_modeldeck_does_not_run_on_is_named(run_cli: Any) -> None:
    refused(
        run_cli("generate", "tiny-neox", "Hello", "--device", "meta"),
        "--device meta: modeldeck runs on cpu, cuda and mps",
    )


def test_a_seed_beyond_what_torch_takes_is_a_generation_option_error(run_cli: Any) -> None:
    refused(
        run_cli("generate", "tiny-neox", "Hello", "--seed", str(2**64), "--temperature", "0.7"),
        f"invalid generation option seed={2**64}: Input should be less than or equal to {2**64 - 1}",
    )
    top = run_cli("generate", "tiny-neox", "Hello", "--seed", str(2**64 - 1), "--temperature", "0.7", "--json")
    assert top.returncode == 0, top.stderr  # the largest seed works (later rows' seeds wrap)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_device_memory_must_be_a_finite_positive_size(run_cli: Any, value: str) -> None:
    refused(
        run_cli("memory", "tiny-neox", "--device-memory", value),
        "--device-memory must be a positive number of GB up to 1,000,000, got",
    )


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_non_finite_temperature_is_refused(run_cli: Any, value: str) -> None:
    result = run_cli("generate", "tiny-neox", "Hello", "--temperature", value)
    refused(result, f"invalid generation option temperature={value}")


def test_a_file_system_refusal_is_an_error_naming_the_path_not_a_bug(run_cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("export", "tiny-neox", "--to", str(blocker / "out"))
    refused(result, f"error: {blocker}", "check that path (that it exists, its permissions, the free space)")
