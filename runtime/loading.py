"""Checkpoint -> Decoder: check everything from the headers first, then assign tensors into a meta-built model.

    1. read config.json and the safetensors headers (sharded or not): names, shapes, dtypes;
    2. compare with what the card's architecture and checkpoint layout imply: missing, unexpected and
       mis-shaped tensors, config.json fields: every problem in one error, before any weight is read;
    3. build the Decoder on the meta device, read each tensor (memory-mapped), reorder fused QKV
       rows to [q | k | v], convert to the requested dtype once, and `load_state_dict(assign=True)`.

Nothing half-loaded survives an error: the model only exists once every tensor is in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.schema import Architecture, Card
from modeldeck.runtime.model import Decoder, alibi_slopes

__all__ = ["CheckpointError", "load_decoder", "read_headers"]


class CheckpointError(ModeldeckError):
    def __init__(self, directory: Path, problems: list[str], hint: str):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"checkpoint {directory} does not match the card:\n{lines}\n{hint}")


def _weight_files(directory: Path, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's weight files: safetensors (sharded or not); pickles only when the caller opted in."""
    for index_name, pattern in (
        ("model.safetensors.index.json", "*.safetensors"),
        ("pytorch_model.bin.index.json", "*.bin"),
    ):
        if pattern == "*.bin" and not allow_pickle:
            break
        index = directory / index_name
        if index.exists():
            return _shards(directory, index)
        files = sorted(directory.glob(pattern))
        if files:
            return files
    bins = sorted(p.name for p in directory.glob("*.bin"))
    hint = (
        "it holds only pickle checkpoints, which can run code when loaded: convert them to safetensors, "
        "or pass allow_pickle=True if you trust them"
        if bins
        else "point weights= at a folder with config.json and *.safetensors"
    )
    raise CheckpointError(directory, [f"no *.safetensors files (found: {', '.join(bins) or 'none'})"], hint)


def _shards(directory: Path, index: Path) -> list[Path]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(directory, [f"{index.name} is not a valid index ({exc})"], "re-download it") from None
    missing = [s for s in shards if not (directory / s).exists()]
    if missing:
        raise CheckpointError(
            directory, [f"shard {s} listed in {index.name} is missing" for s in missing], "re-download the checkpoint"
        )
    return [directory / s for s in shards]


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin, memory-mapped, with torch's weights-only unpickler (no arbitrary objects)."""
    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        raise CheckpointError(
            path.parent, [f"{path.name} cannot be read as weights: {exc}"], "re-download it"
        ) from None
    return state


