"""From generated token ids to the text a user sees: stop strings, clean-up, and safe streaming.

A `TextStream` follows one sequence. After each token it says which new text is safe to show:
never half of a multi-byte character (the decoder yields U+FFFD until the bytes are complete),
never text that may still turn out to be the start of a stop string, and never the stop string
itself. The final text is exactly the concatenation of everything streamed.

Each token costs the same however long the text already is: the ids are decoded incrementally
(`TextTokenizer.decode_stream`), a stop string is searched for only where one could newly end (the new
text and the characters before it that a stop could begin with), and only the text not yet shown is kept
apart. `finish()` decodes all ids once when the last bytes are an unfinished character.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from modeldeck.runtime.tokenizer import TextTokenizer

__all__ = ["TextStream", "first_stop"]

Strip = Literal["none", "leading_space", "whitespace"]


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the first stop string in `text` begins; -1 if there is none."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


class TextStream:
    def __init__(self, tokenizer: TextTokenizer, stops: tuple[str, ...], strip: Strip = "none"):
        self.tokenizer, self.stops, self.strip = tokenizer, stops, strip
        self.ids: list[int] = []
        self.stopped = False  # a stop string was found: the text ends before it
        self._decoder = tokenizer.decode_stream()
        self._reach = max(map(len, stops), default=1) - 1  # how far back of new text a stop may begin
        self._chunks: list[str] = []  # the decoded text (cut before a stop), as it came
        self._length = 0  # its length
        self._tail = ""  # its last `_reach` characters
        self._started = strip == "none"  # past the leading characters that the strip mode removes
        self._shown: list[str] = []  # the deltas handed out
        self._held = ""  # visible text not handed out yet
        self._finished = False

    def push(self, token: int) -> str:
        """Add a generated token; returns the newly safe text (possibly empty)."""
        if self.stopped:
            return ""
        if self._finished:
            raise RuntimeError("TextStream.push() after finish()")
        self.ids.append(token)
        new = self._decoder.step(token)
        if not new:
            return ""
        self._add(new)
        return self._emit(final=self.stopped)

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        if not self._finished and not self.stopped:
            self._add(self._undecoded())
        self._finished = True
        return self._emit(final=True)

    @property
    def raw(self) -> str:
        """The decoded text, before a stop string, with no strip mode applied."""
        return "".join(self._chunks)

    @property
    def text(self) -> str:
        """The final text: what was shown plus the rest that `finish()` hands out."""
        held = self._held
        if not self._finished and not self.stopped:
            drop, _, visible, _ = self._extend(self._undecoded())
            held = held[: len(held) - drop] + visible
        return "".join(self._shown) + (held.rstrip() if self.strip == "whitespace" else held)

    def _undecoded(self) -> str:
        """Text the incremental decoder still holds back (an unfinished character at the end): one full decode."""
        return self.tokenizer.decode(self.ids)[self._length :] if self._decoder.pending else ""

    def _extend(self, new: str) -> tuple[int, str, str, bool]:
        """What adding decoded text does, without doing it: how many characters already added are taken back (a
        stop string begins there), the decoded and the visible text to add, and whether a stop string was found."""
        window = self._tail + new
        cut = first_stop(window, self.stops)
        drop = 0
        if cut >= 0:
            drop, new = max(len(self._tail) - cut, 0), new[: max(cut - len(self._tail), 0)]
        visible = new
        if not self._started:
            visible = visible.lstrip() if self.strip == "whitespace" else visible.removeprefix(" ")
        return drop, new, visible, cut >= 0

    def _add(self, new: str) -> None:
        drop, new, visible, self.stopped = self._extend(new)
        if drop:
            self._take_back(drop)
        self._chunks.append(new)
        self._length += len(new)
        self._tail = (self._tail + new)[-self._reach :] if self._reach else ""
        self._held += visible
        self._started = self._started or bool(visible if self.strip == "whitespace" else new)

    def _take_back(self, count: int) -> None:
        """Remove the last `count` decoded characters: the start of a stop string, never shown (see `_emit`)."""
        self._held = self._held[: max(len(self._held) - count, 0)]
        self._length -= count
        self._tail = self._tail[: len(self._tail) - count]
        while count:
            last = self._chunks.pop()
            if len(last) > count:
                self._chunks.append(last[:-count])
            count = max(count - len(last), 0)

    def _stop_start(self) -> int:
        """How many trailing characters may be the start of a stop string."""
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._tail)), held, -1):
                if stop.startswith(self._tail[len(self._tail) - k :]):
                    held = k
                    break
        return held

    def _emit(self, final: bool) -> str:
        held = self._held
        end = len(held) if final else max(len(held) - self._stop_start(), 0)
        if self.strip == "whitespace":  # trailing whitespace (also before a held-back part) may be stripped at the end
            end = len(held[:end].rstrip())
        delta, self._held = held[:end], held[end:]
        if delta:
            self._shown.append(delta)
        return delta
