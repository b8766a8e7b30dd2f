"""Parameter counts computed from a card's architecture alone (no weights, no torch).

Per block, with d = hidden_size, h = head_dim, f = ffn_size:

    norms       (1 if parallel with a shared norm, else 2) x (2d for LayerNorm, d for RMSNorm)
    attention   d x (heads + 2 kv_heads) h  for q, k, v   + heads h x d for the output projection
    mlp         2 d f (GELU: up, down)  or  3 d f (SwiGLU: gate, up, down)
    biases      where the card's bias flags say so

plus the token embedding, the final norm and, unless tied, the LM head. ALiBi slopes and rotary
frequencies are not weights of the architecture (a checkpoint may still store them: see
`ParameterCount.stored_extra`).
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeck.registry.schema import Architecture

__all__ = ["ParameterBreakdown", "count_parameters"]


@dataclass(frozen=True)
class ParameterBreakdown:
    embedding: int
    per_block: int
    blocks: int
    final_norm: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.embedding + self.blocks + self.final_norm + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Pythia's convention: everything but the input embedding and an untied LM head."""
        return self.blocks + self.final_norm


def _norm_size(arch: Architecture) -> int:
    return (2 if arch.norm.kind == "layernorm" else 1) * arch.hidden_size


def count_parameters(arch: Architecture) -> ParameterBreakdown:
    d, h, f = arch.hidden_size, arch.head_dim, arch.ffn_size
    qkv_out = (arch.heads + 2 * arch.kv_heads) * h
    attention = d * qkv_out + arch.heads * h * d
    attention += qkv_out if arch.bias.qkv else 0
    attention += d if arch.bias.attention_output else 0
    branches = 2 if arch.mlp == "swiglu" else 1  # SwiGLU has a gate and an up projection
    mlp = branches * d * f + f * d
    mlp += branches * f + d if arch.bias.mlp else 0
    norms = (1 if arch.residual.shared_norm else 2) * _norm_size(arch)
    per_block = norms + attention + mlp
    embedding = arch.vocab_size * d
    lm_head = 0 if arch.tied_embeddings else arch.vocab_size * d + (arch.vocab_size if arch.bias.lm_head else 0)
    return ParameterBreakdown(
        embedding=embedding,
        per_block=per_block,
        blocks=arch.layers * per_block,
        final_norm=_norm_size(arch),
        lm_head=lm_head,
    )
