"""Pickle checkpoints -> safetensors, once and verified: `modeldeck convert DIR --allow-pickle [--out OUT]`.

    1. find the pickles: pytorch_model.bin.index.json and its shards, or pytorch_model*.bin;
    2. read each with torch.load(weights_only=True): torch's restricted unpickler, which builds tensors and plain
       containers only and refuses every other object (a plain torch.load runs whatever code the file names: the
       reason pickles are refused by default);
    3. tensors that share storage (a tied lm_head and input embedding) are written once: the duplicate name is
       dropped, keeping the input embedding (the first name in the checkpoint's order, output heads last), which
       the layouts' tied_embeddings handling reads; different views of one storage are copied apart (safetensors
       stores no aliasing, and its save_file refuses shared tensors);
    4. write model.safetensors (or model-0000i-of-0000n.safetensors + model.safetensors.index.json) under a
       temporary name, reload it and compare every tensor bit for bit with the pickle's;
    5. copy config.json, the generation and tokenizer configs and the tokenizer files to OUT when OUT is not DIR:
       regular files (registry.reading.open_regular) inside DIR, or, for a Hugging Face cache snapshot, the blobs
       its symbolic links point to in the same cache; a link anywhere else is refused (its content is not the
       checkpoint's, and copying would turn a link to a private file into a readable copy);
    6. move every file into place (os.replace, within OUT): each file is whole or absent.

Nothing is overwritten without `force` (the error lists the files), nothing is left half-written: every file is
written under a temporary name in OUT first, and on any error the temporary files are removed. Pickles and the index
are opened the registry's way (regular files only; a weight_map of plain file names).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from modeldeck.registry.checkpoint import INDEX, PICKLE_INDEX, CheckpointError, natural_key, read_index
from modeldeck.registry.diagnostics import ModeldeckError, spell
from modeldeck.registry.reading import open_regular
from modeldeck.registry.weights import PickleRefusedError

__all__ = ["Conversion", "ConvertError", "convert_checkpoint", "pickle_files", "read_pickle", "same_bits"]

SAFE_INDEX = INDEX
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6; older pickles are not zip files
COPIED_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.")  # output heads: the copy dropped when tied to the embedding


class ConvertError(ModeldeckError):
    """A pickle checkpoint that cannot be converted (unreadable, inconsistent, or nowhere to write)."""


@dataclass
class Conversion:
    """What `convert_checkpoint` wrote: safetensors files (source pickle -> file), tied names dropped, files copied."""

    out: Path
    files: dict[str, str] = field(default_factory=dict)  # pickle shard name -> safetensors file name
    index: str | None = None
    tensors: int = 0
    bytes: int = 0
    tied: dict[str, str] = field(default_factory=dict)  # dropped name -> the name it is stored as
    copied: list[str] = field(default_factory=list)
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor name -> safetensors file holding it


def pickle_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The pickle shards of a checkpoint folder, and the index's weight map (tensor -> shard) when there is one
    (read as the registry reads an index: plain file names of *.bin files in the folder, every one present)."""
    if os.path.lexists(directory / PICKLE_INDEX):
        try:
            weight_map = read_index(directory, PICKLE_INDEX)
        except CheckpointError as exc:
            raise ConvertError(f"{exc}; nothing was converted") from None
        return [directory / s for s in sorted(set(weight_map.values()), key=natural_key)], weight_map
    return sorted(directory.glob("pytorch_model*.bin"), key=lambda p: natural_key(p.name)), None


def _target(name: str) -> str:
    """pytorch_model.bin -> model.safetensors, pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors."""
    stem = name.removesuffix(".bin")
    if stem.startswith("pytorch_model"):
        stem = "model" + stem.removeprefix("pytorch_model")
    return stem + ".safetensors"


