"""The architecture section of a new card, from config.json: the checkpoint layout's config rules read in
reverse (`CheckpointLayout.architecture_from_config`), completed with what follows from them (head_dim, kv_heads,
the dynamic-NTK context) and nested in the card schema's order. Each field keeps where it came from, for the card's
comments; a layout that cannot state a required field, or a config value modeldeck cannot express, is a problem the
caller names when no layout fits."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.schema import (
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
)

FAMILY_NAMES = {
    "gpt_neox": "GPT-NeoX",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "stablelm": "StableLM",
    "falcon": "Falcon",
    "RefinedWeb": "Falcon",
    "RefinedWebModel": "Falcon",
    "gpt2": "GPT-2",
    "gptj": "GPT-J",
    "opt": "OPT",
    "bloom": "BLOOM",
    "phi": "Phi",
    "starcoder2": "StarCoder2",
    "btlm": "BTLM",
    "gpt_jx": "BTLM",
}
"""architecture.family for a config.json model_type (any other model_type is written as it is)."""

_POSITIONS: dict[str, type[BaseModel]] = {
    "rotary": RotaryPositions,
    "alibi": AlibiPositions,
    "learned": LearnedPositions,
}
_SCALING: dict[str, type[BaseModel]] = {
    "linear": LinearRopeScaling,
    "dynamic": DynamicRopeScaling,
    "llama3": Llama3RopeScaling,
}
_SECTIONS: dict[str, type[BaseModel]] = {"norm": Norm, "residual": Residual, "bias": Bias, "multipliers": Multipliers}
_REQUIRED = ("positions.kind", "norm.kind", "residual.kind")


class _Arch(NamedTuple):
    data: dict[str, Any]  # the nested architecture, in the schema's order
    sources: dict[str, str]  # dotted path -> where it came from
    problems: list[str]  # config values modeldeck cannot express or run, fields config.json does not state
    unread: list[str]
    dropped: list[str]  # fields the layout read that the chosen union member does not have
    inexpressible: bool  # some problem is a config value modeldeck cannot express or run


def family(model_type: str | None, layout: CheckpointLayout) -> str:
    return FAMILY_NAMES.get(model_type or "", model_type or layout.name)


def _keys_for(layout: CheckpointLayout, path: str) -> list[str]:
    """The config.json keys whose rules set architecture field `path`."""
    return [
        key
        for key, rule in layout.rules().items()
        if any(re.split(r"==|!=", text)[0].strip() == path for text in rule.fields)
    ]


def architecture(layout: CheckpointLayout, config: dict[str, Any], model_type: str | None) -> _Arch:
    found = layout.architecture_from_config(config)
    fields, sources = dict(found.fields), dict(found.sources)
    problems = [m.describe() for m in found.problems]
    fields["family"] = family(model_type, layout)
    sources["family"] = f"model_type {model_type}" if model_type else f"layout {layout.name}"
    fields["checkpoint_layout"] = layout.name
    heads, hidden = fields.get("heads"), fields.get("hidden_size")
    head_dim = fields.get("head_dim")
    if head_dim is None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and not hidden % heads:
        head_dim = hidden // heads
    if "rotary_dims" in fields:  # GPT-J's rotary_dim: a derived property, as a share of head_dim
        dims, source = fields.pop("rotary_dims"), sources.pop("rotary_dims")
        if isinstance(dims, int) and isinstance(head_dim, int) and "positions.fraction" not in fields:
            fields["positions.fraction"] = dims / head_dim
            sources["positions.fraction"] = f"{source} {dims} / head_dim {head_dim}"
    if "unscaled_context_length" in fields:  # max_position_embeddings: the original context under dynamic NTK
        length, source = fields.pop("unscaled_context_length"), sources.pop("unscaled_context_length")
        factor = fields.get("positions.scaling.factor")
        if fields.get("positions.scaling.kind") == "dynamic" and isinstance(length, int):
            fields["positions.scaling.original_context_length"] = length
            sources["positions.scaling.original_context_length"] = source
            if isinstance(factor, (int, float)) and "context_length" not in fields:
                fields["context_length"] = int(length * factor)
                sources["context_length"] = f"{source} {length} x positions.scaling.factor {factor} (dynamic NTK)"
        elif "context_length" not in fields:
            fields["context_length"], sources["context_length"] = length, source
    if "kv_heads" not in fields and isinstance(heads, int):
        fields["kv_heads"] = heads
        sources["kv_heads"] = "= heads: config.json states no key/value heads (multi-head attention)"
    if "tied_embeddings" not in fields:
        fields["tied_embeddings"] = True
        sources["tied_embeddings"] = "transformers' default: config.json has no tie_word_embeddings"
    required = [
        n for n, info in Architecture.model_fields.items() if info.is_required() and f"{n}.kind" not in _REQUIRED
    ]
    refused = {m.key for m in found.problems}
    for path in [*required, *_REQUIRED]:
        stated = fields.get(path) is not None or any(f.startswith(f"{path}.") for f in fields)
        keys = _keys_for(layout, path)
        if not stated and not refused.intersection(keys):  # (a key that states it in a way modeldeck cannot read)
            reads = (
                f"layout {layout.name!r} reads it from {', '.join(keys)}"
                if keys
                else f"no rule of layout {layout.name!r} reads it and the layout implies no value for it: the layout "
                "needs an `implied` entry"
            )
            problems.append(f"config.json does not state architecture.{path} ({reads})")
    data, dropped = _nest(fields, sources, problems, layout)
    if not problems:
        try:
            Architecture.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"the architecture config.json gives is refused: {where}: {error['msg']}".rstrip())
    return _Arch(data, sources, problems, found.unread, dropped, bool(found.problems))


def _nest(
    fields: dict[str, Any], sources: dict[str, str], problems: list[str], layout: CheckpointLayout
) -> tuple[dict[str, Any], list[str]]:
    """The dotted fields as the nested architecture, in the schema's order; sub-fields the chosen union member
    does not have (positions.base of ALiBi, a scaling of kind None) are dropped."""
    nested: dict[str, Any] = {}
    for path, value in fields.items():
        *parents, last = path.split(".")
        if (parents[0] if parents else last) not in Architecture.model_fields:
            problems.append(f"layout {layout.name!r} sets architecture.{path}, which the card schema does not have")
            continue
        place = nested
        for part in parents:
            place = place.setdefault(part, {})
        place[last] = value
    dropped: list[str] = []

    def drop(prefix: str, values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
        kept = {}
        for key, value in values.items():
            if key in model.model_fields:
                kept[key] = value
            elif value is not None and not isinstance(value, dict):
                dropped.append(f"{prefix}.{key} ({sources.get(f'{prefix}.{key}', 'the layout')})")
        return {key: kept[key] for key in model.model_fields if key in kept}

    positions = nested.get("positions")
    if isinstance(positions, dict):
        scaling = positions.get("scaling")
        if isinstance(scaling, dict):
            member = _SCALING.get(str(scaling.get("kind")))
            if member is None:  # kind None: no scaling
                positions.pop("scaling")
                dropped += [
                    f"positions.scaling.{k} ({sources.get(f'positions.scaling.{k}', 'the layout')})"
                    for k, v in scaling.items()
                    if k != "kind" and v is not None
                ]
            else:
                positions["scaling"] = drop("positions.scaling", scaling, member)
        member = _POSITIONS.get(str(positions.get("kind")))
        if member is not None:
            nested["positions"] = drop("positions", positions, member)
    for name, model in _SECTIONS.items():
        if isinstance(nested.get(name), dict):
            nested[name] = drop(name, nested[name], model)
    return {key: nested[key] for key in Architecture.model_fields if key in nested}, dropped


class Tried(NamedTuple):
    """One checkpoint layout tried on the checkpoint: the architecture it reads from config.json, and whether the
    tensors fit it (no problems: the layout fits)."""

    layout: CheckpointLayout
    arch_data: _Arch
    arch: Architecture  # the provisional architecture (meaningless when there are problems)
    problems: list[str]
    extra: dict[str, int]  # tensors the checkpoint stores beyond the architecture (ALiBi slopes): name -> numel
    unread: list[str]
    warnings: list[str]
