"""The OpenAI-compatible server: `modeldeck serve`."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any

import click

from modeldeck.registry.cli_common import err, load_registry, report_errors
from modeldeck.registry.diagnostics import ModeldeckError

__all__ = ["COMMANDS"]


@click.command("serve")
@click.argument("name")
@click.option("--weights", type=click.Path(exists=True, file_okay=False), help="A local checkpoint folder.")
@click.option("--revision", help="A hub revision the card lists (default: the card's).")
@click.option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Weight dtype.")
@click.option("--attention", type=click.Choice(["auto", "eager", "sdpa", "xformers"]), help="Attention backend.")
@click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (pickle: can run code).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Requests decoded together."
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Requests that may wait for a batch slot; one more is answered 429 at once.",
)
@click.option("--served-name", help="The model id clients use and /v1/models shows (default: the card's id).")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish on Ctrl-C / SIGTERM before they are cancelled.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@report_errors
def serve_command(name: str, **kwargs: Any) -> None:
    """Serve card NAME over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models).

    Requests are decoded together by a continuous-batching engine (up to --max-batch at once); the card's prompt
    format and generation defaults apply. Stop with Ctrl-C: in-flight requests finish first.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ModeldeckError(
            f"modeldeck serve needs fastapi and uvicorn ({exc}); install the serve extra: pip install 'modeldeck\\[serve]'"
        ) from None
    card = load_registry(quiet_problems=True).get(name)  # an unknown name fails here, before torch is imported
    from modeldeck import runtime
    from modeldeck.runtime.server import serve

    load = {k: kwargs.pop(k) for k in ("weights", "revision", "device", "dtype", "attention", "allow_pickle")}
    model = runtime.load(card.id, **load)
    where = f"http://{kwargs['host']}:{kwargs['port']}/v1" if kwargs["port"] else "a free port (logged below)"
    dtype = str(model.dtype).removeprefix("torch.")
    err.print(
        f"serving {model.card.id} ({model.device}, {dtype}; up to {kwargs['max_batch']} requests batched, "
        f"{kwargs['max_queue']} queued) at {where}",
        markup=False,
        soft_wrap=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end with exit code 0 for both
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(model, **kwargs)


COMMANDS: list[click.Command] = [serve_command]
