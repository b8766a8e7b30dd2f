"""`modeldeck export`: a card as the files other engines read (registry/export), with what each format drops."""

from __future__ import annotations

from pathlib import Path

import click

from modeldeck.registry import export as exporting
from modeldeck.registry.cli.common import find_card, out, report_errors
from modeldeck.registry.engines.llamacpp import OUTTYPES
from modeldeck.registry.schema import Card

__all__ = ["COMMANDS"]


@click.command("export")
@click.argument("name")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path), help="The folder to write (new or empty).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf", "ollama", "all", "gguf"]),
    default="all",
    show_default=True,
    help="hf: chat_template.jinja, tokenizer_config.json, generation_config.json, README.md; ollama: a Modelfile; "
    "all: both; gguf: model.gguf (llama.cpp's converter, in its environment) and a Modelfile FROM it.",
)
@click.option(
    "--outtype",
    type=click.Choice(list(OUTTYPES)),
    default="f32",
    show_default=True,
    help="gguf only: the tensors' type in the GGUF file.",
)
@click.option("--weights", type=click.Path(file_okay=False), help="A local checkpoint folder (default: the card's).")
@click.option("--revision", help="The revision whose checkpoint to take from the Hugging Face cache.")
@click.option(
    "--weights-mode",
    type=click.Choice(["link", "copy", "none"]),
    default="link",
    show_default=True,
    help="The checkpoint's files beside the exported ones: hard-linked, copied, or left out.",
)
@click.option("--force", is_flag=True, help="Replace files the folder already holds.")
@report_errors
def export_command(
    name: str,
    to: Path,
    fmt: str,
    outtype: str,
    weights: str | None,
    revision: str | None,
    weights_mode: str,
    force: bool,
) -> None:
    """Export card NAME (an id or a card file) for transformers/vLLM (hf), Ollama, or llama.cpp (gguf) into folder
    --to. Never downloads: the checkpoint's files are added when they are on this machine (gguf needs them, and
    llama.cpp's environment: `modeldeck engine install llama.cpp`)."""
    card, _ = find_card(name)
    if fmt == "gguf":
        _export_gguf(card, to, outtype, weights, revision, force)
        return
    formats = list(exporting.FORMATS) if fmt == "all" else [fmt]
    mode: exporting.WeightsMode = "copy" if weights_mode == "copy" else "none" if weights_mode == "none" else "link"
    plan = exporting.plan(card, formats, weights=weights, revision=revision, weights_mode=mode)
    written = exporting.write(plan, to, force=force)
    verb = {"link": "linked", "copy": "copied", "none": ""}[mode]
    out.print(f"exported {card.id} to {to}:")
    for name_ in written:
        origin = f"  ({verb} from the checkpoint)" if name_ in plan.checkpoint else ""
        out.print(f"  {name_}{origin}")
    for target, dropped in plan.dropped.items():
        if dropped:
            out.print(f"not expressible in {target}:", markup=False)
            for line in dropped:
                out.print(f"  - {line}", markup=False, soft_wrap=True)
    for note in plan.notes:
        out.print(f"note: {note}", markup=False, soft_wrap=True)


def _export_gguf(card: Card, to: Path, outtype: str, weights: str | None, revision: str | None, force: bool) -> None:
    from modeldeck.registry.export.gguf import export_gguf

    done = export_gguf(card, to, outtype=outtype, weights=weights, revision=revision, force=force)
    size = (done.folder / "model.gguf").stat().st_size
    out.print(f"exported {card.id} to {to} ({outtype}, {done.tensors} tensors, {size / 2**20:,.1f} MiB):")
    for name_ in done.written:
        out.print(f"  {name_}", markup=False)
    out.print("not carried by the GGUF file:", markup=False)
    for line in done.dropped:
        out.print(f"  - {line}", markup=False, soft_wrap=True)


COMMANDS = [export_command]
