"""One generic decoder, built from a card's architecture. Every supported family is data, not a subclass.

    tokens ─► embed (x embedding multiplier) [+ learned positions] [─► embedding norm]
           ─► N x Block ─► final norm ─► LM head (tied or not, + bias, x logit multiplier)

A Block is attention + MLP around the residual stream, in one of three arrangements:

    sequential                    parallel, two norms             parallel, one shared norm
    x = x + attn(norm1(x))        x = x + attn(norm1(x))          h = norm1(x)
    x = x + mlp(norm2(x))               + mlp(norm2(x))           x = x + attn(h) + mlp(h)
    (Llama, BTLM, GPT-2, ...)     (GPT-NeoX, Falcon-40B)          (Falcon-7B, GPT-J, Phi-2)

The MLP is plain, down(act(up(x))), or gated, down(act(gate(x)) * up(x)) (SwiGLU, GeGLU): `MLP_KINDS`
in registry/schema.py. Norms are LayerNorm (with or without bias) or RMSNorm (weight, or 1 + weight).

Attention uses one fused QKV projection whose rows are [q heads | k heads | v heads]; checkpoint
layouts that arrange them differently are reordered once at load time (runtime/loading.py).
Grouped-query attention: H query heads share KV key/value heads, H / KV queries per group:

    q heads:  q0 q1 q2 q3 | q4 q5 q6 q7        (H = 8)
    kv heads:    k0 v0    |    k1 v1           (KV = 2; MHA: KV = H; MQA: KV = 1)

Positions are rotary on the first `fraction` of each head's dims (halves paired, as GPT-NeoX and Llama,
or neighbours, as GPT-J; frequencies optionally scaled: linear, dynamic NTK, Llama 3), ALiBi (a per-head
linear bias on the attention scores, built by runtime/attention.py) or a learned table (GPT-2, OPT).
Queries and keys may be normalized per head before rotary (Qwen3); a sliding window limits what each
query sees (Mistral; runtime/attention.py masks it). muP models
(BTLM) scale three places, all card data: embeddings (x 14.6), attention scores (/ head_dim instead
of / sqrt(head_dim), ALiBi added after) and logits (x 2.22 * 0.1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modeldeck.registry.decoder import cache_dtype
from modeldeck.registry.schema import (
    AlibiPositions,
    Architecture,
    DynamicRopeScaling,
    LearnedPositions,
    LinearRopeScaling,
    Llama3RopeScaling,
    RotaryPositions,
)
from modeldeck.runtime.attention import Backend

__all__ = ["Decoder", "KVCache", "alibi_slopes"]


class KVCache:
    """Preallocated keys and values, [layers, B, S, KV, D], plus how many tokens each sequence holds.

    `KVCache.for_decoder` makes one in the dtype registry/decoder.cache_dtype gives (float32 for a half-precision
    model on a CPU); attention runs in the cache's dtype."""

    @classmethod
    def for_decoder(cls, decoder: Decoder, batch: int, length: int) -> KVCache:
        weight = decoder.embed.weight
        dtype = getattr(torch, cache_dtype(weight.device.type, str(weight.dtype)))
        return cls(decoder.arch, batch, length, dtype, weight.device)

    def __init__(
        self, arch: Architecture, batch: int, length: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (arch.layers, batch, length, arch.kv_heads, arch.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, uniform: int | None) -> None:
        """Store k/v [B, T, KV, D] at positions start[b] .. start[b] + T - 1 of each sequence (`uniform`: the
        one start every sequence shares, known to the caller, so this writes one slice without reading `start`)."""
        queries = k.shape[1]
        if uniform is not None:  # the common case: one slice for the whole batch
            self.k[layer, :, uniform : uniform + queries] = k
            self.v[layer, :, uniform : uniform + queries] = v
            return
        rows = torch.arange(k.shape[0], device=k.device)[:, None]  # [B, 1]
        columns = start[:, None] + torch.arange(queries, device=k.device)  # [B, T]
        self.k[layer][rows, columns] = k.to(self.k.dtype)  # (index_put does not convert; slices do)
        self.v[layer][rows, columns] = v.to(self.v.dtype)

    def view(self, layer: int, used: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first `used` cache positions: [B, used, KV, D] each."""
        return self.k[layer, :, :used], self.v[layer, :, :used]

    def rows(self, first: int, stop: int) -> KVCache:
        """Sequences first .. stop - 1 as a cache of their own that shares this one's memory (writes land here).

        Its `lengths` starts as a view too, but prefill and decoding replace it: copy it back afterwards."""
        part = KVCache.__new__(KVCache)
        part.k, part.v = self.k[:, first:stop], self.v[:, first:stop]  # [layers, stop - first, S, KV, D], views
        part.lengths = self.lengths[first:stop]
        return part

    def move_row(self, source: int, target: int) -> None:
        """Copy sequence `source` (its filled positions and length) into row `target`."""
        length = int(self.lengths[source])
        self.k[:, target, :length] = self.k[:, source, :length]  # [layers, length, KV, D]
        self.v[:, target, :length] = self.v[:, source, :length]
        self.lengths[target] = length


class RMSNorm(nn.Module):
    """x / rms(x) in fp32, scaled by weight (or, with `unit_offset`, by 1 + weight in fp32: Gemma's convention)."""

    def __init__(self, size: int, eps: float, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps, self.unit_offset = eps, unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def make_norm(arch: Architecture, size: int | None = None) -> nn.Module:
    """The card's norm over `size` features (default: hidden_size)."""
    size = arch.hidden_size if size is None else size
    if arch.norm.kind == "rmsnorm":
        return RMSNorm(size, arch.norm.eps, arch.norm.unit_offset)
    return nn.LayerNorm(size, eps=arch.norm.eps, bias=arch.norm.bias)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": functools.partial(F.gelu, approximate="tanh"),
}
"""The activation of each MLP kind (registry/schema.MLP_KINDS); for gated kinds, the gate's."""


class MLP(nn.Module):
    """down(act(up(x))): GELU (exact or tanh) or ReLU."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.up = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.down = nn.Linear(arch.ffn_size, arch.hidden_size, bias=arch.bias.mlp)
        self.act = ACTIVATIONS[arch.mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down(self.act(self.up(x)))
        return down


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU (act = SiLU) or GeGLU (GELU). Llama: gate_proj/up_proj; BTLM: c_fc2 is the
    gate, c_fc the up projection."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.gate = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.up = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.down = nn.Linear(arch.ffn_size, arch.hidden_size, bias=arch.bias.mlp)
        self.act = ACTIVATIONS[arch.mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down(self.act(self.gate(x)) * self.up(x))
        return down


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int) -> None:
    """Half-split rotary (GPT-NeoX, Llama), in place, on the first `dims` of the last axis: halves [a, b] ->
    [a cos - b sin, b cos + a sin] (computed in cos's fp32, stored back in x's dtype)."""
    rot = x[..., :dims]
    a, b = rot.chunk(2, dim=-1)
    rot.copy_(rot * cos + torch.cat((-b, a), dim=-1) * sin)


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int) -> None:
    """Interleaved rotary (GPT-J), in place, on the first `dims`: each pair (x_2j, x_2j+1) -> (x_2j cos - x_2j+1
    sin, x_2j+1 cos + x_2j sin); `cos`/`sin` repeat each frequency twice, side by side."""
    rot = x[..., :dims]
    pairs = rot.view(*rot.shape[:-1], dims // 2, 2)  # [..., dims/2, 2]
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # [..., dims]
    rot.copy_(rot * cos + swapped * sin)


def inverse_frequencies(arch: Architecture, length: int, device: torch.device) -> torch.Tensor:
    """Rotary inverse frequencies [dims/2] (fp32) for a forward pass whose positions reach `length` - 1: base^(-2f /
    dims), scaled as the card says (dynamic NTK depends on `length`, the others do not)."""
    positions = arch.positions
    assert isinstance(positions, RotaryPositions)
    dims, base, scaling = arch.rotary_dims, positions.base, positions.scaling
    if isinstance(scaling, DynamicRopeScaling) and length > scaling.original_context_length:
        growth = scaling.factor * length / scaling.original_context_length - (scaling.factor - 1)
        base = base * growth ** (dims / (dims - 2))
    inverse = 1.0 / base ** (torch.arange(0, dims, 2, device=device, dtype=torch.float32) / dims)
    if isinstance(scaling, LinearRopeScaling):
        inverse = inverse / scaling.factor
    elif isinstance(scaling, Llama3RopeScaling):
        wavelength = 2 * math.pi / inverse
        long, short = (scaling.original_context_length / f for f in (scaling.low_freq_factor, scaling.high_freq_factor))
        smooth = (scaling.original_context_length / wavelength - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        between = (1 - smooth) * inverse / scaling.factor + smooth * inverse
        inverse = torch.where(wavelength > long, inverse / scaling.factor, inverse)
        inverse = torch.where((wavelength >= short) & (wavelength <= long), between, inverse)
    return inverse


def alibi_slopes(heads: int) -> torch.Tensor:
    """The standard ALiBi slopes, including head counts that are not a power of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    closest = 2 ** math.floor(math.log2(heads))
    slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: heads - closest]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


class Attention(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = arch.heads, arch.kv_heads, arch.head_dim
        self.qkv = nn.Linear(arch.hidden_size, (arch.heads + 2 * arch.kv_heads) * arch.head_dim, bias=arch.bias.qkv)
        self.q_norm = make_norm(arch, arch.head_dim) if arch.qk_norm else None
        self.k_norm = make_norm(arch, arch.head_dim) if arch.qk_norm else None
        self.out = nn.Linear(arch.heads * arch.head_dim, arch.hidden_size, bias=arch.bias.attention_output)
        power = 1.0 if arch.multipliers.attention == "inverse_head_dim" else 0.5
        self.scale = arch.head_dim**-power
        interleaved = isinstance(arch.positions, RotaryPositions) and arch.positions.rotation == "interleaved"
        self.rotate = rotate_interleaved if interleaved else rotate

    def forward(self, x: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        batch, queries, _ = x.shape
        heads = self.qkv(x).view(batch, queries, self.heads + 2 * self.kv_heads, self.head_dim)  # [B, T, H+2KV, D]
        q, k, v = heads.split([self.heads, self.kv_heads, self.kv_heads], dim=2)  # [B, T, H|KV|KV, D], views
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over each head's D dims (new tensors)
            if ctx.rotary_dims:
                self.rotate(q, ctx.cos, ctx.sin, ctx.rotary_dims)
                self.rotate(k, ctx.cos, ctx.sin, ctx.rotary_dims)
        elif ctx.rotary_dims:  # q and k heads side by side: rotated at once, in the projection's output
            self.rotate(heads[:, :, : self.heads + self.kv_heads], ctx.cos, ctx.sin, ctx.rotary_dims)
        ctx.cache.write(layer, k, v, ctx.start, ctx.uniform)
        keys, values = ctx.cache.view(layer, ctx.used)
        out = ctx.backend.attend(q.to(keys.dtype), keys, values, ctx.mask, self.scale)  # [B, T, H, D], cache dtype
        projected: torch.Tensor = self.out(out.reshape(batch, queries, self.heads * self.head_dim).to(x.dtype))
        return projected


class Block(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.parallel = arch.residual.kind == "parallel"
        self.attn_norm = make_norm(arch)
        self.mlp_norm = None if arch.residual.shared_norm else make_norm(arch)
        self.attn = Attention(arch)
        self.mlp = GatedMLP(arch) if arch.gated_mlp else MLP(arch)

    def forward(self, x: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        h = self.attn_norm(x)
        attended: torch.Tensor = self.attn(h, ctx, layer)
        if self.parallel:
            mlp: torch.Tensor = self.mlp(h if self.mlp_norm is None else self.mlp_norm(x))
            return x + attended + mlp
        x = x + attended
        assert self.mlp_norm is not None  # a sequential block always has its own MLP norm
        mlp_out: torch.Tensor = self.mlp(self.mlp_norm(x))
        return x + mlp_out


class Context:
    """What every layer of one forward pass shares: cache, positions, rotary tables, the backend's mask.

    Built once per forward pass, with one read of `start` from the device (its lowest and highest value), or
    none when `static`: then every shape is fixed by the cache (all of its positions are read, masked), so the
    pass has no host synchronisation and can be captured in a CUDA graph (runtime/graphs.py)."""

    def __init__(
        self, decoder: Decoder, cache: KVCache, start: torch.Tensor, queries: int, backend: Backend, static: bool
    ):
        self.cache, self.start, self.backend = cache, start, backend
        window = decoder.arch.sliding_window
        if static:
            self.uniform, self.used, every_key, highest = None, cache.capacity, False, cache.capacity - queries
        else:
            lowest, highest = (int(n) for n in torch.aminmax(start))
            self.uniform = lowest if lowest == highest else None  # the start all sequences share, if they do
            self.used = backend.keys(highest, queries, cache.capacity, decoder.alibi is not None)  # positions read
            every_key = self.uniform is not None and queries == 1 and self.used == highest + 1
            every_key = every_key and (window is None or self.used <= window)
        # The mask carries the causal rule, the sliding window and, for ALiBi models, the bias (runtime/attention.py).
        self.mask = backend.prepare(start, queries, self.used, decoder.alibi, cache.k.dtype, every_key, window)
        # Positions of the queries: one slice shared by the batch, or [B, T] indices.
        rows: slice | torch.Tensor = slice(0)
        if self.uniform is not None:
            rows = slice(self.uniform, self.uniform + queries)
        else:
            rows = start[:, None] + torch.arange(queries, device=start.device)  # [B, T]
        self.positions = rows
        self.rotary_dims = decoder.arch.rotary_dims
        self.cos = self.sin = torch.empty(0)
        if self.rotary_dims:
            cos, sin = decoder.rotary_tables(start.device, highest + queries)  # [context, dims] each
            if isinstance(rows, slice):
                self.cos, self.sin = cos[None, rows, None, :], sin[None, rows, None, :]  # [1, T, 1, dims]
            else:
                self.cos, self.sin = cos[rows][:, :, None, :], sin[rows][:, :, None, :]  # [B, T, 1, dims]


class Decoder(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        # Given its (uninitialised) weight, nn.Embedding skips its random init: on the meta device that init goes
        # through torch's reference ops, whose first use imports torch._dynamo (over a second of every load).
        self.embed = nn.Embedding(
            arch.vocab_size, arch.hidden_size, _weight=torch.empty(arch.vocab_size, arch.hidden_size)
        )
        self.position_offset = arch.positions.offset if isinstance(arch.positions, LearnedPositions) else 0
        rows = arch.context_length + self.position_offset
        self.pos_embed = (
            nn.Embedding(rows, arch.hidden_size, _weight=torch.empty(rows, arch.hidden_size))
            if isinstance(arch.positions, LearnedPositions)
            else None
        )
        self.embed_norm = make_norm(arch) if arch.embedding_norm else None
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.layers))
        self.final_norm = make_norm(arch)
        self.lm_head = (
            None if arch.tied_embeddings else nn.Linear(arch.hidden_size, arch.vocab_size, bias=arch.bias.lm_head)
        )
        # ALiBi slopes [H] (fp32): the standard ones; loading replaces them with a checkpoint's stored copy
        # once it is checked to be those slopes (as rounded to the checkpoint's dtype, as the original runs).
        self.alibi = alibi_slopes(arch.heads) if isinstance(arch.positions, AlibiPositions) else None
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        # A tied LM head's own kernel (runtime/kernels.py), when it has one: x [.., d] -> logits [.., V]
        self.tied_head: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.precision = "asked for"  # why the weights are in their dtype (runtime/loading.py sets it)

    def rotary_tables(self, device: torch.device, length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [context, dims] (fp32) of every position's rotary angles p · inverse_frequencies, each
        frequency twice (halves side by side, or neighbours for interleaved rotation). Built once per device, except
        under dynamic NTK scaling in a pass that reaches `length` beyond the original context (built for that pass)."""
        positions = self.arch.positions
        assert isinstance(positions, RotaryPositions)
        scaling = positions.scaling
        dynamic = isinstance(scaling, DynamicRopeScaling) and length > scaling.original_context_length
        if dynamic or self._rotary is None or self._rotary[0].device != device:
            steps = torch.arange(self.arch.context_length, device=device, dtype=torch.float32)
            angles = steps[:, None] * inverse_frequencies(self.arch, length, device)  # [context, dims/2]
            if positions.rotation == "interleaved":
                angles = angles.repeat_interleave(2, dim=-1)  # [context, dims]: f0 f0 f1 f1 ...
            else:
                angles = torch.cat((angles, angles), dim=-1)  # [context, dims]: f0 f1 ... f0 f1 ...
            tables = angles.cos(), angles.sin()
            if dynamic:
                return tables
            self._rotary = tables
        return self._rotary

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        backend: Backend,
        start: torch.Tensor | None = None,
        last: torch.Tensor | None = None,
        static: bool = False,
    ) -> torch.Tensor:
        """Logits for `tokens` [B, T] placed after `start[b]` cached tokens (default: the cache's lengths).

        With `last` [B] (each sequence's last real query index), returns logits [B, V] for those
        positions only; otherwise [B, T, V]. The cache's lengths are not advanced: the caller does.
        `static`: shapes fixed by the cache and no host synchronisation (see Context), for CUDA graphs.
        """
        start = cache.lengths if start is None else start
        ctx = Context(self, cache, start, tokens.shape[1], backend, static)
        x = self.embed(tokens)  # [B, T, d]
        if self.arch.multipliers.embedding != 1.0:
            x = x * self.arch.multipliers.embedding
        if self.pos_embed is not None:
            rows = ctx.positions
            if isinstance(rows, slice):
                rows = slice(rows.start + self.position_offset, rows.stop + self.position_offset)
                x = x + self.pos_embed.weight[rows]  # [T, d], one slice for the batch
            else:
                x = x + self.pos_embed(rows + self.position_offset)  # [B, T, d]
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, ctx, layer)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]  # [B, d]
        x = self.final_norm(x)
        if self.lm_head is not None:
            logits: torch.Tensor = self.lm_head(x)  # [B, (T,) V]
        elif self.tied_head is not None:
            logits = self.tied_head(x)
        else:
            logits = F.linear(x, self.embed.weight)
        if self.arch.multipliers.logits != 1.0:
            logits = logits * self.arch.multipliers.logits
        return logits
