"""One generic decoder, built from a card's architecture. Every supported family is data, not a subclass.

    tokens ─► embed (x embedding multiplier) ─► N x Block ─► final norm ─► LM head (tied or not, x logit multiplier)

A Block is attention + MLP around the residual stream, in one of three arrangements:

    sequential                    parallel, two norms             parallel, one shared norm
    x = x + attn(norm1(x))        x = x + attn(norm1(x))          h = norm1(x)
    x = x + mlp(norm2(x))               + mlp(norm2(x))           x = x + attn(h) + mlp(h)
    (Llama, BTLM)                 (GPT-NeoX, Falcon-40B)          (Falcon-7B)

Attention uses one fused QKV projection whose rows are [q heads | k heads | v heads]; checkpoint
layouts that arrange them differently are reordered once at load time (runtime/loading.py).
Grouped-query attention: H query heads share KV key/value heads, H / KV queries per group:

    q heads:  q0 q1 q2 q3 | q4 q5 q6 q7        (H = 8)
    kv heads:    k0 v0    |    k1 v1           (KV = 2; MHA: KV = H; MQA: KV = 1)

Positions are rotary (GPT-NeoX half-split rotation on the first `fraction` of each head's dims) or
ALiBi (a per-head linear bias on the attention scores, built by runtime/attention.py). muP models
(BTLM) scale three places, all card data: embeddings (x 14.6), attention scores (/ head_dim instead
of / sqrt(head_dim), ALiBi added after) and logits (x 2.22 * 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modeldeck.registry.decoder import cache_dtype
from modeldeck.registry.schema import AlibiPositions, Architecture, RotaryPositions
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
        self.k[layer][rows, columns] = k
        self.v[layer][rows, columns] = v

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
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(arch: Architecture) -> nn.Module:
    if arch.norm.kind == "rmsnorm":
        return RMSNorm(arch.hidden_size, arch.norm.eps)
    return nn.LayerNorm(arch.hidden_size, eps=arch.norm.eps)


class GELUMLP(nn.Module):
    """down(gelu(up(x))), exact erf GELU."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.up = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.down = nn.Linear(arch.ffn_size, arch.hidden_size, bias=arch.bias.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down(F.gelu(self.up(x)))
        return down


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)). Llama: gate_proj/up_proj; BTLM: c_fc2 is the gate, c_fc the up projection."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.gate = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.up = nn.Linear(arch.hidden_size, arch.ffn_size, bias=arch.bias.mlp)
        self.down = nn.Linear(arch.ffn_size, arch.hidden_size, bias=arch.bias.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down(F.silu(self.gate(x)) * self.up(x))
        return down


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int) -> torch.Tensor:
    """GPT-NeoX rotary on the first `dims` of the last axis: halves [a, b] -> [a cos - b sin, b cos + a sin]."""
    rot, rest = x[..., :dims], x[..., dims:]
    a, b = rot.chunk(2, dim=-1)
    rotated = rot * cos + torch.cat((-b, a), dim=-1) * sin
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


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
        self.out = nn.Linear(arch.heads * arch.head_dim, arch.hidden_size, bias=arch.bias.attention_output)
        power = 1.0 if arch.multipliers.attention == "inverse_head_dim" else 0.5
        self.scale = arch.head_dim**-power

    def forward(self, x: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        batch, queries, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        q = q.view(batch, queries, self.heads, self.head_dim)  # [B, T, H, D]
        k = k.view(batch, queries, self.kv_heads, self.head_dim)  # [B, T, KV, D]
        v = v.view(batch, queries, self.kv_heads, self.head_dim)  # [B, T, KV, D]
        if ctx.rotary_dims:
            q = rotate(q, ctx.cos, ctx.sin, ctx.rotary_dims)
            k = rotate(k, ctx.cos, ctx.sin, ctx.rotary_dims)
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
        self.mlp = SwiGLUMLP(arch) if arch.mlp == "swiglu" else GELUMLP(arch)

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
        if static:
            self.uniform, self.used, every_key = None, cache.capacity, False
        else:
            lowest, highest = (int(n) for n in torch.aminmax(start))
            self.uniform = lowest if lowest == highest else None  # the start all sequences share, if they do
            self.used = backend.keys(highest, queries, cache.capacity, decoder.alibi is not None)  # positions read
            every_key = self.uniform is not None and queries == 1 and self.used == highest + 1
        # The mask carries the causal rule and, for ALiBi models, the bias (runtime/attention.py builds both).
        self.mask = backend.prepare(start, queries, self.used, decoder.alibi, cache.k.dtype, every_key)
        self.rotary_dims = decoder.rotary_dims
        self.cos = self.sin = torch.empty(0)
        if self.rotary_dims:
            cos, sin = decoder.rotary_tables(start.device)  # [context, dims] each
            if self.uniform is not None:
                rows = slice(self.uniform, self.uniform + queries)
                self.cos, self.sin = cos[None, rows, None, :], sin[None, rows, None, :]  # [1, T, 1, dims]
            else:
                positions = start[:, None] + torch.arange(queries, device=start.device)  # [B, T]
                self.cos, self.sin = cos[positions][:, :, None, :], sin[positions][:, :, None, :]  # [B, T, 1, dims]


class Decoder(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        # Given its (uninitialised) weight, nn.Embedding skips its random init: on the meta device that init goes
        # through torch's reference ops, whose first use imports torch._dynamo (over a second of every load).
        self.embed = nn.Embedding(
            arch.vocab_size, arch.hidden_size, _weight=torch.empty(arch.vocab_size, arch.hidden_size)
        )
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.layers))
        self.final_norm = make_norm(arch)
        self.lm_head = (
            None if arch.tied_embeddings else nn.Linear(arch.hidden_size, arch.vocab_size, bias=arch.bias.lm_head)
        )
        self.rotary_dims = arch.rotary_dims
        self.rotary_base = arch.positions.base if isinstance(arch.positions, RotaryPositions) else 0.0
        # ALiBi slopes [H] (fp32): the standard ones; loading replaces them with a checkpoint's stored copy
        # once it is checked to be those slopes (as rounded to the checkpoint's dtype, as the original runs).
        self.alibi = alibi_slopes(arch.heads) if isinstance(arch.positions, AlibiPositions) else None
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        # A tied LM head's own kernel (runtime/kernels.py), when it has one: x [.., d] -> logits [.., V]
        self.tied_head: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.precision = "asked for"  # why the weights are in their dtype (runtime/loading.py sets it)

    def rotary_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [context, dims] (fp32) of every position's rotary angles, built once per device: the angle
        of position p and frequency f is p · base^(-2f / dims), repeated for both halves of the rotated dims."""
        if self._rotary is None or self._rotary[0].device != device:
            positions = torch.arange(self.arch.context_length, device=device, dtype=torch.float32)
            frequencies = torch.arange(0, self.rotary_dims, 2, device=device, dtype=torch.float32) / self.rotary_dims
            angles = positions[:, None] * self.rotary_base**-frequencies  # [context, dims/2]
            angles = torch.cat((angles, angles), dim=-1)  # [context, dims]
            self._rotary = angles.cos(), angles.sin()
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
