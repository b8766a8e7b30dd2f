"""The plugin contract: three register-callback hooks, found through the `modeldeck` entry-point group.

A plugin is any module (or object) listed under ``[project.entry-points.modeldeck]`` that implements
one or more of these hooks. Each hook receives a ``register`` callback; call it once per contribution::

    from modeldeck.registry import hookimpl

    @hookimpl
    def register_cards(register):
        register("path/to/card.yaml")          # a YAML file, a dict, or a Card

The first-party cards are registered exactly this way (modeldeck.plugins.*). Contributions are
collected per plugin and kept only if that plugin's hook returns normally, so a broken plugin never
leaves half its cards behind, and never hides another plugin's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.schema import Card, PromptFormat

__all__ = ["PROJECT", "CardSource", "hookimpl", "hookspec"]

PROJECT = "modeldeck"  # pluggy project name and entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

CardSource = Card | dict[str, Any] | Path | str
"""What `register` accepts for a card: a Card, a dict of card fields, or the path of a YAML file."""


@hookspec
def register_cards(register: Callable[[CardSource], None]) -> None:
    """Register model cards: ``register(card_or_dict_or_yaml_path)``."""


@hookspec
def register_prompt_formats(register: Callable[[PromptFormat], None]) -> None:
    """Register named prompt formats that cards can refer to by name (``prompt_format: plain``)."""


@hookspec
def register_checkpoint_layouts(register: Callable[[CheckpointLayout], None]) -> None:
    """Register checkpoint layouts: how a checkpoint's tensor names map onto the generic decoder."""
