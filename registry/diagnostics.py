"""Diagnostics: what is wrong, where (file, line, field or plugin), and what to do about it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["CardError", "Diagnostic", "ModeldeckError", "Severity"]

Severity = Literal["error", "warning", "info"]


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
