"""From generated token ids to the text a user sees: stop strings, clean-up, and safe streaming.

A `TextStream` follows one sequence. After each token it says which new text is safe to show:
never half of a multi-byte character (the decoder yields U+FFFD until the bytes are complete),
never text that may still turn out to be the start of a stop string, and never the stop string
itself. The final text is exactly the concatenation of everything streamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["TextStream"]

Strip = Literal["none", "leading_space", "whitespace"]


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...], strip: Strip = "none"):
        self.decode, self.stops, self.strip = decode, stops, strip
        self.ids: list[int] = []
        self.raw = ""
        self.stopped = False  # a stop string was found: the text ends before it
        self.emitted = 0  # characters of the visible text already handed out

    def push(self, token: int) -> str:
        """Add a generated token; returns the newly safe text (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        raw = self.decode(self.ids)
        cut = min((i for i in (raw.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.raw, self.stopped = raw[:cut], True
            return self._emit(final=True)
        self.raw = raw
        return self._emit(final=False)

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        return self._emit(final=True)

    @property
    def text(self) -> str:
        return self._visible(final=True)

    def _visible(self, final: bool) -> str:
        text = self.raw
        if self.strip == "leading_space" and text.startswith(" "):
            text = text[1:]
        elif self.strip == "whitespace":
            text = text.strip() if final else text.lstrip()
        return text

    def _held_back(self, text: str) -> int:
        """How many trailing characters must wait: an unfinished character or a possible stop-string start."""
        held = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if stop.startswith(text[len(text) - k :]):
                    held = max(held, k)
                    break
        if self.strip == "whitespace":  # trailing whitespace (also before a held-back part) may be stripped at the end
            held = len(text) - len(text[: len(text) - held].rstrip())
        return held

    def _emit(self, final: bool) -> str:
        text = self._visible(final)
        end = len(text) if final else len(text) - self._held_back(text)
        delta = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta
