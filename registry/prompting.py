"""Rendering a conversation into the exact text a model sees, from a declarative PromptFormat.

    begin
    + system.turn.prefix + SYSTEM + system.turn.suffix             (if given and supported)
    + user.prefix + USER + user.suffix + assistant.prefix + ASSISTANT + assistant.suffix   (earlier turns)
    + user.prefix + USER + user.suffix + answer_prefix             (the turn being answered)

A system prompt given to a format without one either fails or is prepended to the first user
message, as the format says. The renderer never tokenizes: which markers are special tokens is
the tokenizer's business, and user text is always tokenized as plain text by the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, TypedDict

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import PromptFormat

__all__ = ["Message", "PromptError", "Segment", "messages_from", "render_prompt", "render_segments"]

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    role: Role
    content: str


class PromptError(ModeldeckError, ValueError):
    """A conversation the prompt format cannot express."""


def messages_from(text_or_messages: str | Sequence[Mapping[str, object]], system: str | None = None) -> list[Message]:
    """Normalize a prompt (a string, or OpenAI-style messages) plus an optional system prompt."""
    if isinstance(text_or_messages, str):
        raw: list[Mapping[str, object]] = [{"role": "user", "content": text_or_messages}]
    else:
        raw = list(text_or_messages)
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping) or set(m) - {"role", "content", "name"} or "role" not in m:
            raise PromptError(f"message {i} must be an object with 'role' and 'content', got {m!r}")
        role, content = m["role"], m.get("content")
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"message {i} has role {role!r}; use 'system', 'user' or 'assistant'")
        if not isinstance(content, str):
            raise PromptError(f"message {i} ({role}) needs 'content' as a string, got {type(content).__name__}")
        messages.append(Message(role=role, content=content))
    if system is not None:
        if messages and messages[0]["role"] == "system":
            raise PromptError("a system prompt was given twice: as an option and as the first message")
        messages.insert(0, {"role": "system", "content": system})
    return messages


class Segment(NamedTuple):
    """A piece of a rendered prompt: the format's own text (may hold special markers) or message content."""

    text: str
    from_format: bool


def render_prompt(
    fmt: PromptFormat, conversation: str | Sequence[Mapping[str, object]], system: str | None = None
) -> str:
    return "".join(s.text for s in render_segments(fmt, conversation, system))


def render_segments(
    fmt: PromptFormat, conversation: str | Sequence[Mapping[str, object]], system: str | None = None
) -> list[Segment]:
    """The prompt as segments, so a tokenizer can keep user text away from special tokens."""
    messages = messages_from(conversation, system)
    system_text: str | None = None
    if messages and messages[0]["role"] == "system":
        system_text = messages.pop(0)["content"]
    _check_turns(fmt, messages, offset=0 if system_text is None else 1)
    if system_text is not None and not fmt.system.supported:
        if fmt.system.when_unsupported == "error":
            raise PromptError(
                f"prompt format {fmt.name!r} has no system prompt; put the instructions in the user message instead"
            )
        first = messages[0]
        messages[0] = Message(role="user", content=system_text + fmt.system.separator + first["content"])
        system_text = None
    segments = [Segment(fmt.begin, True)]
    turns = [(fmt.system.turn, system_text)] if system_text is not None else []
    turns += [(fmt.user if m["role"] == "user" else fmt.assistant, m["content"]) for m in messages]
    for turn, content in turns:
        segments += [Segment(turn.prefix, True), Segment(content, False), Segment(turn.suffix, True)]
    segments.append(Segment(fmt.answer_prefix, True))
    return [s for s in segments if s.text]


def _check_turns(fmt: PromptFormat, messages: list[Message], offset: int) -> None:
    """Turns alternate user/assistant and end with the user; `offset` keeps message numbers the caller's."""
    if not messages:
        raise PromptError("the conversation has no user message")
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            where = "a system message may only come first" if m["role"] == "system" else "turns must alternate"
            raise PromptError(
                f"message {i + offset} is from {m['role']!r} where {expected!r} was expected ({where}, starting with user)"
            )
    if messages[-1]["role"] != "user":
        raise PromptError("the last message must be from the user: the model answers it")
    if len(messages) > 1 and not fmt.multi_turn:
        raise PromptError(f"prompt format {fmt.name!r} takes a single user message, not a multi-turn conversation")
