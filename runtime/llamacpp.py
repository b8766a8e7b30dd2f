"""The llama.cpp engine: a card's GGUF run by llama.cpp in its own environment, behind modeldeck's `Model` and
front end.

    load(card, engine="llama.cpp") ─► the card's GGUF (registry/export/gguf.py: exported once per card, checkpoint
                                      and type, then taken from the user cache folder)
                                   ─► LlamaCppWorker: registry/engines/llamacpp_worker.py `serve` in llama.cpp's
                                      environment, holding the model and one sequence's KV cache
    LlamaCppModel.generate / chat / stream, `modeldeck serve --engine llama.cpp` (runtime/server.py, unchanged)
                                   ─► LlamaCppBatcher: one sequence at a time, the others queued; each step sends
        the tokens the worker has not seen (the longest prefix it holds is kept, so a chat's earlier turns are not
        evaluated again), gets the last position's logits back, and runs runtime/generate.py's `step` on them:
        modeldeck's sampling (the card's options, seeded as modeldeck seeds), stop strings, eos, max_new_tokens
        and strip rule, and log-probabilities of the raw logits as on modeldeck's runtime.

So a seeded request draws the same tokens here as on modeldeck's runtime wherever the logits agree, and greedy
decoding agrees token for token at f32 (tests/test_llamacpp.py). Not on this engine: concurrent sequences (llama.cpp
decodes one at a time here; modeldeck's runtime batches), prompt scoring, beam search.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import torch

from modeldeck.registry.engines import llamacpp as engine
from modeldeck.registry.engines.environment import EngineError
from modeldeck.registry.schema import Card
from modeldeck.runtime.batching import Ticket, TokenEvent
from modeldeck.runtime.generate import Options, Sequence, check_prompt, make_generator, step
from modeldeck.runtime.remote import RemoteBatcher, RemoteModel
from modeldeck.runtime.scoring import token_logprobs
from modeldeck.runtime.tokenizer import TextTokenizer

__all__ = ["LlamaCppBatcher", "LlamaCppModel", "LlamaCppWorker", "load_llamacpp"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[LlamaCppWorker] = weakref.WeakSet()  # started, not yet closed: closed at exit


class LlamaCppWorker:
    """llamacpp_worker.py `serve` as a child process: `logits(ids)` evaluates what of `ids` it does not hold yet and
    returns the last position's logits [V] (float32). One caller at a time (`lock`)."""

    def __init__(self, python: Path, gguf: Path, n_ctx: int, threads: int | None = None):
        self.log = tempfile.NamedTemporaryFile(prefix="modeldeck-llamacpp-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(python), str(engine.WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "PYTHONNOUSERSITE": "1"},
            start_new_session=True,
        )
        _LIVE.add(self)
        self.lock = threading.Lock()
        self.cached: list[int] = []
        spec = {"gguf": str(gguf), "n_ctx": n_ctx, "threads": threads}
        ready = self._ask(spec)
        if not ready.get("ready"):
            self.close()
            raise EngineError(f"llama.cpp did not load {gguf}: {ready.get('error')}")
        self.n_vocab, self.system_info = int(ready["n_vocab"]), str(ready["system_info"])

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        try:
            stdin.write((json.dumps(request) + "\n").encode())
            stdin.flush()
        except BrokenPipeError:
            pass
        line = stdout.readline()
        if not line:
            code = self.process.wait(10)
            raise EngineError(f"llama.cpp's worker exited (code {code}); it printed:\n{self.tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def logits(self, ids: list[int]) -> torch.Tensor:
        """ids (the whole sequence so far) -> the logits after its last token [V]."""
        keep = 0
        for cached, new in zip(self.cached, ids[:-1], strict=False):  # at least one token is evaluated
            if cached != new:
                break
            keep += 1
        self.cached = self.cached[:keep]
        header = self._ask({"op": "eval", "keep": keep, "tokens": ids[keep:]})
        if "error" in header:
            raise EngineError(f"llama.cpp failed to evaluate the sequence: {header['error']}")
        data = self._pipes()[1].read(4 * int(header["n"]))
        self.cached = list(ids)
        return torch.frombuffer(bytearray(data), dtype=torch.float32)

    def tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.log.name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin = self._pipes()[0]
                stdin.write(b'{"op": "quit"}\n')
                stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)
        _LIVE.discard(self)


