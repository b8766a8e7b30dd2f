"""The vLLM engine: a card served by vLLM, in vLLM's own environment, behind modeldeck's `Model` and front end.

    load(card, engine="vllm") ─► a folder: the checkpoint's files (symlinked; pickles converted first) and the
                                 card's export (chat template, generation and tokenizer configs; registry/export)
                              ─► VLLMServer: vLLM's OpenAI server on a free loopback port, in its own process
                                 group (arguments: registry/engines/vllm.py), waited on until /health answers
    VLLMModel.generate / chat / stream, `modeldeck serve --engine vllm` (runtime/server.py, unchanged)
                              ─► VLLMBatcher.submit(prompt ids, Options) ─► Ticket, as ContinuousBatcher's
        one streamed /v1/completions request per sequence: the prompt as token ids (rendered and tokenized by
        modeldeck, so user text never becomes special tokens), every option explicit (a greedy request has
        temperature 0); each token vLLM returns goes through runtime/generate.py's Sequence (stop strings, eos,
        max_new_tokens, the card's strip rule), and the stream is closed, which makes vLLM abort the request, as
        soon as the Sequence ends. Log-probabilities are vLLM's of the raw logits, as modeldeck's are.

Not on this engine: prompt scoring (the server's echo and max_tokens 0; Model.score/logprobs), beam search (not
on modeldeck's runtime either), per-request seeds giving modeldeck's own random draws (vLLM samples with its own
generator: a seeded request repeats on vLLM, not across engines).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from modeldeck.registry import export, memory
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.engines import vllm as engine
from modeldeck.registry.schema import Card
from modeldeck.runtime.batching import Ticket, TokenEvent
from modeldeck.runtime.generate import Options, Sequence, check_prompt
from modeldeck.runtime.remote import RemoteBatcher, RemoteModel
from modeldeck.runtime.tokenizer import TextTokenizer

__all__ = ["EngineStartError", "VLLMBatcher", "VLLMModel", "VLLMServer", "load_vllm"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()  # started, not yet stopped: stopped at exit


class EngineStartError(ModeldeckError):
    """vLLM did not start: its exit code or timeout and the last lines it printed. `port` and `pid` (its process
    group, ended by then) say what it held."""

    port: int = 0
    pid: int = 0


# --- the server process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """vLLM's OpenAI server as a child process group: start() waits until it answers, stop() ends every process
    it started (vLLM runs an engine core and a worker per rank beside its API server)."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_file: Path):
        self.command, self.env, self.port, self.log_file = command, env, port, log_file
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> None:
        import httpx

        with self.log_file.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches the engine core and workers
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self._fail(f"vLLM exited with code {code} before it was ready; it printed:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self._fail(
                    f"vLLM was not ready within {timeout:g} s (large models take longer); it printed:\n{self.tail()}"
                )
            time.sleep(0.5)

    def _fail(self, message: str) -> None:
        """Stop what was started (the port is free again), then raise."""
        assert self.process is not None
        self.stop()
        error = EngineStartError(message)
        error.port, error.pid = self.port, self.process.pid
        raise error

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The last lines vLLM printed (its log)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds; waits for the server to exit."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what is left of the group (workers that ignored SIGTERM)
        process.wait()
        deadline = time.monotonic() + 10
        while group_alive(process.pid) and time.monotonic() < deadline:  # SIGKILL lands asynchronously
            time.sleep(0.05)
        _LIVE.discard(self)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies, waiting for a parent to reap them, do not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=5.0)


# --- requests --------------------------------------------------------------------------------------


