"""Attention backends: the one place that decides how softmax(q·kᵀ·scale + mask) · v is computed.

Every call sees the same situation: a batch of B sequences, each with `start[b]` tokens already in
the KV cache and T new queries (the batch is padded to T; rows past a sequence's real length are
ignored by the caller). Query t of sequence b sits at position start[b] + t and may see keys
j <= start[b] + t. That one rule covers causal prefill, chunked prefill against a cache, decoding
(T = 1) and batches of different lengths. A backend turns the rule into its own mask once per
forward pass (`prepare`), and every layer reuses it (`attend`).

    eager     the readable reference: explicit scores, mask, softmax
    sdpa      torch.nn.functional.scaled_dot_product_attention (default off CUDA)
    xformers  memory_efficient_attention on CUDA (fp16/bf16), with BlockDiagonalCausalWithOffsetPaddedKeysMask
    auto      xformers when importable and on CUDA, else sdpa

Layouts: q is [B, T, H, D]; the cache is [B, S, KV, D] (xformers' BMHK), so xformers reads it
without copies and sdpa reads a transposed view. GQA: query head h reads kv head h // (H / KV).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from modeldeck.registry.diagnostics import ModeldeckError

__all__ = ["BACKENDS", "Backend", "choose_backend", "get_backend", "visible_keys", "xformers_bias"]

BackendName = Literal["eager", "sdpa", "xformers"]
BACKENDS = ("auto", "eager", "sdpa", "xformers")


@dataclass(frozen=True)
class Backend:
    name: BackendName
    prepare: Callable[[torch.Tensor, int, int], Any]  # (start [B], queries T, cache positions S) -> mask
    attend: Callable[..., torch.Tensor]  # (q, k, v, mask, scale, bias) -> [B, T, H, D]
    full_cache: bool  # reads the whole preallocated cache (a view), not just the positions in use


def visible_keys(start: torch.Tensor, queries: int, keys: int) -> torch.Tensor:
    """Boolean mask [B, 1, T, S]: query t of sequence b sees key j iff j <= start[b] + t."""
    position = start[:, None] + torch.arange(queries, device=start.device)  # [B, T]
    return torch.arange(keys, device=start.device) <= position[:, None, :, None]  # [B, 1, T, S]


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, S, KV, D], mask [B, 1, T, S] (True: visible) -> [B, T, H, D]."""
    heads, kv_heads = q.shape[2], k.shape[2]
    q = q.transpose(1, 2)  # [B, H, T, D]
    k = k.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)  # [B, H, S, D]
    v = v.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)  # [B, H, S, D]
    scores = (q @ k.transpose(-1, -2)).float() * scale  # [B, H, T, S]
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)  # [B, H, T, S]
    return (probs @ v).transpose(1, 2)  # [B, T, H, D]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    if bias is not None:
        mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))  # [B, H, T, S] additive
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale, enable_gqa=True
    )  # [B, H, T, D]
    return out.transpose(1, 2)


def xformers_bias(start: torch.Tensor, queries: int, cache_length: int) -> Any:
    """The xformers mask for `visible_keys`, for queries packed as [1, B*T] and the cache as [1, B*S]."""
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalWithOffsetPaddedKeysMask

    lengths = (start + queries).tolist()
    return BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
        q_seqlen=[queries] * len(lengths), kv_padding=cache_length, kv_seqlen=lengths, device=start.device
    )


def xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """q [B, T, H, D]; k/v the whole cache [B, S, KV, D] (contiguous rows, so packing is a view)."""
    from xformers.ops import memory_efficient_attention

    if bias is not None:
        raise ModeldeckError("the xformers backend does not take a tensor bias here yet (ALiBi); use attention='sdpa'")
    batch, queries, heads, dim = q.shape
    cache_length, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # Packed along M, grouped for GQA: [1, B*T, KV, H/KV, D]; K/V expanded, not copied.
    q5 = q.reshape(1, batch * queries, kv_heads, group, dim)
    k5 = k.reshape(1, batch * cache_length, kv_heads, 1, dim).expand(-1, -1, -1, group, -1)
    v5 = v.reshape(1, batch * cache_length, kv_heads, 1, dim).expand(-1, -1, -1, group, -1)
    out = memory_efficient_attention(q5, k5, v5, attn_bias=mask, scale=scale)
    return out.reshape(batch, queries, heads, dim)


@functools.cache
def _xformers_importable() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def choose_backend(requested: str | None, device: torch.device, dtype: torch.dtype) -> BackendName:
    """Resolve 'auto' (or None) and check an explicit choice can run on this device and dtype."""
    requested = requested or "auto"
    if requested not in BACKENDS:
        raise ModeldeckError(f"attention={requested!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    half = dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        return "xformers" if device.type == "cuda" and half and _xformers_importable() else "sdpa"
    if requested == "xformers":
        if device.type != "cuda" or not half:
            raise ModeldeckError(
                f"attention='xformers' needs a CUDA device and float16/bfloat16 weights (got {device.type}, {dtype}); "
                "use attention='sdpa' or 'auto'"
            )
        if not _xformers_importable():
            raise ModeldeckError("attention='xformers' needs xformers: pip install 'modeldeck[gpu]'")
    return requested  # type: ignore[return-value]


_BACKENDS = {
    "eager": Backend("eager", visible_keys, eager_attention, full_cache=False),
    "sdpa": Backend("sdpa", visible_keys, sdpa_attention, full_cache=False),
    "xformers": Backend("xformers", xformers_bias, xformers_attention, full_cache=True),
}


def get_backend(name: BackendName) -> Backend:
    return _BACKENDS[name]
