"""How cards and plugins look on the command line: rich tables for people, plain dicts for JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from modeldeck.registry.catalog import Entry
from modeldeck.registry.manager import PluginInfo
from modeldeck.registry.params import count_parameters
from modeldeck.registry.prompting import PromptError, render_prompt
from modeldeck.registry.schema import AlibiPositions, Architecture, Card, LearnedPositions

__all__ = [
    "card_json",
    "card_sections",
    "card_table",
    "human_bytes",
    "human_count",
    "plugin_json",
    "plugin_table",
    "summary",
]


def human_bytes(n: int) -> str:
    """Bytes in decimal units, as hubs, `ls -h --si` and device memory quote them: 512 B, 7.6 MB, 82.61 GB."""
    for unit, scale, digits in (("TB", 10**12, 2), ("GB", 10**9, 2), ("MB", 10**6, 1), ("kB", 10**3, 1)):
        if n >= scale:
            return f"{n / scale:,.{digits}f} {unit}"
    return f"{n:,} B"


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def summary(entry: Entry) -> dict[str, Any]:
    card = entry.card
    return {
        "id": card.id,
        "name": card.name,
        "aliases": card.aliases,
        "family": card.architecture.family,
        "parameters": count_parameters(card.architecture).total,
        "context_length": card.architecture.context_length,
        "plugin": entry.plugin.name,
        "distribution": entry.plugin.distribution,
    }


def card_table(entries: list[Entry]) -> Table:
    table = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for column in ("id", "family", "parameters", "context", "plugin"):
        table.add_column(column, no_wrap=column in ("id", "parameters", "context"))
    for e in entries:
        s = summary(e)
        table.add_row(s["id"], s["family"], human_count(s["parameters"]), f"{s['context_length']:,}", s["plugin"])
    return table


def card_json(entry: Entry) -> dict[str, Any]:
    counted = count_parameters(entry.card.architecture)
    return {
        "card": entry.card.model_dump(mode="json"),
        "computed": {
            "parameters": counted.total,
            "non_embedding_parameters": counted.non_embedding,
            "head_dim": entry.card.architecture.head_dim,
        },
        "plugin": plugin_json(entry.plugin),
        "file": entry.where,
    }


def _section(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(
        title=title, title_justify="left", title_style="bold cyan", show_header=False, box=None, pad_edge=False
    )
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return table


def _join(items: list[str]) -> str:
    return ", ".join(items)


def describe_positions(arch: Architecture) -> str:
    """Positions in words: ALiBi, a learned table, or rotary with its rotation, base and scaling."""
    p = arch.positions
    if isinstance(p, AlibiPositions):
        return "ALiBi"
    if isinstance(p, LearnedPositions):
        return f"learned, {arch.context_length:,} positions" + (f" (offset {p.offset})" if p.offset else "")
    text = f"rotary on {arch.rotary_dims}/{arch.head_dim} dims ({p.fraction:g}), base {p.base:g}"
    text += ", interleaved" if p.rotation == "interleaved" else ""
    return text + (f", {p.scaling.kind} scaling x{p.scaling.factor:g}" if p.scaling else "")


def describe_norm(arch: Architecture) -> str:
    norm = arch.norm
    text = norm.kind + (" without bias" if norm.kind == "layernorm" and not norm.bias else "")
    text += " (1 + weight)" if norm.unit_offset else ""
    extras = [what for what, on in (("on the embeddings", arch.embedding_norm), ("on q and k", arch.qk_norm)) if on]
    return f"{text}, eps {norm.eps:g}" + (f"; also {' and '.join(extras)}" if extras else "")


def card_sections(entry: Entry) -> list[RenderableType]:
    card = entry.card
    arch, tok, gen, fmt = card.architecture, card.tokenizer, card.generation, card.format
    counted = count_parameters(arch)
    positions = describe_positions(arch)
    residual = arch.residual.kind + (" (one shared norm)" if arch.residual.shared_norm else "")
    biases = [name for name, on in arch.bias.model_dump().items() if on]
    stated = card.parameters
    sections: list[RenderableType] = [
        Text(f"{card.name} ({card.id})", style="bold"),
        _section(
            "identity",
            [
                ("aliases", _join(card.aliases)),
                ("publisher", card.publisher),
                ("license", card.license),
                ("languages", _join(card.languages)),
                ("base model", card.base_model),
                ("description", card.description),
                *((f"link ({k})", v) for k, v in card.links.model_dump().items()),
                ("plugin", entry.plugin.label),
                ("card file", entry.where),
            ],
        ),
        _section(
            "source",
            [
                ("repository", card.source.repo),
                ("revision", card.source.revision),
                (
                    "format",
                    card.source.format
                    + (" (pickle: refused unless you opt in)" if card.source.format == "pytorch" else ""),
                ),
                (
                    "revisions",
                    f"{len(card.source.revisions)}: {card.source.revisions[0]} ... {card.source.revisions[-1]}"
                    if card.source.revisions
                    else None,
                ),
                ("revision aliases", _join([f"{a} = {t}" for a, t in card.source.revision_aliases.items()])),
                ("pinned files", _join([f.path for f in card.source.files])),
            ],
        ),
        _section(
            "parameters",
            [
                ("computed", f"{counted.total:,} ({counted.non_embedding:,} non-embedding)"),
                ("stated", f"{stated.stated:,}" if stated.stated else "not stated"),
                ("quoted", stated.quoted),
                ("stored extra", f"{stated.stored_extra:,}" if stated.stored_extra else None),
                ("note", stated.note),
            ],
        ),
        _section(
            "architecture",
            [
                ("family", arch.family),
                ("checkpoint layout", arch.checkpoint_layout),
                ("layers", arch.layers),
                ("hidden size", arch.hidden_size),
                ("heads", f"{arch.heads} query, {arch.kv_heads} key/value, head_dim {arch.head_dim}"),
                ("ffn size", arch.ffn_size),
                ("vocab size", arch.vocab_size),
                ("context length", f"{arch.context_length:,}"),
                ("positions", positions),
                ("norm", describe_norm(arch)),
                ("sliding window", f"{arch.sliding_window:,}" if arch.sliding_window else None),
                ("mlp", arch.mlp),
                ("residual", residual),
                ("biases", _join(biases) or "none"),
                ("tied embeddings", "yes" if arch.tied_embeddings else "no"),
                (
                    "multipliers",
                    f"embedding x{arch.multipliers.embedding:g}, attention {arch.multipliers.attention}, logits x{arch.multipliers.logits:g}",
                ),
            ],
        ),
        _section(
            "tokenizer",
            [
                ("kind", f"{tok.kind} ({_join(tok.files)})"),
                *(
                    (role, f"{t.text!r} = {t.id}")
                    for role, t in [("bos", tok.bos), ("eos", tok.eos), ("pad", tok.pad), ("unk", tok.unk)]
                    if t
                ),
                ("adds bos", "yes" if tok.add_bos else "no"),
                ("special tokens", _join([f"{t.text!r} = {t.id}" for t in tok.special_tokens])),
                ("markers", _join([f"{m.text!r} ({'special' if m.special else 'plain text'})" for m in tok.markers])),
            ],
        ),
        _section(
            f"prompt format: {fmt.name}",
            [
                ("description", fmt.description),
                ("example", Text(_example(card))),
                ("user turn", repr(fmt.user.prefix + "{message}" + fmt.user.suffix)),
                ("assistant turn", repr(fmt.assistant.prefix + "{message}" + fmt.assistant.suffix)),
                ("answer prefix", repr(fmt.answer_prefix)),
                ("stop", _join([repr(s) for s in fmt.stop])),
                (
                    "system prompt",
                    "supported"
                    if fmt.system.supported
                    else f"not supported: {fmt.system.when_unsupported.replace('_', ' ')}",
                ),
                ("multi-turn", "yes" if fmt.multi_turn else "no"),
                ("response clean-up", fmt.strip_response),
            ],
        ),
        _section("generation defaults", [*((k, v) for k, v in gen.model_dump().items()), ("dtype", card.dtype)]),
    ]
    if card.evaluation:
        table = Table(title="evaluation", title_justify="left", title_style="bold cyan", box=None, pad_edge=False)
        for column in ("task", "metric", "value", "stderr"):
            table.add_column(column)
        for r in card.evaluation:
            unit = "%" if r.unit == "percent" else ""
            table.add_row(r.task, r.metric, f"{r.value:g}{unit}", f"±{r.stderr:g}" if r.stderr is not None else "")
        sections.append(table)
    spaced: list[RenderableType] = []
    for section in sections:
        spaced += [section, Text("")]
    return [Group(*spaced[:-1])]


def _example(card: Card) -> str:
    try:
        return repr(render_prompt(card.format, "{message}"))
    except PromptError as exc:
        return f"(cannot render: {exc})"


def plugin_json(p: PluginInfo) -> dict[str, Any]:
    return {
        "name": p.name,
        "module": p.module,
        "distribution": p.distribution,
        "version": p.version,
        "cards": list(p.cards),
        "prompt_formats": list(p.prompt_formats),
        "checkpoint_layouts": list(p.checkpoint_layouts),
        "error": p.error,
        "load_seconds": round(p.seconds, 4),
    }


def plugin_table(plugins: list[PluginInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("plugin", "distribution", "contributes", "load s", "status"):
        table.add_column(column, overflow="fold", justify="right" if column == "load s" else "left")
    for p in plugins:
        parts = [
            f"{what}: {_join(list(items))}"
            for what, items in (("cards", p.cards), ("formats", p.prompt_formats), ("layouts", p.checkpoint_layouts))
            if items
        ]
        status = Text(f"failed: {p.error}", style="red") if p.error else Text("ok", style="green")
        dist = f"{p.distribution} {p.version}" if p.distribution else "-"
        table.add_row(p.name, dist, "; ".join(parts) or "-", f"{p.seconds:.2f}", status)
    return table
