"""modeldeck.plugins: the first-party plugins, loaded through entry points like any third-party one.

One module per seed card (the Pythia module registers the whole 16-model suite from one data file),
plus the shared prompt formats and checkpoint layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from modeldeck.registry.hookspecs import CardSource, hookimpl

__all__ = ["bundled_card", "card_hook"]


def bundled_card(name: str) -> Path:
    """The YAML file of a first-party card in modeldeck.cards."""
    return Path(str(resources.files("modeldeck.cards").joinpath(f"{name}.yaml"))).resolve()


def card_hook(*names: str) -> Callable[[Callable[[CardSource], None]], None]:
    """A `register_cards` hook implementation that registers the named first-party cards."""

    def register_cards(register: Callable[[CardSource], None]) -> None:
        for name in names:
            register(bundled_card(name))

    return hookimpl(register_cards)
