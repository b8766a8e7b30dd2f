"""The OpenAI-compatible server: `modeldeck serve`.

The listening socket is bound before the model is loaded and before anything is announced: a busy port is one clear
error, and the announced address (with --port 0, the port the system chose) is the one being served.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import signal
import socket
import sys
from typing import Any

import click

from modeldeck.registry.cli.common import err, find_card, report_errors, styled
from modeldeck.registry.cli.options import engine_option, load_model, load_options
from modeldeck.registry.diagnostics import ModeldeckError

__all__ = ["COMMANDS"]


class PortError(ModeldeckError):
    """The address to serve on cannot be bound (a port in use, a privileged port, an address not on this machine)."""


@click.command("serve")
@click.argument("name")
@load_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
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
@engine_option
@click.option(
    "--tensor-parallel-size",
    type=click.IntRange(min=1),
    help="--engine vllm: GPUs (CPU: ranks) the model is split over (default: the memory planner's).",
)
@click.option("--vllm-arg", "vllm_args", multiple=True, help="--engine vllm: one more argument for vLLM (repeatable).")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish on Ctrl-C / SIGTERM before they are cancelled.",
)
@click.option(
    "--api-key",
    envvar="MODELDECK_API_KEY",
    help="Require 'Authorization: Bearer KEY' on every endpoint but /health (or set MODELDECK_API_KEY).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@report_errors
def serve_command(name: str, **options: Any) -> None:
    """Serve card NAME (an id or a card file) over an OpenAI-compatible HTTP API (/v1/completions,
    /v1/chat/completions, /v1/models).

    Requests are decoded together by a continuous-batching engine (up to --max-batch at once); the card's prompt
    format and generation defaults apply. Stop with Ctrl-C: in-flight requests finish first.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ModeldeckError(
            f"modeldeck serve needs fastapi and uvicorn ({exc}); install the serve extra: pip install 'modeldeck[serve]'"
        ) from None
    find_card(name)  # an unknown name or an invalid card file fails here, before the port is bound
    host, port = options.pop("host"), options.pop("port")
    if not options["api_key"] and not _loopback(host):
        err.print(
            styled(
                ("warning:", "yellow"),
                f" serving on {host} without --api-key: anyone who can reach this address can use the model "
                "(set --api-key or MODELDECK_API_KEY)",
            ),
            soft_wrap=True,
        )
    engine = {"engine": options.pop("engine"), "tensor_parallel_size": options.pop("tensor_parallel_size")}
    engine["vllm_args"] = list(options.pop("vllm_args")) or None
    with _bind(host, port) as sock, contextlib.ExitStack() as running:
        model = load_model(name, options, **engine)  # torch is imported here
        if hasattr(model, "close"):  # vLLM's server stops with the command
            running.callback(model.close)
        url = _url(host, sock.getsockname()[1])
        dtype = str(model.dtype).removeprefix("torch.")
        where = {
            "vllm": f"vLLM on {model.device}, tensor parallel {getattr(model, 'tensor_parallel_size', 1)}",
            "llama.cpp": "llama.cpp on cpu, one sequence at a time",
        }.get(model.engine, str(model.device))
        err.print(
            f"serving {model.card.id} ({where}, {dtype}; up to {options['max_batch']} requests batched, "
            f"{options['max_queue']} queued) at {url}/v1",
            markup=False,
            soft_wrap=True,
        )
        if options["log_level"] in ("info", "debug"):  # uvicorn says this itself only for a socket it bound
            err.print(f"Uvicorn running on {url} (Press CTRL+C to quit)", markup=False, soft_wrap=True)
        from modeldeck.runtime.server import serve

        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end with exit code 0 for both
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            serve(model, host=host, port=sock.getsockname()[1], sockets=[sock], **options)


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening (as uvicorn binds one: SO_REUSEADDR, inheritable)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise PortError(f"cannot serve on --host {host}: {exc.strerror}; give an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise PortError(_bind_failure(host, port, exc)) from None
    sock.set_inheritable(True)
    return sock


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    where = f"port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use (another server, or an earlier `modeldeck serve` still running); stop that "
            "process or choose another port with --port (--port 0 takes any free one)"
        )
    if exc.errno == errno.EACCES:
        return f"{where} needs privileges to listen on (ports below 1024 do); choose a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot serve on {host}: it is not an address of this machine; give one with --host (0.0.0.0: all)"
    return f"cannot listen on {where}: {exc.strerror}; choose another --host or --port"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


COMMANDS: list[click.Command] = [serve_command]
