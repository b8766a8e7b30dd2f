"""Weights from the hub and on disk: `modeldeck download`, `verify`, `convert`."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
