"""Attention backends: the one place that decides how softmax(q·kᵀ·scale + bias + mask) · v is computed.

Every call sees the same situation: a batch of B sequences, each with `start[b]` tokens already in
the KV cache and T new queries (the batch is padded to T; rows past a sequence's real length are
ignored by the caller). Query t of sequence b sits at position start[b] + t and may see keys
j <= start[b] + t. That one rule covers causal prefill, chunked prefill against a cache, decoding
(T = 1) and batches of different lengths. With a sliding window W (Mistral), it also sees only keys
j > start[b] + t - W: itself and the W - 1 before it. A backend turns the rule, and ALiBi's bias when
the model has one, into its own mask once per forward pass (`prepare`), and every layer reuses it
(`attend`).

    eager     the readable reference: explicit fp32 scores, bias, mask, softmax
    sdpa      torch.nn.functional.scaled_dot_product_attention (default off CUDA)
    xformers  memory_efficient_attention on CUDA (fp16/bf16): BlockDiagonalCausalWithOffsetPaddedKeysMask
              over the packed cache, or, with ALiBi, a tensor bias [B, H, T, S] (aligned, in the query dtype)
    auto      xformers when importable and on CUDA, else sdpa

ALiBi: bias[b, h, t, j] = -slope_h · (start[b] + t - j). Distances are exact integers and the
product is formed in fp32, so its only rounding in fp16/bf16 is the final cast of a value that
is small where it matters (near the diagonal). Position-absolute forms (BLOOM's slope · j, or
positions held in half precision) lose whole units at positions in the thousands.

Layouts: q is [B, T, H, D]; the cache is [B, S, KV, D] (xformers' BMHK), so xformers reads it
without copies and sdpa reads a transposed view. GQA: query head h reads kv head h // (H / KV).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F

from modeldeck.registry import decoder
from modeldeck.registry.decoder import BACKENDS, BackendName

__all__ = [
    "BACKENDS",
    "Backend",
    "alibi_bias",
    "choose_backend",
    "get_backend",
    "visible_keys",
    "xformers_alibi_bias",
    "xformers_bias",
]


@dataclass(frozen=True)
class Backend:
    name: BackendName
    # (start [B], queries T, keys S, ALiBi slopes [H] or None, dtype, every query sees every key, sliding window
    # or None) -> the mask every layer of one forward uses
    prepare: Callable[[torch.Tensor, int, int, torch.Tensor | None, torch.dtype, bool, int | None], Any]
    attend: Callable[..., torch.Tensor]  # (q, k, v, mask, scale) -> [B, T, H, D]
    packs_cache: bool  # without a tensor bias, reads the whole preallocated cache (packed as a view)

    def keys(self, highest_start: int, queries: int, capacity: int, alibi: bool) -> int:
        """How many cache positions this forward pass reads: the whole cache, or those any query can see."""
        return capacity if self.packs_cache and not alibi else highest_start + queries


def _positions(start: torch.Tensor, queries: int) -> torch.Tensor:
    return start[:, None] + torch.arange(queries, device=start.device)  # [B, T]


def visible_keys(start: torch.Tensor, queries: int, keys: int, window: int | None = None) -> torch.Tensor:
    """Boolean mask [B, 1, T, S]: query t of sequence b sees key j iff j <= start[b] + t (and, with a sliding
    `window`, j > start[b] + t - window)."""
    position = _positions(start, queries)[:, None, :, None]  # [B, 1, T, 1]
    key = torch.arange(keys, device=start.device)  # [S]
    visible = key <= position  # [B, 1, T, S]
    return visible if window is None else visible & (key > position - window)


def alibi_bias(start: torch.Tensor, queries: int, keys: int, slopes: torch.Tensor) -> torch.Tensor:
    """fp32 [B, H, T, S]: -slope_h · (start[b] + t - j), from exact integer distances (future keys: masked later)."""
    distance = _positions(start, queries)[:, None, :, None] - torch.arange(keys, device=start.device)  # [B, 1, T, S]
    return distance.to(torch.float32) * -slopes.to(device=start.device, dtype=torch.float32)[None, :, None, None]


# --- eager: the reference ------------------------------------------------------------------------


class EagerMask(NamedTuple):
    visible: torch.Tensor  # bool [B, 1, T, S]
    bias: torch.Tensor | None  # fp32 [B, H, T, S]


def eager_mask(
    start: torch.Tensor,
    queries: int,
    keys: int,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
    every_key: bool = False,
    window: int | None = None,
) -> EagerMask:
    bias = None if slopes is None else alibi_bias(start, queries, keys, slopes)
    return EagerMask(visible_keys(start, queries, keys, window), bias)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: EagerMask, scale: float) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, S, KV, D] -> [B, T, H, D]; scores, bias and softmax in fp32."""
    heads, kv_heads = q.shape[2], k.shape[2]
    q = q.transpose(1, 2)  # [B, H, T, D]
    k = k.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)  # [B, H, S, D]
    v = v.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)  # [B, H, S, D]
    scores = (q @ k.transpose(-1, -2)).float() * scale  # [B, H, T, S]
    if mask.bias is not None:
        scores = scores + mask.bias  # ALiBi after the scaling (BTLM: scores / head_dim + bias)
    scores = scores.masked_fill(~mask.visible, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)  # [B, H, T, S]
    return (probs @ v).transpose(1, 2)  # [B, T, H, D]


# --- sdpa ----------------------------------------------------------------------------------------


def sdpa_mask(
    start: torch.Tensor,
    queries: int,
    keys: int,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
    every_key: bool = False,
    window: int | None = None,
) -> torch.Tensor | None:
    """Boolean [B, 1, T, S] (True: visible), or with ALiBi an additive [B, H, T, S] in the query dtype; None (no
    mask: sdpa's fastest path) when every query sees every key, as when a batch decodes one token from one start."""
    if every_key and slopes is None:
        return None
    visible = visible_keys(start, queries, keys, window)
    if slopes is None:
        return visible
    return alibi_bias(start, queries, keys, slopes).masked_fill_(~visible, float("-inf")).to(dtype)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale, enable_gqa=True
    )  # [B, H, T, D]
    return out.transpose(1, 2)


# --- xformers ------------------------------------------------------------------------------------


def xformers_bias(start: torch.Tensor, queries: int, cache_length: int, window: int | None = None) -> Any:
    """The xformers mask for `visible_keys`, for queries packed as [1, B*T] and the cache as [1, B*S]."""
    from xformers.ops.fmha.attn_bias import (
        BlockDiagonalCausalLocalAttentionPaddedKeysMask,
        BlockDiagonalCausalWithOffsetPaddedKeysMask,
    )

    lengths = (start + queries).tolist()
    if window is not None:
        return BlockDiagonalCausalLocalAttentionPaddedKeysMask.from_seqlens_local(
            q_seqlen=[queries] * len(lengths), kv_padding=cache_length, kv_seqlen=lengths, window_size=window
        ).to(start.device)
    return BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
        q_seqlen=[queries] * len(lengths), kv_padding=cache_length, kv_seqlen=lengths, device=start.device
    )


def xformers_alibi_bias(
    start: torch.Tensor, queries: int, keys: int, slopes: torch.Tensor, dtype: torch.dtype, window: int | None = None
) -> torch.Tensor:
    """ALiBi plus the causal rule as an xformers tensor bias [B, H, T, S] in the query dtype (its kernels need
    that), stored in rows padded to a multiple of 8 elements (16-byte aligned rows; the view hides the padding)."""
    batch, heads = start.shape[0], slopes.shape[0]
    aligned = torch.empty(batch, heads, queries, -(-keys // 8) * 8, dtype=dtype, device=start.device)
    bias = aligned[..., :keys]  # [B, H, T, S]
    visible = visible_keys(start, queries, keys, window)
    bias.copy_(alibi_bias(start, queries, keys, slopes).masked_fill_(~visible, float("-inf")))
    return bias


def xformers_mask(
    start: torch.Tensor,
    queries: int,
    keys: int,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
    every_key: bool = False,
    window: int | None = None,
) -> Any:
    if slopes is None:
        return xformers_bias(start, queries, keys, window)
    return xformers_alibi_bias(start, queries, keys, slopes, dtype, window)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> torch.Tensor:
    """q [B, T, H, D]; k/v [B, S, KV, D]: the whole cache (packed along M, block-diagonal mask) or, with a
    tensor bias, the positions in use (a strided view; the bias carries the causal rule)."""
    from xformers.ops import memory_efficient_attention

    batch, queries, heads, dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    if isinstance(mask, torch.Tensor):  # [B, H, T, S] -> [B, KV, H/KV, T, S] for the grouped layout
        q5 = q.view(batch, queries, kv_heads, group, dim)  # [B, T, KV, H/KV, D]
        k5 = k.unsqueeze(3).expand(-1, -1, -1, group, -1)  # [B, S, KV, H/KV, D], not copied
        v5 = v.unsqueeze(3).expand(-1, -1, -1, group, -1)
        out = memory_efficient_attention(
            q5, k5, v5, attn_bias=mask.view(batch, kv_heads, group, queries, keys), scale=scale
        )
        return cast(torch.Tensor, out.reshape(batch, queries, heads, dim))
    # Packed along M, grouped for GQA: [1, B*T, KV, H/KV, D]; K/V expanded, not copied.
    q5 = q.reshape(1, batch * queries, kv_heads, group, dim)
    k5 = k.reshape(1, batch * keys, kv_heads, 1, dim).expand(-1, -1, -1, group, -1)
    v5 = v.reshape(1, batch * keys, kv_heads, 1, dim).expand(-1, -1, -1, group, -1)
    out = memory_efficient_attention(q5, k5, v5, attn_bias=mask, scale=scale)
    return cast(torch.Tensor, out.reshape(batch, queries, heads, dim))


@functools.cache
def _xformers_importable() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def choose_backend(requested: str | None, device: torch.device, dtype: torch.dtype) -> BackendName:
    """Resolve 'auto' (or None) and check an explicit choice can run here: the rule is registry/decoder.py's."""
    xformers = device.type == "cuda" and _xformers_importable()  # never imported where it cannot run
    return decoder.choose_backend(requested, device.type, str(dtype), xformers)


_BACKENDS = {
    "eager": Backend("eager", eager_mask, eager_attention, packs_cache=False),
    "sdpa": Backend("sdpa", sdpa_mask, sdpa_attention, packs_cache=False),
    "xformers": Backend("xformers", xformers_mask, xformers_attention, packs_cache=True),
}


def get_backend(name: BackendName) -> Backend:
    return _BACKENDS[name]
