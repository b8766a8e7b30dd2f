"""Reading cards from YAML with errors that name the file, the line, the field and the fix.

A card file is read bounded, so a small or malformed file cannot cost unbounded time or memory:

    MAX_CARD_BYTES (1 MiB)   the file's size, checked before it is read (real cards are a few KB; a FIFO, device or
                             folder is refused before a byte is read)
    MAX_DEPTH (32)           how deeply values nest (a card nests 5 levels; `[[[[...` 100,000 deep would exhaust
                             the stack), checked while the YAML is composed
    MAX_INT_DIGITS (20)      digits of an integer (sizes and counts fit in a u64; Python refuses to convert over
                             4,300 digits, and YAML's base-60 integers cost quadratic time)
    no aliases, no NUL       a YAML alias (`*name`) expands a few KB into gigabytes; a NUL byte is not text
    MAX_DIAGNOSTICS (50)     errors reported for one card; the rest are counted

Each refusal is a CardError naming the file, the line where known, and the limit.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from modeldeck.registry.diagnostics import CardError, Diagnostic, short
from modeldeck.registry.reading import MAX_INT_DIGITS, MAX_JSON_DEPTH, FileRefusedError, read_regular
from modeldeck.registry.schema import PATTERN_RULES, Card

__all__ = [
    "MAX_CARD_BYTES",
    "MAX_DEPTH",
    "MAX_DIAGNOSTICS",
    "MAX_INT_DIGITS",
    "card_from_data",
    "load_card_file",
    "read_yaml",
]

MAX_CARD_BYTES = 2**20
MAX_DEPTH = MAX_JSON_DEPTH
TOO_LARGE = "a card is a few KB of YAML: check that this is the card file, and shorten it"
MAX_DIAGNOSTICS = 50


class _Refused(yaml.YAMLError):
    """A limit of card files, met while the YAML is read: `problem` at `mark`, and what to do."""

    def __init__(self, problem: str, hint: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem, self.hint, self.mark = problem, hint, mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one), aliases (`*name`: a few
    kilobytes of nested aliases expand to gigabytes, a "billion laughs", and a card needs none), values nested
    deeper than MAX_DEPTH (PyYAML composes recursively) and integers longer than MAX_INT_DIGITS digits."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}: card files may not use YAML aliases; write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"values nest deeper than {MAX_DEPTH} levels",
                    f"a card nests a few levels (architecture.positions.scaling); remove the nesting at this line "
                    f"(the limit is {MAX_DEPTH})",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer of at most MAX_INT_DIGITS digits. Its text is bounded before it is converted (in any base:
        0b, 0o, 0x, base 60), then its value."""
        text = str(node.value).replace("_", "").lstrip("+-")
        value = super().construct_yaml_int(node) if len(text) <= 4 * MAX_INT_DIGITS else None
        if value is None or len(str(abs(value))) > MAX_INT_DIGITS:
            digits = len(str(abs(value))) if value is not None else len(text) if text.isdigit() else None
            size = f"of {digits:,} digits" if digits is not None else f"{len(text):,} characters long"
            raise _Refused(
                f"found an integer {size}; card integers have at most {MAX_INT_DIGITS} digits",
                "sizes and counts fit in 20 digits: fix the number, or quote it if it is text",
                node.start_mark,
            )
        return value


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def read_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text; returns the data and its node tree (for line numbers)."""
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character (NUL, ESC, ...): text YAML does not allow
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        at = text.count("\n", 0, exc.position) + 1
        what = "a NUL byte (U+0000)" if code == 0 else f"the control character U+{code:04X}"
        fix = "remove the NUL byte" if code == 0 else "remove it"
        raise CardError(
            [
                Diagnostic(
                    "error",
                    f"the file holds {what} at line {at}, which YAML does not allow",
                    where,
                    at,
                    hint=f"{fix}: a card file is plain text",
                )
            ]
        ) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        line = exc.mark.line + 1 if exc.mark is not None else None
        raise CardError([Diagnostic("error", exc.problem, where, line, hint=exc.hint)]) from None
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


def _read_text(path: Path) -> str:
    """The card file's text: a regular file (once symbolic links are followed) of at most MAX_CARD_BYTES, in UTF-8,
    read as registry/reading.py reads every file that may be hostile (a FIFO cannot block, /dev/zero is not read)."""
    where = str(path)
    try:
        raw = read_regular(path.parent, path.name, MAX_CARD_BYTES, too_large=TOO_LARGE)
    except FileRefusedError as exc:
        if "limit" in exc.reason:
            problem = f"the card file {exc.reason} (1 MiB)"
        else:
            problem = f"cannot read the card: it {exc.reason}"
        hint = exc.hint if "limit" in exc.reason else "give a card file (.yaml)"
        raise CardError([Diagnostic("error", problem, where, hint=hint)]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError([Diagnostic("error", f"the card is not UTF-8 text ({exc.reason})", where)]) from None


def load_card_file(path: str | Path) -> Card:
    """A card from its YAML file, read within the limits above; CardError naming the file (and line) if not."""
    path = Path(path)
    text = _read_text(path)
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
        # Without YAML (a dict from a plugin) the data itself still tells keys from union tags (no lines).
        tree = node if node is not None else data
        keys: _Keys = {}
        errors = exc.errors()
        diagnostics = [_diagnostic(err, where, tree, keys) for err in errors[:MAX_DIAGNOSTICS]]
        if len(errors) > MAX_DIAGNOSTICS:
            diagnostics.append(
                Diagnostic(
                    "error",
                    f"and {len(errors) - MAX_DIAGNOSTICS:,} more errors (the first {MAX_DIAGNOSTICS} are shown)",
                    where,
                    hint="fix these and validate again",
                )
            )
        raise CardError(diagnostics) from None


# --- turning pydantic errors into diagnostics ----------------------------------------------------


# A mapping node's keys, indexed once per card: each error's location is then found in time proportional to its
# depth, not to the size of the mappings it passes (100,000 wrong revision_aliases would be quadratic).
_Keys = dict[int, dict[str, tuple[int, yaml.Node]]]


def _diagnostic(err: ErrorDetails, where: str, node: Any, keys: _Keys) -> Diagnostic:
    loc = tuple(err["loc"])
    path, line = _locate(loc, node, keys)
    message = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    hint: str | None = None
    if kind == "extra_forbidden":
        name = str(loc[-1])
        allowed = sorted(_fields_at(loc[:-1]))
        close = difflib.get_close_matches(name, allowed, n=1)
        message = f"unknown field {short(name)}"
        hint = (f"did you mean {close[0]!r}? " if close else "") + f"fields allowed here: {', '.join(allowed)}"
    elif kind == "missing":
        message = "required field is missing"
        hint = f"add `{path.rsplit('.', 1)[-1]}`"
    elif kind == "string_pattern_mismatch" and path in PATTERN_RULES:
        message = f"{short(err['input'])} is not {PATTERN_RULES[path]}"
    elif kind == "less_than_equal":  # a bound of the schema (registry/architecture.py says why each)
        hint = f"got {short(err['input'])}; make it at most {err.get('ctx', {}).get('le')}"
    elif kind == "finite_number":
        hint = f"got {short(err['input'])}; write a finite number (.inf and .nan are not allowed)"
    elif kind not in ("value_error", "assertion_error"):
        hint = f"got {short(err['input'])}"
    return Diagnostic("error", message, where, line, path or None, hint)


def _locate(loc: tuple[int | str, ...], node: Any, keys: _Keys) -> tuple[str, int | None]:
    """Dotted field path for an error location, and the line of the deepest YAML node it reaches (`node` is the
    YAML node tree, or the data itself when there is no YAML: then there are no lines).

    Pydantic puts union tags into locations (e.g. positions -> 'rotary' -> fraction); parts that are
    neither a key nor an index in the YAML (or the data) are such tags and are left out of the path.
    """
    parts: list[str] = []
    line = node.start_mark.line + 1 if isinstance(node, yaml.Node) else None
    for i, part in enumerate(loc):
        child = _child(node, part, keys)
        if child is not None:
            key_line, node = child
            parts.append(f"[{part}]" if isinstance(part, int) else str(part))
            line = key_line
        elif i == len(loc) - 1:
            parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "["), line


def _child(node: Any, part: int | str, keys: _Keys) -> tuple[int | None, Any] | None:
    if isinstance(node, yaml.MappingNode):
        if id(node) not in keys:
            keys[id(node)] = {}
            for key, value in node.value:  # the first of equal keys, as a scan would find (files refuse repeats)
                if isinstance(key.value, str):
                    keys[id(node)].setdefault(key.value, (key.start_mark.line + 1, value))
        return keys[id(node)].get(str(part))
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    if isinstance(node, dict) and part in node:
        return None, node[part]
    if isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
        return None, node[part]
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
