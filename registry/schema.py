"""The card schema: one model declared as validated data.

A card is a YAML file (or a dict, or a `Card` built in Python) with these sections::

    id, name, aliases, publisher, license, languages, base_model, links   identity
    source        where the weights live: hub repo, revision(s), file format, pinned files
    parameters    the count the upstream card states, and why it may differ from the architecture
    architecture  the decoder's shape: everything the runtime needs to build it
    tokenizer     files, bos/eos/pad, the special tokens and prompt markers
    prompt_format how messages become the text the model sees (or the name of a registered format)
    generation    defaults, with Hugging Face's option names
    evaluation    results the upstream card reports

Every model is frozen and forbids unknown fields, so a typo in a card is an error, not a silently
ignored setting. Cross-field rules live in model validators next to the fields they relate.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "MLP_KINDS",
    "SCHEMA_VERSION",
    "AlibiPositions",
    "Architecture",
    "Bias",
    "Card",
    "DynamicRopeScaling",
    "EvalResult",
    "GenerationDefaults",
    "LearnedPositions",
    "LinearRopeScaling",
    "Links",
    "Llama3RopeScaling",
    "Marker",
    "Multipliers",
    "Norm",
    "ParameterCount",
    "PinnedFile",
    "PromptFormat",
    "Residual",
    "RotaryPositions",
    "Source",
    "SystemPrompt",
    "TokenSpec",
    "Tokenizer",
    "Turn",
]

SCHEMA_VERSION = 1

_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# An SPDX license expression ("Apache-2.0", "MIT OR Apache-2.0"), or NOASSERTION when the upstream
# card states none. Checked for shape, not against the full SPDX list.
_SPDX_PATTERN = re.compile(r"^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- identity & source -----------------------------------------------------------------------------


class Links(_Strict):
    homepage: str | None = None
    repository: str | None = None
    paper: str | None = None


class PinnedFile(_Strict):
    """A file of the weights repository with its expected content, for offline verification."""

    path: str = Field(description="Path inside the checkpoint folder, with / separators (e.g. model.safetensors).")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: NonNegativeInt

    @field_validator("path")
    @classmethod
    def _path_stays_inside(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"pinned path {value!r} must be relative to the checkpoint folder, with / separators and no "
                "empty, '.' or '..' parts (e.g. model.safetensors)"
            )
        return value


class Source(_Strict):
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")] | None = Field(
        default=None,
        description="Hugging Face hub repository, owner/name. May be left out by a card whose weights are bundled "
        "or always given locally (--weights DIR, weights=DIR); downloading and cache lookups then refuse, "
        "saying so.",
    )
    revision: str = Field(default="main", description="The revision loaded by default.")
    format: Literal["safetensors", "pytorch"] = Field(
        description="Weight file format in the repository. `pytorch` is a pickle: refused unless the user opts in."
    )
    revisions: list[str] = Field(
        default_factory=list, description="Other revisions (branches) the repository publishes."
    )
    revision_aliases: dict[str, str] = Field(
        default_factory=dict, description="Revisions that name the same checkpoint, e.g. main: step143000."
    )
    files: list[PinnedFile] = Field(default_factory=list, description="Files pinned by sha256 and size.")
    bundled: Annotated[str, Field(pattern=r"^[\w.]+:[\w./-]+$")] | None = Field(
        default=None,
        description="Weights shipped inside a Python package, as 'package:folder' (e.g. modeldeck.cards:tiny-neox); "
        "used instead of the hub, so the model runs with no network.",
    )

    @model_validator(mode="after")
    def _revisions_are_consistent(self) -> Source:
        paths = [f.path for f in self.files]
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"files pins {', '.join(repeated)} more than once; pin each file once")
        duplicates = sorted({r for r in self.revisions if self.revisions.count(r) > 1})
        if duplicates:
            raise ValueError(f"revisions lists {', '.join(duplicates)} more than once; list each revision once")
        for alias, target in self.revision_aliases.items():
            if self.revisions and target not in self.revisions:
                raise ValueError(
                    f"revision_aliases maps {alias!r} to {target!r}, which is not in revisions; add it there or fix the alias"
                )
        return self


class ParameterCount(_Strict):
    """What the upstream card states; the registry computes the architecture's count and compares."""

    stated: PositiveInt | None = Field(default=None, description="Total parameters as the upstream card states them.")
    stated_non_embedding: PositiveInt | None = Field(default=None, description="Non-embedding parameters, if stated.")
    quoted: str | None = Field(default=None, description="The upstream card's words, verbatim.")
    stored_extra: NonNegativeInt = Field(
        default=0,
        description="Parameters the original implementation stores beyond the architecture's weights "
        "(e.g. ALiBi slopes kept as an nn.Parameter). Explained only together with `note`.",
    )
    note: str | None = Field(default=None, description="Explains any difference from the computed count.")

    @model_validator(mode="after")
    def _extra_needs_a_note(self) -> ParameterCount:
        if self.stored_extra and not self.note:
            raise ValueError("stored_extra is set without a note; say what the extra parameters are")
        return self