def _is_hub_snapshot(folder: Path) -> bool:
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pickle's tensors through torch's weights-only unpickler, memory-mapped when it is a zip file (torch.save's
    format since torch 1.6; a legacy pickle is read whole, as torch cannot map it); ConvertError saying why when it is
    unreadable or holds anything but a name -> tensor mapping, FileRefusedError when it is not a regular file. The one
    pickle reader: loading (with allow_pickle) and conversion both read through it."""
    with open_regular(path.parent, path.name) as f:
        try:
            zipped = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
            f.seek(0)
            state = torch.load(path if zipped else f, map_location="cpu", weights_only=True, mmap=zipped)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad or hostile pickles
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConvertError(
                f"{path} cannot be read with torch.load(weights_only=True): {first}; it is corrupt or holds objects "
                "other than tensors (which is how a pickle runs code)"
            ) from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ConvertError(
                f"{path} holds {name!r}: a {type(value).__name__}, not a tensor; a checkpoint to convert maps "
                "tensor names to tensors (a training checkpoint wrapping one, e.g. under 'state_dict', is not one)"
            )
    return state


def _view(tensor: torch.Tensor) -> tuple[object, ...]:
    return (tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())


def _untie(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to write (each its own storage, contiguous) and the names dropped as duplicates: dropped -> kept.

    Names sharing one storage with the same view are one tensor: the first in the checkpoint's order is kept, an
    output head (lm_head, embed_out) only if nothing else is. Different views of one storage are copied apart."""
    order = {name: i for i, name in enumerate(state)}
    storages: dict[tuple[str, int], list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel():  # empty tensors have no bytes to share
            storages.setdefault((str(tensor.device), tensor.untyped_storage().data_ptr()), []).append(name)
    tensors = {name: t if t.is_contiguous() else t.contiguous() for name, t in state.items()}
    tied: dict[str, str] = {}
    for names in storages.values():
        views: dict[tuple[object, ...], list[str]] = {}
        for name in sorted(names, key=lambda n: (bool(_HEAD.search(n)), order[n])):
            views.setdefault(_view(state[name]), []).append(name)
        for i, same in enumerate(views.values()):
            keep, *dropped = same
            for name in dropped:
                tied[name] = keep
                del tensors[name]
            if i:  # another view of a storage already written: a copy of its own
                tensors[keep] = state[keep].clone(memory_format=torch.contiguous_format)
    return tensors, tied


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included): same dtype, shape and bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_as_bytes(a), _as_bytes(b))


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _refusal(directory: Path, shards: list[Path]) -> str:
    names = ", ".join(p.name for p in shards)
    return (
        f"{directory} holds pickle checkpoints ({names}); loading a pickle can execute arbitrary code, and converting "
        "has to load it. modeldeck reads it with torch.load(weights_only=True), torch's restricted unpickler "
        "(tensors and plain containers only), which blocks the known ways a pickle runs code but still parses an "
        "untrusted file: pass --allow-pickle (allow_pickle=True) if you trust where the files come from"
    )


def convert_checkpoint(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    allow_pickle: bool = False,
    force: bool = False,
    report: Callable[[str], None] | None = None,
) -> Conversion:
    """Convert the pickle checkpoint in `directory` to safetensors in `out` (default: `directory` itself).

    Refused (PickleRefusedError) unless `allow_pickle=True`. Every written tensor is reloaded and compared bit for
    bit with the pickle's before the file is moved into place. A file already in `out` that the conversion writes is
    an error before anything is written, unless `force=True` (then it is replaced); safetensors weights there that
    the conversion does not write are always an error (two checkpoints would mix). `report` receives one line per
    step."""
    source = Path(directory).expanduser().resolve()
    if not source.is_dir():
        raise ConvertError(f"{source} is not a folder; give the checkpoint folder holding pytorch_model*.bin")
    shards, weight_map = pickle_files(source)
    if not shards:
        held = ", ".join(sorted(p.name for p in source.iterdir())) or "nothing"
        raise ConvertError(
            f"{source} holds no pickle checkpoint (pytorch_model*.bin or {PICKLE_INDEX}); it holds: {held}"
        )
    if not allow_pickle:
        raise PickleRefusedError(_refusal(source, shards))
    target = Path(out).expanduser().resolve() if out is not None else source
    if target == source and _is_hub_snapshot(source):
        raise ConvertError(
            f"{source} is a snapshot in the Hugging Face cache, which huggingface_hub manages; pass --out OUT "
            "(out=) to write the safetensors checkpoint to a folder of its own"
        )
    names = {p.name: _target(p.name) for p in shards}
    if len(set(names.values())) != len(names):
        raise ConvertError(f"the shards of {source} ({', '.join(names)}) do not map to distinct safetensors names")
    sharded = weight_map is not None or len(shards) > 1
    copies = _copied(source) if target != source else []
    _check_target(target, [*names.values(), *([SAFE_INDEX] if sharded else []), *copies], force)
    say = report or (lambda line: None)
    result = Conversion(target)
    staged: dict[Path, Path] = {}  # temporary -> final name
    moved: list[Path] = []  # final files that did not exist before (removed again on an error)
    try:
        for shard in shards:
            staged[_convert_shard(shard, target / names[shard.name], weight_map, result, say)] = (
                target / names[shard.name]
            )
        if sharded:
            weights = dict(sorted(result.weight_map.items(), key=lambda item: natural_key(item[0])))
            text = json.dumps({"metadata": {"total_size": result.bytes}, "weight_map": weights}, indent=2) + "\n"
            staged[_staged(target / SAFE_INDEX, lambda f: f.write(text.encode()))] = target / SAFE_INDEX
            result.index = SAFE_INDEX
        roots = _copy_roots(source)
        for name in copies:
            with open_regular(source, name, within=roots) as original:  # checked again: it may have changed
                staged[_staged(target / name, lambda f: shutil.copyfileobj(original, f))] = target / name
        for temporary, final in staged.items():
            existed = os.path.lexists(final)
            os.replace(temporary, final)
            if not existed:
                moved.append(final)
    except BaseException as exc:
        for path in [*staged, *moved]:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _unwritable(target, exc) from None
        raise
    if result.index:
        say(f"wrote {SAFE_INDEX}: {len(result.weight_map)} tensors in {len(shards)} files")
    result.copied = copies
    if copies:
        say(f"copied {', '.join(copies)}")
    return result


