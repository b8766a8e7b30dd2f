"""Products with a weight matrix: the one place that decides which kernel runs each linear layer.

After loading, `use_kernels` swaps every nn.Linear of the decoder (and a tied LM head) for the fastest kernel
torch offers for its device, dtype and quantization:

    device, weights     kernel                                                  weights held
    cpu, float32        oneDNN linear on the dense weight (mkldnn _linear_pointwise)  the loaded tensor (no copy)
    cpu, bfloat16       oneDNN linear on a weight packed once as it loads (where oneDNN has bf16: AVX-512 and up);
                        by default, a float16 checkpoint runs in fp16 with this packed copy for prompts and
                        batches where torch's fp16 GEMV is measured faster for one row and memory holds both
                        copies (SplitHalfLinear)
    cpu, float16        F.linear: torch's fp16 GEMV is fast for one token, but without AVX-512 FP16 nothing packs
                        fp16 and its matrix-matrix products are slow (registry/decoder.default_precision avoids it)
    cuda, mps           F.linear (cuBLAS / Metal)
    cpu, int8           FBGEMM's dynamic int8 linear (x86): weights packed once, each call quantizes its input
                        to 8 bits with one scale (as llama.cpp's q8_0 quantizes activations, there per 32
                        values) and multiplies in int32 (VNNI where the CPU has it), in float32
    int8 elsewhere      torch._weight_int8pack_mm: int8 weights [out, in], one scale per output row,
                        activations in bfloat16 (its fp32 and fp16 paths are many times slower on CPUs)

Why not F.linear everywhere on the CPU: for fp32 it calls MKL's sgemm, which streams a [out, in] weight far below
the memory bandwidth for one or a few rows; for bf16 it re-packs the weight on every call. benchmarks/decode.py
measures each kernel's pass over the weights in the same run as the engines (its `kernels` table).

int8 is weight-only, symmetric, per output channel: w ≈ scale[o] · q[o, i] with q in [-127, 127] and
scale[o] = max_i |w[o, i]| / 127 (the rounding error of a weight is at most scale / 2). Embeddings and norms stay
in the compute dtype. FBGEMM's kernel streams the int8 weights near the memory bandwidth for one token and runs
batches and prompts several times faster than torch._weight_int8pack_mm (benchmarks/decode.py); its input's
8-bit rounding costs accuracy that tests/test_precision.py bounds. Without AVX-512 VNNI or AVX-VNNI its u8 x s8
products can saturate 16 bits, so there the inputs are rounded to 7 bits (`reduce_range`, as torch.ao does).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modeldeck.registry.decoder import cpu_flags
from modeldeck.registry.diagnostics import ModeldeckError

if TYPE_CHECKING:
    from modeldeck.runtime.model import Decoder

__all__ = [
    "DynamicInt8Linear",
    "Int8Linear",
    "OneDNNLinear",
    "SplitHalfLinear",
    "check_quantize",
    "describe_quantized",
    "fp16_gemv_is_faster",
    "packs",
    "prepare_weight",
    "quantize_int8",
    "split_half",
    "use_kernels",
]


class OneDNNLinear(nn.Module):
    """x @ weightᵀ + bias through oneDNN, on the CPU: the dense fp32 weight as it is, or a bf16 weight packed into
    oneDNN's blocked layout once (an opaque tensor: same shape, nothing else reads it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        if weight.dtype == torch.bfloat16 and not weight.is_mkldnn:  # (loading packs them: `prepare_weight`)
            weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return out


class SplitHalfLinear(nn.Module):
    """A float16 checkpoint's linear layer, run in float16, on a CPU whose fp16 GEMV is the faster for one row and
    whose bf16 products are the faster for many: one row (batch-1 decoding) through F.linear on the float16 weights
    as stored, more rows (prompts, batches) through oneDNN on a bf16 copy packed at load, converted in and out.
    Both copies are held: twice the weights' memory (`split_half` decides)."""

    def __init__(self, packed: OneDNNLinear, weight16: torch.Tensor, bias16: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.packed = packed
        self.weight16: torch.Tensor
        self.bias16: torch.Tensor | None
        self.register_buffer("weight16", weight16.detach(), persistent=False)
        self.register_buffer("bias16", None if bias16 is None else bias16.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features:  # one row
            return F.linear(x, self.weight16, self.bias16)
        many: torch.Tensor = self.packed(x.to(torch.bfloat16))
        return many.to(x.dtype)


@functools.cache
def fp16_gemv_is_faster() -> bool:
    """Whether, on this CPU, torch's fp16 GEMV streams a weight faster than oneDNN's packed bf16 linear (by 10% or
    more): measured once per process, at the first load that asks, on 64 MiB of weights of each kind (beyond the
    caches). It differs between CPUs of one kind (and between shapes), so it is measured, not assumed."""
    rows, columns, count = 2048, 2048, 8
    weights16 = [torch.full((rows, columns), 0.01, dtype=torch.float16) for _ in range(count)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), 1) for w in weights16]
    x16, x = torch.ones(1, columns, dtype=torch.float16), torch.ones(1, columns, dtype=torch.bfloat16)

    def timed(one: Callable[[int], torch.Tensor]) -> float:  # the median of 5 passes after a warm-up pass
        times = []
        for _ in range(6):
            began = time.perf_counter()
            for i in range(count):
                one(i)
            times.append(time.perf_counter() - began)
        return sorted(times[1:])[2]

    half = timed(lambda i: F.linear(x16, weights16[i]))
    bf16 = timed(lambda i: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], ""))
    return half * 1.1 < bf16


