"""Diagnostics: what is wrong, where (file, line, field or plugin), and what to do about it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["CardError", "Diagnostic", "ModeldeckError", "Severity", "command_line", "short", "spell"]

Severity = Literal["error", "warning", "info"]


def short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a message quotes a hostile value (a card's, a header's), never all of
    it; an integer too long for repr (over 4,300 digits) is described by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {int(value.bit_length() * 0.30103) + 1:,} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    message: str
    where: str  # a file path, "plugin NAME (DIST)", or "card ID"
    line: int | None = None
    field: str | None = None  # dotted path inside the card, e.g. architecture.heads
    hint: str | None = None  # what to do
    plugin: str | None = None  # "NAME (DIST VERSION)" of the plugin that contributed the card, if any

    def location(self) -> str:
        place = f"{self.where}:{self.line}" if self.line is not None else self.where
        if self.plugin and self.plugin not in place:
            place = f"{place} [plugin {self.plugin}]"
        return f"{place}: {self.field}" if self.field else place

    def render(self) -> str:
        text = f"{self.location()}: {self.severity}: {self.message}"
        return f"{text}\n    -> {self.hint}" if self.hint else text

    def from_plugin(self, label: str) -> Diagnostic:
        return replace(self, plugin=label)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ModeldeckError(Exception):
    """Base class for errors modeldeck reports to users (the CLI prints them without a traceback)."""


class CardError(ModeldeckError):
    """A card that cannot be used; carries one diagnostic per problem."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(d.render() for d in diagnostics))


_ON_COMMAND_LINE: ContextVar[bool] = ContextVar("modeldeck_on_command_line", default=False)


def spell(option: str, value: str | None = None) -> str:
    """An option as the reader of an error passes it: `--weights DIR` on the command line, `weights=DIR` in Python
    (`--allow-pickle` / `allow_pickle=True` for a flag). Messages are worded where they are raised, so each says it
    the user's way: the CLI runs its commands inside `command_line()`."""
    if _ON_COMMAND_LINE.get():
        flag = "--" + option.replace("_", "-")
        return flag if value is None else f"{flag} {value}"
    return f"{option}=True" if value is None else f"{option}={value}"


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Errors raised inside are worded for the command line (see `spell`)."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)
