"""A card's weight files on disk, without torch: which files a card needs, where they are, and their pins.

    needed_patterns(card, allow_pickle)      the files a checkpoint consists of (what `modeldeck download` fetches)
    check_revision(card, revision)           a revision the card lists, or UnknownRevisionError naming the nearest
    bundled_folder(card)                     weights shipped inside a Python package (source.bundled)
    local_weights(card, weights, revision)   the folder to verify: weights=DIR, the bundled folder, or the card's
                                             snapshot in the Hugging Face cache (looked up offline)
    check_files(card, folder)                one FileCheck per pinned file (ok, missing, wrong size, wrong hash) and per
                                             weight file the pins do not cover (not pinned)
    require_verified(card, folder)           VerificationError naming every file that is not ok
    compute_pins(card, folder), pins_yaml()  the `files:` block for a card's source section, from a trusted folder

Hashes are computed in 1 MiB chunks (a 10 GB shard never sits in memory). A card pins the files of its default
revision (`source.revision`, and the revisions `source.revision_aliases` says are the same checkpoint); other
revisions have no pins. This module imports neither torch nor (until a cache lookup) huggingface_hub, so a plugin
author's CI can pin and verify weights with the registry alone.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.resources
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import Card, PinnedFile

__all__ = [
    "CONFIGS",
    "PICKLE",
    "SAFETENSORS",
    "FileCheck",
    "NoPinsError",
    "Status",
    "UnknownRevisionError",
    "VerificationError",
    "WeightsNotFoundError",
    "bundled_folder",
    "cached_snapshot",
    "check_files",
    "check_revision",
    "compute_pins",
    "fix_hint",
    "local_weights",
    "needed_patterns",
    "pinned_revisions",
    "pins_yaml",
    "require_verified",
    "sha256_file",
]

SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
PICKLE = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
CONFIGS = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"]
CHUNK = 1 << 20

Status = Literal["ok", "missing", "wrong size", "wrong hash", "not pinned"]


class WeightsNotFoundError(ModeldeckError, FileNotFoundError):
    """No usable checkpoint folder: a missing path, a cache miss, or a folder without config.json or weights."""


class UnknownRevisionError(ModeldeckError, ValueError):
    """A revision the card does not list."""


class VerificationError(ModeldeckError):
    """Files of a checkpoint that do not match the card's pins (source.files)."""

    def __init__(self, message: str, checks: list[FileCheck] | None = None):
        self.checks = checks or []
        super().__init__(message)


class NoPinsError(VerificationError):
    """Verification was asked for, but the card pins no files for this revision."""


# --- which files, which revision -------------------------------------------------------------------


def needed_patterns(card: Card, allow_pickle: bool = False) -> list[str]:
    """The files a card's checkpoint consists of, as huggingface_hub allow_patterns: safetensors weights and index,
    config.json, the generation and tokenizer configs, the card's tokenizer files; pickles only with allow_pickle."""
    patterns = [*SAFETENSORS, *CONFIGS, *(f for f in card.tokenizer.files if f not in CONFIGS)]
    return patterns + PICKLE if allow_pickle else patterns


def check_revision(card: Card, revision: str) -> str:
    """`revision` if the card lists it (or lists no revisions at all); UnknownRevisionError naming the nearest."""
    source = card.source
    if not source.revisions or revision in {source.revision, *source.revisions, *source.revision_aliases}:
        return revision
    listed = [source.revision, *source.revision_aliases, *source.revisions]
    nearest = _nearest_steps(revision, source.revisions)
    nearest += [r for r in difflib.get_close_matches(revision, listed, n=5, cutoff=0.6) if r not in nearest]
    hint = f"nearest listed: {', '.join(nearest[:5])}" if nearest else f"listed: {', '.join(listed[:8])} ..."
    raise UnknownRevisionError(
        f"card {card.id} lists no revision {revision!r} of {source.repo} ({hint}); the card lists "
        f"{len(source.revisions)} revisions, see `modeldeck show {card.id}`"
    )


def _nearest_steps(revision: str, revisions: list[str]) -> list[str]:
    """For `stepN`: the listed `stepM` revisions with M numerically closest to N, nearest first."""
    wanted = re.fullmatch(r"step(\d+)", revision)
    if wanted is None:
        return []
    target = int(wanted.group(1))
    steps = [(int(m.group(1)), r) for r in revisions if (m := re.fullmatch(r"step(\d+)", r))]
    return [r for _, r in sorted(steps, key=lambda s: (abs(s[0] - target), s[0]))[:3]]


