"""The memory planner: what one generation with modeldeck's runtime holds at once, from a card alone (no torch).

It models this runtime, not a generic transformer, term by term:

    weights      parameters x dtype bytes                         runtime/loading.py (converted once, assign=True)
    KV cache     2 x layers x B x (prompt + new) x kv_heads x head_dim x dtype bytes
                                                                  runtime/model.py KVCache, preallocated by
                                                                  runtime/generate.py generate
    activations  the largest of three phases of runtime/generate.py:
                 prefill   chunks of `prefill_chunk` queries (ATTENTION_BUDGET), each one forward pass of
                           runtime/model.py: the mask (runtime/attention.py), rotary tables, the residual stream,
                           and one block at its fullest (attention, then the MLP intermediate)
                 sampling  logits [B, V] and process_logits' temporaries (top-p's sort at worst)
                 decode    one-token forward passes against the full cache
    loading      runtime/loading.py memory-maps each safetensors file (safetensors load_file): on the CPU the
                 file's pages count in resident memory once read. Converting to another dtype reads every
                 page, so loading peaks at the weights plus the whole file; without conversion, tensors are
                 used in place and only those copied (reordered QKV, transposed Conv1D) are held twice, for
                 as long as the mapping lives (the whole run). On a GPU the conversion happens on the host.
    total        max(loading peak, weights + mapped file pages + KV cache + activations)

Not included: the process itself (Python and torch: a few hundred MB of host memory; on a GPU the CUDA context,
~0.3-1 GB outside torch's allocator), buffers inside kernels (BLAS packing, which MKL caches; SDPA's per-thread
blocks), tensors of a few kB, and what allocators keep: glibc keeps freed blocks below its dynamic mmap threshold
(up to 32 MiB) in its heaps, which added up to 42% to the tiny test models' peaks, varying run to run
(MALLOC_MMAP_THRESHOLD_=1048576 returns freed tensors to the system); torch's CUDA caching allocator likewise
reserves more than it holds.

Checked (tests/test_memory.py): on the CPU, for tiny gpt-neox, falcon (GQA), llama and btlm (ALiBi) models, the
total is within a few percent of the measured peak (VmHWM) of loading and one generation, glibc's threshold pinned.
The CUDA paths (sdpa's kernel choice, xformers) follow the code and are not measured. GB here are 10^9 bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from modeldeck.registry.decoder import (
    ATTENTION_BUDGET,
    DTYPE_BYTES,
    TENSORS,
    BackendError,
    BackendName,
    cache_dtype,
    choose_backend,
    default_precision,
    prefill_chunk,
    tensor_size,
)
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.params import count_parameters
from modeldeck.registry.schema import AlibiPositions, Architecture, Card

__all__ = [
    "ATTENTION_BUDGET",
    "DTYPE_BYTES",
    "Estimate",
    "MemoryPlanError",
    "Scenario",
    "TensorParallelPlan",
    "Term",
    "estimate",
    "largest_batch",
    "largest_context",
    "prefill_chunk",
    "tensor_parallel_plan",
    "tensor_parallel_sizes",
]

Device = Literal["cpu", "cuda"]
GB = 10**9


class MemoryPlanError(ModeldeckError, ValueError):
    """A memory plan that cannot be made from the given options."""


@dataclass(frozen=True)
class Scenario:
    """One generation: `batch` prompts of `prompt` tokens, each continued by `new_tokens` (the cache holds both)."""

    dtype: str
    device: Device
    attention: BackendName
    batch: int
    prompt: int
    new_tokens: int
    checkpoint_dtype: str

    @property
    def context(self) -> int:
        return self.prompt + self.new_tokens


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    formula: str  # the numbers that make it
    source: str  # where in the runtime it comes from


@dataclass(frozen=True)
class Estimate:
    card: str
    scenario: Scenario
    weights: Term
    kv_cache: Term
    activations: Term  # the largest phase
    phases: tuple[Term, ...]  # prefill, sampling, decode
    mapped: Term  # checkpoint pages resident beside the weights during the run (CPU, no conversion)
    loading: Term  # the peak while loading

    @property
    def running(self) -> int:
        return self.weights.bytes + self.mapped.bytes + self.kv_cache.bytes + self.activations.bytes

    @property
    def total(self) -> int:
        return max(self.loading.bytes, self.running)

    def to_json(self) -> dict[str, Any]:
        return {
            "card": self.card,
            "scenario": {**asdict(self.scenario), "context": self.scenario.context},
            "terms": [asdict(t) for t in (self.weights, self.mapped, self.kv_cache, self.activations, self.loading)],
            "phases": [asdict(t) for t in self.phases],
            "running": self.running,
            "total": self.total,
        }


# --- activations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """The sizes the formulas use: B batch, e dtype bytes, and the architecture's."""

    arch: Architecture
    batch: int
    e: int
    device: Device
    backend: BackendName

    @property
    def alibi(self) -> bool:
        return isinstance(self.arch.positions, AlibiPositions)