# --- architecture --------------------------------------------------------------------------------


class LinearRopeScaling(_Strict):
    """Positions divided by `factor` before rotation (transformers' rope_type "linear")."""

    kind: Literal["linear"] = "linear"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]


class DynamicRopeScaling(_Strict):
    """Dynamic NTK (transformers' rope_type "dynamic"): while a forward pass reaches position L beyond
    `original_context_length`, the base grows to base * (factor * L / original - (factor - 1)) ** (dims / (dims - 2))."""

    kind: Literal["dynamic"] = "dynamic"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]
    original_context_length: PositiveInt


class Llama3RopeScaling(_Strict):
    """Llama 3.1's frequency scaling (rope_type "llama3"): wavelengths longer than original / low_freq_factor are
    divided by `factor`, those shorter than original / high_freq_factor kept, the ones between interpolated."""

    kind: Literal["llama3"] = "llama3"
    factor: Annotated[float, Field(ge=1.0, allow_inf_nan=False)]
    low_freq_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    high_freq_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    original_context_length: PositiveInt

    @model_validator(mode="after")
    def _factors_are_ordered(self) -> Llama3RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor {self.high_freq_factor} must exceed low_freq_factor {self.low_freq_factor}"
            )
        return self


RopeScaling = Annotated[LinearRopeScaling | DynamicRopeScaling | Llama3RopeScaling, Field(discriminator="kind")]


class RotaryPositions(_Strict):
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


class AlibiPositions(_Strict):
    """Attention with linear biases: bias[h, i, j] = -slope_h * (i - j), standard slopes."""

    kind: Literal["alibi"] = "alibi"


class LearnedPositions(_Strict):
    """A learned position embedding added to the token embedding (GPT-2, OPT): position p reads row p + offset
    of a table with context_length + offset rows (OPT keeps two unused rows first: offset 2)."""

    kind: Literal["learned"] = "learned"
    offset: NonNegativeInt = 0


Positions = Annotated[RotaryPositions | AlibiPositions | LearnedPositions, Field(discriminator="kind")]


class Norm(_Strict):
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


class Residual(_Strict):
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


class Bias(_Strict):
    qkv: bool = False
    attention_output: bool = False
    mlp: bool = False
    lm_head: bool = False


class Multipliers(_Strict):
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


