"""Parameter counts computed from a card's architecture alone (no weights, no torch).

The count is the sum of the decoder's tensors as registry/decoder.py states them (per block, with d = hidden_size,
h = head_dim, f = ffn_size: norms d or 2d each, q/k/v d x (heads + 2 kv_heads) h, output heads h x d, MLP 2 d f
or 3 d f for gated MLPs, biases where the card says), plus the token embedding, the final norm and, unless tied, the
LM head. ALiBi slopes and rotary frequencies are not weights of the architecture (a checkpoint may still store
them: see `ParameterCount.stored_extra`).
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeck.registry.decoder import TENSORS, tensor_size
from modeldeck.registry.schema import Architecture

__all__ = ["ParameterBreakdown", "count_parameters"]


@dataclass(frozen=True)
class ParameterBreakdown:
    embedding: int  # token embedding, and a learned position embedding where there is one
    embedding_norm: int
    per_block: int
    blocks: int
    final_norm: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.embedding + self.embedding_norm + self.blocks + self.final_norm + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Pythia's convention: everything but the input embeddings and an untied LM head."""
        return self.embedding_norm + self.blocks + self.final_norm


def count_parameters(arch: Architecture) -> ParameterBreakdown:
    sizes = {spec.name: tensor_size(arch, spec.name) for spec in TENSORS}
    per_block = sum(n for name, n in sizes.items() if name.startswith("blocks.{i}."))
    return ParameterBreakdown(
        embedding=sizes["embed.weight"] + sizes["pos_embed.weight"],
        embedding_norm=sizes["embed_norm.weight"] + sizes["embed_norm.bias"],
        per_block=per_block,
        blocks=arch.layers * per_block,
        final_norm=sizes["final_norm.weight"] + sizes["final_norm.bias"],
        lm_head=sizes["lm_head.weight"] + sizes["lm_head.bias"],
    )
