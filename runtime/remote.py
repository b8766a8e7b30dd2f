"""A card on an engine in another process (vLLM, llama.cpp) behind modeldeck's `Model` interface and front end.

RemoteBatcher   ContinuousBatcher's interface (submit -> Ticket, stats, start, stop) over threads that each
                stream one request; a subclass says how (`_stream`), the engine does the batching
RemoteModel     Model's generate / chat / stream through its own batcher; the card's prompt format, defaults,
                stop strings and strip rule applied by modeldeck (runtime/generate.py's Sequence)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.runtime.batching import EngineStoppedError, Ticket, final_event, queue_full, request_sequence
from modeldeck.runtime.engine import CardModel, Conversation, Generation
from modeldeck.runtime.generate import Options, Sequence

__all__ = ["RemoteBatcher", "RemoteModel"]

log = logging.getLogger(__name__)


class RemoteBatcher:
    """Up to `max_batch` requests stream at once (one thread each), `max_queue` more wait, one more is
    QueueFullError. Subclasses implement `_stream(ticket, sequence) -> (finish reason, error, last scores)`,
    publishing a TokenEvent per token and watching `ticket.cancelled` and `self._abort`."""

    scores_prompts = False
    engine = "remote"

    def __init__(self, model: Any, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ModeldeckError(
                f"max_batch={max_batch}, max_queue={max_queue}: max_batch must be at least 1 and max_queue at least 0"
            )
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self._pool = ThreadPoolExecutor(max_batch, thread_name_prefix=f"modeldeck-{self.engine}")
        self._lock = threading.Lock()
        self._futures: set[Future[None]] = set()
        self._tickets: set[Ticket] = set()
        self._counts = {"running": 0, "waiting": 0, "completed": 0, "peak_running": 0}
        self._stopping = False
        self._abort: str | None = None

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "max_batch": self.max_batch, "max_queue": self.max_queue}

    def submit(
        self, prompt_ids: list[int], options: dict[str, Any] | Options | None = None, logprobs: int | None = None
    ) -> Ticket:
        """Queue one request (Model.generate's keywords or resolved Options), checked here with modeldeck's
        messages; its events come as the engine makes its tokens."""
        sequence = request_sequence(self.model, prompt_ids, options, logprobs)
        ticket = Ticket(sequence.prompt, sequence.opts, lambda: None, logprobs)
        with self._lock:
            if self._stopping:
                raise EngineStoppedError("the engine is stopping and takes no new requests; submit to a running engine")
            if self._counts["running"] + self._counts["waiting"] >= self.max_batch + self.max_queue:
                raise queue_full(self.max_queue, self.max_batch)
            self._counts["waiting"] += 1
            self._tickets.add(ticket)
            future = self._pool.submit(self._run, ticket, sequence)
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return ticket

    def start(self) -> None:
        """Nothing to start: the engine runs since load (ContinuousBatcher's interface)."""

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; let running and queued ones finish (drain, up to `timeout` s), or end them now
        with finish_reason "error"."""
        with self._lock:
            self._stopping = True
            futures = list(self._futures)
        if not drain:
            self._abort = "the engine shut down before this request finished (stopped without draining); retry it"
        _, pending = wait_all(futures, timeout)
        if pending:
            self._abort = f"the engine shut down before this request finished (drain timeout of {timeout} s); retry it"
        self._pool.shutdown(wait=True)

    def _run(self, ticket: Ticket, sequence: Sequence) -> None:
        with self._lock:
            self._counts["waiting"] -= 1
            self._counts["running"] += 1
            self._counts["peak_running"] = max(self._counts["peak_running"], self._counts["running"])
        try:
            finish, error, last = self._stream(ticket, sequence)
        except Exception as exc:  # a broken connection or a bug: this request fails, cleanly
            log.exception("a %s request failed", self.engine)
            finish, error, last = (
                "error",
                f"the {self.engine} engine failed this request: {type(exc).__name__}: {exc}",
                {},
            )
        with self._lock:
            self._counts["running"] -= 1
            self._counts["completed"] += 1
            self._tickets.discard(ticket)
        event = final_event(sequence, finish, error, last)
        ticket._publish(event, sequence.completion())

    def _stream(self, ticket: Ticket, sequence: Sequence) -> tuple[str, str | None, dict[str, Any]]:
        raise NotImplementedError


class RemoteModel(CardModel):
    """A card on another engine: Model's generate/chat/stream through the engine's batcher (`batcher`). close()
    (or the end of a `with` block) stops the engine."""

    scores_prompts = False
    batcher_class: type[RemoteBatcher] = RemoteBatcher
    own_batch = 64  # what generate/stream submit through: the engine's own batching decides

    _own: RemoteBatcher | None = None

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop this model's own batcher; subclasses stop their engine."""
        if self._own is not None:
            self._own.stop(drain=False)

    def batcher(self, max_batch: int = 8, max_queue: int = 64) -> RemoteBatcher:
        return self.batcher_class(self, max_batch=max_batch, max_queue=max_queue)

    def _submitter(self) -> RemoteBatcher:
        if self._own is None:
            self._own = self.batcher_class(self, max_batch=self.own_batch, max_queue=4096)
        return self._own

    def stream(
        self, prompt: Conversation, *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Iterator[str]:
        opts = self.stream_options(**options)
        ticket = self._submitter().submit(self.encode(prompt, system, raw), opts)
        try:
            for event in ticket.events():
                if event.error:
                    raise ModeldeckError(event.error)
                if event.text:
                    yield event.text
        finally:
            ticket.cancel()

    def _run(
        self, prompts: list[Conversation], system: str | None, raw: bool, options: dict[str, Any]
    ) -> list[Generation]:
        opts, encoded = self._prepared(prompts, system, raw, options)
        n = opts.num_return_sequences
        one = opts.model_copy(update={"num_return_sequences": 1})
        seeded = [one if opts.seed is None else one.model_copy(update={"seed": opts.seed + i}) for i in range(n)]
        tickets = [self._submitter().submit(ids, seeded[i]) for ids in encoded for i in range(n)]
        completions = [t.result() for t in tickets]
        for ticket in tickets:
            if ticket.error:
                raise ModeldeckError(ticket.error)
        return self._generations(prompts, system, raw, completions, n)
