"""The architecture section of a card: the decoder's shape and every choice it makes, as validated data.

registry/schema.py puts it in a card; registry/decoder.py derives the decoder's tensors from it; runtime/model.py
builds the torch decoder from it. Each field is a choice the card states, none guessed from a model's name.

Sizes are bounded (MAX_LAYERS and the rest, below), generously above every published model, and checked when the
card is validated: before registry/decoder.py lists a tensor per layer, before config.json is compared and before
the runtime allocates anything, so a card cannot make `validate --weights` or `runtime.load` do unbounded work.
Every float of a card is finite (`Strict` refuses .inf and .nan).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    field_validator,
    model_validator,
)

__all__ = [
    "GATED_MLPS",
    "ID_PATTERN",
    "MAX_CONTEXT",
    "MAX_HEADS",
    "MAX_HEAD_DIM",
    "MAX_LAYERS",
    "MAX_POSITION_OFFSET",
    "MAX_VOCAB",
    "MAX_WIDTH",
    "MLP_KINDS",
    "AlibiPositions",
    "Architecture",
    "Bias",
    "DynamicRopeScaling",
    "LearnedPositions",
    "LinearRopeScaling",
    "Llama3RopeScaling",
    "Multipliers",
    "Norm",
    "Residual",
    "RotaryPositions",
    "Strict",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
"""Card ids, format and layout names: lowercase a-z, 0-9, '.', '_', '-'."""

# Upper bounds on an architecture's sizes. Each is far above the largest published model (in brackets), so no real
# card meets one, and each keeps what a card implies finite before any work is done per layer or per position.
MAX_LAYERS = 1024
"""layers [126, Llama 3.1 405B]: registry/decoder.py lists every layer's tensors, `validate --weights` compares
them with the checkpoint, the runtime builds a module per layer; 10**8 layers would be gigabytes of names."""
MAX_WIDTH = 2**20
"""hidden_size and ffn_size, 1,048,576 [hidden 18,432 and ffn 73,728, Nemotron-4 340B]: every weight shape and
the parameter count are products of these."""
MAX_HEADS = 1024
"""heads and kv_heads [128, Falcon-40B and Llama 3.1 405B]: per-head tensors and the attention's head split."""
MAX_HEAD_DIM = 2**16
"""head_dim, 65,536 [256, Gemma]: the rotary tables and every attention shape are multiples of it."""
MAX_VOCAB = 2**22
"""vocab_size, 4,194,304 [262,144, Gemma 3]: the embedding and lm_head have this many rows; token ids are below it."""
MAX_CONTEXT = 2**24
"""context_length, sliding_window and a rope scaling's original_context_length, 16,777,216 [10M, Llama 4 Scout]:
position tables, masks and the memory planner's KV cache grow with it (a YAML `1.0e30` is an integer to pydantic)."""
MAX_POSITION_OFFSET = 1024
"""A learned position table's unused leading rows [2, OPT]."""


class Strict(BaseModel):
    """Every card model: frozen, unknown fields rejected (a typo is an error, not an ignored setting), and every
    float finite: .inf or .nan as an eps, rope base, temperature or penalty is refused, naming the field, instead of
    turning a forward pass into NaNs."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LinearRopeScaling(Strict):
    """Positions divided by `factor` before rotation (transformers' rope_type "linear")."""

    kind: Literal["linear"] = "linear"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]


class DynamicRopeScaling(Strict):
    """Dynamic NTK (transformers' rope_type "dynamic"): while a forward pass reaches position L beyond
    `original_context_length`, the base grows to base * (factor * L / original - (factor - 1)) ** (dims / (dims - 2))."""

    kind: Literal["dynamic"] = "dynamic"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]
    original_context_length: Annotated[int, Field(gt=0, le=MAX_CONTEXT)]


class Llama3RopeScaling(Strict):
    """Llama 3.1's frequency scaling (rope_type "llama3"): wavelengths longer than original / low_freq_factor are
    divided by `factor`, those shorter than original / high_freq_factor kept, the ones between interpolated."""

    kind: Literal["llama3"] = "llama3"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]
    low_freq_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    high_freq_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    original_context_length: Annotated[int, Field(gt=0, le=MAX_CONTEXT)]

    @model_validator(mode="after")
    def _factors_are_ordered(self) -> Llama3RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor {self.high_freq_factor} must exceed low_freq_factor {self.low_freq_factor}"
            )
        return self


RopeScaling = Annotated[LinearRopeScaling | DynamicRopeScaling | Llama3RopeScaling, Field(discriminator="kind")]


