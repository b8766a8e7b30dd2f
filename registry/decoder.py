"""The runtime's decoder as data, torch-free: its tensors and shapes, dtypes, attention backends, prefill rule.

Every part of modeldeck that needs to know what the decoder is reads it here, so it is described once:

    TENSORS           the decoder's tensors (the runtime's names, not any checkpoint's) and what sets their shapes:
                      checkpoint layouts may map exactly these names (plus the q/k/v parts of a fused QKV projection
                      and stored ALiBi slopes: LAYOUT_TENSORS); registry/checkpoint.py derives what a checkpoint must
                      hold; registry/params.py counts parameters; registry/memory.py sizes the copies loading makes;
                      runtime/loading.py checks that the torch Decoder's state_dict is exactly `decoder_tensors`
    DTYPES            the weight dtypes the runtime runs in; `default_precision` picks one when the user does not,
                      `cache_dtype` the KV cache's
    QUANTIZE          the weight quantizations a load may ask for (runtime/kernels.py runs them)
    choose_backend    which attention backend runs for a request, device and dtype (runtime/attention.py and the
                      memory planner)
    prefill_chunk     how many queries one prefill pass takes (runtime/generate.py and the memory planner)

Shapes are [out, in] as nn.Linear stores them; each dimension names the card field that sets it, so a checkpoint
tensor of the wrong shape can be blamed on a field (`architecture.ffn_size`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import AlibiPositions, Architecture, LearnedPositions

__all__ = [
    "ATTENTION_BUDGET",
    "BACKENDS",
    "DTYPES",
    "DTYPE_BYTES",
    "LAYOUT_TENSORS",
    "QKV_PARTS",
    "QUANTIZE",
    "TENSORS",
    "BackendError",
    "BackendName",
    "Dim",
    "DtypeName",
    "Precision",
    "TensorSpec",
    "cache_dtype",
    "choose_backend",
    "concrete_tensors",
    "cpu_computes_bf16",
    "cpu_flags",
    "decoder_tensors",
    "default_precision",
    "prefill_chunk",
    "qkv_parts",
    "shape",
    "tensor_size",
    "tensor_specs",
]

# --- dtypes and attention backends -------------------------------------------------------------------

DtypeName = Literal["float32", "float16", "bfloat16"]
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}
"""The weight dtypes the runtime runs in, and bytes per element."""
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)
HALF = ("float16", "bfloat16")

QUANTIZE: tuple[str, ...] = ("int8",)
"""Weight-only quantizations: int8 = per-output-channel symmetric int8 weights, activations in bfloat16."""


class Precision(NamedTuple):
    """The dtype a model runs in and why (shown by `Model.__repr__` and `modeldeck generate --verbose`)."""

    dtype: DtypeName | None  # None: the checkpoint's own
    reason: str


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, from /proc/cpuinfo (empty where there is none): read, not measured, so that what
    depends on them is the same on every run of one machine."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively: x86 AVX-512 BF16 or AMX-BF16.

    There oneDNN runs bf16 matrix products from pre-packed weights faster than fp32 at every shape (one token,
    a batch, a prompt), while fp16 has no such kernels unless the CPU has AVX-512 FP16: torch's fp16
    matrix-matrix products on such CPUs are several times slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def default_precision(device: str, card_dtype: str, stored: str | None, bf16_native: bool | None = None) -> Precision:
    """The dtype to run in when the user names none, for a checkpoint `stored` in float32/float16/bfloat16.

    On a GPU: the card's dtype (`auto`: the checkpoint's own). On a CPU: never more precise than the checkpoint
    and never a dtype the CPU computes slowly: float32 checkpoints run in float32; half-precision ones in
    bfloat16 where the CPU computes it natively (`cpu_computes_bf16`; float16 weights are converted once, as
    torch has no fast float16 matrix-matrix products there), else in float32. Where that CPU streams one row
    faster from float16 and memory holds two copies, the runtime runs a float16 checkpoint as stored instead, with
    the bf16 copy for prompts and batches (runtime/kernels.py split_half, measured at load)."""
    if device != "cpu":
        if card_dtype == "auto":
            return Precision(None, "the checkpoint's own dtype (the card's dtype is auto)")
        return Precision(card_dtype, "the card's dtype")  # type: ignore[arg-type]
    if stored in (None, "float32"):
        return Precision("float32", "the checkpoint's own dtype")
    if cpu_computes_bf16() if bf16_native is None else bf16_native:
        return Precision(
            "bfloat16",
            f"a {stored} checkpoint, and this CPU computes bfloat16 natively (AVX-512 BF16/AMX): the fastest for "
            "one token, batches and prompts; dtype='float32' for full precision",
        )
    return Precision(
        "float32", f"a {stored} checkpoint, but this CPU has no native half-precision matrix products (fp32 is faster)"
    )


def cache_dtype(device: str, dtype: str) -> str:
    """The KV cache's dtype (and attention's): the compute dtype, except half precision on a CPU, where it is
    float32. torch's CPU attention for a few queries over a half-precision cache is many times slower than over
    fp32 (its small matrix-vector products have no fast half-precision path), and would dominate decoding at
    long contexts; the cost is twice the cache memory."""
    return "float32" if device == "cpu" and dtype.removeprefix("torch.") in HALF else dtype.removeprefix("torch.")


BackendName = Literal["eager", "sdpa", "xformers"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "sdpa", "xformers")
"""Attention backends a user may ask for (auto: the rule in `choose_backend`)."""


class BackendError(ModeldeckError, ValueError):
    """An attention backend that does not exist (`problem` "unknown"), cannot run on this device and dtype
    ("needs_cuda_half") or is not installed ("not_installed")."""

    def __init__(self, message: str, problem: Literal["unknown", "needs_cuda_half", "not_installed"]):
        super().__init__(message)
        self.problem = problem


def choose_backend(requested: str | None, device: str, dtype: str, xformers_installed: bool) -> BackendName:
    """The backend that runs: `auto` (or None) is xformers for float16/bfloat16 on CUDA when it is installed, else
    sdpa; an explicit choice is checked against the device type ('cpu', 'cuda', ...) and dtype ('float16' or
    'torch.float16')."""
    requested = requested or "auto"
    if requested not in BACKENDS:
        raise BackendError(f"attention={requested!r} is not a backend; choose one of {', '.join(BACKENDS)}", "unknown")
    half = dtype.removeprefix("torch.") in HALF
    if requested == "auto":
        return "xformers" if device == "cuda" and half and xformers_installed else "sdpa"
    if requested == "xformers":
        if device != "cuda" or not half:
            raise BackendError(
                f"attention='xformers' needs a CUDA device and float16/bfloat16 weights (got {device}, {dtype}); "
                "use attention='sdpa' or 'auto'",
                "needs_cuda_half",
            )
        if not xformers_installed:
            raise BackendError("attention='xformers' needs xformers: pip install 'modeldeck[gpu]'", "not_installed")
    return requested  # type: ignore[return-value]


# --- prefill ------------------------------------------------------------------------------------------

ATTENTION_BUDGET = 256 * 2**20
"""Bytes one layer's attention scores (fp32 [B, H, T, S]) may take during prefill; longer prompts are prefilled in
chunks of queries against the growing cache, so no forward pass builds an O(N^2 * heads) score or bias tensor."""


def prefill_chunk(heads: int, batch: int, keys: int, budget: int = ATTENTION_BUDGET) -> int:
    """Queries per prefill pass: as many as keep B x H x T x S fp32 scores within `budget` (at least 16)."""
    return max(16, budget // (batch * heads * keys * 4))


# --- tensors ------------------------------------------------------------------------------------------


class Dim(NamedTuple):
    """One dimension of a decoder tensor."""

    text: str  # how the card's architecture states it: "(heads + 2 kv_heads) x head_dim"
    field: str  # the card field to blame when a checkpoint disagrees
    size: Callable[[Architecture], int]


VOCAB = Dim("vocab_size", "vocab_size", lambda a: a.vocab_size)
HIDDEN = Dim("hidden_size", "hidden_size", lambda a: a.hidden_size)
FFN = Dim("ffn_size", "ffn_size", lambda a: a.ffn_size)
QKV = Dim("(heads + 2 kv_heads) x head_dim", "heads", lambda a: (a.heads + 2 * a.kv_heads) * a.head_dim)
Q = Dim("heads x head_dim", "heads", lambda a: a.heads * a.head_dim)
KV = Dim("kv_heads x head_dim", "kv_heads", lambda a: a.kv_heads * a.head_dim)
HEADS = Dim("heads", "heads", lambda a: a.heads)
HEAD_DIM = Dim("head_dim", "head_dim", lambda a: a.head_dim)
POSITIONS = Dim(
    "context_length + offset",
    "context_length",
    lambda a: a.context_length + (a.positions.offset if isinstance(a.positions, LearnedPositions) else 0),
)


class TensorSpec(NamedTuple):
    """One decoder tensor: its name (`blocks.{i}.` for each block), dimensions [out, in], and when it exists."""

    name: str
    dims: tuple[Dim, ...]
    present: Callable[[Architecture], bool]
    joiner: str = " by "  # how its dimensions read in words: "vocab_size x hidden_size", "ffn_size by hidden_size"

    @property
    def per_block(self) -> bool:
        return self.name.startswith("blocks.{i}.")


def _always(arch: Architecture) -> bool:
    return True


def _norm_bias(arch: Architecture) -> bool:
    return arch.norm.kind == "layernorm" and arch.norm.bias


def _own_mlp_norm(arch: Architecture) -> bool:
    return not arch.residual.shared_norm


def _gated(arch: Architecture) -> bool:
    return arch.gated_mlp


def _untied(arch: Architecture) -> bool:
    return not arch.tied_embeddings


def _learned(arch: Architecture) -> bool:
    return isinstance(arch.positions, LearnedPositions)


def _qk_norm(arch: Architecture) -> bool:
    return arch.qk_norm


TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("embed.weight", (VOCAB, HIDDEN), _always, " x "),
    TensorSpec("pos_embed.weight", (POSITIONS, HIDDEN), _learned, " x "),
    TensorSpec("embed_norm.weight", (HIDDEN,), lambda a: a.embedding_norm),
    TensorSpec("embed_norm.bias", (HIDDEN,), lambda a: a.embedding_norm and _norm_bias(a)),
    TensorSpec("blocks.{i}.attn_norm.weight", (HIDDEN,), _always),
    TensorSpec("blocks.{i}.attn_norm.bias", (HIDDEN,), _norm_bias),
    TensorSpec("blocks.{i}.mlp_norm.weight", (HIDDEN,), _own_mlp_norm),
    TensorSpec("blocks.{i}.mlp_norm.bias", (HIDDEN,), lambda a: _own_mlp_norm(a) and _norm_bias(a)),
    TensorSpec("blocks.{i}.attn.qkv.weight", (QKV, HIDDEN), _always),
    TensorSpec("blocks.{i}.attn.qkv.bias", (QKV,), lambda a: a.bias.qkv),
    TensorSpec("blocks.{i}.attn.q_norm.weight", (HEAD_DIM,), _qk_norm),
    TensorSpec("blocks.{i}.attn.q_norm.bias", (HEAD_DIM,), lambda a: _qk_norm(a) and _norm_bias(a)),
    TensorSpec("blocks.{i}.attn.k_norm.weight", (HEAD_DIM,), _qk_norm),
    TensorSpec("blocks.{i}.attn.k_norm.bias", (HEAD_DIM,), lambda a: _qk_norm(a) and _norm_bias(a)),
    TensorSpec("blocks.{i}.attn.out.weight", (HIDDEN, Q), _always),
    TensorSpec("blocks.{i}.attn.out.bias", (HIDDEN,), lambda a: a.bias.attention_output),
    TensorSpec("blocks.{i}.mlp.gate.weight", (FFN, HIDDEN), _gated),
    TensorSpec("blocks.{i}.mlp.gate.bias", (FFN,), lambda a: _gated(a) and a.bias.mlp),
    TensorSpec("blocks.{i}.mlp.up.weight", (FFN, HIDDEN), _always),
    TensorSpec("blocks.{i}.mlp.up.bias", (FFN,), lambda a: a.bias.mlp),
    TensorSpec("blocks.{i}.mlp.down.weight", (HIDDEN, FFN), _always),
    TensorSpec("blocks.{i}.mlp.down.bias", (HIDDEN,), lambda a: a.bias.mlp),
    TensorSpec("final_norm.weight", (HIDDEN,), _always),
    TensorSpec("final_norm.bias", (HIDDEN,), _norm_bias),
    TensorSpec("lm_head.weight", (VOCAB, HIDDEN), _untied, " x "),
    TensorSpec("lm_head.bias", (VOCAB,), lambda a: _untied(a) and a.bias.lm_head),
)
"""Every tensor the decoder can have, in its state_dict order; `present` says which a given architecture has."""

QKV_PARTS: tuple[tuple[str, Dim], ...] = (("q", Q), ("k", KV), ("v", KV))
"""The fused QKV projection's rows, in the decoder's order: layouts with `qkv: separate` store them as three tensors
(blocks.{i}.attn.q.weight, ...), which loading concatenates."""

ALIBI_SLOPES = TensorSpec("alibi_slopes", (HEADS,), lambda a: isinstance(a.positions, AlibiPositions))
"""Not a weight: the ALiBi slopes some checkpoints store (checked, then used as stored)."""


def qkv_parts(spec: TensorSpec) -> list[TensorSpec]:
    """The separately stored q, k, v tensors that make a fused QKV weight or bias."""
    prefix, _, param = spec.name.rpartition(".")
    base = prefix.removesuffix(".qkv")
    return [TensorSpec(f"{base}.{part}.{param}", (rows, *spec.dims[1:]), spec.present) for part, rows in QKV_PARTS]


LAYOUT_TENSORS: tuple[str, ...] = (
    *(t.name for t in TENSORS),
    *(p.name for t in TENSORS if ".attn.qkv." in t.name for p in qkv_parts(t)),
    ALIBI_SLOPES.name,
)
"""The names a checkpoint layout may map: every decoder tensor, the separate q/k/v parts, and stored ALiBi slopes."""


def shape(arch: Architecture, dims: tuple[Dim, ...]) -> tuple[int, ...]:
    return tuple(d.size(arch) for d in dims)


def tensor_specs(arch: Architecture) -> list[TensorSpec]:
    """The tensors this architecture's decoder has (per-block ones once, as `blocks.{i}.` templates)."""
    return [t for t in TENSORS if t.present(arch)]


