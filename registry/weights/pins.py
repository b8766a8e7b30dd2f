"""A card's pinned files (source.files: sha256 and size), without torch: hashing, checking, pinning.

    check_files(card, folder)                one FileCheck per pinned file (ok, missing, wrong size, wrong hash) and per
                                             weight file the pins do not cover (not pinned)
    require_pins(card, revision)             NoPinsError unless the card pins the files of that revision
    require_verified(card, folder)           VerificationError naming every file that is not ok
    compute_pins(card, folder), pins_yaml()  the `files:` block for a card's source section, from a trusted folder

Hashes are computed in 1 MiB chunks (a 10 GB shard never sits in memory). A card pins the files of its default
revision (`source.revision`, and the revisions `source.revision_aliases` says are the same checkpoint); other
revisions have no pins. Neither torch nor huggingface_hub is imported: a plugin author's CI can pin and verify
weights with the registry alone.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from modeldeck.registry.checkpoint import natural_key
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import Card, PinnedFile
from modeldeck.registry.weights.files import PICKLE, SAFETENSORS, WeightsNotFoundError, needed_patterns

__all__ = [
    "FileCheck",
    "NoPinsError",
    "Status",
    "VerificationError",
    "check_file",
    "check_files",
    "compute_pins",
    "fix_hint",
    "pinned_revisions",
    "pins_yaml",
    "require_pins",
    "require_verified",
    "sha256_file",
    "verification_failure",
]

CHUNK = 1 << 20

Status = Literal["ok", "missing", "wrong size", "wrong hash", "not pinned", "unreadable"]


class VerificationError(ModeldeckError):
    """Files of a checkpoint that do not match the card's pins (source.files)."""

    def __init__(self, message: str, checks: list[FileCheck] | None = None):
        self.checks = checks or []
        super().__init__(message)


class NoPinsError(VerificationError):
    """Verification was asked for, but the card pins no files for this revision."""


# --- which revisions the pins describe ------------------------------------------------------------


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
    reason: str | None = None  # why an unreadable file could not be read

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
        if self.status == "unreadable":
            return f"{self.path}: unreadable: {self.reason} (check the file's permissions and the disk)"
        return f"{self.path}: not pinned: a weight file ({self.size:,} bytes) that source.files does not list"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "status": self.status,
            "size": self.size,
            "expected_size": self.expected_size,
            "sha256": self.sha256,
            "expected_sha256": self.expected_sha256,
            **({"reason": self.reason} if self.reason else {}),
        }


def check_file(folder: Path, pin: PinnedFile) -> FileCheck:
    """One pinned file: missing, unreadable (not a regular file, or reading it failed), wrong size (not hashed),
    wrong hash, or ok. Only regular files are read: a FIFO would block the hash forever."""
    path = folder / pin.path
    if not path.is_file():
        if path.exists():  # links followed: a folder, a FIFO, a device or a socket
            return FileCheck(pin.path, "unreadable", pin.size, pin.sha256, reason="it is not a regular file")
        return FileCheck(pin.path, "missing", pin.size, pin.sha256)
    size = path.stat().st_size
    if size != pin.size:
        return FileCheck(pin.path, "wrong size", pin.size, pin.sha256, size=size)
    try:
        digest = sha256_file(path)
    except OSError as error:
        return FileCheck(pin.path, "unreadable", pin.size, pin.sha256, size, reason=error.strerror or str(error))
    return FileCheck(pin.path, "ok" if digest == pin.sha256 else "wrong hash", pin.size, pin.sha256, size, digest)


def _files(folder: Path, patterns: Iterable[str]) -> list[str]:
    """The files directly in `folder` (where the loader reads them; hidden ones skipped) matching any pattern."""
    patterns = list(patterns)
    found = [
        path.name
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    ]
    return sorted(found, key=natural_key)


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
    if any(not c.ok for c in checks):
        raise verification_failure(card, folder, checks)
    return checks


def verification_failure(card: Card, folder: Path, checks: list[FileCheck], listed: bool = True) -> VerificationError:
    """The error for checks that are not all ok: each bad file on a line of its own (`listed`), or, after a table
    that showed them, only their names."""
    bad = [c for c in checks if not c.ok]
    head = f"{len(bad)} of {len(checks)} files of card {card.id} in {folder} failed verification"
    if listed:
        lines = "\n".join(f"  - {c.describe()}" for c in bad)
        return VerificationError(
            f"{head} against the card's pins (source.files):\n{lines}\n{fix_hint(card, bad)}", checks
        )
    names = ", ".join(f"{c.path} ({c.status})" for c in bad)
    return VerificationError(f"{head}: {names}\n    -> {fix_hint(card, bad)}", checks)


def fix_hint(card: Card, bad: list[FileCheck]) -> str:
    hints = []
    if any(c.status == "unreadable" for c in bad):
        hints.append("make the unreadable files readable by this user (or download them again)")
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
    pins = []
    for name in names:
        try:
            pins.append(PinnedFile(path=name, sha256=sha256_file(folder / name), size=(folder / name).stat().st_size))
        except OSError as error:
            raise WeightsNotFoundError(
                f"{folder / name} (card {card.id}) cannot be read: {error.strerror or error}; make it readable by "
                "this user, then pin again"
            ) from error
    return pins


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
