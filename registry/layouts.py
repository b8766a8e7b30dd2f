"""Checkpoint layouts as data: which tensor names a checkpoint uses for each part of the decoder.

Checkpoint tensor names stay here, at the edge. The runtime's decoder has one naming scheme; a
layout maps it to a family's names (``{i}`` is the block index) and says how a fused QKV projection
is arranged, so loading is a table lookup plus one documented reshape::

    per_head      GPT-NeoX   rows viewed as [heads, 3, head_dim]              (q, k, v interleaved per head)
    grouped       Falcon     rows viewed as [kv_heads, heads/kv_heads + 2, head_dim]
                             (per group: its query heads, then one key, then one value)
    concatenated  GPT-2/BTLM rows are [q | k | v]
    separate      Llama      three tensors, q_proj, k_proj, v_proj

Layouts contain no torch, so a checkpoint can be checked against a card from its safetensors
headers alone. Plugins add layouts through the ``register_checkpoint_layouts`` hook.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modeldeck.registry.decoder import LAYOUT_TENSORS
from modeldeck.registry.schema import Architecture

__all__ = ["CheckpointLayout", "ConfigMismatch"]


class ConfigMismatch(NamedTuple):
    key: str  # in config.json
    field: str  # in the card
    card_value: Any
    checkpoint_value: Any
    rule: str

    def describe(self) -> str:
        if self.field == "(unsupported)":
            return f"config.json sets {self.key}={self.checkpoint_value!r}, which switches on {self.rule}"
        return (
            f"config.json {self.key}={self.checkpoint_value!r} disagrees with the card's {self.field} "
            f"({self.card_value!r}; rule: {self.key} <-> {self.rule})"
        )


_ABSENT = object()


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
        value = getattr(value, part)
    return value


def _same(card_value: Any, checkpoint_value: Any) -> bool:
    if isinstance(card_value, bool) or isinstance(checkpoint_value, bool):
        return bool(card_value) == checkpoint_value if isinstance(checkpoint_value, bool) else False
    if isinstance(card_value, (int, float)) and isinstance(checkpoint_value, (int, float)):
        return math.isclose(card_value, checkpoint_value, rel_tol=1e-6)
    return bool(card_value == checkpoint_value)


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
    config: dict[str, str] = Field(
        default_factory=dict,
        description="config.json key ('a.b' for nested) -> the architecture field it must equal ('heads'), or a "
        "condition that must equal the key's boolean value ('residual.kind == parallel'); 'a * b' as a key is the "
        "product of two numeric keys. Absent keys are skipped.",
    )
    unsupported: dict[str, str] = Field(
        default_factory=dict,
        description="config.json keys that must be absent or null, with the feature they would switch on "
        "that the runtime does not implement (a checkpoint that sets one is refused, not run wrongly).",
    )
    ignored: list[str] = Field(
        default_factory=list, description="Checkpoint tensor name suffixes that carry no weights (e.g. rotary caches)."
    )

    @model_validator(mode="after")
    def _names_are_known(self) -> CheckpointLayout:
        unknown = sorted(set(self.tensors) - set(LAYOUT_TENSORS))
        if unknown:
            raise ValueError(
                f"layout {self.name!r} maps unknown decoder tensors {unknown}; known: {list(LAYOUT_TENSORS)}"
            )
        unmapped = sorted(set(self.transposed) - set(self.tensors))
        if unmapped:
            raise ValueError(f"layout {self.name!r} lists transposed tensors it does not map: {unmapped}")
        return self

    def config_mismatches(self, arch: Architecture, config: dict[str, Any]) -> list[ConfigMismatch]:
        """Where a checkpoint's config.json disagrees with the card's architecture."""
        found = []
        for key, rule in self.config.items():
            stored = _lookup(config, key)
            if stored is _ABSENT:
                continue
            field, _, literal = (part.strip() for part in rule.partition("=="))
            card_value = _field(arch, field)
            expected = str(card_value) == literal if literal else card_value
            if not _same(expected, stored):
                found.append(ConfigMismatch(key, f"architecture.{field}", card_value, stored, rule))
        for key, feature in self.unsupported.items():
            stored = _lookup(config, key)
            if stored is not _ABSENT and stored is not None:
                found.append(
                    ConfigMismatch(key, "(unsupported)", None, stored, f"{feature}, which modeldeck does not implement")
                )
        return found

    def checkpoint_name(self, decoder_name: str, block: int | None = None) -> str:
        template = self.tensors[decoder_name]
        return template if block is None else template.format(i=block)