def request_body(name: str, sequence: Sequence, logprobs: int | None) -> dict[str, Any]:
    """One sequence as a streamed vLLM /v1/completions request: the prompt as token ids and every option given,
    so that vLLM's defaults never decide. Stop strings are not sent: modeldeck's Sequence applies them (one
    implementation for every engine) and closes the stream."""
    opts = sequence.opts
    body: dict[str, Any] = {
        "model": name,
        "prompt": sequence.prompt,
        "max_tokens": opts.max_new_tokens,
        "min_tokens": opts.min_new_tokens,
        "repetition_penalty": opts.repetition_penalty,
        "temperature": opts.temperature if opts.do_sample else 0.0,
        "top_p": (opts.top_p or 1.0) if opts.do_sample else 1.0,
        "top_k": (opts.top_k or 0) if opts.do_sample else 0,  # 0: no top-k
        "ignore_eos": True,  # the card's eos ids instead of vLLM's idea of them:
        "stop_token_ids": sorted(sequence.eos),  # vLLM keeps min_tokens by masking these
        "stream": True,
        "return_token_ids": True,
    }
    if opts.seed is not None:
        body["seed"] = opts.seed
    if logprobs is not None:
        body |= {"logprobs": logprobs, "return_tokens_as_token_ids": True}
    return body


def _scored(choice: dict[str, Any], index: int, n: int) -> dict[str, Any]:
    """TokenEvent's logprob and top_logprobs of token `index` of a chunk (vLLM names tokens "token_id:N")."""
    found = choice.get("logprobs") or {}
    logprob = found["token_logprobs"][index]
    top = sorted(((int(k.split(":", 1)[1]), v) for k, v in found["top_logprobs"][index].items()), key=lambda t: -t[1])
    return {"logprob": logprob, "top_logprobs": top[:n]}


class VLLMBatcher(RemoteBatcher):
    """RemoteBatcher over a vLLM server, which does the batching: each request one streamed /v1/completions."""

    engine = "vLLM"

    def _stream(self, ticket: Ticket, sequence: Sequence) -> tuple[str, str | None, dict[str, Any]]:
        """Stream one request from vLLM into `sequence`: (finish reason, error, the last token's scores)."""
        body = request_body(self.model.served_names[0], sequence, ticket.logprobs)
        n = ticket.logprobs or 0
        with self.model.client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                return "error", f"vLLM refused the request: {_error_text(response)}", {}
            for line in response.iter_lines():
                if self._abort is not None:
                    return "error", self._abort, {}
                if ticket.cancelled:
                    return "cancelled", None, {}
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    return "error", f"vLLM failed the request: {chunk['error'].get('message')}", {}
                choice = chunk["choices"][0]
                for index, token in enumerate(choice.get("token_ids") or []):
                    scored = _scored(choice, index, n) if ticket.logprobs is not None else {}
                    sequence.push(int(token))
                    if sequence.finish is not None:
                        return sequence.finish, None, scored  # leaving the block closes the stream: vLLM aborts
                    ticket._publish(TokenEvent(sequence.delta, int(token), None, **scored))
        return "length", None, {}  # vLLM stopped at max_tokens, which the Sequence counts the same


