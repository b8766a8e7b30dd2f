"""What every `modeldeck` command shares: the consoles, clean error reporting, loading the registry, and finding
the card a command is about (an installed card or a card file: `Registry.card_or_file`, the rule `runtime.load`
follows too)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console

from modeldeck import registry
from modeldeck.registry.catalog import Registry
from modeldeck.registry.diagnostics import ModeldeckError, command_line
from modeldeck.registry.schema import Card

__all__ = ["F", "err", "find_card", "load_registry", "out", "report_errors"]

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


def find_card(name: str) -> tuple[Card, str]:
    """The card a command's NAME argument means (a card file or an installed card: `Registry.card_or_file`) and
    where it comes from, with the registry loaded quietly (the command is about one card, not the plugins)."""
    return load_registry(quiet_problems=True).card_or_file(name)
