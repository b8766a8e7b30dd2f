"""Checkpoint inspection without loading: `modeldeck inspect DIR`."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
