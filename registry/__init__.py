"""modeldeck.registry: cards, plugins and lookup. Never imports torch.

from modeldeck import registry
card = registry.get("aira-2")            # by id or alias, case-insensitive
registry.cards()                         # every usable card
registry.render_prompt(card.format, "What is a language model?")
"""

from __future__ import annotations

from modeldeck.registry.cardfile import card_from_data, load_card_file
from modeldeck.registry.catalog import CardConflictError, CardNotFoundError, Entry, Registry
from modeldeck.registry.checks import check_card, check_tokenizer
from modeldeck.registry.diagnostics import CardError, Diagnostic, ModeldeckError
from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.params import ParameterBreakdown, count_parameters
from modeldeck.registry.prompting import PromptError, render_prompt
from modeldeck.registry.schema import SCHEMA_VERSION, Card, PromptFormat

__all__ = [
    "SCHEMA_VERSION",
    "Card",
    "CardConflictError",
    "CardError",
    "CardNotFoundError",
    "CheckpointLayout",
    "Diagnostic",
    "Entry",
    "ModeldeckError",
    "ParameterBreakdown",
    "PromptError",
    "PromptFormat",
    "Registry",
    "card_from_data",
    "cards",
    "check_card",
    "check_tokenizer",
    "count_parameters",
    "default",
    "get",
    "hookimpl",
    "load_card_file",
    "reload",
    "render_prompt",
]

_default: Registry | None = None


def default() -> Registry:
    """The registry of installed plugins, loaded on first use (honours $MODELDECK_PLUGINS)."""
    global _default
    if _default is None:
        _default = Registry.from_entry_points()
    return _default


def reload() -> Registry:
    """Forget the loaded plugins and load them again (after installing one, or changing the environment)."""
    global _default
    _default = None
    return default()


def get(name: str) -> Card:
    """The card with this id, alias or hub repository name (case-insensitive)."""
    return default().get(name)


def cards() -> list[Card]:
    """Every usable card of the installed plugins, sorted by id."""
    return default().cards()
