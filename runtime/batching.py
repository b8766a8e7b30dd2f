"""Continuous batching: many requests share one model, one KV cache and one decode step per token.

    submit() ─► waiting queue ─► loop thread, every iteration:
                                   1. drop cancelled requests (their rows free at once)
                                   2. admit waiting requests into free rows: prefill each alone into its row
                                   3. one decode step for rows 0..n-1 together, then per request: logits
                                      processing, sampling, text (stop strings), events
                                 ─► Ticket: events() / aevents() / result() / cancel()

One KVCache of max_batch rows x the context length is allocated once. Running requests always hold rows
0..n-1, so the decode step runs on a view of the first n rows without gathering: when a row in the middle
frees, the last running row's filled positions move into the hole. Rows at different positions batch because
query t of row b only sees keys <= start[b] + t (runtime/attention.py).

Each request has its own Options, TextStream and torch.Generator (seeded as Model.generate seeds its batch's,
here a batch of one), so a seeded request draws the same numbers whatever else runs. Prefill runs each prompt
alone, as Model.generate does, and a lone request decodes as a batch of one: bit for bit Model.generate's logits
(checked on the CPU). Batched decode rows are not bitwise batch-invariant: matmul kernels differ by row count
(MKL sgemm: 1 row, 2-3, 4 or more), moving fp32 logits by up to ~1e-5, which changes a token only where the top
two scores (or a sampling boundary) are closer than that; over 6,353 greedy tokens of 100 random tiny-neox
requests the closest top-two gap was 7.6e-5, and every request in tests/test_batching.py matches Model.generate.
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
from typing import Any, Literal, cast

import torch

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.runtime.engine import Model
from modeldeck.runtime.generate import (
    Completion,
    GenerationError,
    Options,
    check_fits,
    decode_one_token,
    prefill,
    process_logits,
    sample,
)
from modeldeck.runtime.model import KVCache
from modeldeck.runtime.text import TextStream

__all__ = ["ContinuousBatcher", "EngineStoppedError", "QueueFullError", "Ticket", "TicketTimeoutError", "TokenEvent"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[ContinuousBatcher] = weakref.WeakSet()  # started, not yet stopped: stopped at exit

Finish = Literal["stop", "length", "eos", "cancelled", "error"]


class QueueFullError(ModeldeckError):
    """submit() found max_queue requests already waiting."""


class EngineStoppedError(ModeldeckError):
    """submit() or start() after stop() began (or after the loop failed)."""


class TicketTimeoutError(ModeldeckError, TimeoutError):
    """No event arrived within the timeout given to Ticket.events()."""


@dataclass(frozen=True)
class TokenEvent:
    """One step of one request: the text now safe to show; the last event has finish_reason and usage."""

    text: str
    token_id: int | None
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class Ticket:
    """A submitted request as its caller sees it: events as they happen, the final Completion, cancel()."""

    def __init__(self, prompt_ids: list[int], options: Options, wake: Callable[[], None]):
        self.prompt_ids, self.options = prompt_ids, options
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


@dataclass(eq=False)
class _Request:
    """The loop thread's state for one ticket."""

    ticket: Ticket
    opts: Options
    text: TextStream
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    next_token: torch.Tensor | None = None  # [1]: sampled, not yet fed to the decoder
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
        self._cache = KVCache(arch, max_batch, arch.context_length, model.dtype, model.device)  # [L, max_batch, S, ..]
        self._eos = sorted(model.tokenizer.eos_ids)
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

    def submit(self, prompt_ids: list[int], options: dict[str, Any] | Options | None = None) -> Ticket:
        """Queue one request; options are Model.generate's keywords (or resolved Options). Starts the loop.

        A request is one sequence: num_return_sequences is 1 unless given (a card's default of more is ignored)."""
        if not isinstance(options, Options):
            options = self.model._options({"num_return_sequences": 1, **(options or {})})
        opts = options
        self._validate(prompt_ids, opts)
        ticket = Ticket(list(prompt_ids), opts, self._wake)
        request = _Request(ticket, opts, self.model._text_stream(opts), _generator(opts, self.model.device))
        with self._lock:
            self._refuse_if_stopped()
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"the request queue is full: {self.max_queue} requests already wait for one of {self.max_batch} "
                    "slots; retry later (or raise max_queue)"
                )
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

    def _validate(self, prompt_ids: list[int], opts: Options) -> None:
        """The checks Model.generate makes, with its messages, before anything is queued."""
        if opts.num_return_sequences != 1:
            raise GenerationError(
                f"num_return_sequences={opts.num_return_sequences}: a batcher request returns one sequence; "
                "submit one request per sequence"
            )
        if not prompt_ids:
            raise GenerationError("a prompt encodes to no tokens; give some text")
        vocab = self.model.card.architecture.vocab_size
        bad = [t for t in prompt_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]!r} is not in the vocabulary (0 to {vocab - 1})")
        check_fits(self.model.card.architecture.context_length, len(prompt_ids), opts.max_new_tokens)

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
        prompt = request.ticket.prompt_ids
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
        """logits [B, V] (row i: requests[i]) -> each request's next token, text delta and event."""
        picked: list[tuple[_Request, torch.Tensor]] = []
        for row, request in enumerate(requests):
            try:
                picked.append((request, self._pick(request, logits[row : row + 1])))  # [1]
            except Exception as exc:  # one request's options or processing failed: end it alone
                log.exception("token selection failed")
                self._end(request, "error", f"generation failed: {type(exc).__name__}: {exc}")
        if not picked:
            return
        tokens = torch.cat([token for _, token in picked]).tolist()  # one device sync for the whole step
        for (request, token), value in zip(picked, tokens, strict=True):
            request.next_token = token
            try:
                self._emit(request, value)
            except Exception as exc:  # e.g. its text could not be decoded: end this request alone
                log.exception("emitting a token failed")
                self._end(request, "error", f"generation failed: {type(exc).__name__}: {exc}")

    def _pick(self, request: _Request, logits: torch.Tensor) -> torch.Tensor:
        """logits [1, V] -> the next token [1], with this request's options and generator."""
        seen = [request.ticket.prompt_ids + request.generated]
        scores = process_logits(logits, seen, len(request.generated), request.opts, self._eos)  # [1, V]
        return sample(scores, request.opts.do_sample, request.generator)  # [1]

    def _emit(self, request: _Request, token: int) -> None:
        """Record a generated token: its text delta as an event, the final one when the request ends."""
        request.generated.append(token)
        delta = request.text.push(token)
        finish: Finish | None = None
        if request.text.stopped:
            finish = "stop"
        elif token in self._eos:
            finish = "eos"
        elif len(request.generated) == request.opts.max_new_tokens:
            finish = "length"
        if finish is None:
            request.ticket._publish(TokenEvent(delta, token, None))
        else:
            self._end(request, finish, token=token, delta=delta)

    # --- ending requests ----------------------------------------------------------------------------

    def _end(
        self, request: _Request, finish: Finish, error: str | None = None, token: int | None = None, delta: str = ""
    ) -> None:
        """Send a request's final event (with usage and the rest of its text) and mark its row free."""
        if request.finished:
            return
        request.finished = True
        text = request.text
        prompt_tokens = len(request.ticket.prompt_ids)
        event = TokenEvent(delta + text.finish(), token, finish, prompt_tokens, len(text.ids), error)
        completion = Completion(text.text, list(text.ids), cast(Any, finish), prompt_tokens)
        with self._lock:
            self._counts["completed"] += 1
        request.ticket._publish(event, completion)

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


def _generator(opts: Options, device: torch.device) -> torch.Generator | None:
    """A request's own generator, seeded as Model.generate seeds its batch's (`seed`, else a random seed)."""
    if not opts.do_sample:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(opts.seed if opts.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return generator