def pinned_revisions(card: Card) -> set[str]:
    """The revisions `source.files` describes: the default revision and those the aliases make the same checkpoint."""
    same = {card.source.revision}
    pairs = list(card.source.revision_aliases.items())
    grown = True
    while grown:
        grown = False
        for alias, target in pairs:
            if (alias in same) != (target in same):
                same |= {alias, target}
                grown = True
    return same


# --- where the files are ---------------------------------------------------------------------------


def bundled_folder(card: Card) -> Path:
    """The folder of weights a package ships (source.bundled = 'package:folder')."""
    package, _, relative = (card.source.bundled or "").partition(":")
    try:
        root = importlib.resources.files(package)
    except (ModuleNotFoundError, TypeError) as error:  # TypeError: a module, not a package (Python 3.10, 3.11)
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in package {package!r}, which is not installed ({error}); "
            "install the plugin that provides it, or pass weights=DIR"
        ) from error
    folder = root.joinpath(*relative.split("/"))
    if not isinstance(folder, Path) or not folder.is_dir():
        raise WeightsNotFoundError(
            f"card {card.id} bundles its weights in {card.source.bundled}, but {folder} is not a folder on disk; "
            f"reinstall the package {package!r} (a zipped install cannot be loaded), or pass weights=DIR"
        )
    return folder.resolve()


def weights_folder(card: Card, weights: str | os.PathLike[str]) -> Path:
    """An explicit weights folder, which must exist."""
    folder = Path(weights).expanduser().resolve()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise WeightsNotFoundError(
            f"weights folder {folder} {what}; pass weights= a folder holding config.json and the "
            f"{card.id} checkpoint, or leave weights unset to use {card.source.repo} from the Hugging Face hub"
        )
    return folder


def cached_snapshot(card: Card, revision: str) -> Path:
    """The card's snapshot folder in the local Hugging Face cache, found without any network access.

    A snapshot huggingface_hub knows to be incomplete is returned too: verification reports the missing files."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise WeightsNotFoundError(
            f"finding {card.source.repo} in the Hugging Face cache needs huggingface_hub ({error}); install it "
            "(pip install huggingface_hub, or the runtime extra) or pass a weights folder"
        ) from error
    where = f"{card.source.repo}@{revision}"
    patterns = needed_patterns(card, allow_pickle=card.source.format == "pytorch")
    try:
        folder = snapshot_download(card.source.repo, revision=revision, allow_patterns=patterns, local_files_only=True)
    except LocalEntryNotFoundError as error:
        incomplete = getattr(error, "snapshot_path", None)  # IncompleteSnapshotError: verification says what is missing
        if incomplete:
            return Path(incomplete)
        raise WeightsNotFoundError(
            f"{where} (card {card.id}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); download it "
            f"with `modeldeck download {card.id} --revision {revision}`, point HF_HOME/HF_HUB_CACHE at a cache "
            "that has it, or pass a weights folder"
        ) from error
    return Path(folder)


def local_weights(card: Card, weights: str | os.PathLike[str] | None = None, revision: str | None = None) -> Path:
    """The folder holding the card's files on this machine, with no network access: `weights`, the bundled folder,
    or the card's snapshot (of `revision`, default the card's) in the Hugging Face cache."""
    if weights is not None:
        return weights_folder(card, weights)
    if card.source.bundled:
        return bundled_folder(card)
    return cached_snapshot(card, check_revision(card, revision or card.source.revision))


# --- hashing and checking --------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    """The hex sha256 of a file, read in chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    """One file of a checkpoint against its pin; `size` and `sha256` are what is on disk (None: not measured)."""

    path: str
    status: Status
    expected_size: int | None = None
    expected_sha256: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """One line: what is wrong with the file (or that it is fine)."""
        if self.status == "ok":
            return f"{self.path}: ok ({self.size:,} bytes, sha256 {self.sha256})"
        if self.status == "missing":
            return f"{self.path}: missing (expected {self.expected_size:,} bytes)"
        if self.status == "wrong size":
            return (
                f"{self.path}: wrong size: {self.size:,} bytes, expected {self.expected_size:,} "
                "(truncated, partly downloaded or another file)"
            )
        if self.status == "wrong hash":
            return (
                f"{self.path}: wrong hash: sha256 {self.sha256}, expected {self.expected_sha256} "
                "(same size: corrupted or altered)"
            )
        return f"{self.path}: not pinned: a weight file ({self.size:,} bytes) that source.files does not list"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "status": self.status,
            "size": self.size,
            "expected_size": self.expected_size,
            "sha256": self.sha256,
            "expected_sha256": self.expected_sha256,
        }


