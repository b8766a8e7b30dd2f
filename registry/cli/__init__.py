"""The `modeldeck` command line. User errors are reported in one or two lines, never a traceback.

    common      consoles, error reporting (report_errors), loading the registry, card name or card file
    options     the load and generation options of the commands that run a model, declared once
    display     how cards, plugins and sizes look: rich tables for people, plain dicts for JSON
    cards       list, show, prompt, validate, schema, plugins
    run         generate, chat
    checkpoint  inspect (and the weights check of validate --weights)
    weights     download, verify, convert
    memory      memory
    serve       serve
    evaluate    eval (lm-evaluation-harness tasks over a card's revisions)
    export      export (a card as the files transformers, vLLM and Ollama read)
    engines     engine install, engine where (another engine's environment: vLLM)
    new         card new (a starting card from a local checkpoint folder)

The only registry code that imports the runtime (and torch), inside the commands that run a model (and convert).
"""

from __future__ import annotations

import click

from modeldeck.registry.cli import cards, checkpoint, engines, evaluate, export, memory, new, run, serve, weights

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modeldeck")
def main() -> None:
    """modeldeck: model cards as validated data, contributed by plugins, run by one generic decoder."""


for _module in (cards, new, run, checkpoint, weights, memory, serve, evaluate, export, engines):
    for _command in _module.COMMANDS:
        main.add_command(_command)
