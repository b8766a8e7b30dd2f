"""Checkpoint -> Decoder: check everything from the headers first, then assign tensors into a meta-built model.

    1. read config.json and the safetensors headers (sharded or not): names, shapes, dtypes;
    2. compare with what the card's architecture and checkpoint layout imply: missing, unexpected and
       mis-shaped tensors, config.json fields: every problem in one error, before any weight is read;
    3. build the Decoder on the meta device, read each tensor (memory-mapped), reorder fused QKV
       rows to [q | k | v], convert to the requested dtype once, and `load_state_dict(assign=True)`;
    4. hand each linear layer to its kernel (runtime/kernels.py: oneDNN on the CPU, int8 when asked).

Steps 1 and 2 are the registry's (registry/checkpoint.py, torch-free: `modeldeck inspect` and `modeldeck validate
--weights` run the same code and report the same words); this module reads pickles (with torch, when allowed),
checks that the registry's plan is exactly the decoder's state_dict, and converts the tensors.

Nothing half-loaded survives an error: the model only exists once every tensor is in place.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from modeldeck.registry.checkpoint import (
    CORRUPT,
    Checkpoint,
    CheckpointError,
    ImpliedTensor,
    TensorInfo,
    check_checkpoint,
    implied_plan,
    mismatch_hint,
    read_checkpoint,
)
from modeldeck.registry.decoder import decoder_tensors, default_precision
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.reading import FileRefusedError
from modeldeck.registry.schema import Architecture, Card
from modeldeck.runtime.convert import ConvertError, read_pickle
from modeldeck.runtime.kernels import packs, prepare_weight, split_half, use_kernels
from modeldeck.runtime.model import Decoder, alibi_slopes

__all__ = ["CheckpointError", "load_decoder", "read_checkpoint_with_pickles"]


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin through the one pickle reader (runtime/convert.py), its refusal as a CheckpointError."""
    try:
        return read_pickle(path)
    except FileRefusedError as exc:
        raise CheckpointError(path.parent, [exc.line], exc.hint, headline="cannot be read") from None
    except ConvertError as exc:
        raise CheckpointError(path.parent, [str(exc)], "re-download it", headline="cannot be read") from None


def read_checkpoint_with_pickles(
    directory: Path, allow_pickle: bool = False, opened: dict[Path, dict[str, torch.Tensor]] | None = None
) -> Checkpoint:
    """registry.checkpoint.read_checkpoint, reading pytorch_model*.bin with torch's weights-only unpickler when
    allowed (the registry never unpickles). A pickle must be opened to describe it: its tensors are kept in
    `opened` (file -> tensors) so that loading does not unpickle it a second time."""
    opened = {} if opened is None else opened

    def describe(path: Path) -> dict[str, TensorInfo]:
        opened[path] = _load_pickle(path)
        return {
            name: TensorInfo(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), path)
            for name, t in opened[path].items()
        }

    return read_checkpoint(directory, describe if allow_pickle else None)


