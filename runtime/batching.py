"""Continuous batching: many requests share one model, one KV cache and one decode step per token.

    submit() ─► waiting queue ─► loop thread, every iteration:
                                   1. drop cancelled requests (their rows free at once)
                                   2. admit waiting requests into free rows: prefill each alone into its row
                                   3. one decode step for rows 0..n-1 together, then runtime/generate.py step
                                      (sampling, text, stop strings, the finish rule) and one event per request
                                 ─► Ticket: events() / aevents() / result() / cancel()

One KVCache of max_batch rows x the context length is allocated once. Running requests always hold rows
0..n-1, so the decode step runs on a view of the first n rows without gathering: when a row in the middle
frees, the last running row's filled positions move into the hole. Rows at different positions batch because
query t of row b only sees keys <= start[b] + t (runtime/attention.py).

Each request is one runtime/generate.py Sequence (its own Options, TextStream and torch.Generator, seeded as
Model.generate seeds a prompt's first choice), so a seeded request draws the same numbers whatever else runs; this
module only schedules (queue, rows, compaction, the thread) and has no sampling or stop-string code of its own. Prefill runs each prompt
alone, as Model.generate does, and a lone request decodes as a batch of one: bit for bit Model.generate's logits
(checked on the CPU). Batched decode rows are not bitwise batch-invariant: matmul kernels differ by row count
(MKL sgemm: 1 row, 2-3, 4 or more), moving fp32 logits by up to ~1e-5, which changes a token only where the top
two scores (or a sampling boundary) are closer than that; over 6,353 greedy tokens of 100 random tiny-neox
requests the closest top-two gap was 7.6e-5, and every request in tests/test_batching.py matches Model.generate.

A request submitted with `logprobs` gets each token's log-probability (and the most likely tokens) on its events:
its rows of the raw logits are copied before `step` processes them (in place) and scored by runtime/scoring.py's
`token_logprobs`, the function prompt scoring uses; requests that did not ask cost nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.runtime.engine import Model
from modeldeck.runtime.generate import (
    Completion,
    FinishReason,
    GenerationError,
    Options,
    Sequence,
    decode_one_token,
    prefill,
    step,
)
from modeldeck.runtime.model import KVCache
from modeldeck.runtime.scoring import token_logprobs

__all__ = ["ContinuousBatcher", "EngineStoppedError", "QueueFullError", "Ticket", "TicketTimeoutError", "TokenEvent"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[ContinuousBatcher] = weakref.WeakSet()  # started, not yet stopped: stopped at exit

Finish = FinishReason


class QueueFullError(ModeldeckError):
    """submit() found max_queue requests already waiting."""


class EngineStoppedError(ModeldeckError):
    """submit() or start() after stop() began (or after the loop failed)."""


class TicketTimeoutError(ModeldeckError, TimeoutError):
    """No event arrived within the timeout given to Ticket.events()."""


@dataclass(frozen=True)
class TokenEvent:
    """One step of one request: the text now safe to show; the last event has finish_reason and usage. A request
    submitted with `logprobs` gets token_id's log-probability and the `logprobs` most likely (id, logprob) at its
    position, best first, from the raw logits (before the card's sampling processors), on every event with a token."""

    text: str
    token_id: int | None
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class Ticket:
    """A submitted request as its caller sees it: events as they happen, the final Completion, cancel()."""

    def __init__(self, prompt_ids: list[int], options: Options, wake: Callable[[], None], logprobs: int | None = None):
        self.prompt_ids, self.options, self.logprobs = prompt_ids, options, logprobs
        self._wake = wake
        self._cond = threading.Condition()
        self._events: list[TokenEvent] = []
        self._completion: Completion | None = None
        self._cancelled = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def done(self) -> bool:
        return self._completion is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def error(self) -> str | None:
        """Why the request failed, once it ended with finish_reason "error" (the last event's `error`)."""
        with self._cond:
            return self._events[-1].error if self._completion is not None else None

    def cancel(self) -> None:
        """Stop generating; the loop frees the row at its next step and sends a final "cancelled" event."""
        self._cancelled = True
        self._wake()

    def events(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """Every event from the first, blocking for each next one at most `timeout` seconds (TicketTimeoutError)."""
        index = 0
        while True:
            batch = self._wait_after(index, timeout)
            index += len(batch)
            yield from batch
            if batch[-1].finish_reason is not None:
                return

    def _wait_after(self, index: int, timeout: float | None) -> list[TokenEvent]:
        """The events after the first `index`, once there is at least one."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._events) > index, timeout):
                raise TicketTimeoutError(
                    f"no event within {timeout} s; the request is still queued or running: wait longer or cancel() it"
                )
            return self._events[index:]

    async def aevents(self) -> AsyncIterator[TokenEvent]:
        """events() for asyncio: awaits the loop thread's wake-ups (call_soon_threadsafe), never polls."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, wake))
        try:
            index = 0
            while True:
                wake.clear()
                with self._cond:
                    batch = self._events[index:]
                index += len(batch)
                for event in batch:
                    yield event
                if batch and batch[-1].finish_reason is not None:
                    return
                if not batch:
                    await wake.wait()
        finally:
            with self._cond:
                self._waiters.remove((loop, wake))

    def result(self, timeout: float | None = None) -> Completion:
        """The whole completion once the request ends (finish_reason may also be "cancelled" or "error")."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._completion is not None, timeout):
                raise TicketTimeoutError(f"the request did not finish within {timeout} s: wait longer or cancel() it")
            assert self._completion is not None
            return self._completion

    def _publish(self, event: TokenEvent, completion: Completion | None = None) -> None:
        """Called by the loop thread: record an event (the last one with its completion) and wake every reader."""
        with self._cond:
            self._events.append(event)
            if completion is not None:
                self._completion = completion
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, wake in waiters:
            with contextlib.suppress(RuntimeError):  # that event loop is closed: nobody listens there any more
                loop.call_soon_threadsafe(wake.set)


def request_sequence(
    model: Any, prompt_ids: list[int], options: dict[str, Any] | Options | None, logprobs: int | None
) -> Sequence:
    """One batcher request as a Sequence of `model` (Model or VLLMModel), its prompt, options and `logprobs`
    checked with Model.generate's messages: one sequence per request (num_return_sequences 1 unless given)."""
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise GenerationError(f"logprobs must be a whole number >= 0, got {logprobs!r}", "logprobs")
    opts = options if isinstance(options, Options) else model.options(**{"num_return_sequences": 1, **(options or {})})
    if opts.num_return_sequences != 1:
        raise GenerationError(
            f"num_return_sequences={opts.num_return_sequences}: a batcher request returns one sequence; "
            "submit one request per sequence",
            "num_return_sequences",
        )
    return cast(Sequence, model.sequence(list(prompt_ids), opts))


def queue_full(max_queue: int, max_batch: int) -> QueueFullError:
    return QueueFullError(
        f"the request queue is full: {max_queue} requests already wait for one of {max_batch} slots; retry later "
        "(or raise max_queue)"
    )


def final_event(sequence: Sequence, finish: str, error: str | None, scored: dict[str, Any]) -> TokenEvent:
    """A request's last event (with usage and the rest of its text). A sequence that finished by itself ends with
    its last token and that token's scores; one ended from outside (cancelled, failed) without."""
    if sequence.finish is None:
        text, token, scored = sequence.end(cast(Finish, finish)), None, {}
    else:
        text, token = sequence.delta, sequence.generated[-1]
    return TokenEvent(text, token, finish, len(sequence.prompt), len(sequence.generated), error, **scored)


@dataclass(eq=False)
class _Request:
    """The loop thread's state for one ticket: its sequence, the token to feed next and, when the ticket asked for
    log-probabilities, that token's (TokenEvent's logprob and top_logprobs)."""

    ticket: Ticket
    sequence: Sequence
    next_token: torch.Tensor | None = None  # [1]: sampled, not yet fed to the decoder
    scored: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


class ContinuousBatcher:
    """Serves many generation requests on one Model with one background thread (see the module docstring)."""

    def __init__(self, model: Model, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ModeldeckError(
                f"max_batch={max_batch}, max_queue={max_queue}: max_batch must be at least 1 and max_queue at least 0"
            )
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        arch = model.card.architecture
        self._cache = KVCache.for_decoder(model.decoder, max_batch, arch.context_length)  # [L, max_batch, S, ..]
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []  # row i of the cache belongs to _running[i]
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abort: str | None = None  # set: end every request with this error message and exit
        self._failure: str | None = None
        self._counts = {"completed": 0, "peak_running": 0, "decode_steps": 0}

    # --- the caller's side --------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """running, waiting, max_batch, max_queue, completed (ended for any reason), peak_running, decode_steps."""
        with self._lock:
            return {
                "running": sum(not r.finished for r in self._running),
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                **self._counts,
            }

    def submit(
        self, prompt_ids: list[int], options: dict[str, Any] | Options | None = None, logprobs: int | None = None
    ) -> Ticket:
        """Queue one request; options are Model.generate's keywords (or resolved Options). Starts the loop.

        A request is one sequence: num_return_sequences is 1 unless given (a card's default of more is ignored).
        Its prompt and options are checked here, once, with Model.generate's messages. `logprobs` (0 or more): each
        token's event carries its log-probability and the `logprobs` most likely tokens (TokenEvent)."""
        sequence = request_sequence(self.model, prompt_ids, options, logprobs)
        ticket = Ticket(sequence.prompt, sequence.opts, self._wake, logprobs)
        request = _Request(ticket, sequence)
        with self._lock:
            self._refuse_if_stopped()
            if len(self._waiting) >= self.max_queue:
                raise queue_full(self.max_queue, self.max_batch)
            self._waiting.append(request)
            self._lock.notify_all()
        self.start()
        return ticket

    def start(self) -> None:
        """Start the background thread (once; later calls do nothing)."""
        with self._lock:
            self._refuse_if_stopped()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="modeldeck-batcher", daemon=True)
                self._thread.start()
                _LIVE.add(self)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; finish running and queued ones (drain, up to `timeout` s) or end them now with
        finish_reason "error"; join the thread."""
        with self._lock:
            self._stopping = True
            if not drain:
                self._abort = "the engine shut down before this request finished (stopped without draining); retry it"
            self._lock.notify_all()
            thread = self._thread
        if thread is None:
            self._end_waiting("the engine shut down before this request started; retry it")
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._lock:
                self._abort = (
                    f"the engine shut down before this request finished (drain timeout of {timeout} s); retry it"
                )
                self._lock.notify_all()
            thread.join()

    def _refuse_if_stopped(self) -> None:
        if self._failure is not None:
            raise EngineStoppedError(f"the batching loop failed ({self._failure}); restart the engine")
        if self._stopping:
            raise EngineStoppedError("the engine is stopping and takes no new requests; submit to a running engine")

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # --- the loop thread ----------------------------------------------------------------------------

    def _serve(self) -> None:
        """The thread: iterate until stopped; an error ends the affected requests, never the thread silently."""
        try:
            with torch.inference_mode():
                while self._wait_for_work():
                    try:
                        self._iterate()
                    except Exception as exc:  # a bug or device failure: end running requests, go on
                        log.exception("batching step failed")
                        self._end_running(f"generation failed: {type(exc).__name__}: {exc}")
        except BaseException as exc:
            log.exception("the batching loop died")
            with self._lock:
                self._failure = f"{type(exc).__name__}: {exc}"
            self._end_running(f"the batching loop failed: {self._failure}")
            self._end_waiting(f"the batching loop failed: {self._failure}")
            raise

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False when the loop should exit (after ending what is left)."""
        with self._lock:
            while not (self._running or self._waiting or self._stopping or self._abort):
                self._lock.wait()
            abort = self._abort
            done = self._stopping and not self._running and not self._waiting
        if abort is not None:
            self._end_running(abort)
            self._end_waiting(abort)
            return False
        return not done

    def _iterate(self) -> None:
        """One iteration: drop cancelled requests, admit waiting ones, one decode step for all running rows."""
        self._drop_cancelled()
        self._admit()
        self._compact()
        if self._running:
            self._decode()
            self._compact()

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [r for r in self._waiting if r.ticket.cancelled]
            for request in gone:
                self._waiting.remove(request)
        for request in gone + [r for r in self._running if r.ticket.cancelled]:
            self._end(request, "cancelled")
        self._compact()

    def _admit(self) -> None:
        """Prefill waiting requests into the free rows after the running ones and sample their first tokens."""
        while True:
            with self._lock:
                if not self._waiting or len(self._running) >= self.max_batch or self._abort:
                    return
                request = self._waiting.popleft()
                row = len(self._running)
                self._running.append(request)
                self._counts["peak_running"] = max(self._counts["peak_running"], len(self._running))
            try:
                self._prefill(request, row)
            except Exception as exc:  # this request failed (e.g. out of memory); the others go on
                log.exception("prefill failed")
                self._end(request, "error", f"generation failed in prefill: {type(exc).__name__}: {exc}")

    def _prefill(self, request: _Request, row: int) -> None:
        rows = self._cache.rows(row, row + 1)
        prompt = request.sequence.prompt
        model = self.model
        logits = prefill(model.decoder, [prompt], rows, model.backend, model.tokenizer.pad_id)  # [1, V]
        self._cache.lengths[row] = len(prompt)
        self._advance([request], logits)

    def _decode(self) -> None:
        """One decode step for rows 0..n-1: feed each request's last token, then sample each one's next."""
        n = len(self._running)
        rows = self._cache.rows(0, n)
        tokens = torch.cat([cast(torch.Tensor, r.next_token) for r in self._running])  # [n]
        try:
            logits = decode_one_token(self.model.decoder, tokens, rows, self.model.backend)  # [n, V]
        except Exception as exc:  # e.g. out of memory: every running request is affected
            log.exception("decode step failed")
            self._end_running(f"generation failed in the decode step: {type(exc).__name__}: {exc}")
            return
        self._cache.lengths[:n] = rows.lengths
        with self._lock:
            self._counts["decode_steps"] += 1
        self._advance(list(self._running), logits)

    def _advance(self, requests: list[_Request], logits: torch.Tensor) -> None:
        """logits [B, V] (row i: requests[i]) -> each request's next token, text delta and event (runtime/generate.py
        step: sampling, stop strings and the finish rule); a failure ends only the requests it concerns."""
        owner = {id(r.sequence): r for r in requests}

        def failed(sequence: Sequence, exc: Exception) -> None:
            log.error("generating a token failed", exc_info=exc)
            self._end(owner[id(sequence)], "error", f"generation failed: {type(exc).__name__}: {exc}")

        asked = [row for row, r in enumerate(requests) if r.ticket.logprobs is not None]  # the others pay nothing
        raw = logits[asked] if asked else None  # [A, V]: a copy, taken before step processes logits in place
        tokens = step([r.sequence for r in requests], logits, on_error=failed)
        if raw is not None:
            self._score([requests[row] for row in asked], raw, tokens[asked])
        for row, request in enumerate(requests):
            if request.finished:
                continue
            request.next_token = tokens[row : row + 1]
            sequence = request.sequence
            if sequence.finish is None:
                request.ticket._publish(TokenEvent(sequence.delta, sequence.generated[-1], None, **request.scored))
            else:
                self._end(request, sequence.finish)

    @staticmethod
    def _score(requests: list[_Request], raw: torch.Tensor, tokens: torch.Tensor) -> None:
        """Each request's new token's log-probability and its `logprobs` most likely tokens, from raw logits [A, V]
        (row i: requests[i]) and the tokens [A] step chose."""
        k = max(cast(int, r.ticket.logprobs) for r in requests)
        chosen, _, values, ids = token_logprobs(raw, tokens, k)  # [A], [A, k]
        for request, logprob, top_values, top_ids in zip(
            requests, chosen.tolist(), values.tolist(), ids.tolist(), strict=True
        ):
            n = cast(int, request.ticket.logprobs)
            request.scored = {"logprob": logprob, "top_logprobs": list(zip(top_ids[:n], top_values[:n], strict=True))}

    # --- ending requests ----------------------------------------------------------------------------

    def _end(self, request: _Request, finish: Finish, error: str | None = None) -> None:
        """Send a request's final event (with usage and the rest of its text) and mark its row free. A sequence
        that finished by itself ends with its last token; one ended from outside (cancelled, failed) without."""
        if request.finished:
            return
        request.finished = True
        sequence = request.sequence
        event = final_event(sequence, finish, error, request.scored)
        with self._lock:
            self._counts["completed"] += 1
        request.ticket._publish(event, sequence.completion())

    def _end_running(self, message: str) -> None:
        for request in self._running:
            self._end(request, "error", message)
        with self._lock:
            self._running.clear()

    def _end_waiting(self, message: str) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for request in waiting:
            self._end(request, "error", message)

    def _compact(self) -> None:
        """Remove ended requests, moving the last running row into each hole so rows 0..n-1 stay in use."""
        rows = self._running
        index = 0
        while index < len(rows):
            while rows and rows[-1].finished:
                with self._lock:
                    rows.pop()
            if index < len(rows) and rows[index].finished:
                self._cache.move_row(len(rows) - 1, index)
                with self._lock:
                    rows[index] = rows.pop()
            index += 1


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, end what still runs: a torch op cut off by finalization aborts the process."""
    for batcher in list(_LIVE):
        batcher.stop(drain=False)
