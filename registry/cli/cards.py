"""The cards: `modeldeck list`, `show`, `prompt`, `validate`, `schema`, `plugins`. No torch, no weights read."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modeldeck import registry
from modeldeck.registry.checks import check_card, check_tokenizer
from modeldeck.registry.cli import display
from modeldeck.registry.cli.checkpoint import weights_diagnostics
from modeldeck.registry.cli.common import err, find_card, json_text, load_registry, out, report_errors, styled
from modeldeck.registry.diagnostics import CardError, Diagnostic
from modeldeck.registry.prompting import PromptError, render_prompt
from modeldeck.registry.schema import Card

__all__ = ["COMMANDS"]


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@report_errors
def list_cards(as_json: bool) -> None:
    """List the installed cards."""
    reg = load_registry()
    entries = reg.entries()
    if as_json:
        click.echo(json_text([display.summary(e) for e in entries]))
        return
    out.print(display.card_table(entries))


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the card (and computed facts) as JSON.")
@report_errors
def show(name: str, as_json: bool) -> None:
    """Show every section of a card: NAME is an id, alias or hub repository."""
    entry = load_registry(quiet_problems=True).entry(name)
    if as_json:
        click.echo(json_text(display.card_json(entry)))
        return
    for renderable in display.card_sections(entry):
        out.print(renderable)


@click.command()
@click.argument("name")
@click.argument("text", required=False)
@click.option("--system", help="A system prompt (handled as the card's prompt format says).")
@click.option(
    "--messages",
    help='A conversation as JSON messages, e.g. \'[{"role": "user", "content": "Hi"}]\'; "-" reads standard input.',
)
@report_errors
def prompt(name: str, text: str | None, system: str | None, messages: str | None) -> None:
    """Print the exact prompt the model will see for TEXT (or a conversation) with card NAME (an id or a card file).

    The prompt is written byte for byte; a newline is added only when writing to a terminal.
    """
    card, _ = find_card(name)
    if (text is None) == (messages is None):
        raise click.UsageError("give either TEXT or --messages")
    conversation: Any = text
    if messages is not None:
        raw = sys.stdin.read() if messages == "-" else messages
        try:
            conversation = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PromptError(f"--messages is not valid JSON: {exc}") from None
        if not isinstance(conversation, list):
            raise PromptError("--messages must be a JSON list of {role, content} objects")
    rendered = render_prompt(card.format, conversation, system)
    sys.stdout.write(rendered + ("\n" if sys.stdout.isatty() else ""))


@click.command()
@click.argument("cards", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, path_type=Path),
    help="A folder with tokenizer.json: check ids, markers and stop strings against it.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder: check its tensors (safetensors headers only), config.json and its tokenizer.json "
    "against the card.",
)
@report_errors
def validate(cards: tuple[str, ...], fmt: str, tokenizer: Path | None, weights: Path | None) -> None:
    """Validate the installed cards, or the given card files (or card ids).

    With --weights DIR (one card): every tensor the card implies is in the checkpoint with the shape its
    architecture implies, nothing unexpected, the parameter count, and config.json; no weights are read. When DIR
    holds a tokenizer.json (and no --tokenizer is given), the card's special tokens, markers and stop strings are
    checked against it too, as `runtime.load` does before it reads weights.
    Exit code 0 when every card is valid (warnings allowed), 1 otherwise.
    """
    if weights is not None and len(cards) != 1:
        raise click.UsageError("--weights checks one card against one checkpoint: give the card's id or file")
    reg = registry.default()
    checked: list[str] = []
    found: list[Diagnostic] = []
    targets: list[tuple[Card, str]] = []
    if not cards:
        found += reg.diagnostics
        targets = [(e.card, e.where) for e in reg.entries()]
    for name in cards:
        try:
            targets.append(reg.card_or_file(name))
        except CardError as exc:  # an invalid card file: checked, and invalid
            checked.append(name)
            found += exc.diagnostics
        except LookupError as exc:  # no installed card of that name (or more than one)
            checked.append(name)
            found.append(Diagnostic("error", str(exc), name, hint="give a card file (.yaml) or an installed card id"))
    for card, where in targets:
        checked.append(card.id)
        found += check_card(card, where)
        if tokenizer is not None:
            found += check_tokenizer(card, tokenizer, where)
        if weights is not None:
            found += weights_diagnostics(reg, card, weights)
            if tokenizer is None and (weights / "tokenizer.json").is_file():
                found += check_tokenizer(card, weights, where)
    errors = sum(d.severity == "error" for d in found)
    if fmt == "json":
        report = {"ok": errors == 0, "cards": checked, "diagnostics": [d.to_json() for d in found]}
        click.echo(json_text(report))
    else:
        for d in found:
            (err if d.severity == "error" else out).print(d.render(), markup=False, soft_wrap=True)
        warnings = sum(d.severity == "warning" for d in found)
        verdict = ("valid", "green") if errors == 0 else ("invalid", "red")
        out.print(
            styled(f"{len(checked)} card(s) checked: ", verdict, f" ({errors} error(s), {warnings} warning(s))"),
            soft_wrap=True,
        )
    sys.exit(1 if errors else 0)


@click.command()
@report_errors
def schema() -> None:
    """Print the card JSON Schema (for editors and other tools)."""
    click.echo(json_text(Card.model_json_schema()))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@report_errors
def plugins(as_json: bool) -> None:
    """Show which plugin, from which distribution, contributed what, and which failed."""
    reg = registry.default()
    if as_json:
        report = {
            "plugins": [display.plugin_json(p) for p in reg.plugins()],
            "diagnostics": [d.to_json() for d in reg.diagnostics],
        }
        click.echo(json_text(report))
        return
    out.print(display.plugin_table(reg.plugins()))
    for d in reg.diagnostics:
        (err if d.severity == "error" else out).print(d.render(), markup=False, soft_wrap=True)


COMMANDS: list[click.Command] = [list_cards, show, prompt, validate, schema, plugins]