def _plan(card: Card, layout: CheckpointLayout, decoder: Decoder) -> dict[str, list[ImpliedTensor]]:
    """The registry's plan (decoder tensor -> checkpoint tensors), checked to be exactly this decoder's state_dict."""
    plan = implied_plan(card.architecture, layout)
    ours = {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    if decoder_tensors(card.architecture) != ours or set(plan) - {"alibi_slopes"} != set(ours):
        differ = sorted(set(decoder_tensors(card.architecture).items()) ^ set(ours.items()))[:4]
        raise ModeldeckError(
            f"internal error: registry/checkpoint.py and the decoder disagree on the tensors of card {card.id!r} "
            f"({differ}); this is a bug in modeldeck: please report it"
        )
    return plan


def _check(card: Card, layout: CheckpointLayout, checkpoint: Checkpoint) -> None:
    """Every disagreement between card and checkpoint in one error (registry/checkpoint.py decides what they are)."""
    problems = [p.message for p in check_checkpoint(card, layout, checkpoint) if p.severity == "error"]
    if problems:
        raise CheckpointError(checkpoint.directory, problems, mismatch_hint(card, layout))


# --- assembling the decoder ----------------------------------------------------------------------


def _reorder_qkv(tensor: torch.Tensor, layout: CheckpointLayout, arch: Architecture, out: torch.Tensor) -> None:
    """Fused QKV rows (weight [rows, in] or bias [rows]) in the checkpoint's order, written into `out` as
    [q heads | k heads | v heads] (a strided copy: `out` in the tensor's dtype is the fast case)."""
    rest = tensor.shape[1:]
    heads, kv, dim = arch.heads, arch.kv_heads, arch.head_dim
    q_out, k_out, v_out = torch.split(out, [heads * dim, kv * dim, kv * dim])
    if layout.qkv == "per_head":
        t = tensor.view(heads, 3, dim, *rest)  # [H, 3, D, ...]
        q, k, v = t[:, 0], t[:, 1], t[:, 2]
    else:  # grouped
        t = tensor.view(kv, heads // kv + 2, dim, *rest)  # [KV, H/KV + 2, D, ...]
        q, k, v = t[:, :-2], t[:, -2], t[:, -1]
    q_out.view(q.shape).copy_(q)
    k_out.view(k.shape).copy_(k)
    v_out.view(v.shape).copy_(v)


def cast(tensor: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """`tensor` in `dtype` (written into `out` when given). Between float16 and bfloat16 it goes through fp32 in
    row blocks that stay in cache: torch's direct cast between the two is scalar code, several times slower than
    its two vectorized casts."""
    halves = {tensor.dtype, dtype} == {torch.float16, torch.bfloat16}
    if not halves or tensor.dim() == 0 or tensor.device.type != "cpu":
        return tensor.to(dtype) if out is None else out.copy_(tensor)
    out = torch.empty(tensor.shape, dtype=dtype) if out is None else out
    rows_in, rows_out = tensor.reshape(-1, tensor.shape[-1]), out.view(-1, tensor.shape[-1])  # [N, C] each
    step = max(1, 2**18 // rows_in.shape[1])  # 1 MiB of fp32 per block
    block = torch.empty(min(step, rows_in.shape[0]), rows_in.shape[1], dtype=torch.float32)
    for first in range(0, rows_in.shape[0], step):
        part = rows_in[first : first + step]
        rows_out[first : first + step].copy_(block[: part.shape[0]].copy_(part))
    return out


def _convert(
    tensor: torch.Tensor,
    template: str,
    layout: CheckpointLayout,
    arch: Architecture,
    dtype: torch.dtype,
    device: torch.device,
    scratch: Callable[[torch.Size, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A checkpoint tensor as the decoder's: transposed and/or QKV-reordered, in `dtype` on `device`, copied once
    (a QKV that changes dtype: twice) or not at all (a memory-mapped tensor already in the right dtype, layout and
    device is used as it is). With `scratch` (shape, slot -> a reusable buffer in `dtype`), the copies go there:
    for a weight that its kernel copies again (packs) as soon as this returns."""

    def fresh(shape: torch.Size, slot: int) -> torch.Tensor:
        return scratch(shape, slot) if scratch is not None else torch.empty(shape, dtype=dtype, device=device)

    if template in layout.transposed:
        tensor = tensor.t()
    moved = tensor.device != device
    if template.startswith("blocks.{i}.attn.qkv.") and layout.qkv in ("per_head", "grouped"):
        if moved:  # converted whole, then reordered within one dtype: a strided copy that converts is slower
            tensor = tensor.to(device=device, dtype=dtype)
        elif tensor.dtype != dtype:
            tensor = cast(tensor, dtype, fresh(tensor.shape, 1))
        out = fresh(tensor.shape, 0)
        _reorder_qkv(tensor, layout, arch, out)
        return out
    if tensor.is_contiguous() and (tensor.dtype == dtype or moved):
        return tensor.to(device=device, dtype=dtype)  # the mapped file's tensor itself when nothing changes
    if tensor.is_contiguous():
        return cast(tensor, dtype, fresh(tensor.shape, 0))
    return fresh(tensor.shape, 0).copy_(tensor)


def _open_tensors(checkpoint: Checkpoint, opened: dict[Path, dict[str, torch.Tensor]]) -> Callable[[str], torch.Tensor]:
    """A reader of tensors by name across all shards. Each file is memory-mapped once as a whole
    (safetensors' load_file), which converts much faster than opening tensors one by one; pickles were
    opened (memory-mapped) when the checkpoint was read."""
    files: dict[Path, dict[str, torch.Tensor]] = {}
    for path in checkpoint.files:
        if path.suffix == ".bin":
            files[path] = opened[path] if path in opened else _load_pickle(path)
            continue
        try:
            files[path] = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:  # changed on disk since its header was checked
            raise CheckpointError(
                checkpoint.directory,
                [f"{path.name} is not a readable safetensors file: {exc}"],
                CORRUPT,
                headline="cannot be read",
            ) from None
    return lambda name: files[checkpoint.tensors[name].file][name]


class _Scratch(threading.local):
    """Per-thread buffers in one dtype, reused from tensor to tensor (fresh memory for each would fault in every
    page again)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.buffers: dict[int, torch.Tensor] = {}

    def take(self, shape: torch.Size, slot: int) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[slot] = torch.empty(size, dtype=self.dtype, device=self.device)
        return buffer[:size].view(shape)


def load_decoder(
    card: Card,
    layout: CheckpointLayout,
    directory: Path,
    dtype: torch.dtype | None,
    device: torch.device,
    allow_pickle: bool = False,
    quantize: str | None = None,
) -> Decoder:
    """The decoder with the checkpoint's weights, in `dtype` (None: registry/decoder.default_precision for this
    checkpoint and device; `decoder.precision` says why), each linear layer run by its kernel (runtime/kernels.py;
    `quantize="int8"`: int8 weights)."""
    arch = card.architecture
    with torch.device("meta"):
        decoder = Decoder(arch)
    plan = _plan(card, layout, decoder)
    opened: dict[Path, dict[str, torch.Tensor]] = {}
    checkpoint = read_checkpoint_with_pickles(directory, allow_pickle, opened)
    _check(card, layout, checkpoint)
    decoder.precision = "asked for"
    defaulted = dtype is None
    if dtype is None:
        precision = default_precision(device.type, card.dtype, checkpoint.stored_dtype)
        dtype = None if precision.dtype is None else getattr(torch, precision.dtype)
        decoder.precision = precision.reason
    linear = {f"{name}.weight" for name, module in decoder.named_modules() if isinstance(module, torch.nn.Linear)}
    get = _open_tensors(checkpoint, opened)
    if "alibi_slopes" in plan:
        decoder.alibi = _checked_slopes(get(plan["alibi_slopes"][0].name), arch.heads, plan["alibi_slopes"][0].name,
                                        directory)  # fmt: skip
    names = [name for name in plan if name != "alibi_slopes"]
    chosen = dtype or get(plan[names[0]][0].name).dtype  # the first tensor's dtype stands for the checkpoint's
    stored = getattr(torch, checkpoint.stored_dtype or "float32")
    linear_bytes = sum(2 * math.prod(t.shape) for name, t in decoder.state_dict().items() if name in linear)
    split = quantize is None and defaulted and split_half(stored, chosen, device, linear_bytes)
    products = chosen  # the dtype of linear weights (and biases) as their kernels hold them
    if split:  # float16 as stored; prompts' and batches' products in bf16 (runtime/kernels.py SplitHalfLinear)
        chosen, products = torch.float16, torch.bfloat16
        decoder.precision = (
            "a float16 checkpoint, run as stored; prompts and batches multiply a packed bfloat16 copy of the linear "
            "weights: this CPU streams one row faster from fp16 (measured at load) and computes many rows faster in "
            f"bf16 (AVX-512 BF16/AMX); the copy costs {linear_bytes / 2**30:.2f} GiB; dtype='bfloat16' for one copy"
        )
    biases = {name.removesuffix(".weight") + ".bias" for name in linear} & set(names) if split else set()
    halves: dict[str, torch.Tensor] = {}  # split: the float16 weights and biases of the linear layers
    scratch = _Scratch(products, device) if packs(products, device, quantize) else None

    def load_one(name: str) -> torch.Tensor:
        sources = plan[name]
        parts = [get(source.name) for source in sources]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        template = sources[0].decoder
        if split and (name in linear or name in biases):  # as stored too (a copy only where reordered)
            halves[name] = _convert(tensor, template, layout, arch, torch.float16, device)
        if name in biases:
            return _convert(tensor, template, layout, arch, products, device)
        if name not in linear:
            return _convert(tensor, template, layout, arch, chosen, device)
        if quantize is not None:  # quantized from the checkpoint's own values (use_kernels), not a rounded copy
            return _convert(tensor, template, layout, arch, tensor.dtype, device)
        into = None if scratch is None else scratch.take  # a weight that packing copies: converted into scratch
        return prepare_weight(_convert(tensor, template, layout, arch, products, device, into), quantize)

    # Converting and packing run in torch's kernels, which release the GIL but keep little more than one core busy
    # each: tensors go through a few threads at once (a thread's scratch is freed as the pool's threads end).
    with ThreadPoolExecutor(max_workers=max(1, min(2, torch.get_num_threads()))) as pool:
        state = dict(zip(names, pool.map(load_one, names), strict=True))
    decoder.load_state_dict(state, strict=True, assign=True)
    decoder.requires_grad_(False)  # inference only
    state.clear()  # the decoder holds the tensors now; a kernel that copies one frees the original
    use_kernels(decoder, quantize, halves)
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