class RotaryPositions(Strict):
    """Rotary embeddings on the first `fraction` of each head's dims.

    rotation half_split (GPT-NeoX, Llama, ...): the rotated dims' halves [a | b] pair up, a_j with b_j;
    interleaved (GPT-J): neighbours pair up, x_2j with x_2j+1."""

    kind: Literal["rotary"] = "rotary"
    fraction: float = Field(default=1.0, description="Share of each head's dimensions that rotate, in (0, 1].")
    base: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 10000.0
    rotation: Literal["half_split", "interleaved"] = Field(
        default="half_split", description="Which dims pair up: halves (GPT-NeoX, Llama) or neighbours (GPT-J)."
    )
    scaling: RopeScaling | None = Field(default=None, description="Frequency scaling for long contexts.")

    @field_validator("fraction")
    @classmethod
    def _fraction_in_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"rotary fraction must be in (0, 1], got {value}")
        return value


class AlibiPositions(Strict):
    """Attention with linear biases: bias[h, i, j] = -slope_h * (i - j), standard slopes."""

    kind: Literal["alibi"] = "alibi"


class LearnedPositions(Strict):
    """A learned position embedding added to the token embedding (GPT-2, OPT): position p reads row p + offset
    of a table with context_length + offset rows (OPT keeps two unused rows first: offset 2)."""

    kind: Literal["learned"] = "learned"
    offset: Annotated[int, Field(ge=0, le=MAX_POSITION_OFFSET)] = 0


Positions = Annotated[RotaryPositions | AlibiPositions | LearnedPositions, Field(discriminator="kind")]


class Norm(Strict):
    """The block, final (and embedding or q/k) norms: LayerNorm with or without a bias, or RMSNorm, whose weight
    scales as stored or, with `unit_offset` (Gemma), as 1 + weight."""

    kind: Literal["layernorm", "rmsnorm"]
    eps: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-5
    bias: bool = Field(default=True, description="LayerNorm has a bias (ignored for rmsnorm, which has none).")
    unit_offset: bool = Field(default=False, description="RMSNorm multiplies by (1 + weight) (Gemma).")

    @model_validator(mode="after")
    def _offset_needs_rmsnorm(self) -> Norm:
        if self.unit_offset and self.kind != "rmsnorm":
            raise ValueError("unit_offset (a (1 + weight) scale) is an RMSNorm convention; use it with kind: rmsnorm")
        return self


class Residual(Strict):
    """How a block adds attention and MLP to the residual stream.

    sequential:                      parallel (shared_norm=false):      parallel (shared_norm=true):
      x = x + attn(norm1(x))           x = x + attn(norm1(x))             h = norm(x)
      x = x + mlp(norm2(x))                  + mlp(norm2(x))              x = x + attn(h) + mlp(h)
    """

    kind: Literal["parallel", "sequential"]
    shared_norm: bool = Field(default=False, description="Attention and MLP read one norm (parallel only).")

    @model_validator(mode="after")
    def _shared_norm_needs_parallel(self) -> Residual:
        if self.shared_norm and self.kind != "parallel":
            raise ValueError(
                "shared_norm is only possible with a parallel residual; set kind: parallel or drop shared_norm"
            )
        return self


class Bias(Strict):
    qkv: bool = False
    attention_output: bool = False
    mlp: bool = False
    lm_head: bool = False


class Multipliers(Strict):
    """Scalar multipliers (muP): the defaults are those of a standard transformer."""

    embedding: PositiveFloat = Field(default=1.0, description="Token embeddings are multiplied by this.")
    attention: Literal["inverse_sqrt_head_dim", "inverse_head_dim"] = Field(
        default="inverse_sqrt_head_dim",
        description="Attention scores q·k are scaled by 1/sqrt(head_dim) or 1/head_dim.",
    )
    logits: PositiveFloat = Field(default=1.0, description="Output logits are multiplied by this.")


MLP_KINDS: dict[str, str] = {
    "gelu": "down(gelu(up(x))), exact erf GELU",
    "gelu_tanh": "down(gelu(up(x))), GELU's tanh approximation (gelu_new, gelu_pytorch_tanh)",
    "relu": "down(relu(up(x)))",
    "swiglu": "down(silu(gate(x)) * up(x))",
    "geglu": "down(gelu(gate(x)) * up(x)), exact erf GELU",
    "geglu_tanh": "down(gelu(gate(x)) * up(x)), tanh approximation (Gemma)",
}
"""The MLPs the decoder runs; the gated ones (with a gate projection) are GATED_MLPS."""
GATED_MLPS = frozenset({"swiglu", "geglu", "geglu_tanh"})


