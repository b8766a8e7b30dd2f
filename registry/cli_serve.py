"""The OpenAI-compatible server: `modeldeck serve`."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