def _error_text(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"


# --- the model -------------------------------------------------------------------------------------


class VLLMModel(RemoteModel):
    """A card running on a vLLM server: Model's generate/chat/stream and the server's batcher (`batcher`), with
    the card's prompt format, defaults and stop strings applied by modeldeck. close() (or the end of a `with`
    block, or the interpreter) stops the server."""

    engine = "vllm"
    batcher_class = VLLMBatcher

    def __init__(
        self,
        card: Card,
        tokenizer: TextTokenizer,
        server: VLLMServer,
        served_names: list[str],
        device: str,
        dtype: str,
        tensor_parallel_size: int,
        folder: tempfile.TemporaryDirectory[str],
    ):
        import httpx

        self.card, self.tokenizer, self.server, self.served_names = card, tokenizer, server, served_names
        self.device, self.dtype, self.tensor_parallel_size = device, dtype, tensor_parallel_size
        self.precision = f"vLLM's {dtype}"
        self._folder = folder
        self.client = httpx.Client(base_url=server.url, timeout=httpx.Timeout(None, connect=10.0))

    def __repr__(self) -> str:
        return (
            f"VLLMModel({self.card.id!r}, device={self.device}, dtype={self.dtype}, "
            f"tensor_parallel_size={self.tensor_parallel_size}, url={self.server.url!r})"
        )

    def close(self) -> None:
        """Stop the vLLM server and remove its model folder."""
        super().close()
        self.client.close()
        self.server.stop()
        self._folder.cleanup()

    def sequence(self, prompt_ids: list[int], opts: Options, choice: int = 0, strip: bool = True) -> Sequence:
        """Model.sequence's checks and text; the random draws are vLLM's (no generator here)."""
        arch = self.card.architecture
        check_prompt(prompt_ids, arch.vocab_size, arch.context_length, opts.max_new_tokens)
        return Sequence(prompt_ids, opts, self.tokenizer.eos_ids, self.text_stream(opts, strip))


# --- load ------------------------------------------------------------------------------------------


def _model_folder(card: Card, directory: Path, tokenizer: TextTokenizer, allow_pickle: bool, into: Path) -> Path:
    """The folder vLLM reads: the checkpoint's files (symlinked; a pickle-only checkpoint converted to safetensors
    first, which needs allow_pickle) with the card's export over them, and a tokenizer.json (modeldeck's
    conversion, for a SentencePiece-only checkpoint)."""
    if not any(directory.glob("*.safetensors")):
        from modeldeck.runtime.convert import convert_checkpoint

        converted = into / "converted"
        convert_checkpoint(directory, converted, allow_pickle=allow_pickle)
        directory = converted
    folder = into / "model"
    export.write(export.plan(card, ["hf"], weights=directory, weights_mode="symlink"), folder)
    if not (folder / "tokenizer.json").exists():
        tokenizer.backend.save(str(folder / "tokenizer.json"))
    return folder


def _tensor_parallel_size(card: Card, device: str, dtype: str, given: int | None) -> int:
    """The given size, else 1 on the CPU, else the fewest GPUs of this machine's size that hold the card
    (registry/memory.py tensor_parallel_plan)."""
    if given is not None:
        return given
    if device == "cpu":
        return 1
    import torch

    count = torch.cuda.device_count()
    size = torch.cuda.get_device_properties(0).total_memory
    plan_dtype = None if dtype == "auto" else dtype
    estimate = memory.estimate(card, dtype=plan_dtype or "bfloat16", device="cuda")
    plan = memory.tensor_parallel_plan(card, estimate, size)
    if plan is None or plan.gpus > count:
        need = f"{plan.gpus} GPUs" if plan else "more GPUs than any even split allows"
        raise engine.EngineError(
            f"card {card.id!r} needs {need} of {size / 1e9:.0f} GB for vLLM's tensor parallelism; this machine has "
            f"{count} (see `modeldeck memory {card.id} --device-memory {size / 1e9:.0f}`)"
        )
    return plan.gpus


def load_vllm(
    card: Card,
    directory: Path,
    tokenizer: TextTokenizer,
    *,
    device: str | None = None,
    dtype: str | None = None,
    tensor_parallel_size: int | None = None,
    allow_pickle: bool = False,
    served_names: list[str] | None = None,
    vllm_args: list[str] | None = None,
    startup_timeout: float = 600.0,
) -> VLLMModel:
    """Start vLLM on the card's checkpoint in `directory` (runtime.load(card, engine="vllm") calls this)."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise engine.EngineError(f"--device {device}: the vLLM engine runs on cpu or cuda (all of a machine's GPUs)")
    dtype = dtype or card.dtype
    tp = _tensor_parallel_size(card, device, dtype, tensor_parallel_size)
    engine.check_card(card, tp, device)  # type: ignore[arg-type]
    python = engine.find_python()
    scratch = tempfile.TemporaryDirectory(prefix=f"modeldeck-vllm-{card.id}-")
    try:
        folder = _model_folder(card, directory, tokenizer, allow_pickle, Path(scratch.name))
        port = free_port()
        names = list(dict.fromkeys(served_names or [card.id, *card.aliases]))
        command = engine.server_command(
            python, card, folder, port=port, dtype=dtype, tensor_parallel_size=tp, served_names=names,
            extra=vllm_args or [],
        )  # fmt: skip
        kv = memory.estimate(card, dtype="float32", batch=16, device="cpu").kv_cache.bytes
        env = engine.server_env(card, tp, device, kv)  # type: ignore[arg-type]
        server = VLLMServer(command, env, port, Path(scratch.name) / "vllm.log")
        log.info("starting vLLM: %s", " ".join(command))
        server.start(startup_timeout)
    except BaseException:
        scratch.cleanup()
        raise
    return VLLMModel(card, tokenizer, server, names, device, dtype, tp, scratch)