class Architecture(Strict):
    """The decoder's shape. Sizes are bounded, far above any published model, and checked before anything is
    derived from them: layers <= 1024; hidden_size, ffn_size <= 2**20; heads, kv_heads <= 1024; head_dim <= 2**16;
    vocab_size <= 2**22; context_length, sliding_window <= 2**24."""

    family: str = Field(description="Human-readable model family, e.g. GPT-NeoX, Llama.")
    checkpoint_layout: Annotated[str, Field(pattern=ID_PATTERN)] = Field(
        description="Name of the registered checkpoint layout the weights use (gpt-neox, falcon, llama, btlm, ...)."
    )
    layers: Annotated[int, Field(gt=0, le=MAX_LAYERS)]
    hidden_size: Annotated[int, Field(gt=0, le=MAX_WIDTH)]
    heads: Annotated[int, Field(gt=0, le=MAX_HEADS)]
    kv_heads: Annotated[int, Field(gt=0, le=MAX_HEADS)] = Field(
        description="Key/value heads: = heads for MHA, fewer for GQA, 1 for MQA."
    )
    head_dim: Annotated[int, Field(gt=0, le=MAX_HEAD_DIM)] = Field(
        default=None,  # type: ignore[assignment]  # filled in before validation; None only until checked
        description="Dimensions of each attention head; hidden_size / heads when left out (Gemma sets its own).",
    )
    ffn_size: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = Field(
        description="Inner size of the MLP (per branch for gated MLPs)."
    )
    vocab_size: Annotated[int, Field(gt=0, le=MAX_VOCAB)] = Field(
        description="Rows of the embedding matrix (may exceed the tokenizer's vocabulary)."
    )
    context_length: Annotated[int, Field(gt=0, le=MAX_CONTEXT)]
    positions: Positions
    norm: Norm
    embedding_norm: bool = Field(default=False, description="A norm (of `norm`'s kind) on the embeddings (BLOOM).")
    qk_norm: bool = Field(
        default=False,
        description="Queries and keys are normalized over each head's dims before rotary, one weight shared by the "
        "heads (Qwen3).",
    )
    mlp: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh"] = Field(
        description="; ".join(f"{k}: {v}" for k, v in MLP_KINDS.items())
    )
    residual: Residual
    sliding_window: Annotated[int, Field(gt=0, le=MAX_CONTEXT)] | None = Field(
        default=None,
        description="Each query sees itself and the sliding_window - 1 tokens before it (Mistral); none: all before.",
    )
    bias: Bias = Field(default_factory=Bias)
    tied_embeddings: bool
    multipliers: Multipliers = Field(default_factory=Multipliers)

    @model_validator(mode="before")
    @classmethod
    def _head_dim_defaults_to_an_even_split(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("head_dim") is None:
            hidden, heads = data.get("hidden_size"), data.get("heads")
            if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and not hidden % heads:
                data = {**data, "head_dim": hidden // heads}  # otherwise left None, for the check below
        return data

    @property
    def gated_mlp(self) -> bool:
        """The MLP has a gate projection (swiglu, geglu, geglu_tanh)."""
        return self.mlp in GATED_MLPS

    @property
    def unscaled_context_length(self) -> int:
        """The context a checkpoint's config states (max_position_embeddings): under dynamic NTK scaling the
        original one, which the scaling stretches to context_length; otherwise context_length itself."""
        if isinstance(self.positions, RotaryPositions) and isinstance(self.positions.scaling, DynamicRopeScaling):
            return self.positions.scaling.original_context_length
        return self.context_length

    @property
    def rotary_dims(self) -> int:
        """Dimensions of each head that rotate (0 without rotary positions)."""
        if isinstance(self.positions, RotaryPositions):
            return int(self.positions.fraction * self.head_dim)
        return 0

    @model_validator(mode="after")
    def _shapes_are_consistent(self) -> Architecture:
        if self.head_dim is None:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}; each head gets hidden_size / "
                "heads dimensions unless head_dim says otherwise, so pick values that divide or set head_dim"
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}; "
                "each key/value head must serve a whole number of query heads"
            )
        if isinstance(self.positions, RotaryPositions):
            exact = self.positions.fraction * self.head_dim
            if exact != int(exact) or int(exact) % 2:
                raise ValueError(
                    f"rotary fraction {self.positions.fraction} of head_dim {self.head_dim} gives {exact:g} dimensions; "
                    "rotary needs a whole, even number of dimensions"
                )
        if self.sliding_window is not None and self.sliding_window > self.context_length:
            raise ValueError(
                f"sliding_window {self.sliding_window} exceeds context_length {self.context_length}, so it "
                "never limits attention; drop sliding_window (or fix context_length)"
            )
        return self
