"""Reading cards from YAML with errors that name the file, the line, the field and the fix."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from modeldeck.registry.diagnostics import CardError, Diagnostic
from modeldeck.registry.schema import Card

__all__ = ["card_from_data", "load_card_file", "read_yaml"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one) and aliases (`*name`): a few
    kilobytes of nested aliases expand to gigabytes (a "billion laughs"), and a card needs none."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}: card files may not use YAML aliases; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"while reading the mapping that starts at line {node.start_mark.line + 1}",
                    node.start_mark,
                    f"found the key {key!r} a second time (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text; returns the data and its node tree (for line numbers)."""
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character (NUL, ESC, ...): text YAML does not allow
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        at = text.count("\n", 0, exc.position) + 1
        raise CardError(
            [
                Diagnostic(
                    "error",
                    f"the file holds the control character U+{code:04X} at line {at}, which YAML does not allow",
                    where,
                    at,
                    hint="remove it: a card file is plain text",
                )
            ]
        ) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        context = exc.context or ""
        if exc.context_mark is not None and exc.context_mark is not mark:
            context += f" (which starts at line {exc.context_mark.line + 1})"
        problem = ": ".join(p for p in (context, exc.problem) if p)
        raise CardError(
            [
                Diagnostic(
                    "error", f"YAML syntax error: {problem}", where, line, hint=f"fix the YAML at line {line}{column}"
                )
            ]
        ) from None
    finally:
        loader.dispose()
    return data, node


def load_card_file(path: str | Path) -> Card:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CardError([Diagnostic("error", f"cannot read the card: {exc.strerror}", str(path))]) from None
    except UnicodeDecodeError as exc:
        raise CardError([Diagnostic("error", f"the card is not UTF-8 text ({exc.reason})", str(path))]) from None
    data, node = read_yaml(text, str(path))
    return card_from_data(data, str(path), node)


def card_from_data(data: Any, where: str, node: yaml.Node | None = None) -> Card:
    """Validate a dict of card fields; errors carry `where` and, given the YAML node tree, line numbers."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise CardError(
            [
                Diagnostic(
                    "error", f"a card must be a mapping of fields, got {kind}", where, 1, hint="start with `id: ...`"
                )
            ]
        )
    try:
        return Card.model_validate(data)
    except ValidationError as exc:
        # Without YAML (a dict from a plugin) a node tree of the data still tells keys from union tags.
        tree = node if node is not None else _node_tree(data)
        diagnostics = [_diagnostic(err, where, tree) for err in exc.errors()]
        if node is None:
            diagnostics = [replace(d, line=None) for d in diagnostics]
        raise CardError(diagnostics) from None


# --- turning pydantic errors into diagnostics ----------------------------------------------------


def _node_tree(data: Any) -> yaml.Node | None:
    try:
        return yaml.compose(yaml.safe_dump(data))
    except yaml.YAMLError:  # data holding objects YAML cannot represent: paths lose nothing but tag filtering
        return None


def _diagnostic(err: ErrorDetails, where: str, node: yaml.Node | None) -> Diagnostic:
    loc = tuple(err["loc"])
    path, line = _locate(loc, node)
    message = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    hint: str | None = None
    if kind == "extra_forbidden":
        name = str(loc[-1])
        allowed = sorted(_fields_at(loc[:-1]))
        close = difflib.get_close_matches(name, allowed, n=1)
        message = f"unknown field {name!r}"
        hint = (f"did you mean {close[0]!r}? " if close else "") + f"fields allowed here: {', '.join(allowed)}"
    elif kind == "missing":
        message = "required field is missing"
        hint = f"add `{path.rsplit('.', 1)[-1]}`"
    elif kind not in ("value_error", "assertion_error"):
        hint = f"got {err['input']!r}"
    return Diagnostic("error", message, where, line, path or None, hint)


def _locate(loc: tuple[int | str, ...], node: yaml.Node | None) -> tuple[str, int | None]:
    """Dotted field path for an error location, and the line of the deepest YAML node it reaches.

    Pydantic puts union tags into locations (e.g. positions -> 'rotary' -> fraction); parts that are
    neither a key nor an index in the YAML are such tags and are left out of the path.
    """
    parts: list[str] = []
    line = node.start_mark.line + 1 if node is not None else None
    for i, part in enumerate(loc):
        child = _child(node, part)
        if child is not None:
            key_line, node = child
            parts.append(f"[{part}]" if isinstance(part, int) else str(part))
            line = key_line
        elif i == len(loc) - 1 or node is None:
            parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "["), line


def _child(node: yaml.Node | None, part: int | str) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key.start_mark.line + 1, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _fields_at(loc: tuple[int | str, ...]) -> set[str]:
    """Field names allowed at a location inside a Card (for 'did you mean' hints)."""
    models: list[type[BaseModel]] = [Card]
    for part in loc:
        if isinstance(part, int):
            continue
        reached = [
            m for model in models if part in model.model_fields for m in _models_in(model.model_fields[part].annotation)
        ]
        if reached:
            models = reached
        else:  # a union tag: keep the member it names
            tagged = [m for m in models if part in (m.__name__, getattr(m.model_fields.get("kind"), "default", None))]
            models = tagged or models
    return {name for model in models for name in model.model_fields}