def _rotate(m: _Shape, rows: int, heads: int) -> int:
    """model.py rotate() on [rows, heads, D], in place: rot*cos, cat((-b, a))*sin and their sum in fp32 (cos/sin are
    fp32), copied back into the rotated dims."""
    return rows * heads * 12 * m.arch.rotary_dims


def _attend(m: _Shape, c: int, s: int) -> int:
    """One layer's backend.attend (runtime/attention.py) for c queries against s keys, output included."""
    a, b, e = m.arch, m.batch, m.e
    bcs, bhcs, out = b * c * s, b * a.heads * c * s, e * b * c * a.heads * a.head_dim
    if m.backend == "xformers":  # memory_efficient_attention: no scores; the output and fp32 logsumexp
        return out + 4 * b * a.heads * c
    if m.backend == "eager":  # K/V repeat_interleave'd to H heads, fp32 scores (+ their half copy), softmax, mask
        repeated = 2 * e * b * a.heads * s * a.head_dim
        return repeated + bhcs * (8 + (e if e != 4 else 0)) + bcs + out
    converted = 0 if m.alibi else e * bcs  # SDPA turns the boolean mask into an additive one in the query dtype
    if m.device == "cpu":  # torch's CPU flash kernel: blocked, no [B, H, T, S] scores (measured in the tests)
        return converted + max(0 if m.alibi else bcs, out)
    # CUDA: a mask rules out flash, GQA rules out the memory-efficient kernel; plan for the math fallback, which
    # upcasts half inputs to fp32 and materializes scores and their softmax (what ATTENTION_BUDGET bounds).
    repeated = 2 * e * b * a.heads * s * a.head_dim if a.heads != a.kv_heads else 0
    upcast = 4 * b * a.heads * (c + 2 * s) * a.head_dim if e != 4 else 0
    return converted + repeated + upcast + 8 * bhcs + 4 * b * c * a.heads * a.head_dim + out


def _block(m: _Shape, c: int, s: int) -> int:
    """One Block.forward (runtime/model.py) at its fullest, besides its input x."""
    a, e, rows = m.arch, m.e, m.batch * c
    d, hd = a.hidden_size, a.head_dim
    rms = (8 + (4 if e != 4 else 0)) * rows * d if a.norm.kind == "rmsnorm" else 0  # x.float(), pow, normed
    h = e * rows * d  # attn_norm(x)
    qkv = e * rows * (a.heads + 2 * a.kv_heads) * hd  # the fused projection; q, k and v are views of it
    if a.qk_norm:  # normed q and k are new tensors, each rotated in place
        q, k = e * rows * a.heads * hd, e * rows * a.kv_heads * hd
        rotating = _rotate(m, rows, max(a.heads, a.kv_heads))
    else:  # q and k are views of the projection, their heads rotated at once
        q = k = 0
        rotating = _rotate(m, rows, a.heads + a.kv_heads)
    after = 3 * e * rows * d  # attend's output, its [B, T, H*D] reshape copy, the out projection
    attention = max(rms + h, h + qkv + q + k + max(rotating, _attend(m, c, s), after))
    # Then, with h still held: attended, x + attended, the MLP's norm and its intermediate (GELU: up and gelu(up);
    # SwiGLU: silu(gate), up and their product) -- the same count for parallel and sequential residuals.
    norm2 = 0 if a.residual.shared_norm else e * rows * d
    inner = (3 if a.gated_mlp else 2) * e * rows * a.ffn_size
    mlp = 3 * e * rows * d + max(norm2 + (rms if norm2 else 0), norm2 + inner)
    return max(attention, mlp)


