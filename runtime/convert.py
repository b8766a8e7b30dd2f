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
       temporary name, reload it and compare every tensor bit for bit with the pickle's, then move it into place;
    5. copy config.json, the generation and tokenizer configs and the tokenizer files to OUT when OUT is not DIR.

Nothing is left half-written: on any error the temporary files are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeldeck.registry.checkpoint import natural_key
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.weights import PickleRefusedError

__all__ = ["Conversion", "ConvertError", "convert_checkpoint", "pickle_files", "read_pickle", "same_bits"]

PICKLE_INDEX = "pytorch_model.bin.index.json"
SAFE_INDEX = "model.safetensors.index.json"
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
    """The pickle shards of a checkpoint folder, and the index's weight map (tensor -> shard) when there is one."""
    index = directory / PICKLE_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConvertError(
                f"{index} is not a valid index ({exc}); restore it from the original checkpoint"
            ) from None
        shards = sorted(set(weight_map.values()), key=natural_key)
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ConvertError(
                f"{index.name} in {directory} lists shards that are missing: {', '.join(missing)}; download them too"
            )
        return [directory / s for s in shards], weight_map
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
    """A pickle's tensors through torch's weights-only unpickler (memory-mapped when the file format allows it);
    ConvertError saying why when it is unreadable or holds anything but a name -> tensor mapping. The one pickle
    reader: loading (with allow_pickle) and conversion both read through it."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # a pre-1.6 (non-zip) torch.save
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad or hostile pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(
            f"{path} cannot be read with torch.load(weights_only=True): {first}; it is corrupt or holds objects other "
            "than tensors (which is how a pickle runs code)"
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
    report: Callable[[str], None] | None = None,
) -> Conversion:
    """Convert the pickle checkpoint in `directory` to safetensors in `out` (default: `directory` itself).

    Refused (PickleRefusedError) unless `allow_pickle=True`. Every written tensor is reloaded and compared bit for
    bit with the pickle's before the file is moved into place. `report` receives one line per step."""
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
    target.mkdir(parents=True, exist_ok=True)
    present = sorted(p.name for p in target.iterdir() if p.name.endswith(".safetensors") or p.name == SAFE_INDEX)
    if present:
        raise ConvertError(
            f"{target} already holds safetensors weights ({', '.join(present)}); writing there would mix two "
            "checkpoints: choose an empty --out folder or remove them"
        )
    say = report or (lambda line: None)
    result = Conversion(target)
    written: list[Path] = []
    names = {p.name: _target(p.name) for p in shards}
    if len(set(names.values())) != len(names):
        raise ConvertError(f"the shards of {source} ({', '.join(names)}) do not map to distinct safetensors names")
    try:
        for shard in shards:
            written.append(_convert_shard(shard, target / names[shard.name], weight_map, result, say))
        sharded = weight_map is not None or len(shards) > 1
        final = [p.with_name(p.name.removesuffix(".incomplete")) for p in written]
        for temporary, path in zip(written, final, strict=True):
            os.replace(temporary, path)
        written = final
        if sharded:
            index = target / SAFE_INDEX
            weights = dict(sorted(result.weight_map.items(), key=lambda item: natural_key(item[0])))
            index.write_text(
                json.dumps({"metadata": {"total_size": result.bytes}, "weight_map": weights}, indent=2) + "\n"
            )
            written.append(index)
            result.index = index.name
            say(f"wrote {index.name}: {len(weights)} tensors in {len(shards)} files")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if target != source:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in COPIED_SUFFIXES and path.name not in (PICKLE_INDEX, SAFE_INDEX):
                shutil.copyfile(path, target / path.name)  # follows symlinks: a cache snapshot's blobs are copied
                result.copied.append(path.name)
        if result.copied:
            say(f"copied {', '.join(result.copied)}")
    return result


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
    temporary = path.with_name(path.name + ".incomplete")
    try:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
        reloaded = load_file(str(temporary))
        if set(reloaded) != set(tensors):
            raise ConvertError(f"{temporary.name} does not hold the tensors just written; disk full or failing?")
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