def split_half(stored: torch.dtype, dtype: torch.dtype, device: torch.device, weight_bytes: int) -> bool:
    """Whether a checkpoint stored in `stored`, for which the default is `dtype`, runs instead in float16 with a
    packed bf16 copy of its linear weights for prompts and batches (SplitHalfLinear): where that copy would be
    packed, fp16's GEMV is the faster here for one row, and the memory available holds both copies (of
    `weight_bytes` each) with a quarter to spare."""
    if stored != torch.float16 or not packs(dtype, device, None) or not fp16_gemv_is_faster():
        return False
    return 2.5 * weight_bytes <= _available_memory()


def _available_memory() -> int:
    """Bytes the kernel says are available now (MemAvailable), or 0 where it does not say."""
    try:
        lines = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    kib = next((line.split()[1] for line in lines if line.startswith("MemAvailable:")), "0")
    return int(kib) * 1024


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q [out, in] int8, scale [out]) with weight ≈ scale[:, None] * q.

    Computed in fp32, in blocks of rows that stay in cache (a whole-matrix fp32 copy and its temporaries would
    make quantizing several times slower than the packing that follows)."""
    weight = weight.detach()
    quantized = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)  # [out, in]
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)  # [out]
    step = max(1, 2**16 // max(1, weight.shape[1]))  # 256 KiB of fp32 per block
    for first in range(0, weight.shape[0], step):
        rows = weight[first : first + step].to(torch.float32, copy=True)  # [step, in], divided in place below
        size = rows.abs().amax(dim=1).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # [step]
        scale[first : first + step] = size
        quantized[first : first + step] = rows.div_(size[:, None]).round_().clamp_(-127, 127)
    return quantized, scale.to(scale_dtype)


class Int8Linear(nn.Module):
    """x @ (scale · q)ᵀ + bias with int8 weights q [out, in] and per-row scales, in the activations' dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        quantized, scale = quantize_int8(weight, dtype)
        self.weight = nn.Parameter(quantized, requires_grad=False)
        self.scale: torch.Tensor
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [B*T, in]
        out = torch._weight_int8pack_mm(rows, self.weight, self.scale)  # [B*T, out]
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