def check_file(folder: Path, pin: PinnedFile) -> FileCheck:
    """One pinned file: missing, wrong size (not hashed), wrong hash, or ok."""
    path = folder / pin.path
    if not path.is_file():
        return FileCheck(pin.path, "missing", pin.size, pin.sha256)
    size = path.stat().st_size
    if size != pin.size:
        return FileCheck(pin.path, "wrong size", pin.size, pin.sha256, size=size)
    digest = sha256_file(path)
    return FileCheck(pin.path, "ok" if digest == pin.sha256 else "wrong hash", pin.size, pin.sha256, size, digest)


def _files(folder: Path, patterns: Iterable[str]) -> list[str]:
    """The files directly in `folder` (where the loader reads them; hidden ones skipped) matching any pattern."""
    patterns = list(patterns)
    found = [
        path.name
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    ]
    return sorted(found, key=_natural)


def _natural(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_files(card: Card, folder: Path) -> list[FileCheck]:
    """Every pinned file of the card, in the card's order, then each weight file in `folder` that no pin covers
    (a weight file loading could read unverified: *.safetensors, and pickles for a `format: pytorch` card)."""
    checks = [check_file(folder, pin) for pin in card.source.files]
    pinned = {pin.path for pin in card.source.files}
    weights = SAFETENSORS + (PICKLE if card.source.format == "pytorch" else [])
    checks += [
        FileCheck(name, "not pinned", size=(folder / name).stat().st_size)
        for name in _files(folder, weights)
        if name not in pinned
    ]
    return checks


def require_pins(card: Card, revision: str | None = None) -> None:
    """NoPinsError unless the card pins files for `revision` (default: the card's)."""
    revision = revision or card.source.revision
    how = (
        f"pin them with `modeldeck verify {card.id} --print-pins DIR` on a folder you trust and add the printed "
        "`files:` block under the card's source section"
    )
    if not card.source.files:
        raise NoPinsError(f"card {card.id} pins no files (source.files is empty), so there is nothing to verify; {how}")
    pinned = pinned_revisions(card)
    if revision not in pinned:
        raise NoPinsError(
            f"card {card.id} pins the files of revision {' = '.join(sorted(pinned))} only, not {revision!r}; "
            f"verify that revision, or check {revision!r} by other means"
        )


def require_verified(card: Card, folder: Path, revision: str | None = None) -> list[FileCheck]:
    """The checks of every file, if all are ok; otherwise VerificationError naming each bad file (NoPinsError when
    the card pins nothing for this revision)."""
    require_pins(card, revision)
    checks = check_files(card, folder)
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = "\n".join(f"  - {c.describe()}" for c in bad)
        raise VerificationError(
            f"{len(bad)} of {len(checks)} files of card {card.id} in {folder} failed verification against the "
            f"card's pins (source.files):\n{lines}\n{fix_hint(card, bad)}",
            checks,
        )
    return checks


def fix_hint(card: Card, bad: list[FileCheck]) -> str:
    hints = []
    if any(c.status in ("missing", "wrong size", "wrong hash") for c in bad):
        hints.append(
            f"download the files again (`modeldeck download {card.id} --force-download` replaces cached copies)"
        )
    if any(c.status == "not pinned" for c in bad):
        hints.append("remove the weight files the card does not pin, or pin them in source.files")
    hints.append(
        f"if the card's pins are out of date, recompute them with `modeldeck verify {card.id} --print-pins DIR`"
    )
    return "; ".join(hints)


# --- pinning ---------------------------------------------------------------------------------------


def compute_pins(card: Card, folder: Path) -> list[PinnedFile]:
    """Pins (sha256, size) for the files of `folder` that the card needs (see needed_patterns; pickles for a
    `format: pytorch` card)."""
    names = _files(folder, needed_patterns(card, allow_pickle=card.source.format == "pytorch"))
    if not names:
        raise WeightsNotFoundError(
            f"{folder} holds none of the files card {card.id} needs "
            f"({', '.join(needed_patterns(card, card.source.format == 'pytorch'))}); point at its checkpoint folder"
        )
    return [PinnedFile(path=n, sha256=sha256_file(folder / n), size=(folder / n).stat().st_size) for n in names]


def pins_yaml(card: Card, pins: list[PinnedFile], folder: Path | None = None) -> str:
    """A `files:` block to paste under the card's `source:` (indented for it), with a comment saying where from."""
    block = yaml.safe_dump(
        {"files": [{"path": p.path, "sha256": p.sha256, "size": p.size} for p in pins]},
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    origin = f" in {folder}" if folder is not None else ""
    comment = (
        f"# source.files for card {card.id} (revision {card.source.revision}): sha256 and size of {len(pins)} "
        f"files{origin}\n"
    )
    return "".join("  " + line for line in (comment + block).splitlines(keepends=True))
