"""The `modeldeck` command line. User errors are reported in one or two lines, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modeldeck import registry
from modeldeck.registry import cli_checkpoint, cli_hub, cli_memory, cli_serve, display
from modeldeck.registry.cardfile import load_card_file
from modeldeck.registry.catalog import Registry
from modeldeck.registry.checks import check_card, check_tokenizer
from modeldeck.registry.cli_common import F, err, load_registry, out, report_errors
from modeldeck.registry.diagnostics import CardError, Diagnostic
from modeldeck.registry.prompting import PromptError, render_prompt
from modeldeck.registry.schema import Card

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modeldeck")
def main() -> None:
    """modeldeck: model cards as validated data, contributed by plugins, run by one generic decoder."""


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@report_errors
def list_cards(as_json: bool) -> None:
    """List the installed cards."""
    reg = load_registry()
    entries = reg.entries()
    if as_json:
        click.echo(json.dumps([display.summary(e) for e in entries], indent=2))
        return
    out.print(display.card_table(entries))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the card (and computed facts) as JSON.")
@report_errors
def show(name: str, as_json: bool) -> None:
    """Show every section of a card: NAME is an id, alias or hub repository."""
    entry = load_registry(quiet_problems=True).entry(name)
    if as_json:
        click.echo(json.dumps(display.card_json(entry), indent=2, ensure_ascii=False))
        return
    for renderable in display.card_sections(entry):
        out.print(renderable)


@main.command()
@click.argument("name")
@click.argument("text", required=False)
@click.option("--system", help="A system prompt (handled as the card's prompt format says).")
@click.option(
    "--messages",
    help='A conversation as JSON messages, e.g. \'[{"role": "user", "content": "Hi"}]\'; "-" reads standard input.',
)
@report_errors
def prompt(name: str, text: str | None, system: str | None, messages: str | None) -> None:
    """Print the exact prompt the model will see for TEXT (or a conversation).

    The prompt is written byte for byte; a newline is added only when writing to a terminal.
    """
    card = load_registry(quiet_problems=True).get(name)
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


@main.command()
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
    help="A checkpoint folder: check its tensors (safetensors headers only) and config.json against the card.",
)
@report_errors
def validate(cards: tuple[str, ...], fmt: str, tokenizer: Path | None, weights: Path | None) -> None:
    """Validate the installed cards, or the given card files (or card ids).

    With --weights DIR (one card): every tensor the card implies is in the checkpoint with the shape its
    architecture implies, nothing unexpected, the parameter count, and config.json; no weights are read.
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
            targets.append(_card_to_validate(reg, name))
        except CardError as exc:
            found += exc.diagnostics
    for card, where in targets:
        checked.append(card.id)
        found += check_card(card, where)
        if tokenizer is not None:
            found += check_tokenizer(card, tokenizer, where)
        if weights is not None:
            found += cli_checkpoint.weights_diagnostics(reg, card, weights)
    errors = sum(d.severity == "error" for d in found)
    if fmt == "json":
        report = {"ok": errors == 0, "cards": checked, "diagnostics": [d.to_json() for d in found]}
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for d in found:
            (err if d.severity == "error" else out).print(d.render(), markup=False, soft_wrap=True)
        warnings = sum(d.severity == "warning" for d in found)
        verdict = "[green]valid[/green]" if errors == 0 else "[red]invalid[/red]"
        out.print(
            f"{len(checked)} card(s) checked: {verdict} ({errors} error(s), {warnings} warning(s))",
            markup=True,
            soft_wrap=True,
        )
    sys.exit(1 if errors else 0)