class DynamicInt8Linear(nn.Module):
    """x @ (scale · q)ᵀ + bias through FBGEMM: q [out, in] int8 and per-row scales packed once; each call rounds
    each input row to 8 bits on a scale of its own, multiplies in int32 and returns the activations' dtype.

    FBGEMM rounds its whole input on one scale; rows of several tokens are first divided by their own largest
    |value| (and the products multiplied back: the product is linear in each row), so that one token's large
    activations do not coarsen the others'."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        quantized, scale = quantize_int8(weight, torch.float32)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated; FBGEMM's packing takes one
            warnings.simplefilter("ignore")
            per_row = torch._make_per_channel_quantized_tensor(quantized, scale.double(), zero, 0)
        self.packed = torch.ops.quantized.linear_prepack(per_row, None)  # FBGEMM's own object, not a tensor
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.reduce_range = not _vnni()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()  # [R, in]
        out: torch.Tensor
        if rows.shape[0] == 1:
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, self.reduce_range)  # [1, out] fp32
        else:
            size = rows.abs().amax(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)  # [R, 1]
            out = torch.ops.quantized.linear_dynamic(rows / size, self.packed, self.reduce_range).mul_(size)
        if self.bias is not None:
            out = out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)


def _vnni() -> bool:
    """Whether this CPU sums u8 x s8 products in 32 bits (VNNI), so that FBGEMM's inputs may use all 8 bits."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def _fbgemm_runs(device: torch.device) -> bool:
    """Whether FBGEMM's dynamic int8 linear runs here: the CPU with torch's x86 quantized engines."""
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def _onednn_runs(weight: torch.Tensor) -> bool:
    """Whether oneDNN's linear takes this weight here: fp32 on any CPU build with oneDNN; bf16 only where oneDNN
    supports it (AVX-512 or newer: on older CPUs packing a bf16 weight fails, so those keep F.linear)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    if weight.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return weight.dtype == torch.float32


def packs(dtype: torch.dtype, device: torch.device, quantize: str | None) -> bool:
    """Whether `prepare_weight` copies a linear weight of this dtype on this device into a packed layout."""
    return quantize is None and dtype == torch.bfloat16 and _onednn_runs(torch.empty(0, dtype=dtype, device=device))


def prepare_weight(weight: torch.Tensor, quantize: str | None) -> torch.Tensor:
    """A linear layer's weight as its kernel holds it, for loading to make as it reads each tensor (so that no
    unpacked copy of every weight exists at once): a bf16 weight on the CPU packed for oneDNN; others as they are."""
    if packs(weight.dtype, weight.device, quantize):
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        return packed
    return weight


def _kernel(
    weight: torch.Tensor, bias: torch.Tensor | None, quantize: str | None, dtype: torch.dtype
) -> nn.Module | None:
    """The kernel module for one weight, computing in `dtype`, or None to keep F.linear."""
    if quantize == "int8":
        return DynamicInt8Linear(weight, bias) if _fbgemm_runs(weight.device) else Int8Linear(weight, bias, dtype)
    if _onednn_runs(weight):
        return OneDNNLinear(weight, bias)
    return None


def check_quantize(quantize: str | None, device: torch.device, dtype: torch.dtype) -> None:
    """Fail before loading when this torch has no kernel for `quantize` on `device` in `dtype`."""
    if quantize is None:
        return
    if quantize != "int8":
        raise ModeldeckError(f"quantize={quantize!r} is not supported; choose 'int8' or leave it unset")
    if dtype != torch.bfloat16:
        raise ModeldeckError(
            f"quantize='int8' computes in bfloat16 (torch's int8 kernels are many times slower in {dtype}); "
            "leave dtype unset or pass dtype='bfloat16'"
        )
    try:
        probe = torch.zeros(1, 32, dtype=dtype, device=device)
        torch._weight_int8pack_mm(probe, torch.zeros(8, 32, dtype=torch.int8, device=device), probe[0, :8])
    except (RuntimeError, NotImplementedError) as exc:
        raise ModeldeckError(
            f"quantize='int8' has no kernel on {device} in torch {torch.__version__} ({str(exc).splitlines()[0]}); "
            "run on the CPU, or load without quantize"
        ) from None


def describe_quantized(quantize: str, device: torch.device) -> str:
    """How `quantize` multiplies on `device` (the `Model.precision` of a quantized model)."""
    if not _fbgemm_runs(device):
        return f"{quantize} weights multiply bfloat16 activations (torch._weight_int8pack_mm)"
    bits = 8 if _vnni() else 7
    return f"{quantize} weights through FBGEMM, each input row rounded to {bits} bits; bfloat16 between layers"


@torch.no_grad()  # the decoder's parameters may require grad: no autograd graph may keep the originals alive
def use_kernels(decoder: Decoder, quantize: str | None = None, halves: dict[str, torch.Tensor] | None = None) -> None:
    """Swap each nn.Linear of `decoder` for its kernel (see the table above), in place; a tied LM head (the
    embedding matrix) gets a kernel of its own (an extra copy of that matrix) where the kernel needs one. The
    compute dtype is the embeddings'; weights to quantize may still be in the checkpoint's (loading leaves them so).
    `halves`: float16 weights and biases by state_dict name, for layers that multiply one row from them
    (SplitHalfLinear)."""
    dtype = decoder.embed.weight.dtype
    for prefix, parent in list(decoder.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                kernel = _kernel(child.weight, child.bias, quantize, dtype)
                path = f"{prefix}.{name}" if prefix else name
                if halves and isinstance(kernel, OneDNNLinear) and f"{path}.weight" in halves:
                    kernel = SplitHalfLinear(kernel, halves[f"{path}.weight"], halves.get(f"{path}.bias"))
                if kernel is not None:
                    setattr(parent, name, kernel)
    if decoder.lm_head is None:
        tied = _kernel(decoder.embed.weight, None, quantize, dtype)
        if halves and tied is None and packs(torch.bfloat16, decoder.embed.weight.device, quantize):
            packed = OneDNNLinear(decoder.embed.weight.to(torch.bfloat16), None)  # a split model's tied head
            tied = SplitHalfLinear(packed, decoder.embed.weight, None)
        decoder.tied_head = None if tied is None else tied.forward  # a plain attribute: not in the state_dict
