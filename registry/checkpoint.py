"""A checkpoint against a card, from the safetensors headers and config.json alone (no torch, no weights read).

    read_checkpoint(DIR)         tensor names, dtypes, shapes, offsets: the first bytes of each file
                                 (8-byte little-endian header length, then the JSON header), sharded or not
    implied_plan(arch, layout)   the checkpoint tensors a card's architecture and layout imply, by decoder tensor
    check_checkpoint(...)        what disagrees: config.json fields, missing, unexpected and mis-shaped tensors,
                                 the parameter count; the same words for `runtime.load` and `validate --weights`

The runtime (runtime/loading.py) loads exactly `implied_plan`, after `check_checkpoint` found no error.

What is read, and the limits (each refusal names the file and what to do; nothing blocks or reads without end):
files are opened and their JSON parsed by registry/reading.py (regular files only, bounded sizes and nesting), and

    MAX_HEADER (100,000,000)      a safetensors header, as the safetensors library itself refuses longer ones
    weight_map                    each entry a plain file name (no path: not absolute, no `/`, `\\`, `..`) of a
                                  *.safetensors (*.bin) file in the folder, as every published index has
    __metadata__                  a safetensors header's metadata: an object of strings (or null), as the safetensors
                                  library requires when it loads the file
    dtypes                        every tensor the decoder reads is stored as F32, F16 or BF16 (converted to the
                                  dtype the model runs in); an integer or other dtype is refused, naming the tensor
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

from modeldeck.registry.decoder import ALIBI_SLOPES, Dim, concrete_tensors, qkv_parts, shape
from modeldeck.registry.diagnostics import ModeldeckError, short, spell
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.params import count_parameters
from modeldeck.registry.reading import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    FileRefusedError,
    open_regular,
    parse_json,
    plain_name,
    read_regular,
)
from modeldeck.registry.schema import Architecture, Card

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER",
    "Checkpoint",
    "CheckpointError",
    "CheckpointProblem",
    "ImpliedTensor",
    "TensorInfo",
    "check_checkpoint",
    "implied_plan",
    "implied_tensors",
    "mismatch_hint",
    "natural_key",
    "read_checkpoint",
    "read_config",
    "read_index",
    "read_safetensors_header",
    "weight_files",
]

DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
}  # fmt: skip
"""Bits per element of each safetensors dtype."""

MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers (its MAX_HEADER_SIZE)
INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
CORRUPT = "the file is truncated or corrupt: download it again"


STORED_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"} | {
    n: n for n in ("float32", "float16", "bfloat16")
}
"""safetensors' dtype names (and a pickle's torch names) of the dtypes the runtime runs in: the dtypes a checkpoint's
weights may be stored in (converted to the dtype the model runs in when it differs)."""
FLOAT_DTYPES = "F32, F16 or BF16 (float32, float16 or bfloat16 in a pickle)"


class CheckpointError(ModeldeckError):
    """A checkpoint that cannot be read, or that does not match its card: one line per problem, then what to do."""

    def __init__(self, directory: Path, problems: list[str], hint: str, headline: str = "does not match the card"):
        self.directory, self.problems, self.hint = directory, problems, hint
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"checkpoint {directory} {headline}:\n{lines}\n{hint}")


def _unreadable(directory: Path, problems: list[str], hint: str) -> CheckpointError:
    return CheckpointError(directory, problems, hint, headline="cannot be read")


# --- reading: headers and config.json ---------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors' name (F16, BF16, F32, ...); a pickle's torch dtype name
    shape: tuple[int, ...]
    file: Path
    offsets: tuple[int, int] | None = None  # data_offsets after the header (None: not a safetensors file)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.offsets is not None:
            return self.offsets[1] - self.offsets[0]
        return self.numel * DTYPE_BITS.get(self.dtype, 0) // 8


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo from a safetensors file's header, checked as strictly as the safetensors library
    checks it (a header of at most MAX_HEADER bytes, `__metadata__` an object of strings, known dtypes, sizes that
    match shapes and fit in 64 bits, contiguous data, a file exactly as long as the header says)."""
    try:
        with open_regular(path.parent, path.name) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER:  # not echoed: the first 8 bytes of something that is not a safetensors file
                raise _bad(path, f"its header length is over the {MAX_HEADER:,} bytes the safetensors library reads")
            if 8 + length > size:
                raise _bad(path, f"its header length says {length:,} bytes, but the file has {size - 8:,} after it")
            raw = f.read(length)
    except FileRefusedError as exc:
        raise _unreadable(path.parent, [exc.line], exc.hint) from None
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    try:
        header = parse_json(raw)
    except ValueError as exc:
        raise _bad(path, f"its header {exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        wrong = (
            next((k for k, v in metadata.items() if not isinstance(v, str)), None)
            if isinstance(metadata, dict)
            else None
        )
        what = f"its value for {short(wrong)} is not a string" if wrong is not None else "it is not an object"
        raise _bad(path, f"__metadata__ must map names to strings (as the safetensors library requires): {what}")
    tensors = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    end = 0
    for info in sorted(tensors.values(), key=lambda t: t.offsets or (0, 0)):
        assert info.offsets is not None
        if info.offsets[0] != end:
            raise _bad(
                path, f"tensor {short(info.name)} starts at byte {info.offsets[0]:,} of the data, expected {end:,}"
            )
        end = info.offsets[1]
    data = size - 8 - length
    if data < end:
        raise _bad(path, f"truncated: its header describes {end:,} bytes of tensor data, the file holds {data:,}")
    if data > end:
        raise _bad(path, f"it holds {data:,} bytes of tensor data, more than the {end:,} its header describes")
    return tensors


