"""Checkpoint layouts as data: which tensor names a checkpoint uses for each part of the decoder.

Checkpoint tensor names stay here, at the edge. The runtime's decoder has one naming scheme; a
layout maps it to a family's names (``{i}`` is the block index) and says how a fused QKV projection
is arranged, so loading is a table lookup plus one documented reshape::

    per_head      GPT-NeoX   rows viewed as [heads, 3, head_dim]              (q, k, v interleaved per head)
    grouped       Falcon     rows viewed as [kv_heads, heads/kv_heads + 2, head_dim]
                             (per group: its query heads, then one key, then one value)
    concatenated  GPT-2/BTLM rows are [q | k | v]
    separate      Llama      three tensors, q_proj, k_proj, v_proj

A layout's `config` table says how each config.json key relates to the card's architecture; the same table
checks a checkpoint against a card (`config_mismatches`) and, read in reverse, writes a card's architecture from
a checkpoint (`architecture_from_config`, what `modeldeck card new` uses). A key's rule is a card field
("heads"), a condition ("residual.kind == parallel" for a boolean key), or a `ConfigRule` that also maps the
key's values to the card's ("hidden_act": silu -> swiglu). `implied` holds what a model_type fixes without a key
(Qwen2 always has q/k/v biases), `unsupported` the keys whose values switch on something the decoder cannot do.

One layout may serve several model_types that name tensors alike (Llama, Mistral, Qwen2, Gemma, ...): it maps
every tensor any of them has, and a tensor the card's architecture does not have is simply not read.

Layouts contain no torch, so a checkpoint can be checked against a card from its safetensors
headers alone. Plugins add layouts through the ``register_checkpoint_layouts`` hook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modeldeck.registry.decoder import LAYOUT_TENSORS
from modeldeck.registry.schema import Architecture

__all__ = ["GENERIC_CONFIG_KEYS", "CheckpointLayout", "ConfigMismatch", "ConfigRule", "FromConfig", "Unsupported"]


class ConfigMismatch(NamedTuple):
    key: str  # in config.json
    field: str  # in the card, or "(unsupported)" / "(inexpressible)" / "(implied)"
    card_value: Any
    checkpoint_value: Any
    rule: str

    def describe(self) -> str:
        if self.field == "(unsupported)":
            return f"config.json sets {self.key}={self.checkpoint_value!r}, which switches on {self.rule}"
        if self.field == "(inexpressible)":
            return f"config.json {self.key}={self.checkpoint_value!r}{self.rule}"
        return (
            f"config.json {self.key}={self.checkpoint_value!r} disagrees with the card's {self.field} "
            f"({self.card_value!r}; rule: {self.key} <-> {self.rule})"
        )


_ABSENT = object()

GENERIC_CONFIG_KEYS = frozenset(
    {
        "architectures",
        "transformers_version",
        "model_type",
        "torch_dtype",
        "dtype",
        "_name_or_path",
        "use_cache",
        "initializer_range",
        "init_std",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "torchscript",
        "id2label",
        "label2id",
        "problem_type",
        "tokenizer_class",
        "task_specific_params",
        "is_encoder_decoder",
        "chunk_size_feed_forward",
        "add_cross_attention",
        "cross_attention_hidden_size",
        "tie_encoder_decoder",
        "finetuning_task",
        "prefix",
        "pruned_heads",
        "layerdrop",
        "is_decoder",
        "auto_map",
        "custom_pipelines",
    }
)
"""config.json keys that describe training, tooling or token ids (checked from the tokenizer), never the decoder's
computation; with any key ending in 'dropout' or 'pdrop' they are read by no layout and never reported as unread."""


def _lookup(config: dict[str, Any], key: str) -> Any:
    """config["a.b"] means config["a"]["b"] (transformers v5 nests rope settings in rope_parameters);
    "a * b" is the product of two numbers (BTLM's logit multiplier is mup_output_alpha * mup_width_scale)."""
    if " * " in key:
        factors = [_lookup(config, part.strip()) for part in key.split(" * ")]
        if any(f is _ABSENT or isinstance(f, bool) or not isinstance(f, (int, float)) for f in factors):
            return _ABSENT
        return math.prod(factors)
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _field(arch: Architecture, path: str) -> Any:
    value: Any = arch
    for part in path.split("."):
        value = getattr(value, part, None)
    return value


def _same(card_value: Any, checkpoint_value: Any) -> bool:
    if isinstance(card_value, bool) or isinstance(checkpoint_value, bool):
        return bool(card_value) == checkpoint_value if isinstance(checkpoint_value, bool) else False
    if isinstance(card_value, (int, float)) and isinstance(checkpoint_value, (int, float)):
        return math.isclose(card_value, checkpoint_value, rel_tol=1e-6)
    return bool(card_value == checkpoint_value)


def _text(value: Any) -> str:
    """A config value as a `ConfigRule.values` key: strings as they are, anything else as JSON (true, null, 2)."""
    return value if isinstance(value, str) else json.dumps(value)


def _literal(text: str) -> Any:
    """The card value a condition's literal stands for: None, True/False, a number, or the text itself."""
    named = {"None": None, "none": None, "null": None, "True": True, "true": True, "False": False, "false": False}
    if text in named:
        return named[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class _Condition(NamedTuple):
    path: str
    op: Literal["", "==", "!="]  # "": the field itself
    literal: str

    @classmethod
    def parse(cls, text: str) -> _Condition:
        for op in ("==", "!="):
            if op in text:
                path, _, literal = (part.strip() for part in text.partition(op))
                return cls(path, op, literal)
        return cls(text.strip(), "", "")

    def holds(self, arch: Architecture) -> Any:
        """The field's value, or whether the condition holds for this architecture."""
        value = _field(arch, self.path)
        if not self.op:
            return value
        equal = str(value) == self.literal or value == _literal(self.literal)
        return equal if self.op == "==" else not equal


class ConfigRule(BaseModel):
    """How one config.json key relates to the card's architecture.

    fields: the card fields the key sets ("heads"), or conditions its boolean value states
            ("residual.kind == parallel", "sliding_window != None"); one key may set several (attention_bias:
            bias.qkv and bias.attention_output)
    values: the key's values and what each means for the card (hidden_act: {silu: swiglu, gelu_new: ...}); a value
            not listed is one modeldeck cannot express, an error that names it. Keys are the config values as text
            (JSON for non-strings: true, false, null)
    when:   another config key: the rule applies only while that key is absent or true (Qwen2's sliding_window
            counts only with use_sliding_window)
    each:   the key holds a list, each item mapped through `values` (layer_types)
    null:   what a null value stands for, as an expression over the card's fields ("4 * hidden_size": GPT-2's
            n_inner); without it, null is compared as it is (Mistral's sliding_window: null = no window)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(min_length=1)
    values: dict[str, Any] = Field(default_factory=dict)
    when: str | None = None
    each: bool = False
    null: str | None = None

    @field_validator("fields", mode="before")
    @classmethod
    def _one_field_as_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def describe(self) -> str:
        mapping = f" ({', '.join(f'{k} -> {v}' for k, v in self.values.items())})" if self.values else ""
        return f"{', '.join(self.fields)}{mapping}"


class Unsupported(BaseModel):
    """A config.json key whose values other than `allowed` switch on `feature`, which the decoder cannot run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str
    allowed: list[Any] = Field(default_factory=lambda: [None, False])


class FromConfig(NamedTuple):
    """What a layout's rules read from a config.json: card architecture fields (dotted paths -> values), where each
    came from (the config key, the model_type, or the layout's default), the keys that say something modeldeck
    cannot express or run, and the keys no rule reads."""

    fields: dict[str, Any]
    sources: dict[str, str]
    problems: list[ConfigMismatch]
    unread: list[str]


def _implied_value(value: Any, fields: dict[str, Any] | Architecture) -> Any:
    """An implied value: a literal, or an expression over the card's fields as text: "sqrt(FIELD)" (Gemma
    scales embeddings by sqrt(hidden_size)) or "N * FIELD" (GPT-2's MLP is 4 * hidden_size wide)."""
    if not isinstance(value, str):
        return value

    def read(name: str) -> Any:
        return fields.get(name) if isinstance(fields, dict) else _field(fields, name)

    if value.startswith("sqrt(") and value.endswith(")"):
        base = read(value[5:-1])
        return math.sqrt(base) if isinstance(base, (int, float)) else None
    factor, star, name = value.partition(" * ")
    if star and factor.isdigit():
        base = read(name)
        return int(factor) * base if isinstance(base, int) else None
    return value


def _per_field(rule: ConfigRule, value: Any) -> list[Any]:
    """What a rule's value means for each of its fields: a mapped list gives one value per field."""
    if rule.values and isinstance(value, list) and len(value) == len(rule.fields) and not rule.each:
        return value
    return [value] * len(rule.fields)


class CheckpointLayout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    config_model_types: list[str] = Field(description="config.json `model_type` values this layout reads.")
    qkv: Literal["per_head", "grouped", "concatenated", "separate"]
    tensors: dict[str, str] = Field(description="Decoder tensor name -> checkpoint tensor name ({i}: block index).")
    transposed: list[str] = Field(
        default_factory=list, description="Decoder tensors stored [in, out] (GPT-2 Conv1D) rather than [out, in]."
    )
    config: dict[str, str | ConfigRule] = Field(
        default_factory=dict,
        description="config.json key ('a.b' for nested) -> the architecture field it must equal ('heads'), a "
        "condition that must equal the key's boolean value ('residual.kind == parallel'), or a ConfigRule; 'a * b' "
        "as a key is the product of two numeric keys. Absent keys are skipped.",
    )
    implied: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="model_type (or '*' for all) -> architecture fields its checkpoints always have, e.g. qwen2: "
        "{bias.qkv: true}; a value 'sqrt(FIELD)' is that field's square root.",
    )
    unsupported: dict[str, str | Unsupported] = Field(
        default_factory=dict,
        description="config.json keys whose values (other than absent, null or false, or an Unsupported's "
        "`allowed`) switch on a feature the runtime does not implement: a checkpoint that sets one is refused, "
        "not run wrongly.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Architecture fields a new card gets when config.json does not state them (BLOOM's context "
        "length; an expression such as '4 * hidden_size' is allowed); suggestions for `modeldeck card new`, never "
        "checked.",
    )
    ignored_config: list[str] = Field(
        default_factory=list, description="config.json keys of this family that do not change the computation."
    )
    ignored: list[str] = Field(
        default_factory=list, description="Checkpoint tensor name suffixes that carry no weights (e.g. rotary caches)."
    )

    @model_validator(mode="after")
    def _names_are_known(self) -> CheckpointLayout:
        unknown = sorted(set(self.tensors) - set(LAYOUT_TENSORS))
        if unknown:
            raise ValueError(
                f"layout {self.name!r} maps {', '.join(unknown)}, which the decoder does not have (a typo, or a "
                f"feature modeldeck's architecture vocabulary lacks); the names a layout may map: "
                f"{', '.join(LAYOUT_TENSORS)}"
            )
        unmapped = sorted(set(self.transposed) - set(self.tensors))
        if unmapped:
            raise ValueError(f"layout {self.name!r} lists transposed tensors it does not map: {unmapped}")
        return self

    def rules(self) -> dict[str, ConfigRule]:
        return {k: ConfigRule(fields=[r]) if isinstance(r, str) else r for k, r in self.config.items()}

    def unsupported_rules(self) -> dict[str, Unsupported]:
        return {k: Unsupported(feature=u) if isinstance(u, str) else u for k, u in self.unsupported.items()}

    def implied_for(self, model_type: str | None) -> dict[str, Any]:
        """The architecture fields a config of this model_type implies ('*' entries, then the model_type's)."""
        return {**self.implied.get("*", {}), **(self.implied.get(model_type, {}) if model_type else {})}

    def _applies(self, rule: ConfigRule, config: dict[str, Any]) -> bool:
        if rule.when is None:
            return True
        gate = _lookup(config, rule.when)
        return gate is _ABSENT or bool(gate)

    def _mapped(
        self, key: str, rule: ConfigRule, stored: Any, model_type: str | None, fields: dict[str, Any] | Architecture
    ) -> tuple[Any, ConfigMismatch | None]:
        """The card value a stored config value stands for (`fields`: the card's, for a null's expression), or why
        it stands for none."""
        if stored is None and rule.null is not None:
            named = _implied_value(rule.null, fields)  # an expression, or a bare field name
            if named == rule.null:
                named = fields.get(rule.null) if isinstance(fields, dict) else _field(fields, rule.null)
            return named, None
        if not rule.values:
            return stored, None
        items = stored if rule.each and isinstance(stored, list) else [stored]
        unknown = [item for item in items if _text(item) not in rule.values]
        mapped = {json.dumps(rule.values[_text(item)]) for item in items if _text(item) in rule.values}
        if unknown or len(mapped) > 1:
            family = f" (model_type {model_type})" if model_type else ""
            known = ", ".join(f"{k} -> {v}" for k, v in rule.values.items())
            what = f": {unknown[0]!r} is a value" if unknown else " mixes values in a way"
            return None, ConfigMismatch(
                key,
                "(inexpressible)",
                None,
                stored,
                f"{family}{what} that modeldeck's architecture vocabulary cannot express (it reads {known}); this "
                "checkpoint needs a decoder feature modeldeck does not have",
            )
        return json.loads(mapped.pop()), None

    def _stated(
        self, config: dict[str, Any], known: dict[str, Any] | Architecture, model_type: str | None
    ) -> Iterator[tuple[str, ConfigRule, Any, ConfigMismatch | None]]:
        """Each rule that applies to this config: its key, the rule, the card value the stored value stands for, or
        the problem when it stands for none (`known`: the card's fields, for expressions)."""
        for key, rule in self.rules().items():
            stored = _lookup(config, key)
            if stored is not _ABSENT and self._applies(rule, config):
                value, problem = self._mapped(key, rule, stored, model_type, known)
                yield key, rule, value, problem

    def _switched_on(self, config: dict[str, Any]) -> list[ConfigMismatch]:
        """The keys whose values switch on something the decoder cannot run."""
        found = []
        for key, unsupported in self.unsupported_rules().items():
            stored = _lookup(config, key)
            if stored is not _ABSENT and not any(
                _same(stored, ok) and type(stored) is type(ok) for ok in unsupported.allowed
            ):
                found.append(
                    ConfigMismatch(
                        key, "(unsupported)", None, stored, f"{unsupported.feature}, which modeldeck does not implement"
                    )
                )
        return found

    def config_mismatches(self, arch: Architecture, config: dict[str, Any]) -> list[ConfigMismatch]:
        """Where a checkpoint's config.json disagrees with the card's architecture."""
        model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
        found = []
        for key, rule, expected, problem in self._stated(config, arch, model_type):
            if problem is not None:
                found.append(problem)
                continue
            for text, wanted in zip(rule.fields, _per_field(rule, expected), strict=True):
                condition = _Condition.parse(text)
                if not _same(condition.holds(arch), wanted):
                    shown = _field(arch, condition.path)
                    found.append(
                        ConfigMismatch(
                            key, f"architecture.{condition.path}", shown, _lookup(config, key), rule.describe()
                        )
                    )
        for path, value in self.implied_for(model_type).items():
            card_value, wanted = _field(arch, path), _implied_value(value, arch)
            if not _same(card_value, wanted):
                found.append(
                    ConfigMismatch(
                        "model_type", f"architecture.{path}", card_value, model_type, f"{path} = {wanted!r} (implied)"
                    )
                )
        return found + self._switched_on(config)

    def architecture_from_config(self, config: dict[str, Any]) -> FromConfig:
        """The card architecture fields this config.json states (dotted paths), read through the same rules that
        check it, in reverse; the implied fields of its model_type; what cannot be expressed; the unread keys."""
        model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
        fields: dict[str, Any] = {}
        sources: dict[str, str] = {}
        problems: list[ConfigMismatch] = []
        for key, rule, value, problem in self._stated(config, fields, model_type):
            if problem is not None:
                problems.append(problem)
                continue
            for text, meant in zip(rule.fields, _per_field(rule, value), strict=True):
                condition = _Condition.parse(text)
                if condition.path in fields:
                    continue
                if not condition.op:
                    fields[condition.path], sources[condition.path] = meant, f"config.json {key}"
                elif bool(meant) == (condition.op == "=="):  # the condition states the field's value
                    fields[condition.path] = _literal(condition.literal)
                    sources[condition.path] = f"config.json {key}"
        for path, value in self.implied_for(model_type).items():
            fields[path] = _implied_value(value, fields)
            sources[path] = f"model_type {model_type}" if model_type else f"layout {self.name}"
        for path, value in self.defaults.items():
            if path not in fields:
                fields[path] = _implied_value(value, fields)
                sources[path] = f"layout {self.name}'s default (config.json does not say)"
        read = {*GENERIC_CONFIG_KEYS, *self.ignored_config, *self.unsupported}
        for key, rule in self.rules().items():
            read.update(part.strip().split(".")[0] for part in key.split(" * "))
            read.update([rule.when] if rule.when else [])
        unread = sorted(
            k for k in config if k not in read and not k.endswith(("dropout", "pdrop")) and k != "rope_parameters"
        )
        rope = config.get("rope_parameters")
        if isinstance(rope, dict):
            unread += sorted(f"rope_parameters.{k}" for k in rope if f"rope_parameters.{k}" not in self.rules())
        return FromConfig(fields, sources, problems + self._switched_on(config), unread)

    def checkpoint_name(self, decoder_name: str, block: int | None = None) -> str:
        template = self.tensors[decoder_name]
        return template if block is None else template.format(i=block)
