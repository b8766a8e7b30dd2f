"""What every `modeldeck` command shares: the consoles, clean error reporting, loading the registry, and finding
the card a command is about (an installed card or a card file)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from modeldeck import registry
from modeldeck.registry.cardfile import load_card_file
from modeldeck.registry.catalog import Registry
from modeldeck.registry.diagnostics import ModeldeckError, command_line
from modeldeck.registry.schema import Card

__all__ = ["F", "card_or_file", "err", "load_registry", "out", "report_errors"]

F = TypeVar("F", bound=Callable[..., Any])

# Piped output is not cut to 80 columns: tables stay one row per card for grep and tests.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def report_errors(command: F) -> F:
    """Run a command with errors worded for the command line (`diagnostics.command_line`), and turn modeldeck's
    errors into a clean message and exit code 1 (a traceback only with MODELDECK_DEBUG=1); Ctrl-C ends it with
    exit code 130."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with command_line():
                return command(*args, **kwargs)
        except ModeldeckError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
            sys.exit(1)
        except click.ClickException:  # a usage error: click prints it with the usage line
            raise
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            sys.exit(130)
        except Exception as exc:  # a bug in modeldeck: say so without a traceback
            if os.environ.get("MODELDECK_DEBUG"):
                raise
            err.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {exc}\n"
                "This is a bug in modeldeck. Run again with MODELDECK_DEBUG=1 for the traceback and report it.",
                markup=True,
                soft_wrap=True,
            )
            sys.exit(2)

    return run  # type: ignore[return-value]


def load_registry(quiet_problems: bool = False) -> Registry:
    reg = registry.default()
    problems = reg.errors()
    if problems and not quiet_problems:
        err.print(
            f"[yellow]warning:[/yellow] {len(problems)} problem(s) loading plugins; the other cards are usable. "
            "Details: `modeldeck validate`",
            markup=True,
            soft_wrap=True,
        )
        for d in problems:
            err.print(f"  {d.render()}", markup=False, soft_wrap=True)
    return reg


def card_or_file(reg: Registry, name: str) -> tuple[Card, str]:
    """The card NAME means, and where it comes from: a card file (.yaml, .yml, or any existing file) resolved
    against the installed prompt formats and layouts, or an installed card (id, alias or hub repository).

    Raises CardError for a file that is not a valid card, CardNotFoundError / CardConflictError (LookupErrors)
    for a name no installed card has, or more than one claims."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return reg.resolve_card(load_card_file(path), str(path)), str(path)
    entry = reg.entry(name)
    return entry.card, entry.where