def _bad(path: Path, reason: str) -> CheckpointError:
    return _unreadable(path.parent, [f"{path.name} is not a readable safetensors file: {reason}"], CORRUPT)


def _tensor_info(path: Path, name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(path, f"tensor {short(name)}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise _bad(path, f"tensor {short(name)}: unknown dtype {short(dtype)}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _bad(path, f"tensor {short(name)}: shape {short(shape)} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        raise _bad(path, f"tensor {short(name)}: data_offsets {short(offsets)} is not [begin, end]")
    bits = DTYPE_BITS[dtype]
    for n in shape:  # one size at a time: a product of a million sizes is never computed
        bits *= n
        if bits >= 2**64 * 8:
            raise _bad(path, f"tensor {short(name)}: shape {short(shape)} is over 2^64 bytes")
    begin, end = offsets
    if not 0 <= begin <= end or bits % 8 or end - begin != bits // 8:
        raise _bad(
            path,
            f"tensor {short(name)}: {dtype} {short(shape)} needs {bits / 8:g} bytes, data_offsets give {end - begin}",
        )
    return TensorInfo(name, dtype, tuple(shape), path, (begin, end))


def weight_files(directory: Path, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's weight files: safetensors (sharded or not); pickles only when the caller can read them."""
    return _weight_files(directory, allow_pickle)[0]


def _weight_files(directory: Path, allow_pickle: bool) -> tuple[list[Path], str | None, dict[str, str]]:
    """The weight files, the index they came from and its weight_map (None and {}: not sharded)."""
    for index_name, pattern in ((INDEX, "*.safetensors"), (PICKLE_INDEX, "*.bin")):
        if pattern == "*.bin" and not allow_pickle:
            break
        if os.path.lexists(directory / index_name):
            weight_map = read_index(directory, index_name)
            return [directory / shard for shard in sorted(set(weight_map.values()))], index_name, weight_map
        files = sorted(directory.glob(pattern))
        if files:
            return files, None, {}
    bins = sorted(p.name for p in directory.glob("*.bin"))
    if bins:
        raise _unreadable(
            directory,
            [f"no *.safetensors files, only pickle checkpoints: {', '.join(bins)}"],
            "a pickle cannot be inspected or checked without unpickling it, which can run arbitrary code: if you "
            f"trust it, convert it to safetensors with `modeldeck convert {directory} --allow-pickle` "
            f"(or load it with {spell('allow_pickle')})",
        )
    listing = ", ".join(sorted(p.name for p in directory.iterdir())) if directory.is_dir() else "not a folder"
    raise _unreadable(
        directory, [f"no *.safetensors files (it holds: {listing or 'nothing'})"], "give a folder with *.safetensors"
    )


def read_index(directory: Path, name: str) -> dict[str, str]:
    """A sharded checkpoint's weight_map (tensor -> shard file) from `name` (model.safetensors.index.json or
    pytorch_model.bin.index.json), every shard a plain file name of the folder's (*.safetensors or *.bin) that exists.
    Raises CheckpointError naming the index and the entry; never reads a shard."""
    suffix = ".bin" if name == PICKLE_INDEX else ".safetensors"
    try:
        index = parse_json(read_regular(directory, name, MAX_INDEX_BYTES))
    except FileRefusedError as exc:
        raise _unreadable(directory, [exc.line], exc.hint) from None
    except ValueError as exc:
        raise _unreadable(directory, [f"{name} {exc}"], "re-download it") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _unreadable(
            directory, [f"{name} is not a valid index: it has no weight_map of tensor names to files"], "re-download it"
        )
    for tensor, shard in weight_map.items():
        if not (isinstance(shard, str) and plain_name(shard) and shard.endswith(suffix)):
            raise _unreadable(
                directory,
                [
                    f"{name} maps tensor {short(tensor)} to {short(shard)}, which is not the plain file name of a "
                    f"*{suffix} file in the checkpoint folder"
                ],
                f"an index names its shards by file name alone (model-00001-of-00002{suffix}), never by a path: "
                "re-download it",
            )
    missing = sorted({s for s in weight_map.values() if not os.path.lexists(directory / s)})
    if missing:
        raise _unreadable(
            directory, [f"shard {s} listed in {name} is missing" for s in missing], "re-download the checkpoint"
        )
    return weight_map


def read_config(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """config.json as a dict (None if absent), or why it cannot be read."""
    if not os.path.lexists(directory / "config.json"):
        return None, None
    try:
        config = parse_json(read_regular(directory, "config.json", MAX_CONFIG_BYTES))
    except FileRefusedError as exc:
        return None, f"{exc.line}; {exc.hint}"
    except ValueError as exc:
        return None, f"config.json {exc}"
    return (config, None) if isinstance(config, dict) else (None, "config.json is not a JSON object")


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    files: list[Path]
    tensors: dict[str, TensorInfo]  # in natural name order
    config: dict[str, Any] | None = None
    config_error: str | None = None
    index: Path | None = None

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        """Parameters per dtype."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
        return counts

    @property
    def stored_dtype(self) -> str | None:
        """The runtime dtype (float32, float16, bfloat16) most parameters are stored in; None if none is."""
        counts: dict[str, int] = {}
        for name, n in self.dtypes().items():
            if (dtype := STORED_DTYPES.get(name)) is not None:
                counts[dtype] = counts.get(dtype, 0) + n
        return max(counts, key=counts.__getitem__) if counts else None


def read_checkpoint(
    directory: Path, read_pickle: Callable[[Path], Mapping[str, TensorInfo]] | None = None
) -> Checkpoint:
    """The checkpoint's tensors and config.json, from headers only. Pickles (*.bin) are read only through
    `read_pickle` (the runtime's torch reader, when the caller allowed pickles); without it they are refused."""
    directory = Path(directory)
    files, index, weight_map = _weight_files(directory, allow_pickle=read_pickle is not None)
    found: dict[str, TensorInfo] = {}
    for path in files:
        tensors = (
            read_pickle(path) if read_pickle is not None and path.suffix == ".bin" else read_safetensors_header(path)
        )
        for name, info in tensors.items():
            if name in found:
                raise _unreadable(
                    directory,
                    [f"tensor {name} is in both {found[name].file.name} and {path.name}"],
                    "re-download the checkpoint",
                )
            found[name] = info
    wrong = [
        f"{index} puts tensor {name} in {shard}, which does not hold it"
        for name, shard in weight_map.items()
        if name not in found or found[name].file.name != shard
    ]
    if wrong:
        raise _unreadable(directory, wrong[:8], "re-download the checkpoint")
    config, config_error = read_config(directory)
    ordered = {name: found[name] for name in sorted(found, key=natural_key)}
    return Checkpoint(directory, files, ordered, config, config_error, directory / index if index else None)


def natural_key(name: str) -> list[int | str]:
    """Sort key: layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --- what the card implies -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpliedTensor:
    """One checkpoint tensor the card implies, and the decoder tensor (part) it makes."""

    decoder: str  # the decoder's tensor, as a layout template: blocks.{i}.attn.q.weight
    name: str  # the checkpoint's tensor name
    shape: tuple[int, ...]  # as stored in the checkpoint
    dims: tuple[Dim, ...] = dataclass_field(repr=False)  # as stored
    joiner: str = dataclass_field(default=" by ", repr=False)

    @property
    def source(self) -> str:
        """Which card fields imply the shape, e.g. 'architecture.ffn_size by hidden_size'."""
        texts = [d.text for d in self.dims]
        joiner = ", by " if " x " in texts[0] and self.joiner == " by " else self.joiner
        text = joiner.join(texts)
        return f"(architecture.{text[1:]}" if text.startswith("(") else f"architecture.{text}"

    def field_for(self, got: tuple[int, ...]) -> str:
        """The card field behind the first dimension that differs from `got`."""
        differs = [i for i, n in enumerate(self.shape) if i >= len(got) or got[i] != n]
        return f"architecture.{self.dims[min(differs[0] if differs else 0, len(self.dims) - 1)].field}"


def implied_plan(arch: Architecture, layout: CheckpointLayout) -> dict[str, list[ImpliedTensor]]:
    """Decoder tensor -> the checkpoint tensors that make it (three for `separate` q/k/v, else one), plus
    'alibi_slopes' [heads, 1] when an ALiBi card's layout stores them. Raises ModeldeckError if the layout
    has no name for a tensor the architecture needs."""
    plan: dict[str, list[ImpliedTensor]] = {}
    for name, block, spec in concrete_tensors(arch):
        parts = qkv_parts(spec) if layout.qkv == "separate" and ".attn.qkv." in spec.name else [spec]
        sources = []
        for part in parts:
            if part.name not in layout.tensors:
                raise ModeldeckError(
                    f"checkpoint layout {layout.name!r} has no tensor for the decoder's {part.name}: does the card's "
                    "architecture (bias, mlp, residual.shared_norm, tied_embeddings) fit this layout?"
                )
            stored = tuple(reversed(part.dims)) if part.name in layout.transposed else part.dims
            checkpoint_name = layout.checkpoint_name(part.name, block)
            sources.append(ImpliedTensor(part.name, checkpoint_name, shape(arch, stored), stored, spec.joiner))
        plan[name] = sources
    if ALIBI_SLOPES.present(arch) and ALIBI_SLOPES.name in layout.tensors:
        stored_slopes = layout.tensors[ALIBI_SLOPES.name]
        plan[ALIBI_SLOPES.name] = [ImpliedTensor(ALIBI_SLOPES.name, stored_slopes, (arch.heads, 1), ALIBI_SLOPES.dims)]
    return plan


def implied_tensors(arch: Architecture, layout: CheckpointLayout) -> dict[str, ImpliedTensor]:
    """Checkpoint tensor name -> what the card implies about it (every tensor a matching checkpoint holds, except
    a tied LM head's copy and the layout's ignored buffers, which it may hold)."""
    return {t.name: t for sources in implied_plan(arch, layout).values() for t in sources}


# --- comparing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointProblem:
    severity: Literal["error", "warning", "info"]
    message: str
    field: str | None = None  # the card field concerned (architecture.ffn_size)
    file: Path | None = None  # where in the checkpoint (a weight file, config.json, or the folder)


def mismatch_hint(card: Card, layout: CheckpointLayout) -> str:
    return (
        f"check that these weights belong to card {card.id!r} (layout {layout.name!r}) and fix the card or the weights"
    )


def _listed(names: list[str]) -> str:
    return f"({len(names)}): {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"


def check_checkpoint(card: Card, layout: CheckpointLayout, checkpoint: Checkpoint) -> list[CheckpointProblem]:
    """Every disagreement between card and checkpoint: config.json first (the clearest summary of a wrong card),
    then missing, unexpected and mis-shaped tensors, then the parameter count (an info line when it agrees)."""
    arch, directory, headers = card.architecture, checkpoint.directory, checkpoint.tensors
    problems = _config_problems(card, layout, checkpoint)
    try:
        wanted = implied_tensors(arch, layout)
    except ModeldeckError as exc:
        return [*problems, CheckpointProblem("error", str(exc), "architecture.checkpoint_layout")]
    ignored = tuple(layout.ignored)
    tied_head = layout.tensors.get("lm_head.weight") if arch.tied_embeddings else None
    missing = sorted(set(wanted) - set(headers), key=natural_key)
    if missing:
        problems.append(CheckpointProblem("error", f"missing tensors {_listed(missing)}", None, directory))
    unexpected = sorted(
        (n for n in set(headers) - set(wanted) - {tied_head} if not n.endswith(ignored)), key=natural_key
    )
    if unexpected:
        message = (
            f"unexpected tensors {_listed(unexpected)} "
            "(does the card's architecture.bias or tied_embeddings match the checkpoint?)"
        )
        problems.append(CheckpointProblem("error", message, None, directory))
    shapes = [
        CheckpointProblem(
            "error",
            f"tensor {name}: expected shape {list(t.shape)} ({t.source}), got {list(headers[name].shape)}"
            + _transposed_hint(layout, t.decoder, t.shape, headers[name].shape),
            t.field_for(headers[name].shape),
            headers[name].file,
        )
        for name, t in sorted(wanted.items(), key=lambda item: natural_key(item[0]))
        if name in headers and headers[name].shape != t.shape
    ]
    problems += shapes[:4]
    if len(shapes) > 4:
        problems.append(CheckpointProblem("error", f"... and {len(shapes) - 4} more tensors of other shapes"))
    dtypes = [
        CheckpointProblem(
            "error",
            f"tensor {name}: stored as {headers[name].dtype}, expected {FLOAT_DTYPES}: the decoder's weights are "
            "floating point, converted between these three only",
            None,
            headers[name].file,
        )
        for name in sorted(wanted, key=natural_key)
        if name in headers and headers[name].dtype not in STORED_DTYPES
    ]
    problems += dtypes[:4]
    if len(dtypes) > 4:
        problems.append(CheckpointProblem("error", f"... and {len(dtypes) - 4} more tensors of other dtypes"))
    return problems + _parameter_problems(card, layout, wanted, checkpoint)


def _transposed_hint(layout: CheckpointLayout, part: str, expected: tuple[int, ...], got: tuple[int, ...]) -> str:
    if len(got) != 2 or tuple(reversed(got)) != expected:
        return ""
    if part in layout.transposed:
        return f" - stored as [out, in]; layout {layout.name!r} stores this weight [in, out] (GPT-2 Conv1D)"
    return f" - stored as [in, out]; layout {layout.name!r} stores this weight [out, in] (nn.Linear)"


def _config_problems(card: Card, layout: CheckpointLayout, checkpoint: Checkpoint) -> list[CheckpointProblem]:
    path = checkpoint.directory / "config.json"
    if checkpoint.config_error:
        return [CheckpointProblem("error", checkpoint.config_error, None, path)]
    config = checkpoint.config
    if config is None:
        return [CheckpointProblem("warning", "no config.json: its fields are not checked against the card", None, path)]
    problems = []
    model_type = config.get("model_type")
    if model_type is not None and model_type not in layout.config_model_types:
        message = (
            f"config.json model_type {model_type!r} is not one the {layout.name!r} layout reads "
            f"({', '.join(layout.config_model_types)})"
        )
        problems.append(CheckpointProblem("error", message, "architecture.checkpoint_layout", path))
    for m in layout.config_mismatches(card.architecture, config):
        problems.append(CheckpointProblem("error", m.describe(), None if m.field == "(unsupported)" else m.field, path))
    return problems


def _parameter_problems(
    card: Card, layout: CheckpointLayout, wanted: dict[str, ImpliedTensor], checkpoint: Checkpoint
) -> list[CheckpointProblem]:
    """The checkpoint's parameters (every tensor but the layout's ignored buffers and a tied head's copy) against
    the architecture's count (registry/params.py) plus what the checkpoint stores beyond it (ALiBi slopes)."""
    arch, stated = card.architecture, card.parameters
    tied_head = layout.tensors.get("lm_head.weight") if arch.tied_embeddings else None
    ignored = tuple(layout.ignored)
    held = sum(t.numel for name, t in checkpoint.tensors.items() if name != tied_head and not name.endswith(ignored))
    computed = count_parameters(arch).total
    extras = {
        n: checkpoint.tensors[n] for n, t in wanted.items() if t.decoder == "alibi_slopes" and n in checkpoint.tensors
    }
    extra = sum(t.numel for t in extras.values())
    stored = " + ".join(f"{t.numel:,} stored extra ({n} {list(t.shape)}: ALiBi slopes)" for n, t in extras.items())
    explained = f"{computed:,} from the card's architecture" + (f" + {stored}" if stored else "")
    if held != computed + extra:
        message = (
            f"parameter count: the checkpoint holds {held:,}, expected {explained}, "
            f"difference {held - computed - extra:+,}"
        )
        return [CheckpointProblem("error", message, None, checkpoint.directory)]
    found = [
        CheckpointProblem(
            "info", f"parameter count: the checkpoint holds {held:,} = {explained}", None, checkpoint.directory
        )
    ]
    if stated.stored_extra != extra and (stated.stated is not None or stated.stored_extra):
        found.append(
            CheckpointProblem(
                "warning",
                f"the card's parameters.stored_extra is {stated.stored_extra:,}, the checkpoint stores {extra:,} "
                "parameters beyond the architecture",
                "parameters.stored_extra",
                checkpoint.directory,
            )
        )
    return found