def _card_to_validate(reg: Registry, name: str) -> tuple[Card, str]:
    """A card file (resolved against the installed formats and layouts), or an installed card by name."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        card = load_card_file(path)
        return reg.resolve_card(card, str(path)), str(path)
    try:
        entry = reg.entry(name)
    except LookupError as exc:
        raise CardError(
            [Diagnostic("error", str(exc), name, hint="give a card file (.yaml) or an installed card id")]
        ) from None
    return entry.card, entry.where


def _model_options(command: F) -> F:
    """Options shared by `generate` and `chat`: where the weights come from, how to run, generation overrides."""
    options = [
        click.option("--weights", type=click.Path(exists=True, file_okay=False), help="A local checkpoint folder."),
        click.option("--revision", help="A hub revision the card lists (default: the card's)."),
        click.option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Weight dtype."),
        click.option(
            "--attention", type=click.Choice(["auto", "eager", "sdpa", "xformers"]), help="Attention backend."
        ),
        click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (pickle: can run code)."),
        click.option("--max-new-tokens", type=int),
        click.option("--min-new-tokens", type=int),
        click.option("--temperature", type=float),
        click.option("--top-k", type=int),
        click.option("--top-p", type=float),
        click.option("--repetition-penalty", type=float),
        click.option("--do-sample/--greedy", "do_sample", default=None, help="Sample, or pick the likeliest token."),
        click.option("--seed", type=int, help="Seed for sampling (reproducible output)."),
        click.option("--stop", multiple=True, help="A stop string (repeatable), besides the card's."),
        click.option("--system", help="A system prompt (handled as the card's prompt format says)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_LOAD_KEYS = ("weights", "revision", "device", "dtype", "attention", "allow_pickle")


def _load_model(name: str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Load the model; returns it and the generation overrides the user actually gave."""
    from modeldeck import runtime  # torch is imported only by commands that run a model

    load = {k: kwargs.pop(k) for k in _LOAD_KEYS}
    model = runtime.load(name, **load)
    overrides = {k: v for k, v in kwargs.items() if v not in (None, ())}
    return model, overrides


@main.command()
@click.argument("name")
@click.argument("prompt")
@_model_options
@click.option("--stream", is_flag=True, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (text, finish reason, token counts).")
@report_errors
def generate(name: str, prompt: str, stream: bool, as_json: bool, **kwargs: Any) -> None:
    """Generate a completion for PROMPT with card NAME (its prompt format and defaults apply)."""
    system = kwargs.pop("system")
    model, overrides = _load_model(name, kwargs)
    if stream and not as_json:
        for piece in model.stream(prompt, system=system, **overrides):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    result = model.generate(prompt, system=system, **overrides)
    if as_json:
        completions = [
            {
                "text": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
            for c in result.completions
        ]
        click.echo(json.dumps({"card": model.card.id, "prompt": result.prompt, "completions": completions}, indent=2))
        return
    for i, completion in enumerate(result.completions):
        if len(result.completions) > 1:
            out.print(f"[bold]--- sequence {i + 1}[/bold]", markup=True)
        click.echo(completion.text)


@main.command()
@click.argument("name")
@_model_options
@report_errors
def chat(name: str, **kwargs: Any) -> None:
    """Chat with card NAME in the terminal (/reset forgets the conversation, /exit or Ctrl-D ends it)."""
    system = kwargs.pop("system")
    model, overrides = _load_model(name, kwargs)
    multi_turn = model.card.format.multi_turn
    note = "" if multi_turn else " (a single-turn format: each message is answered on its own)"
    err.print(f"chatting with {model.card.name}{note}; /reset, /exit", markup=False, soft_wrap=True)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history.clear()
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        answer = ""
        for piece in model.stream(history if multi_turn else line, system=system, **overrides):
            answer += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history = [*history, {"role": "assistant", "content": answer}] if multi_turn else []


@main.command()
@report_errors
def schema() -> None:
    """Print the card JSON Schema (for editors and other tools)."""
    click.echo(json.dumps(Card.model_json_schema(), indent=2, ensure_ascii=False))


@main.command()
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
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    out.print(display.plugin_table(reg.plugins()))
    for d in reg.diagnostics:
        (err if d.severity == "error" else out).print(d.render(), markup=False, soft_wrap=True)


# Commands that live in their own modules (each lists its click commands in COMMANDS).
for _module in (cli_checkpoint, cli_hub, cli_memory, cli_serve):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
