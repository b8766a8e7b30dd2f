"""`modeldeck export`: a card as the files other engines read (registry/export), with what each format drops."""

from __future__ import annotations

from pathlib import Path

import click

from modeldeck.registry import export as exporting
from modeldeck.registry.cli.common import find_card, out, report_errors

__all__ = ["COMMANDS"]


@click.command("export")
@click.argument("name")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path), help="The folder to write (new or empty).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf", "ollama", "all"]),
    default="all",
    show_default=True,
    help="hf: chat_template.jinja, tokenizer_config.json, generation_config.json, README.md; ollama: a Modelfile.",
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
    name: str, to: Path, fmt: str, weights: str | None, revision: str | None, weights_mode: str, force: bool
) -> None:
    """Export card NAME (an id or a card file) for transformers/vLLM (hf) and Ollama into folder --to. Never
    downloads: the checkpoint's files are added when they are on this machine."""
    card, _ = find_card(name)
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


COMMANDS = [export_command]
