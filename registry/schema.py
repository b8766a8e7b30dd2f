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
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Annotated, Literal

from pydantic import (
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from modeldeck.registry.architecture import (  # the architecture section, re-exported
    ID_PATTERN,
    MLP_KINDS,
    AlibiPositions,
    Architecture,
    Bias,
    DynamicRopeScaling,
    LearnedPositions,
    LinearRopeScaling,
    Llama3RopeScaling,
    Multipliers,
    Norm,
    Residual,
    RotaryPositions,
    Strict,
)
from modeldeck.registry.diagnostics import short

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

# An SPDX license expression ("Apache-2.0", "MIT OR Apache-2.0"), or NOASSERTION when the upstream
# card states none. Checked for shape, not against the full SPDX list.
_SPDX_PATTERN = re.compile(r"^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$")

# A Hugging Face repository id as the hub accepts them (huggingface_hub's validate_repo_id): owner/name, each part
# 1-96 of A-Z a-z 0-9 . _ -, not starting or ending with '.' or '-'; '..', '--' and a '.git' ending are refused
# too. Nothing in it acts as a path: no '\\', no second '/', no leading '/', no '.' or '..' part.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_PATTERN = rf"^{_REPO_PART}/{_REPO_PART}$"
# source.bundled: a dotted Python package name, ':' and a folder inside the package, relative, with / separators
# and no '.' or '..' part (refused by the validator: a regex without lookahead cannot), so it cannot leave it.
_BUNDLED_PART = r"[A-Za-z0-9._-]+"
BUNDLED_PATTERN = rf"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:{_BUNDLED_PART}(?:/{_BUNDLED_PART})*$"
REPO_RULE = (
    "a Hugging Face repository id: owner/name (e.g. EleutherAI/pythia-1b), each part 1-96 of A-Z a-z 0-9 . _ -, "
    "not starting or ending with '.' or '-', with no '..' or '--' and no '.git' at the end"
)
BUNDLED_RULE = (
    "'package:folder' with a folder inside the package: an importable package (e.g. modeldeck.cards), ':', and a "
    "relative folder in it with / separators, no '.' or '..' parts and nothing absolute (e.g. modeldeck.cards:tiny-neox)"
)
PATTERN_RULES = {"source.repo": REPO_RULE, "source.bundled": BUNDLED_RULE}
"""What a field's pattern means, by the field's path: card files report a mismatch in these words."""


def _repeated(values: Iterable[str], show: Callable[[str], str] = str) -> str | None:
    """The values that occur more than once, sorted (the first five, then how many more), or None. Linear, with a
    Counter: a card listing 100,000 revisions validates in time proportional to them."""
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if not repeated:
        return None
    listed = ", ".join(map(show, repeated[:5]))
    return listed + (f" and {len(repeated) - 5:,} more" if len(repeated) > 5 else "")


# --- identity & source -----------------------------------------------------------------------------


class Links(Strict):
    homepage: str | None = None
    repository: str | None = None
    paper: str | None = None


class PinnedFile(Strict):
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


class Source(Strict):
    repo: Annotated[str, Field(pattern=REPO_PATTERN)] | None = Field(
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
    bundled: Annotated[str, Field(pattern=BUNDLED_PATTERN)] | None = Field(
        default=None,
        description="Weights shipped inside a Python package, as 'package:folder' (e.g. modeldeck.cards:tiny-neox); "
        "used instead of the hub, so the model runs with no network.",
    )

    @field_validator("repo")
    @classmethod
    def _repo_is_a_hub_id(cls, value: str | None) -> str | None:
        """Beyond the pattern: the hub's own rules, and no '..' (a repository id becomes a cache folder's name)."""
        if value is not None and (".." in value or "--" in value or value.endswith(".git")):
            raise ValueError(f"{short(value)} is not {REPO_RULE}")
        return value

    @field_validator("bundled")
    @classmethod
    def _bundled_stays_in_its_package(cls, value: str | None) -> str | None:
        """Beyond the pattern: no '.' or '..' part, so the folder cannot leave its package (`modeldeck verify` would
        read what `modeldeck.cards:../../../../etc` names)."""
        if value is not None and any(p in (".", "..") for p in value.partition(":")[2].split("/")):
            raise ValueError(f"{short(value)} is not {BUNDLED_RULE}")
        return value

    @model_validator(mode="after")
    def _revisions_are_consistent(self) -> Source:
        repeated = _repeated(f.path for f in self.files)
        if repeated:
            raise ValueError(f"files pins {repeated} more than once; pin each file once")
        duplicates = _repeated(self.revisions)
        if duplicates:
            raise ValueError(f"revisions lists {duplicates} more than once; list each revision once")
        listed = set(self.revisions)
        for alias, target in self.revision_aliases.items():
            if listed and target not in listed:
                raise ValueError(
                    f"revision_aliases maps {alias!r} to {target!r}, which is not in revisions; add it there or fix the alias"
                )
        return self


class ParameterCount(Strict):
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


# --- tokenizer -----------------------------------------------------------------------------------


class TokenSpec(Strict):
    text: Annotated[str, Field(min_length=1)]
    id: NonNegativeInt


class Marker(Strict):
    """A string the prompt format relies on, and whether the tokenizer treats it as one special token."""

    text: Annotated[str, Field(min_length=1)]
    special: bool = Field(description="True: one special token. False: tokenized as ordinary text.")


class Tokenizer(Strict):
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
        repeated = _repeated((m.text for m in self.markers), repr)
        if repeated:
            raise ValueError(f"markers lists {repeated} more than once; list each marker once")
        return self


# --- prompt format -------------------------------------------------------------------------------


class Turn(Strict):
    """Text around one message: prefix + content + suffix."""

    prefix: str = ""
    suffix: str = ""


class SystemPrompt(Strict):
    supported: bool = False
    turn: Turn = Field(default_factory=Turn, description="Text around the system prompt when supported.")
    when_unsupported: Literal["error", "prepend_to_first_user"] = Field(
        default="error",
        description="What a system prompt given to a model without one does: an error, or it is prepended to the "
        "first user message followed by `separator`.",
    )
    separator: str = "\n\n"


class PromptFormat(Strict):
    """A declarative prompt format: no code and no templates, so it can be checked and exported.

    A conversation renders as::

        begin + [system.turn around the system prompt] + (user turn + assistant turn)* + user turn + answer_prefix
    """

    name: Annotated[str, Field(pattern=ID_PATTERN)]
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


class GenerationDefaults(Strict):
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


class EvalResult(Strict):
    task: str
    metric: str
    value: float
    stderr: float | None = None
    unit: Literal["fraction", "percent"] = "fraction"
    version: str | None = None
    harness: str | None = Field(default=None, description="e.g. lm-evaluation-harness")


# --- the card ------------------------------------------------------------------------------------


class Card(Strict):
    schema_version: Literal[1] = Field(description="Version of this schema the card is written for.")
    id: Annotated[str, Field(pattern=ID_PATTERN, description="Unique, lowercase: a-z, 0-9, '.', '_', '-'.")]
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
        Annotated[PromptFormat, Tag("inline")] | Annotated[str, Tag("name"), Field(pattern=ID_PATTERN)],
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
