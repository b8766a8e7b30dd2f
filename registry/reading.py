"""Reading files that may be hostile, bounded: the one way a file of a checkpoint is opened (weights, config.json,
indexes; runtime/convert.py's pickles and copies too) and a card file is read (registry/cardfile.py), and the one
JSON parser for what a checkpoint holds.

    open_regular / read_regular   a plain file name inside the folder, a regular file once symbolic links are
                                  followed (a Hugging Face cache snapshot links into blobs/), never a FIFO, device,
                                  socket or folder (checked before and after a non-blocking open: a FIFO would block
                                  forever, /dev/zero never ends); read_regular reads at most `limit` bytes
    parse_json                    UTF-8, nested at most MAX_JSON_DEPTH levels (checked before parsing: no
                                  RecursionError), integers of at most MAX_INT_DIGITS digits
    MAX_CONFIG_BYTES (16 MiB)     config.json (real ones are a few KB)
    MAX_INDEX_BYTES (64 MiB)      model.safetensors.index.json, pytorch_model.bin.index.json (~100 bytes a tensor:
                                  the largest published checkpoints' are ~10 MB)
    MAX_JSON_DEPTH, MAX_INT_DIGITS  also the limits of card files' YAML (registry/cardfile.py)

Each refusal is a FileRefusedError: the file, why ("is a FIFO (named pipe), not a regular file") and what to do.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from modeldeck.registry.diagnostics import ModeldeckError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_BYTES",
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "FileRefusedError",
    "open_regular",
    "parse_json",
    "plain_name",
    "read_regular",
]

MAX_CONFIG_BYTES = 16 * 2**20  # config.json: a few KB in every published checkpoint
MAX_INDEX_BYTES = 64 * 2**20  # a shard index: ~100 bytes a tensor, ~10 MB for the largest published checkpoints
MAX_JSON_DEPTH = 32  # config.json nests 3 or 4 levels, an index 2, a safetensors header 3
MAX_INT_DIGITS = 20  # the digits of the largest u64 (safetensors' offsets and sizes); Python's own limit is 4,300


class FileRefusedError(ModeldeckError):
    """A file of a checkpoint folder that is not read: `reason` follows the file's name ("is a FIFO (named pipe),
    not a regular file"), `hint` says what to do."""

    def __init__(self, path: Path, reason: str, hint: str):
        self.path, self.reason, self.hint = path, reason, hint
        super().__init__(f"{path} {reason}; {hint}")

    @property
    def line(self) -> str:
        """The refusal as a problem line of its folder: the file's name and the reason."""
        return f"{self.path.name} {self.reason}"


REGULAR_HINT = (
    "only regular files (or symbolic links to one) are read as weights, configs and indexes: put the real file there"
)
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def plain_name(name: str) -> bool:
    """A file name without any path: not empty, `.` or `..`, no `/`, `\\` or NUL (so never absolute either)."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((text for test, text in _KINDS if test(mode)), "something")
    if path.is_symlink():
        kind = f"a symbolic link to {path.resolve()}, {kind}"
    raise FileRefusedError(path, f"is {kind}, not a regular file", REGULAR_HINT)


def _os_refusal(path: Path, exc: OSError) -> FileRefusedError:
    if isinstance(exc, FileNotFoundError):
        what = f"a symbolic link to {os.readlink(path)}, which does not exist" if path.is_symlink() else "missing"
        return FileRefusedError(path, f"is {what}", "download the checkpoint again")
    return FileRefusedError(
        path, f"cannot be read ({exc.strerror or exc})", "check that you may read it, or download it again"
    )


TOO_LARGE_HINT = "a checkpoint's config.json and index files are far smaller: download it again"


def open_regular(
    folder: Path, name: str, limit: int | None = None, within: Sequence[Path] = (), too_large: str = TOO_LARGE_HINT
) -> BinaryIO:
    """`folder/name` opened for reading, if `name` is a plain file name and the file, once symbolic links are followed,
    is a regular file (of at most `limit` bytes; resolved inside one of the `within` folders when they are given).

    Anything else is refused (FileRefusedError) before a byte is read: a FIFO would block forever, /dev/zero never
    ends. The type is checked before opening and again on the opened file (opened non-blocking, so a FIFO swapped
    in between cannot block either)."""
    path = folder / name
    if not plain_name(name):
        raise FileRefusedError(path, "is not a plain file name inside the folder", "name a file in the folder itself")
    try:
        _require_regular(path, os.stat(path).st_mode)
        real = path.resolve() if within else path
        if within and not any(real.is_relative_to(root) for root in within):
            raise FileRefusedError(
                path,
                f"is a symbolic link to {real}, outside {' or '.join(str(root) for root in within)}",
                "copy the file itself into the folder if it belongs to the checkpoint",
            )
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _os_refusal(path, exc) from None
    try:
        status = os.fstat(descriptor)
        _require_regular(path, status.st_mode)  # the same file as the one checked, or it was swapped
        if limit is not None and status.st_size > limit:
            raise FileRefusedError(
                path,
                f"is {status.st_size:,} bytes, over the {limit:,}-byte limit for this file",
                too_large,
            )
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException as exc:
        os.close(descriptor)
        if isinstance(exc, OSError):
            raise _os_refusal(path, exc) from None
        raise


def read_regular(folder: Path, name: str, limit: int, too_large: str = TOO_LARGE_HINT) -> bytes:
    """The content of `folder/name`, opened by `open_regular`, at most `limit` bytes (a file that grows while read
    is refused too); `too_large` is what to do about a file over the limit."""
    with open_regular(folder, name, limit, too_large=too_large) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise _os_refusal(folder / name, exc) from None
    if len(data) > limit:
        raise FileRefusedError(
            folder / name, f"grew past the {limit:,}-byte limit for this file while it was read", too_large
        )
    return data


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPENERS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class _JSONLimit(ValueError):
    pass


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _JSONLimit(f"holds an integer of {len(text.lstrip('-')):,} digits (the limit is {MAX_INT_DIGITS})")
    return int(text)


def parse_json(raw: bytes) -> Any:
    """JSON from a checkpoint's file: UTF-8, nested at most MAX_JSON_DEPTH levels (checked before parsing, so deep
    nesting is refused rather than exhausting the stack), integers of at most MAX_INT_DIGITS digits. Raises
    ValueError with a reason that follows the file's name ("is not JSON (...)"); it never quotes the file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text (at byte {exc.start:,})") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        brackets = _JSON_STRING.sub(b"", raw).translate(_OPENERS, _NOT_BRACKETS)
        for _ in range(MAX_JSON_DEPTH):  # each round removes the innermost pairs: `depth` rounds empty it
            brackets = brackets.replace(b"[]", b"")
        if b"[]" in brackets or brackets.count(b"[") > MAX_JSON_DEPTH:
            raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_json_int)
    except _JSONLimit as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:  # json.JSONDecodeError: its message gives the position, never the text
        raise ValueError(f"is not JSON ({exc})") from None