class Architecture(_Strict):
    family: str = Field(description="Human-readable model family, e.g. GPT-NeoX, Llama.")
    checkpoint_layout: Annotated[str, Field(pattern=_ID_PATTERN)] = Field(
        description="Name of the registered checkpoint layout the weights use (gpt-neox, falcon, llama, btlm, ...)."
    )
    layers: PositiveInt
    hidden_size: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt = Field(description="Key/value heads: = heads for MHA, fewer for GQA, 1 for MQA.")
    head_dim: PositiveInt = Field(
        default=None,  # type: ignore[assignment]  # filled in before validation; None only until checked
        description="Dimensions of each attention head; hidden_size / heads when left out (Gemma sets its own).",
    )
    ffn_size: PositiveInt = Field(description="Inner size of the MLP (per branch for gated MLPs).")
    vocab_size: PositiveInt = Field(description="Rows of the embedding matrix (may exceed the tokenizer's vocabulary).")
    context_length: PositiveInt
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
    sliding_window: PositiveInt | None = Field(
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


# --- tokenizer -----------------------------------------------------------------------------------


class TokenSpec(_Strict):
    text: Annotated[str, Field(min_length=1)]
    id: NonNegativeInt


class Marker(_Strict):
    """A string the prompt format relies on, and whether the tokenizer treats it as one special token."""

    text: Annotated[str, Field(min_length=1)]
    special: bool = Field(description="True: one special token. False: tokenized as ordinary text.")


class Tokenizer(_Strict):
    kind: Literal["tokenizers", "sentencepiece", "gpt2-bpe"] = Field(
        description="tokenizers: a tokenizer.json; sentencepiece: a tokenizer.model; gpt2-bpe: vocab.json + merges.txt."
    )
    files: Annotated[list[str], Field(min_length=1)]
    add_bos: bool = Field(
        default=False,
        description="The tokenizer's own config prepends bos when encoding. Informational: rendered prompts are "
        "encoded without automatic special tokens, so a format that needs bos writes it (begin or a turn prefix).",
    )
    bos: TokenSpec | None = None
    eos: TokenSpec
    pad: TokenSpec | None = None
    unk: TokenSpec | None = None
    special_tokens: list[TokenSpec] = Field(
        default_factory=list, description="Other special tokens the tokenizer declares (besides bos/eos/pad/unk)."
    )
    markers: list[Marker] = Field(default_factory=list, description="Strings the prompt format relies on.")

    def declared_special(self) -> dict[str, int]:
        """Every special token the card declares for this tokenizer: text -> id."""
        named = [self.bos, self.eos, self.pad, self.unk]
        return {t.text: t.id for t in [*(t for t in named if t is not None), *self.special_tokens]}

    @model_validator(mode="after")
    def _tokens_are_consistent(self) -> Tokenizer:
        seen: dict[str, int] = {}
        named = [self.bos, self.eos, self.pad, self.unk]
        for token in [*(t for t in named if t is not None), *self.special_tokens]:
            if seen.setdefault(token.text, token.id) != token.id:
                raise ValueError(
                    f"special token {token.text!r} is declared with two ids, {seen[token.text]} and {token.id}"
                )
        texts = [m.text for m in self.markers]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise ValueError(f"markers lists {', '.join(map(repr, repeated))} more than once")
        return self


# --- prompt format -------------------------------------------------------------------------------


class Turn(_Strict):
    """Text around one message: prefix + content + suffix."""

    prefix: str = ""
    suffix: str = ""


class SystemPrompt(_Strict):
    supported: bool = False
    turn: Turn = Field(default_factory=Turn, description="Text around the system prompt when supported.")
    when_unsupported: Literal["error", "prepend_to_first_user"] = Field(
        default="error",
        description="What a system prompt given to a model without one does: an error, or it is prepended to the "
        "first user message followed by `separator`.",
    )
    separator: str = "\n\n"


class PromptFormat(_Strict):
    """A declarative prompt format: no code and no templates, so it can be checked and exported.

    A conversation renders as::

        begin + [system.turn around the system prompt] + (user turn + assistant turn)* + user turn + answer_prefix
    """

    name: Annotated[str, Field(pattern=_ID_PATTERN)]
    description: str | None = None
    begin: str = Field(default="", description="Text at the very start of the prompt.")
    system: SystemPrompt = Field(default_factory=SystemPrompt)
    user: Turn = Field(default_factory=Turn)
    assistant: Turn = Field(default_factory=Turn, description="Text around earlier assistant turns in a conversation.")
    answer_prefix: str = Field(default="", description="Text that starts the model's answer, after the last user turn.")
    stop: list[str] = Field(default_factory=list, description="Generation ends before any of these strings.")
    multi_turn: bool = True
    strip_response: Literal["none", "leading_space", "whitespace"] = Field(
        default="none", description="Clean-up of the generated text: drop one leading space, or strip whitespace."
    )

    @field_validator("stop")
    @classmethod
    def _stops_are_nonempty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


# --- generation & evaluation ---------------------------------------------------------------------


class GenerationDefaults(_Strict):
    """Defaults for generate(); names and meanings are Hugging Face's."""

    max_new_tokens: PositiveInt = 256
    min_new_tokens: NonNegativeInt = 0
    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    top_k: PositiveInt | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    repetition_penalty: PositiveFloat = 1.0
    renormalize_logits: bool = False
    num_beams: PositiveInt = 1
    length_penalty: float | None = None
    early_stopping: bool | None = None
    num_return_sequences: PositiveInt = 1

    @model_validator(mode="after")
    def _lengths_are_consistent(self) -> GenerationDefaults:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")
        if self.num_return_sequences > 1 and not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences {self.num_return_sequences} with greedy decoding (do_sample false, "
                f"num_beams {self.num_beams}) would return identical sequences; enable do_sample or raise num_beams"
            )
        return self


class EvalResult(_Strict):
    task: str
    metric: str
    value: float
    stderr: float | None = None
    unit: Literal["fraction", "percent"] = "fraction"
    version: str | None = None
    harness: str | None = Field(default=None, description="e.g. lm-evaluation-harness")


# --- the card ------------------------------------------------------------------------------------


class Card(_Strict):
    schema_version: Literal[1] = Field(description="Version of this schema the card is written for.")
    id: Annotated[str, Field(pattern=_ID_PATTERN, description="Unique, lowercase: a-z, 0-9, '.', '_', '-'.")]
    name: str = Field(description="Display name.")
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    publisher: str
    license: str = Field(description="SPDX license expression, or NOASSERTION when the upstream card states none.")
    languages: list[str] = Field(default_factory=list)
    base_model: str | None = None
    description: str | None = None
    links: Links = Field(default_factory=Links)
    source: Source
    parameters: ParameterCount = Field(default_factory=ParameterCount)
    architecture: Architecture
    tokenizer: Tokenizer
    prompt_format: Annotated[
        Annotated[PromptFormat, Tag("inline")] | Annotated[str, Tag("name"), Field(pattern=_ID_PATTERN)],
        Discriminator(lambda v: "name" if isinstance(v, str) else "inline"),
    ] = Field(description="An inline prompt format, or the name of a registered one (e.g. plain).")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Default weight dtype; auto uses the checkpoint's own."
    )
    evaluation: list[EvalResult] = Field(default_factory=list)

    @field_validator("license")
    @classmethod
    def _license_is_spdx(cls, value: str) -> str:
        if not _SPDX_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an SPDX license expression (e.g. Apache-2.0, MIT, or NOASSERTION)")
        return value

    @property
    def format(self) -> PromptFormat:
        """The prompt format, once the registry has resolved a named reference."""
        if isinstance(self.prompt_format, str):
            raise LookupError(
                f"card {self.id!r} names prompt format {self.prompt_format!r}, which has not been resolved; "
                "get the card from the registry (modeldeck.registry.get) so named formats are filled in"
            )
        return self.prompt_format

    @model_validator(mode="after")
    def _card_is_consistent(self) -> Card:
        arch, tok = self.architecture, self.tokenizer
        named = [("bos", tok.bos), ("eos", tok.eos), ("pad", tok.pad), ("unk", tok.unk)]
        named += [(f"special_tokens[{i}]", t) for i, t in enumerate(tok.special_tokens)]
        for role, token in named:
            if token is not None and token.id >= arch.vocab_size:
                raise ValueError(
                    f"tokenizer.{role} id {token.id} is outside the embedding (architecture.vocab_size {arch.vocab_size})"
                )
        if self.generation.max_new_tokens > arch.context_length:
            raise ValueError(
                f"generation.max_new_tokens {self.generation.max_new_tokens} exceeds "
                f"architecture.context_length {arch.context_length}"
            )
        seen = {self.id}
        for alias in self.aliases:
            if alias.lower() in seen:
                raise ValueError(f"alias {alias!r} repeats a name this card already has (names are case-insensitive)")
            seen.add(alias.lower())
        return self