@atexit.register
def _close_all() -> None:
    for worker in list(_LIVE):
        worker.close()


class LlamaCppBatcher(RemoteBatcher):
    """RemoteBatcher over one LlamaCppWorker: one sequence runs, the rest wait (max_batch is 1)."""

    engine = "llama.cpp"

    def __init__(self, model: LlamaCppModel, max_batch: int = 8, max_queue: int = 64):
        super().__init__(model, max_batch=1, max_queue=max_queue + max(max_batch - 1, 0))

    def _stream(self, ticket: Ticket, sequence: Sequence) -> tuple[str, str | None, dict[str, Any]]:
        worker: LlamaCppWorker = self.model.worker
        with worker.lock:
            while True:
                if self._abort is not None:
                    return "error", self._abort, {}
                if ticket.cancelled:
                    return "cancelled", None, {}
                logits = worker.logits(sequence.prompt + sequence.generated)  # [V]
                token = int(step([sequence], logits[None])[0])
                scored = _scored(logits, token, ticket.logprobs) if ticket.logprobs is not None else {}
                if sequence.finish is not None:
                    return sequence.finish, None, scored
                ticket._publish(TokenEvent(sequence.delta, token, None, **scored))


def _scored(logits: torch.Tensor, token: int, n: int) -> dict[str, Any]:
    chosen, _, values, ids = token_logprobs(logits, torch.tensor(token), n)
    return {"logprob": float(chosen), "top_logprobs": list(zip(ids.tolist(), values.tolist(), strict=True))}


class LlamaCppModel(RemoteModel):
    """A card running on llama.cpp: Model's generate/chat/stream and a batcher, with the card's prompt format,
    defaults, sampling and stop strings applied by modeldeck. close() (or the end of a `with` block) stops it."""

    engine = "llama.cpp"
    batcher_class = LlamaCppBatcher
    own_batch = 1
    device = "cpu"

    def __init__(self, card: Card, tokenizer: TextTokenizer, worker: LlamaCppWorker, gguf: Path, outtype: str):
        self.card, self.tokenizer, self.worker, self.gguf, self.outtype = card, tokenizer, worker, gguf, outtype
        self.dtype = outtype  # the GGUF's tensor type; llama.cpp computes in what its kernels take for it
        self.precision = f"llama.cpp, {outtype} GGUF {gguf}"

    def __repr__(self) -> str:
        return f"LlamaCppModel({self.card.id!r}, outtype={self.outtype}, gguf={str(self.gguf)!r})"

    def close(self) -> None:
        """Stop the worker (the GGUF stays in the cache for the next load)."""
        super().close()
        self.worker.close()

    def sequence(self, prompt_ids: list[int], opts: Options, choice: int = 0, strip: bool = True) -> Sequence:
        """Model.sequence's checks, text and generator (`choice` i of a prompt is seeded seed + i)."""
        arch = self.card.architecture
        check_prompt(prompt_ids, arch.vocab_size, arch.context_length, opts.max_new_tokens)
        generator = make_generator(opts, torch.device("cpu"), choice)
        return Sequence(prompt_ids, opts, self.tokenizer.eos_ids, self.text_stream(opts, strip), generator)


def load_llamacpp(
    card: Card,
    directory: Path,
    tokenizer: TextTokenizer,
    *,
    dtype: str | None = None,
    quantize: str | None = None,
    threads: int | None = None,
) -> LlamaCppModel:
    """Run the card's checkpoint in `directory` on llama.cpp (runtime.load(card, engine="llama.cpp") calls this)."""
    from modeldeck.registry.export.gguf import cached_export

    outtype = engine.outtype_for(dtype, quantize, card)
    engine.check_card(card, outtype)
    python = engine.find_python()
    gguf = cached_export(card, directory, outtype)
    worker = LlamaCppWorker(python, gguf, card.architecture.context_length, threads)
    log.info("llama.cpp runs %s (%s): %s", card.id, outtype, worker.system_info)
    return LlamaCppModel(card, tokenizer, worker, gguf, outtype)
