"""The text of a new card: YAML written line by line rather than dumped, so that each field carries a comment
saying where its value came from (a config.json key, a tokenizer file, a default) and the identity fields stand
out as TODO placeholders. Comments are aligned in one column where the fields are short."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import yaml

from modeldeck.registry.cardgen.architecture import Tried
from modeldeck.registry.cardgen.tokenizer import ROLES, Generation, Tok
from modeldeck.registry.checkpoint import Checkpoint
from modeldeck.registry.params import count_parameters

TODO = "TODO"


def _flow(value: Any) -> str:
    """A value as one line of YAML (scalars, flow mappings and lists), quoted where YAML needs it; floats to 15
    significant digits (a product of two config values reads 0.222, not 0.22200000000000003)."""
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.15g}")
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=2**31 - 1)
    return text.strip().removesuffix("\n...").strip()


class _Lines:
    """YAML lines, each with an optional comment; comments are aligned when written."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def comment(self, text: str, indent: int = 0) -> None:
        """A comment line, wrapped at 116 columns."""
        prefix = " " * indent + "# "
        wrapped = textwrap.wrap(" ".join(text.split()), 116 - len(prefix), break_on_hyphens=False) or [""]
        self.lines += [((prefix + line).rstrip(), "") for line in wrapped]

    def blank(self) -> None:
        self.lines.append(("", ""))

    def field(self, indent: int, key: str, value: Any = None, comment: str = "", section: bool = False) -> None:
        text = f"{' ' * indent}{key}:" if section else f"{' ' * indent}{key}: {_flow(value)}"
        self.lines.append((text, " ".join(comment.split())))

    def item(self, indent: int, value: Any, comment: str = "") -> None:
        self.lines.append((f"{' ' * indent}- {_flow(value)}", " ".join(comment.split())))

    def text(self) -> str:
        widths = [len(text) for text, comment in self.lines if comment and len(text) <= 44]
        column = max(widths, default=0) + 2
        written = []
        for text, comment in self.lines:
            if comment:
                text = f"{text.ljust(column) if len(text) < column else text + '  '}# {comment}"
            written.append(text.rstrip())
        return "\n".join(written) + "\n"


def _mapping(lines: _Lines, data: dict[str, Any], sources: dict[str, str], indent: int, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            lines.field(indent, key, comment=sources.get(path, ""), section=True)
            _mapping(lines, value, sources, indent + 2, f"{path}.")
        else:
            lines.field(indent, key, value, sources.get(path, ""))


def render(
    *,
    directory: Path,
    card_id: str,
    name: str,
    chosen: Tried,
    others: list[str],
    model_type: str | None,
    checkpoint: Checkpoint,
    tok: Tok,
    generation: Generation,
    formats: set[str],
) -> str:
    lines = _Lines()
    layout = chosen.layout
    lines.comment(
        f"A starting card written by `modeldeck card new` from the checkpoint in {directory} (config.json "
        f"model_type {model_type}, checkpoint layout {layout.name}"
        + (f"; layout(s) {', '.join(others)} did not fit)" if others else ")")
        + ". Each field says where it came from; fields not written take the schema's defaults."
    )
    lines.comment("Before sharing it, fill in the fields marked TODO (id, name, publisher, license, source.repo).")
    if chosen.unread:
        lines.comment("")
        lines.comment(
            f"config.json keys no rule of layout {layout.name!r} reads (check that they do not change the "
            f"computation): {', '.join(chosen.unread)}"
        )
    lines.blank()
    lines.field(0, "schema_version", 1)
    lines.field(0, "id", card_id, f"{TODO}: a unique lowercase id (from the folder name)")
    lines.field(0, "name", name, f"{TODO}: the display name")
    lines.field(0, "publisher", "CHANGE-ME", f"{TODO}: who publishes the model")
    lines.field(0, "license", "NOASSERTION", f"{TODO}: the weights' SPDX license (NOASSERTION: not stated)")
    lines.blank()
    lines.field(0, "source", section=True)
    lines.comment(f"repo: OWNER/NAME  # {TODO}: the Hugging Face repository, once the weights are published", 2)
    lines.field(2, "format", "safetensors", f"{len(checkpoint.files)} *.safetensors file(s) in {directory}")
    lines.blank()
    counted = count_parameters(chosen.arch).total
    extra = sum(chosen.extra.values())
    lines.field(0, "parameters", section=True)
    lines.field(
        2,
        "stated",
        counted + extra,
        "computed by modeldeck card new from the architecture"
        + (" plus the stored extra" if extra else "")
        + f"; {TODO}: the upstream card's figure",
    )
    if extra:
        names = ", ".join(chosen.extra)
        lines.field(2, "stored_extra", extra, f"{names} in the checkpoint")
        lines.field(2, "note", f"the checkpoint stores its ALiBi slopes ({names}), which are not weights")
    lines.blank()
    lines.field(0, "architecture", section=True)
    for dropped in chosen.arch_data.dropped:
        lines.comment(f"not written: {dropped}, which positions of this kind do not have", 2)
    _mapping(lines, chosen.arch_data.data, chosen.arch_data.sources, 2)
    lines.blank()
    lines.field(0, "tokenizer", section=True)
    lines.field(2, "kind", tok.kind, tok.kind_source)
    lines.field(2, "files", tok.files)
    if tok.add_bos is not None:
        lines.field(2, "add_bos", tok.add_bos, tok.add_bos_source)
    for role in ROLES:
        if role in tok.named:
            text, token_id, source = tok.named[role]
            lines.field(2, role, {"text": text, "id": token_id}, source)
    for note in tok.notes:
        lines.comment(note, 2)
    if tok.special:
        lines.field(2, "special_tokens", section=True, comment="the tokenizer's other special tokens")
        for text, token_id in tok.special:
            lines.item(4, {"text": text, "id": token_id})
    lines.blank()
    if tok.chat_template:
        lines.comment(
            f"The checkpoint has a chat template ({tok.chat_template}: Jinja), which a card does not run: plain "
            "completion until an inline prompt_format (begin, system, user and assistant turns) is written for it."
        )
    if tok.add_bos and "bos" in tok.named:
        lines.comment(
            f"The tokenizer prepends bos {tok.named['bos'][0]!r}; plain does not: a model trained with it may need an "
            f"inline format with begin: {tok.named['bos'][0]!r}."
        )
    if "plain" in formats:
        lines.field(0, "prompt_format", "plain", "base-model completion: the prompt is the text as given")
    else:
        lines.field(0, "prompt_format", {"name": "plain", "multi_turn": False}, "base-model completion")
    lines.blank()
    if generation.values:
        lines.field(0, "generation", section=True)
    for note in generation.notes:
        lines.comment(note, 2 if generation.values else 0)
    for key, value in generation.values.items():
        lines.field(2, key, value, generation.sources[key])
    if generation.values or generation.notes:
        lines.blank()
    lines.field(0, "dtype", "auto", f"the checkpoint's own ({checkpoint.stored_dtype or 'unknown'})")
    return lines.text()