def read_headers(directory: Path, allow_pickle: bool = False) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name -> (file, shape): from the safetensors headers only (pickles must be opened)."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in _weight_files(directory, allow_pickle):
        if path.suffix == ".bin":
            found.update((name, (path, tuple(t.shape))) for name, t in _load_pickle(path).items())
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    found[name] = (path, tuple(f.get_slice(name).get_shape()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                directory,
                [f"{path.name} is not a readable safetensors file: {exc}"],
                "the file is truncated or corrupt: download it again",
            ) from None
    return found


# --- what the card implies -------------------------------------------------------------------------

_SHAPE_SOURCES = {
    "embed": "architecture.vocab_size x hidden_size",
    "lm_head": "architecture.vocab_size x hidden_size",
    "norm": "architecture.hidden_size",
    "attn.qkv": "(architecture.heads + 2 kv_heads) x head_dim, by hidden_size",
    "attn.q": "architecture.heads x head_dim, by hidden_size",
    "attn.k": "architecture.kv_heads x head_dim, by hidden_size",
    "attn.v": "architecture.kv_heads x head_dim, by hidden_size",
    "attn.out": "architecture.hidden_size by heads x head_dim",
    "mlp.up": "architecture.ffn_size by hidden_size",
    "mlp.gate": "architecture.ffn_size by hidden_size",
    "mlp.down": "architecture.hidden_size by ffn_size",
    "alibi": "architecture.heads",
}


def _why(decoder_name: str) -> str:
    """Which card fields imply a tensor's shape (a bias has only the first dimension)."""
    why = next((why for key, why in _SHAPE_SOURCES.items() if key in decoder_name), "architecture")
    return why.split(" by ")[0].removesuffix(",") if decoder_name.endswith(".bias") else why


def _natural(name: str) -> list[int | str]:
    """Sort key: layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _template(name: str) -> tuple[str, int | None]:
    match = re.match(r"blocks\.(\d+)\.(.*)", name)
    return (f"blocks.{{i}}.{match[2]}", int(match[1])) if match else (name, None)


def _sources(
    layout: CheckpointLayout, arch: Architecture, name: str, shape: tuple[int, ...]
) -> list[tuple[str, str, tuple[int, ...]]]:
    """The checkpoint tensors that make decoder tensor `name`: (decoder part, checkpoint name, checkpoint shape)."""
    template, block = _template(name)
    if layout.qkv == "separate" and template.startswith("blocks.{i}.attn.qkv."):
        param = template.rsplit(".", 1)[1]
        rows = {"q": arch.heads * arch.head_dim, "k": arch.kv_heads * arch.head_dim, "v": arch.kv_heads * arch.head_dim}
        return [
            (
                f"blocks.{{i}}.attn.{part}.{param}",
                layout.checkpoint_name(f"blocks.{{i}}.attn.{part}.{param}", block),
                (n, *shape[1:]),
            )
            for part, n in rows.items()
        ]
    if template not in layout.tensors:
        raise ModeldeckError(f"checkpoint layout {layout.name!r} has no tensor for the decoder's {template}")
    stored = tuple(reversed(shape)) if template in layout.transposed else shape
    return [(template, layout.checkpoint_name(template, block), stored)]


def _plan(card: Card, layout: CheckpointLayout, decoder: Decoder) -> dict[str, list[tuple[str, str, tuple[int, ...]]]]:
    plan = {name: _sources(layout, card.architecture, name, tuple(t.shape)) for name, t in decoder.state_dict().items()}
    if decoder.alibi is not None and "alibi_slopes" in layout.tensors:
        plan["alibi_slopes"] = [("alibi_slopes", layout.tensors["alibi_slopes"], (card.architecture.heads, 1))]
    return plan


def _check(
    card: Card, layout: CheckpointLayout, directory: Path, plan: dict[str, Any], headers: dict[str, Any]
) -> None:
    """Every disagreement between card and checkpoint, config.json first (the clearest summary), then tensors."""
    problems = _config_problems(card, layout, directory)
    wanted = {ckpt: (part, shape) for sources in plan.values() for part, ckpt, shape in sources}
    missing = sorted(set(wanted) - set(headers), key=_natural)
    if missing:
        problems.append(
            f"missing tensors ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    tied_head = layout.tensors.get("lm_head.weight") if card.architecture.tied_embeddings else None
    unexpected = sorted(
        (n for n in set(headers) - set(wanted) - {tied_head} if not n.endswith(tuple(layout.ignored))), key=_natural
    )
    if unexpected:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''} "
            "(does the card's architecture.bias or tied_embeddings match the checkpoint?)"
        )
    shapes = [
        f"tensor {ckpt}: expected shape {list(shape)} ({_why(part)}), got {list(headers[ckpt][1])}"
        + _transposed_hint(layout, part, shape, headers[ckpt][1])
        for ckpt, (part, shape) in sorted(wanted.items(), key=lambda item: _natural(item[0]))
        if ckpt in headers and headers[ckpt][1] != shape
    ]
    problems += shapes[:4] + ([f"... and {len(shapes) - 4} more tensors of other shapes"] if len(shapes) > 4 else [])
    if problems:
        raise CheckpointError(
            directory,
            problems,
            f"check that these weights belong to card {card.id!r} (layout {layout.name!r}) and fix the card or the weights",
        )


def _transposed_hint(layout: CheckpointLayout, part: str, expected: tuple[int, ...], got: tuple[int, ...]) -> str:
    if len(got) != 2 or tuple(reversed(got)) != expected:
        return ""
    if part in layout.transposed:
        return f" - stored as [out, in]; layout {layout.name!r} stores this weight [in, out] (GPT-2 Conv1D)"
    return f" - stored as [in, out]; layout {layout.name!r} stores this weight [out, in] (nn.Linear)"


def _config_problems(card: Card, layout: CheckpointLayout, directory: Path) -> list[str]:
    path = directory / "config.json"
    if not path.exists():
        return []
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"config.json is not valid JSON: {exc}"]
    problems = []
    model_type = config.get("model_type")
    if model_type is not None and model_type not in layout.config_model_types:
        problems.append(
            f"config.json model_type {model_type!r} is not one the {layout.name!r} layout reads "
            f"({', '.join(layout.config_model_types)})"
        )
    return problems + [m.describe() for m in layout.config_mismatches(card.architecture, config)]


# --- assembling the decoder ----------------------------------------------------------------------


def _reorder_qkv(tensor: torch.Tensor, layout: CheckpointLayout, arch: Architecture, out: torch.Tensor) -> None:
    """Fused QKV rows (weight [rows, in] or bias [rows]) in the checkpoint's order, written into `out` as
    [q heads | k heads | v heads]: one pass that also converts the dtype (no intermediate copies)."""
    rest = tensor.shape[1:]
    heads, kv, dim = arch.heads, arch.kv_heads, arch.head_dim
    q_out, k_out, v_out = out.split([heads * dim, kv * dim, kv * dim])
    if layout.qkv == "per_head":
        t = tensor.view(heads, 3, dim, *rest)  # [H, 3, D, ...]
        q, k, v = t[:, 0], t[:, 1], t[:, 2]
    else:  # grouped
        t = tensor.view(kv, heads // kv + 2, dim, *rest)  # [KV, H/KV + 2, D, ...]
        q, k, v = t[:, :-2], t[:, -2], t[:, -1]
    q_out.view(q.shape).copy_(q)
    k_out.view(k.shape).copy_(k)
    v_out.view(v.shape).copy_(v)


def _convert(
    tensor: torch.Tensor,
    template: str,
    layout: CheckpointLayout,
    arch: Architecture,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A checkpoint tensor as the decoder's: transposed and/or QKV-reordered, in `dtype` on `device`, copied once
    (or not at all: a memory-mapped tensor already in the right dtype, layout and device is used as it is)."""
    if template in layout.transposed:
        tensor = tensor.t()
    if template.startswith("blocks.{i}.attn.qkv.") and layout.qkv in ("per_head", "grouped"):
        out = torch.empty(tensor.shape, dtype=dtype, device=device)
        _reorder_qkv(tensor.to(device), layout, arch, out)
        return out
    if tensor.is_contiguous():
        return tensor.to(device=device, dtype=dtype)
    return torch.empty(tensor.shape, dtype=dtype, device=device).copy_(tensor)


def _open_tensors(headers: dict[str, tuple[Path, tuple[int, ...]]]) -> Callable[[str], torch.Tensor]:
    """A reader of tensors by name across all shards. Each file is memory-mapped once as a whole
    (safetensors' load_file), which converts much faster than opening tensors one by one."""
    files: dict[Path, dict[str, torch.Tensor]] = {}
    for path, _ in headers.values():
        if path not in files:
            files[path] = _load_pickle(path) if path.suffix == ".bin" else load_file(str(path), device="cpu")
    return lambda name: files[headers[name][0]][name]


def load_decoder(
    card: Card,
    layout: CheckpointLayout,
    directory: Path,
    dtype: torch.dtype | None,
    device: torch.device,
    allow_pickle: bool = False,
) -> Decoder:
    """The decoder with the checkpoint's weights, in `dtype` (None: the checkpoint's own)."""
    arch = card.architecture
    with torch.device("meta"):
        decoder = Decoder(arch)
    plan = _plan(card, layout, decoder)
    headers = read_headers(directory, allow_pickle)
    _check(card, layout, directory, plan, headers)
    state: dict[str, torch.Tensor] = {}
    get = _open_tensors(headers)
    for name, sources in plan.items():
        parts = [get(ckpt) for _, ckpt, _ in sources]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        if name == "alibi_slopes":
            decoder.alibi = _checked_slopes(tensor, arch.heads, layout.tensors[name], directory)
            continue
        dtype = dtype or tensor.dtype  # the first tensor's dtype stands for the checkpoint's
        state[name] = _convert(tensor, sources[0][0], layout, arch, dtype, device)
    decoder.load_state_dict(state, strict=True, assign=True)
    if decoder.alibi is not None:
        decoder.alibi = decoder.alibi.to(device)
    return decoder.eval()


def _checked_slopes(stored: torch.Tensor, heads: int, tensor_name: str, directory: Path) -> torch.Tensor:
    """A checkpoint's ALiBi slopes [H] (fp32), if they are the standard slopes as rounded to the stored dtype.

    The stored copy is what the original implementation multiplies with (an nn.Parameter loaded from the
    checkpoint), so it is the one used: for a bfloat16 checkpoint it differs from the exact slopes by up
    to 2^-9 relative, which moves a bias of -30 by 0.06."""
    expected = alibi_slopes(heads)
    got = stored.detach().float().flatten().cpu()
    tolerance = torch.finfo(stored.dtype).eps if stored.dtype.is_floating_point else 0.0
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=0.0):
        worst = int((got - expected).abs().argmax()) if got.shape == expected.shape else 0
        raise CheckpointError(
            directory,
            [
                f"tensor {tensor_name} holds ALiBi slopes that are not the standard ones for {heads} heads: "
                f"head {worst} has {got[worst].item():.6g}, expected {expected[worst].item():.6g} "
                f"(2^(-8(h+1)/H) and the interleave for head counts that are not powers of two; stored "
                f"{stored.dtype})"
            ],
            "the checkpoint uses different ALiBi slopes (or another head count than the card's architecture.heads); "
            "modeldeck computes positions from the standard slopes only",
        )
    return got
