"""The options of the commands that run a model, declared once: where the weights come from and how to run
(`generate`, `chat`, `serve`), and the generation overrides (`generate`, `chat`). Loading the model imports the
runtime (and torch), here and only when a command runs a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from modeldeck.registry.cli.common import F, find_card
from modeldeck.registry.decoder import BACKENDS, DTYPES, QUANTIZE
from modeldeck.registry.engines import ENGINES

__all__ = ["engine_option", "generation_options", "load_model", "load_options", "load_options_except", "overrides"]

engine_option = click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default="modeldeck",
    show_default=True,
    help="What runs the model: modeldeck's runtime, vLLM or llama.cpp in its environment (`modeldeck engine "
    "install vllm|llama.cpp`; llama.cpp runs the card's GGUF, exported once: --dtype picks its type, --quantize "
    "int8 is q8_0).",
)

_LOAD_OPTIONS = [
    click.option("--weights", type=click.Path(exists=True, file_okay=False), help="A local checkpoint folder."),
    click.option("--revision", help="A hub revision the card lists (default: the card's)."),
    click.option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)."),
    click.option("--dtype", type=click.Choice(DTYPES), help="Compute dtype (default: see `modeldeck generate -v`)."),
    click.option("--quantize", type=click.Choice(QUANTIZE), help="int8: int8 weights, one scale per output row."),
    click.option("--attention", type=click.Choice(BACKENDS), help="Attention backend."),
    click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (pickle: can run code)."),
]
_LOAD_KEYS = ("weights", "revision", "device", "dtype", "quantize", "attention", "allow_pickle")

_GENERATION_OPTIONS = [
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


def _apply(options: Sequence[Callable[[Any], Any]], command: F) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def load_options(command: F) -> F:
    """--weights, --revision, --device, --dtype, --quantize, --attention, --allow-pickle: what `runtime.load`
    takes."""
    return _apply(_LOAD_OPTIONS, command)


def load_options_except(*names: str) -> Callable[[F], F]:
    """The load options but `names` (`modeldeck eval` takes --revisions, several, instead of --revision)."""
    kept = [option for option, key in zip(_LOAD_OPTIONS, _LOAD_KEYS, strict=True) if key not in names]
    return lambda command: _apply(kept, command)


def generation_options(command: F) -> F:
    """The generation overrides (--max-new-tokens ... --stop) and --system; unset ones keep the card's defaults."""
    return _apply(_GENERATION_OPTIONS, command)


def load_model(name: str, options: dict[str, Any], **engine: Any) -> Any:
    """The model of card NAME (an installed card or a card file), loaded with the load options, which are taken out
    of `options`.

    An unknown NAME or an invalid card file fails before torch is imported; `runtime.load` then reads NAME by the
    same rule (`Registry.card_or_file`), so its errors name the card file. `engine`: runtime.load's engine
    keywords (engine, tensor_parallel_size, vllm_args)."""
    find_card(name)
    from modeldeck import runtime  # torch is imported only by commands that run a model

    return runtime.load(name, **{key: options.pop(key) for key in _LOAD_KEYS}, **engine)


def overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The generation options the user gave, passed to the runtime as they are (it resolves them with the card's
    defaults, as the server does)."""
    return {key: value for key, value in options.items() if value not in (None, ())}