def _copy_roots(source: Path) -> list[Path]:
    """Where a copied file may resolve to: the checkpoint folder, and for a Hugging Face cache snapshot the blobs
    of its repository (a snapshot's files are symbolic links to ../../blobs/HASH)."""
    return [source, (source.parent.parent / "blobs").resolve()] if _is_hub_snapshot(source) else [source]


def _copied(source: Path) -> list[str]:
    """The config and tokenizer files to copy, each checked to be a regular file inside `_copy_roots` before anything
    is written (FileRefusedError naming the file and why otherwise)."""
    roots = _copy_roots(source)
    names = []
    for path in sorted(source.iterdir()):
        if path.suffix in COPIED_SUFFIXES and path.name not in (PICKLE_INDEX, SAFE_INDEX) and not path.is_dir():
            open_regular(source, path.name, within=roots).close()
            names.append(path.name)
    return names


def _check_target(target: Path, outputs: list[str], force: bool) -> None:
    """The output folder, created, writable, holding no other checkpoint's weights and (without `force`) none of
    the files the conversion writes: every refusal before anything is written."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = _temporary(target / "write-test")
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise _unwritable(target, exc) from None
    held = {p.name for p in target.iterdir()}
    other = sorted(n for n in held - set(outputs) if n.endswith(".safetensors") or n == SAFE_INDEX)
    if other:
        raise ConvertError(
            f"{target} already holds safetensors weights ({', '.join(other)}); writing there would mix two "
            "checkpoints: choose an empty --out folder or remove them"
        )
    clashes = [n for n in outputs if n in held]
    if clashes and not force:
        weights = [n for n in clashes if n.endswith(".safetensors") or n == SAFE_INDEX]
        listed = [f"safetensors weights ({', '.join(weights)})"] * bool(weights) + [
            n for n in clashes if n not in weights
        ]
        raise ConvertError(
            f"{target} already holds {', '.join(listed)}, which converting would overwrite; pass {spell('force')} to "
            "replace them (other files there are left alone), or choose an empty --out folder"
        )


def _unwritable(target: Path, exc: OSError | SafetensorError) -> ConvertError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConvertError(
        f"cannot write the safetensors checkpoint to {target} ({reason}); nothing was converted: choose a folder "
        f"you can write to with {spell('out', 'OUT')} (and check the free space)"
    )


def _temporary(final: Path) -> Path:
    """A name beside `final` for writing it before it is moved into place (os.replace within one folder)."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.incomplete")


def _staged(final: Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write` into a new temporary file beside `final`; returns its name (removed if writing fails)."""
    temporary = _temporary(final)
    try:
        with temporary.open("xb") as f:
            write(f)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _convert_shard(
    shard: Path,
    path: Path,
    weight_map: dict[str, str] | None,
    result: Conversion,
    say: Callable[[str], None],
) -> Path:
    """One pickle -> one safetensors file under a temporary name, verified bit for bit; returns the temporary path."""
    try:
        state = read_pickle(shard)
    except ConvertError as exc:
        raise ConvertError(f"{exc}: not converted") from None
    if weight_map is not None:
        listed = sorted(n for n, s in weight_map.items() if s == shard.name)
        absent = [n for n in listed if n not in state]
        if absent:
            raise ConvertError(
                f"{PICKLE_INDEX} lists {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''} in {shard.name}, "
                "which does not hold them; the index and the shards are from different checkpoints"
            )
    twice = sorted(set(state) & set(result.weight_map))
    if twice:
        raise ConvertError(
            f"{shard.name} holds {', '.join(twice[:5])}, which an earlier shard "
            f"({result.weight_map[twice[0]]}) already held; the shards are from different checkpoints"
        )
    tensors, tied = _untie(state)
    temporary = _temporary(path)
    try:
        try:
            save_file(tensors, str(temporary), metadata={"format": "pt"})
        except SafetensorError as exc:  # the disk full, the folder gone
            raise _unwritable(path.parent, exc) from None
        reloaded = load_file(str(temporary))
        if set(reloaded) != set(tensors):
            raise ConvertError(f"{path.name} does not hold the tensors just written; disk full or failing?")
        differ = [name for name in state if not same_bits(reloaded[tied.get(name, name)], state[name])]
        if differ:
            raise ConvertError(
                f"{path.name} read back differs from {shard.name} in {', '.join(differ[:5])}; nothing was kept"
            )
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    result.files[shard.name] = path.name
    result.tensors += len(tensors)
    result.bytes += size
    result.tied.update(tied)
    result.weight_map.update((name, path.name) for name in tensors)
    for dropped, kept in tied.items():
        say(f"{shard.name}: {dropped} shares storage with {kept}: stored once, as {kept}")
    say(f"{shard.name} -> {path.name}: {len(tensors)} tensors, {size:,} bytes, identical bit for bit")
    return temporary
