"""Running a model: `modeldeck generate` and `modeldeck chat` (the runtime, and torch, are imported when they run)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from modeldeck.registry.cli.common import err, json_text, out, report_errors, styled
from modeldeck.registry.cli.options import engine_option, generation_options, load_model, load_options, overrides

__all__ = ["COMMANDS"]


@click.command()
@click.argument("name")
@click.argument("prompt")
@load_options
@engine_option
@generation_options
@click.option("--stream", is_flag=True, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (text, finish reason, token counts).")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also say how the model runs (dtype and why) and how fast, on stderr."
)
@report_errors
def generate(name: str, prompt: str, stream: bool, as_json: bool, verbose: bool, **options: Any) -> None:
    """Generate a completion for PROMPT with card NAME, an id or a card file (its prompt format and defaults
    apply)."""
    system = options.pop("system")
    began = time.perf_counter()
    model = load_model(name, options, engine=options.pop("engine"))
    if verbose and model.engine != "modeldeck":
        err.print(f"loaded {model.card.id} in {time.perf_counter() - began:.2f} s: {model.precision}", markup=False)
        began = time.perf_counter()
    elif verbose:
        quantized = f", {model.quantize} weights" if model.quantize else ""
        err.print(
            f"loaded {model.card.id} in {time.perf_counter() - began:.2f} s: {model.device}, "
            f"{str(model.dtype).removeprefix('torch.')}{quantized} ({model.precision}), "
            f"attention {model.backend.name}",
            markup=False,
            soft_wrap=True,
        )
        began = time.perf_counter()
    if stream and not as_json:
        for piece in model.stream(prompt, system=system, **overrides(options)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    result = model.generate(prompt, system=system, **overrides(options))
    if verbose:
        tokens, seconds = sum(c.completion_tokens for c in result.completions), time.perf_counter() - began
        prompt_tokens = result.completions[0].prompt_tokens
        err.print(
            f"{prompt_tokens} prompt tokens, {tokens} generated in {seconds:.2f} s ({tokens / seconds:.1f} tok/s)",
            markup=False,
        )
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
        click.echo(json_text({"card": model.card.id, "prompt": result.prompt, "completions": completions}))
        return
    for i, completion in enumerate(result.completions):
        if len(result.completions) > 1:
            out.print(styled((f"--- sequence {i + 1}", "bold")))
        click.echo(completion.text)


CHAT_HELP = """commands:
  /reset         forget the conversation
  /exit, /quit   end the chat (so do Ctrl-D and Ctrl-C at the prompt)
  /help          this list
Ctrl-C while an answer is written stops that answer; the chat goes on."""


@click.command()
@click.argument("name")
@load_options
@engine_option
@generation_options
@report_errors
def chat(name: str, **options: Any) -> None:
    """Chat with card NAME (an id or a card file) in the terminal: /reset forgets the conversation, /help lists the
    commands, /exit or Ctrl-D ends it. Ctrl-C stops the answer being written (what was written stays in the
    conversation); at the prompt it ends the chat."""
    system = options.pop("system")
    model = load_model(name, options, engine=options.pop("engine"))
    multi_turn = model.card.format.multi_turn
    note = "" if multi_turn else " (a single-turn format: each message is answered on its own)"
    err.print(f"chatting with {model.card.name}{note}; /help, /reset, /exit", markup=False, soft_wrap=True)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: the chat ends
            sys.stdout.write("\n")
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/help":
            err.print(CHAT_HELP, markup=False)
            continue
        if command == "/reset":
            history.clear()
            err.print("conversation forgotten: the next message starts a new one", markup=False)
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        answer, stopped = _answer(model.stream(history if multi_turn else line, system=system, **overrides(options)))
        if stopped:
            kept = "; what was written stays in the conversation (/reset forgets it)" if multi_turn and answer else ""
            err.print(f"(answer stopped{kept})", markup=False)
        if not multi_turn:
            history = []
        elif stopped and not answer:
            history.pop()  # nothing was answered: the message is dropped too
        else:
            history.append({"role": "assistant", "content": answer})


def _answer(pieces: Iterator[str]) -> tuple[str, bool]:
    """Write the streamed answer as it comes; Ctrl-C stops it. Returns the text written and whether it was stopped."""
    answer = ""
    stopped = False
    try:
        for piece in pieces:
            answer += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stopped = True
    finally:
        close = getattr(pieces, "close", None)  # a stopped stream is closed: its generation ends there
        if close is not None:
            close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return answer, stopped


COMMANDS: list[click.Command] = [generate, chat]
