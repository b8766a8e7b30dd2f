"""The Pythia Scaling Suite (EleutherAI): 16 GPT-NeoX base models, 154 training checkpoints each, as one plugin.

The cards are generated from data: ``modeldeck.cards/pythia.suite.yaml`` holds the seed's tables (one row per size),
the two variants (trained on the Pile, or on the deduplicated Pile) and one card template with ``${name}``
placeholders. This module only joins them: every size x variant becomes the variables of one card, and the template
is filled with them. The registry validates each card like any other (so a wrong number in the table is reported,
per card, with the plugin's name); ``card_data(card_id)`` returns one card's fields as a plain dict.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from functools import cache
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt

from modeldeck.plugins import bundled_card
from modeldeck.registry.cardfile import read_yaml
from modeldeck.registry.hookspecs import CardSource, hookimpl

__all__ = ["SUITE", "card_data", "cards_data", "register_cards"]

SUITE = "pythia.suite"
"""The suite file in modeldeck.cards (``pythia.suite.yaml``)."""

_WHOLE = re.compile(r"\$\{(\w+)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Checkpoints(_Strict):
    log_spaced_up_to: PositiveInt
    every: PositiveInt
    last: PositiveInt


class _Size(_Strict):
    size: str
    old_size: str
    layers: PositiveInt
    d_model: PositiveInt
    heads: PositiveInt
    learning_rate: str
    equivalent_models: list[str]
    vocab_size: PositiveInt
    total: PositiveInt
    non_embedding: PositiveInt


class _Variant(_Strict):
    suffix: str
    data: str


class _Suite(_Strict):
    checkpoints: _Checkpoints
    columns: list[str]
    sizes: list[list[Any]]
    variants: list[_Variant]
    extra_aliases: dict[str, list[str]]
    card: dict[str, Any]


def _read_suite() -> _Suite:
    path = bundled_card(SUITE)
    data, _ = read_yaml(path.read_text(encoding="utf-8"), str(path))
    suite = _Suite.model_validate(data)
    if suite.columns != list(_Size.model_fields):
        raise ValueError(f"{path}: columns must be {list(_Size.model_fields)}, got {suite.columns}")
    return suite


def _revisions(checkpoints: _Checkpoints) -> list[str]:
    """step0, the log-spaced step1, step2, step4 ... and every `every` steps up to `last`, in that order."""
    log_spaced = [
        2**i for i in range(checkpoints.log_spaced_up_to.bit_length()) if 2**i <= checkpoints.log_spaced_up_to
    ]
    evenly = range(checkpoints.every, checkpoints.last + 1, checkpoints.every)
    return [f"step{step}" for step in [0, *log_spaced, *evenly]]


def _fill(template: Any, variables: dict[str, Any]) -> Any:
    """The template with every ${name} replaced: a whole-value placeholder keeps the variable's type."""
    if isinstance(template, dict):
        return {key: _fill(value, variables) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(value, variables) for value in template]
    if isinstance(template, str):
        whole = _WHOLE.fullmatch(template)
        if whole:
            return copy.deepcopy(variables[whole.group(1)])
        return Template(template).substitute(variables)
    return template


def _generate(suite: _Suite) -> list[dict[str, Any]]:
    sizes = []
    for row in suite.sizes:
        if len(row) != len(suite.columns):
            raise ValueError(f"the row {row} has {len(row)} values for {len(suite.columns)} columns")
        sizes.append(_Size.model_validate(dict(zip(suite.columns, row, strict=True))))
    unknown = set(suite.extra_aliases) - {s.size for s in sizes}
    if unknown:
        raise ValueError(f"extra_aliases names sizes the table lacks: {', '.join(sorted(unknown))}")
    checkpoints = _revisions(suite.checkpoints)
    current = {f"pythia-{s.size.lower()}{v.suffix}" for s in sizes for v in suite.variants}
    cards = []
    for size in sizes:
        for variant in suite.variants:
            suffix = variant.suffix
            old = f"pythia-{size.old_size.lower()}{suffix}"
            aliases = [
                *([old] if old not in current else []),  # an old name that is now another model's is left out
                *(f"pythia-{extra}{suffix}" for extra in suite.extra_aliases.get(size.size, [])),
            ]
            history = f"Formerly named Pythia-{size.old_size}{suffix}"
            if size.equivalent_models:
                history += f"; architecturally equivalent to {' and '.join(size.equivalent_models)}"
            card_id = f"pythia-{size.size.lower()}{suffix}"
            variables: dict[str, Any] = {
                **size.model_dump(),
                "id": card_id,
                "name": f"Pythia-{size.size}{suffix}",
                "repo": f"EleutherAI/{card_id}",
                "aliases": aliases,
                "data": variant.data,
                "history": f"{history}.",
                "revisions": checkpoints,
                "ffn_size": 4 * size.d_model,
                "quoted": f"| {size.size} | {size.old_size} | {size.total:,} | {size.non_embedding:,} |",
            }
            cards.append(_fill(suite.card, variables))
    return cards


@cache
def _cards() -> tuple[dict[str, Any], ...]:
    return tuple(_generate(_read_suite()))


def cards_data() -> list[dict[str, Any]]:
    """The fields of every card of the suite, as plain dicts (copies: change them freely)."""
    return copy.deepcopy(list(_cards()))


def card_data(card_id: str) -> dict[str, Any]:
    """The fields of one card of the suite, by id, as a plain dict (a copy)."""
    for data in _cards():
        if data["id"] == card_id:
            return copy.deepcopy(data)
    raise KeyError(f"the Pythia suite has no card {card_id!r}; its cards: {', '.join(d['id'] for d in _cards())}")


@hookimpl
def register_cards(register: Callable[[CardSource], None]) -> None:
    for data in cards_data():
        register(data)