def tensor_size(arch: Architecture, name: str) -> int:
    """Elements of one decoder tensor (a template name for per-block tensors); 0 when the architecture has none."""
    spec = next((t for t in TENSORS if t.name == name), None)
    if spec is None:
        raise KeyError(f"no decoder tensor {name!r}; known: {', '.join(t.name for t in TENSORS)}")
    if not spec.present(arch):
        return 0
    size = 1
    for n in shape(arch, spec.dims):
        size *= n
    return size


def concrete_tensors(arch: Architecture) -> list[tuple[str, int | None, TensorSpec]]:
    """(name, block index or None, spec) of every tensor of this architecture's decoder, in its state_dict order:
    the embeddings (and their norm), each block's tensors, then the final norm and LM head."""
    specs = tensor_specs(arch)
    first = [t for t in specs if not t.per_block and not t.name.startswith(("final_norm.", "lm_head."))]
    found: list[tuple[str, int | None, TensorSpec]] = [(t.name, None, t) for t in first]
    found += [(t.name.format(i=i), i, t) for i in range(arch.layers) for t in specs if t.per_block]
    return found + [(t.name, None, t) for t in specs if t.name.startswith(("final_norm.", "lm_head."))]


def decoder_tensors(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The runtime decoder's own tensors and shapes: its state_dict (ALiBi slopes are not weights), in its order."""
    return {name: shape(arch, spec.dims) for name, _, spec in concrete_tensors(arch)}
