"""What every `modeldeck` command shares: the consoles, clean error reporting, loading the registry, and finding
the card a command is about (an installed card or a card file: `Registry.card_or_file`, the rule `runtime.load`
follows too)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console, ConsoleOptions, ConsoleRenderable, RenderableType, RenderHook, RenderResult
from rich.segment import Segment
from rich.text import Text

from modeldeck import registry
from modeldeck.registry.catalog import Registry
from modeldeck.registry.diagnostics import ModeldeckError, command_line
from modeldeck.registry.schema import Card

__all__ = [
    "F",
    "err",
    "escape_controls",
    "find_card",
    "json_text",
    "load_registry",
    "out",
    "report_errors",
    "styled",
]

F = TypeVar("F", bound=Callable[..., Any])

# Characters that act on a terminal rather than show: C0/C1 controls (ESC starts escape sequences: colours, titles,
# clearing the screen) but newline and tab, DEL, and the bidirectional overrides that reorder what is read.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
_CONTROLS |= {c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\x1b): it shows, it does not act."""
    return text.translate(_CONTROLS)


class _Escaped:
    """A renderable whose text segments have their control characters escaped (rich's own codes untouched)."""

    def __init__(self, renderable: RenderableType):
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control or not segment.text:
                yield segment
            else:
                yield Segment(escape_controls(segment.text), segment.style)


class _EscapeControls(RenderHook):
    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        return [_Escaped(r) for r in renderables]


def _console(stderr: bool) -> Console:
    """The one output policy: user and plugin text is never parsed as markup (no console markup, no emoji codes;
    colour comes from `styled` Text) and its control characters are escaped wherever it is shown. Piped output is
    not cut to 80 columns: tables stay one row per card for grep and tests."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    console = Console(stderr=stderr, markup=False, emoji=False, highlight=False, width=None if tty else 120)
    console.push_render_hook(_EscapeControls())
    return console


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (string, style) pairs, e.g. styled(("error:", "red"), " ", message)."""
    return Text.assemble(*parts)


out = _console(stderr=False)
err = _console(stderr=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def json_text(data: Any, **options: Any) -> str:
    """`data` as strict JSON, the one way a command writes JSON: NaN and infinities (lm-eval's stderr of a
    one-sample task, an infinite ratio) become null, as JSON has no such numbers and most parsers refuse Python's
    NaN/Infinity; non-ASCII text stays as it is; indented by 2 unless `indent` says otherwise."""
    return json.dumps(_finite(data), allow_nan=False, ensure_ascii=False, **{"indent": 2, **options})


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
            err.print(styled(("error:", "red"), f" {exc}"), soft_wrap=True)
            sys.exit(1)
        except click.ClickException:  # a usage error: click prints it with the usage line
            raise
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            sys.exit(130)
        except OSError as exc:  # the file system refused (permissions, a full disk, a file where a folder should be)
            if os.environ.get("MODELDECK_DEBUG"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(
                styled(
                    ("error:", "red"),
                    f" {where}{exc.strerror or exc}; check that path (that it exists, its permissions, the free space) "
                    "and try again",
                ),
                soft_wrap=True,
            )
            sys.exit(1)
        except Exception as exc:  # a bug in modeldeck: say so without a traceback
            if os.environ.get("MODELDECK_DEBUG"):
                raise
            err.print(
                styled(
                    ("internal error:", "red"),
                    f" {type(exc).__name__}: {exc}\n"
                    "This is a bug in modeldeck. Run again with MODELDECK_DEBUG=1 for the traceback and report it.",
                ),
                soft_wrap=True,
            )
            sys.exit(2)

    return run  # type: ignore[return-value]


def load_registry(quiet_problems: bool = False) -> Registry:
    reg = registry.default()
    problems = reg.errors()
    if problems and not quiet_problems:
        err.print(
            styled(
                ("warning:", "yellow"),
                f" {len(problems)} problem(s) loading plugins; the other cards are usable. Details: `modeldeck validate`",
            ),
            soft_wrap=True,
        )
        for d in problems:
            err.print(f"  {d.render()}", markup=False, soft_wrap=True)
    return reg


def find_card(name: str) -> tuple[Card, str]:
    """The card a command's NAME argument means (a card file or an installed card: `Registry.card_or_file`) and
    where it comes from, with the registry loaded quietly (the command is about one card, not the plugins)."""
    return load_registry(quiet_problems=True).card_or_file(name)