def _mask(m: _Shape, c: int, s: int) -> tuple[int, int]:
    """(held through every layer, peak while building it): backend.prepare in runtime/attention.py."""
    a, b, e = m.arch, m.batch, m.e
    bcs, bhcs = b * c * s, b * a.heads * c * s
    if not m.alibi:
        held = 0 if m.backend == "xformers" else bcs  # visible_keys: bool [B, 1, T, S]
        return held, held
    bias = 8 * bcs + 4 * bcs + 4 * bhcs  # alibi_bias: int64 distances, their fp32 copy, the fp32 [B, H, T, S] bias
    if m.backend == "eager":
        return bcs + 4 * bhcs, bcs + bias
    if m.backend == "sdpa":  # the bias, masked, in the weight dtype (no copy in fp32)
        return e * bhcs, bcs + max(bias, 4 * bhcs + bcs + (e * bhcs if e != 4 else 0))
    aligned = e * b * a.heads * c * (-(-s // 8) * 8)  # xformers: rows padded to 8 elements
    return aligned, aligned + bcs + max(bias, 4 * bhcs + bcs)


def _forward(m: _Shape, c: int, s: int, held: int) -> int:
    """Decoder.forward for c queries against s keys, with `held` bytes alive outside it."""
    mask, build = _mask(m, c, s)
    rows, a = m.batch * c, m.arch
    tables = 2 * 4 * rows * a.rotary_dims  # Context's fp32 cos and sin
    x = m.e * rows * a.hidden_size  # the residual stream (the block's input)
    logits = 3 * m.e * m.batch * a.vocab_size  # the last positions' logits, scaled, and prefill's merge
    return held + max(build, mask + tables + x + max(_block(m, c, s), logits))


def _phases(m: _Shape, prompt: int, capacity: int) -> tuple[Term, ...]:
    a, b, e = m.arch, m.batch, m.e
    chunk = prefill_chunk(a.heads, b, prompt)
    passes = [(prompt, prompt)] if chunk >= prompt else [(chunk, prompt // chunk * chunk)]
    if chunk < prompt and prompt % chunk:
        passes.append((prompt % chunk, prompt))  # the last, shorter chunk sees every key
    packs = m.backend == "xformers" and not m.alibi  # reads the whole preallocated cache
    held = 8 * b * prompt + (e * b * a.vocab_size if chunk < prompt else 0)  # int64 tokens, earlier chunks' logits
    prefill = max(_forward(m, c, capacity if packs else s, held) for c, s in passes)
    passes_n = -(-prompt // min(chunk, prompt))
    how = (
        f"1 pass of {prompt:,} queries x {prompt:,} keys"
        if passes_n == 1
        else f"{passes_n} passes of up to {chunk:,} queries x up to {prompt:,} keys (ATTENTION_BUDGET)"
    )
    sampling = b * a.vocab_size * (e + 26)
    decode = _forward(m, 1, capacity, (e + 4) * b * a.vocab_size)  # previous logits and their scores stay alive
    return (
        Term("prefill", prefill, how, "runtime/generate.py prefill -> runtime/model.py Decoder.forward"),
        Term(
            "sampling",
            sampling,
            f"{b} x {a.vocab_size:,} x ({e} logits + 26: top-p's fp32 sort, int64 order, fp32 cumsum, 2 bool masks)",
            "runtime/generate.py process_logits, sample (the largest processor path)",
        ),
        Term("decode", decode, f"1 query x {capacity:,} keys", "runtime/generate.py decode_one_token"),
    )


# --- the estimate ----------------------------------------------------------------------------------


def _copied_per_layer(arch: Architecture, layout: CheckpointLayout | None) -> tuple[int, int]:
    """(parameters per block that loading copies rather than uses in place, those of the fused QKV weight when it
    is reordered on the device): runtime/loading.py _convert."""
    if layout is None:
        return 0, 0
    names = set(layout.transposed)
    if layout.qkv in ("per_head", "grouped", "separate"):  # reordered, or concatenated from q, k, v
        names |= {"blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.qkv.bias"}
    block = {t.name for t in TENSORS if t.per_block}
    copied = sum(tensor_size(arch, n) for n in names & block)
    on_device = tensor_size(arch, "blocks.{i}.attn.qkv.weight") if layout.qkv in ("per_head", "grouped") else 0
    return copied, on_device


def _check_dtype(name: str, value: str) -> None:
    if value not in DTYPE_BYTES:
        raise MemoryPlanError(f"{name} {value!r} is not supported; choose one of {', '.join(DTYPE_BYTES)}")


def estimate(
    card: Card,
    *,
    dtype: str | None = None,
    batch: int = 1,
    context: int | None = None,
    new_tokens: int | None = None,
    device: Device = "cpu",
    attention: str = "auto",
    checkpoint_dtype: str | None = None,
    layout: CheckpointLayout | None = None,
) -> Estimate:
    """Memory of one generation of `batch` sequences with `context` tokens (prompt + new_tokens) each.

    Defaults follow the runtime: dtype registry/decoder.default_precision's for the checkpoint (on a GPU the card's;
    on a CPU float32, or bfloat16 for a half-precision checkpoint where this CPU computes it); context the card's
    context_length; new_tokens the card's max_new_tokens (at most context - 1); attention as `auto` picks
    (xformers for half precision on CUDA, else sdpa); the checkpoint stored in the card's dtype (auto: unconverted).
    `layout` (the card's checkpoint layout) tells which tensors loading copies; without it none are counted.
    """
    arch = card.architecture
    if device not in ("cpu", "cuda"):
        raise MemoryPlanError(f"device {device!r} is not supported; choose cpu or cuda")
    if dtype is None and device == "cuda" and card.dtype == "auto":
        raise MemoryPlanError(
            f"card {card.id!r} has dtype auto (the checkpoint's own, which the card does not state); "
            "give the dtype to plan for (--dtype float16, bfloat16 or float32)"
        )
    stored = checkpoint_dtype or (None if card.dtype == "auto" else card.dtype)
    dtype = dtype or default_precision(device, card.dtype, stored).dtype or "float32"  # as runtime.load picks
    _check_dtype("dtype", dtype)
    checkpoint_dtype = stored or dtype
    _check_dtype("checkpoint dtype", checkpoint_dtype)
    backend = _backend(attention, device, dtype)
    if isinstance(batch, bool) or batch < 1:
        raise MemoryPlanError(f"batch must be at least 1, got {batch}")
    context = arch.context_length if context is None else context
    if context < 2:
        raise MemoryPlanError(f"context must be at least 2 tokens (a prompt token and a new one), got {context}")
    if context > arch.context_length:
        raise MemoryPlanError(
            f"context {context:,} exceeds the context_length of card {card.id!r} ({arch.context_length:,} tokens); "
            f"give a context of {arch.context_length:,} or less"
        )
    if new_tokens is None:
        new_tokens = min(card.generation.max_new_tokens, context - 1)
    if new_tokens < 1:
        raise MemoryPlanError(f"new tokens must be at least 1, got {new_tokens}")
    if new_tokens >= context:
        raise MemoryPlanError(
            f"new tokens {new_tokens:,} leave no room for a prompt in a context of {context:,}; "
            f"give new tokens from 1 to {context - 1:,}"
        )
    scenario = Scenario(dtype, device, backend, batch, context - new_tokens, new_tokens, checkpoint_dtype)
    return _estimate(card, scenario, layout)


def _backend(attention: str, device: Device, dtype: str) -> BackendName:
    """registry/decoder.py choose_backend, assuming xformers is installed where the gpu extra is."""
    try:
        return choose_backend(attention, device, dtype, xformers_installed=True)
    except BackendError as exc:
        if exc.problem == "unknown":
            raise MemoryPlanError(
                f"attention {attention!r} is not a backend; choose auto, sdpa, eager or xformers"
            ) from None
        raise MemoryPlanError(
            "attention xformers needs device cuda and dtype float16 or bfloat16; use sdpa or auto"
        ) from None


def _unmapped(s: Scenario) -> str:
    """What becomes of a converted checkpoint's pages on the CPU."""
    if s.checkpoint_dtype == "float16" and s.dtype == "bfloat16":  # runtime/kernels.py split_half
        return (
            "none: unmapped once converted, unless the runtime measures a faster fp16 GEMV at load and finds room "
            "for both copies: then it runs the file as stored, a packed bf16 copy beside it (Model.precision says)"
        )
    return "none: unmapped once converted"


def _estimate(card: Card, s: Scenario, layout: CheckpointLayout | None) -> Estimate:
    arch, e, c = card.architecture, DTYPE_BYTES[s.dtype], DTYPE_BYTES[s.checkpoint_dtype]
    params = count_parameters(arch).total
    weights = Term(
        "weights",
        params * e,
        f"{params:,} parameters x {e} bytes ({s.dtype})",
        "registry/params.py count_parameters; runtime/loading.py converts each tensor once",
    )
    cache = cache_dtype(s.device, s.dtype)
    kv = 2 * arch.layers * s.batch * s.context * arch.kv_heads * arch.head_dim * DTYPE_BYTES[cache]
    kv_cache = Term(
        "KV cache",
        kv,
        f"2 (k, v) x {arch.layers} layers x {s.batch} x {s.context:,} positions x {arch.kv_heads} kv heads "
        f"x {arch.head_dim} head_dim x {DTYPE_BYTES[cache]} bytes ({cache})",
        "runtime/model.py KVCache [layers, B, S, KV, D], preallocated for prompt + max_new_tokens",
    )
    phases = _phases(_Shape(arch, s.batch, e, s.device, s.attention), s.prompt, s.context)
    top = max(phases, key=lambda t: t.bytes)
    activations = Term("activations", top.bytes, f"peak in {top.name}: {top.formula}", top.source)
    copied, on_device = _copied_per_layer(arch, layout)
    staged = arch.layers * copied * c
    if s.device == "cuda":
        extra, mapped = on_device * c, 0
        why = (
            f"one fused QKV weight ({on_device:,} parameters x {c} bytes) reordered on the device"
            if on_device
            else "nothing else: no tensor is reordered on the device"
        )
    elif c != e:
        extra, mapped = params * c, 0
        why = f"the {s.checkpoint_dtype} file's pages ({params:,} x {c} bytes), all read by the conversion"
    else:
        extra = mapped = staged
        why = f"file pages of the tensors copied when loading ({arch.layers} x {copied:,} x {c} bytes)"
    mapped_term = Term(
        "mapped file",
        mapped,
        why if mapped else ("none on the device" if s.device == "cuda" else _unmapped(s)),
        "runtime/loading.py _open_tensors (safetensors load_file maps each file) and _convert",
    )
    loading = Term("loading", weights.bytes + extra, f"weights + {why}", "runtime/loading.py load_decoder")
    return Estimate(card.id, s, weights, kv_cache, activations, phases, mapped_term, loading)


# --- what fits -------------------------------------------------------------------------------------


def _largest(fits: Callable[[int], bool], low: int, high: int, piece_end: Callable[[int], int]) -> int | None:
    """The largest n in [low, high] such that every value from low to n fits (None when low does not).

    The total is not monotone everywhere: a longer prompt or a larger batch can get smaller prefill chunks and need
    less. But within a piece of values that share one chunk size it only grows, so the first value that does not
    fit is found by checking each piece's end, then a binary search inside the first piece that fails."""
    n = low
    while n <= high:
        end = min(max(piece_end(n), n), high)
        if fits(end):
            n = end + 1
            continue
        lo, hi = n - 1, end  # every value up to lo fits; hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo if lo >= low else None
    return high


def _same_chunk_until(k: int, n: int) -> int:
    """The last x >= n with max(16, k // x) == max(16, k // n): prefill_chunk's integer math, where
    budget // (B * H * T * 4) == (budget // (H * T * 4)) // B, so k holds everything but the varying x."""
    q = k // n
    return 2**62 if q <= 16 else k // q  # at 16 queries the chunk stays 16 for good


def largest_context(card: Card, memory: int, **options: Any) -> int | None:
    """The largest context (at the given batch and new tokens) such that it, and every shorter one, fits."""
    s, arch, layout = estimate(card, **options).scenario, card.architecture, options.get("layout")
    new = s.new_tokens
    k = ATTENTION_BUDGET // (s.batch * arch.heads * 4)  # chunk = max(16, k // prompt)

    def piece_end(n: int) -> int:  # the prompt is n - new
        one_pass = k // (n - new) >= n - new  # then everything grows with the prompt, up to T*T > k
        return (math.isqrt(k) if one_pass else _same_chunk_until(k, n - new)) + new

    def fits(n: int) -> bool:
        return _estimate(card, replace(s, prompt=n - new), layout).total <= memory

    return _largest(fits, new + 1, arch.context_length, piece_end)


def largest_batch(card: Card, memory: int, **options: Any) -> int | None:
    """The largest batch (at the given context) such that it, and every smaller one, fits."""
    s, arch, layout = estimate(card, **options).scenario, card.architecture, options.get("layout")
    k = ATTENTION_BUDGET // (arch.heads * s.prompt * 4)  # chunk = max(16, k // batch)
    one = _estimate(card, replace(s, batch=1), layout)
    high = max(1, (memory - one.weights.bytes) // max(1, one.kv_cache.bytes) + 1)  # each sequence adds its cache

    def piece_end(b: int) -> int:
        return k // s.prompt if k // b >= s.prompt else _same_chunk_until(k, b)  # one pass, or one chunk size

    def fits(b: int) -> bool:
        return _estimate(card, replace(s, batch=b), layout).total <= memory

    return _largest(fits, 1, high, piece_end)


def tensor_parallel_sizes(arch: Architecture) -> list[int]:
    """The tensor-parallel sizes that split this architecture evenly (vLLM's rule, Megatron's layout): each GPU
    computes heads / tp query heads, and either kv_heads / tp key-value heads or, when tp exceeds kv_heads, one
    kv head replicated on tp / kv_heads GPUs; the MLP's ffn_size splits too."""
    heads, kv = arch.heads, arch.kv_heads
    return [
        tp
        for tp in range(1, heads + 1)
        if heads % tp == 0 and (kv % tp == 0 or tp % kv == 0) and arch.ffn_size % tp == 0
    ]


@dataclass(frozen=True)
class TensorParallelPlan:
    """vLLM's tensor parallelism over `gpus` GPUs of `memory` bytes: what one GPU holds (`per_gpu`), within
    `utilization` of its memory (vLLM's --gpu-memory-utilization, 0.9 by default)."""

    memory: int
    gpus: int
    per_gpu: int
    weights: int  # per GPU
    kv_cache: int  # per GPU, the estimate's batch and context
    activations: int
    utilization: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tensor_parallel_plan(
    card: Card, plan: Estimate, memory: int, utilization: float = 0.9
) -> TensorParallelPlan | None:
    """The fewest GPUs of `memory` bytes over which tensor parallelism (vLLM's) holds `plan` (None: no size that
    splits the architecture evenly is enough).

    Per GPU: 1/tp of the weights (vLLM splits every linear layer, and the embedding and LM head by vocabulary
    rows), 1/tp of the KV cache (times tp / kv_heads when kv heads are replicated), and a whole activation peak
    (each GPU runs every token through its slice). vLLM then gives the KV cache all the memory left."""
    arch = card.architecture
    activations = plan.activations.bytes
    for tp in tensor_parallel_sizes(arch):
        weights = math.ceil(plan.weights.bytes / tp)
        kv = math.ceil(plan.kv_cache.bytes * max(1, tp // arch.kv_heads) / tp)
        per_gpu = weights + kv + activations
        if per_gpu <= memory * utilization:
            return TensorParallelPlan(memory, tp, per_gpu, weights, kv, activations, utilization)
    return None
