"""An OpenAI-compatible HTTP server over one continuous-batching engine: `modeldeck serve`.

    POST /v1/completions, /v1/chat/completions ─► encode (card's prompt format) ─► ContinuousBatcher.submit (n tickets)
        ◄── JSON, or server-sent events (`data: {chunk}` ... `data: [DONE]`) from the tickets' token events
    GET /v1/models, /v1/models/{id}, /health (ok + engine and server counters)

Requests are read and mapped to generation options in runtime/openai_api.py. A request's tickets are cancelled
(their batch rows freed) whenever its response ends early: a client that disconnects from a stream (Starlette
cancels the response) or from a non-streamed request (polled), or a task cancelled at shutdown. Shutdown: stop
admitting (503), let uvicorn wait for in-flight responses, then drain and join the batcher thread.

Log-probabilities: a generated token's come on its ticket's events (the batcher scores the raw logits of the rows
that asked); with echo, the prompts' come from one runtime/scoring.py score_rows call per request, in a thread
(off the event loop), one request's call at a time. max_tokens 0 submits no tickets: its choices end at once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.prompting import PromptError
from modeldeck.runtime.batching import EngineStoppedError, QueueFullError, Ticket, TokenEvent
from modeldeck.runtime.engine import CardModel, Model
from modeldeck.runtime.generate import ContextLengthError, GenerationError, check_prompt
from modeldeck.runtime.guard import Limits, check_json, check_request, read_body, require_api_key
from modeldeck.runtime.openai_api import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Logprob,
    chat_logprobs,
    chat_messages,
    generation_error,
    generation_options,
    legacy_logprobs,
    logprobs_asked,
    parse_request,
    refuse_unsupported,
)
from modeldeck.runtime.scoring import score_rows

__all__ = ["APIError", "create_app", "serve"]

log = logging.getLogger("modeldeck.server")
FINISH = {"stop": "stop", "eos": "stop", "length": "length"}  # engine -> OpenAI finish_reason


# --- the service -----------------------------------------------------------------------------------


class Service:
    """One model, one batcher; turns requests into tickets and tickets into OpenAI responses."""

    def __init__(self, model: CardModel, batcher: Any, served_name: str | None):
        self.model, self.batcher = model, batcher
        card = model.card
        self.id = served_name or card.id
        self.names = {n.lower() for n in (card.id, *card.aliases, card.source.repo, self.id) if n}
        self.stopping = False
        self.counters = {"requests": 0, "disconnected": 0, "rejected_queue_full": 0}
        self.scoring = asyncio.Lock()  # one prompt-scoring pass at a time: the others wait, off the threads

    def check_model(self, name: str) -> None:
        if name.lower() not in self.names:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.id}'",
                param="model",
                code="model_not_found",
            )

    def prompts(self, req: CompletionRequest | ChatRequest) -> list[list[int]]:
        try:
            if isinstance(req, ChatRequest):
                return [self.model.encode(chat_messages(req.messages))]
            p = req.prompt
            if isinstance(p, list) and p and isinstance(p[0], int):
                p = [p]
            texts: list[Any] = [p] if isinstance(p, str) else list(p)
            if not texts:
                raise APIError(400, "'prompt' is an empty list", param="prompt")
            return [t if isinstance(t, list) else self.model.encode(t, raw=req.raw) for t in texts]
        except PromptError as exc:
            raise APIError(400, str(exc), param="messages" if isinstance(req, ChatRequest) else "prompt") from None

    def submit(self, req: CompletionRequest | ChatRequest) -> tuple[list[Ticket], list[list[int]]]:
        """n tickets per prompt (choice index = prompt * n + i) and the prompts; all or none are queued. max_tokens
        0: no tickets (nothing to generate), the prompts checked."""
        if self.stopping:
            raise APIError(503, "the server is shutting down", kind="server_error", code="shutting_down")
        self.check_model(req.model)
        refuse_unsupported(req)
        logprobs = logprobs_asked(req)
        self._check_scoring(req)
        prompts = self.prompts(req)
        if isinstance(req, CompletionRequest) and req.max_tokens == 0:
            for ids in prompts:
                self._check_scored(ids)
            self.counters["requests"] += 1
            return [], prompts
        jobs = []
        for ids in prompts:
            opts = generation_options(self.model.card, req, len(ids))
            for i in range(req.n):
                jobs.append((ids, opts if req.seed is None else {**opts, "seed": req.seed + i}))
        tickets: list[Ticket] = []
        queued = False
        try:
            for ids, opts in jobs:
                tickets.append(self.batcher.submit(ids, opts, logprobs))
            queued = True
        except ModeldeckError as exc:
            raise self._engine_error(exc, isinstance(req, ChatRequest)) from None
        finally:
            if not queued:
                for t in tickets:
                    t.cancel()
        self.counters["requests"] += 1
        return tickets, prompts

    def _check_scoring(self, req: CompletionRequest | ChatRequest) -> None:
        """Prompt log-probabilities (echo, max_tokens 0) need an engine that scores prompts (modeldeck's own)."""
        if self.model.scores_prompts or not isinstance(req, CompletionRequest):
            return
        for field, asked in (("echo", bool(req.echo)), ("max_tokens", req.max_tokens == 0)):
            if asked:
                what = "echo" if field == "echo" else "max_tokens 0 (scoring the prompt)"
                raise APIError(
                    400,
                    f"{what} is not available on the {self.model.engine} engine; serve on modeldeck's runtime "
                    "(without --engine) to score prompts",
                    param=field,
                )

    def _check_scored(self, ids: list[int]) -> None:
        """A prompt that is only scored (max_tokens 0) may fill the context, as Model.logprobs's text may."""
        arch = self.model.card.architecture
        if len(ids) > arch.context_length:
            raise ContextLengthError(
                f"a prompt of {len(ids)} tokens does not fit the context length {arch.context_length}; shorten it",
                arch.context_length,
                len(ids),
                0,
            )
        check_prompt(ids, arch.vocab_size, arch.context_length + 1, 0)  # the rest: not empty, in the vocabulary

    def token(self, token_id: int, logprob: float | None, top: list[tuple[int, float]] | None) -> Logprob:
        """A token and the most likely tokens at its position as the response shows them (their texts)."""
        decode = self.model.tokenizer.decode
        return Logprob(decode([token_id]), logprob, None if top is None else [(decode([i]), lp) for i, lp in top])

    async def score_prompts(self, prompts: list[list[int]], top_k: int) -> list[list[Logprob]]:
        """Each prompt's tokens with their log-probabilities and top_k most likely tokens (the first token has
        none): one score_rows call for all of them (its passes bounded by LOGITS_BUDGET), in a thread, one
        request's call at a time."""
        model = self.model
        assert isinstance(model, Model)  # _check_scoring refused the other engines
        async with self.scoring:
            rows = await asyncio.to_thread(score_rows, model.decoder, model.backend, prompts, top_k)
        scored = []
        for ids, row in zip(prompts, rows, strict=True):
            tops = row.top if top_k else [[] for _ in row.logprobs]
            later = zip(ids[1:], row.logprobs, tops, strict=True)
            scored.append([self.token(ids[0], None, None)] + [self.token(*each) for each in later])
        return scored

    def _engine_error(self, exc: ModeldeckError, chat: bool) -> APIError:
        if isinstance(exc, QueueFullError):
            self.counters["rejected_queue_full"] += 1
            return APIError(429, f"the server is busy: {exc}", kind="rate_limit_error", code="queue_full")
        if isinstance(exc, EngineStoppedError):
            return APIError(503, f"the server takes no requests now: {exc}", kind="server_error", code="shutting_down")
        if isinstance(exc, GenerationError):
            return generation_error(exc, chat)
        return APIError(400, str(exc))


async def _events(ticket: Ticket) -> AsyncIterator[TokenEvent]:
    stream: Any = ticket.aevents()
    if inspect.isawaitable(stream):
        stream = await stream
    async for event in stream:
        yield event


async def _merged(tickets: list[Ticket]) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """(choice index, event) from every ticket as they come; each ticket ends with an event with finish_reason."""
    queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, ticket: Ticket) -> None:
        try:
            async for event in _events(ticket):
                await queue.put((index, event))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, t)) for i, t in enumerate(tickets)]
    try:
        open_tickets = len(tickets)
        while open_tickets:
            index, item = await queue.get()
            if item is None:
                open_tickets -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


def _failure(event: TokenEvent) -> APIError | None:
    if event.finish_reason == "error":
        return APIError(500, f"generation failed: {event.error}", kind="server_error", code="generation_error")
    if event.finish_reason == "cancelled":
        return APIError(
            503, "the request was cancelled: the server is shutting down", kind="server_error", code="shutting_down"
        )
    return None


class _Request:
    """One request's choices (choice i: prompt i // n) and tickets (none for max_tokens 0): the tickets are
    cancelled when the response ends early (client gone, server cancelled the task)."""

    def __init__(
        self, service: Service, req: CompletionRequest | ChatRequest, tickets: list[Ticket], prompts: list[list[int]]
    ):
        self.service, self.tickets, self.prompts, self.n = service, tickets, prompts, req.n
        self.chat = isinstance(req, ChatRequest)
        self.echo = isinstance(req, CompletionRequest) and bool(req.echo)
        self.logprobs = logprobs_asked(req)  # how many most likely tokens each position lists; None: no logprobs
        self.choices = len(prompts) * req.n
        self.prompt_tokens = sum(map(len, prompts))
        self.heads: list[tuple[str, list[Logprob]]] = [("", [])] * len(prompts)  # each prompt's choices begin so
        self.offsets = [0] * self.choices  # characters of each choice's text that logprobs were reported for
        self.finished: set[int] = set()
        self.closed = False
        self.completion_tokens = 0
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created, self.model = int(time.time()), service.id

    async def prepare(self) -> None:
        """With echo, each choice begins with its prompt's text and, with logprobs, its prompt's tokens."""
        if not self.echo:
            return
        texts = [self.service.model.tokenizer.decode(ids) for ids in self.prompts]
        scored: list[list[Logprob]] = [[] for _ in self.prompts]
        if self.logprobs is not None:
            scored = await self.service.score_prompts(self.prompts, self.logprobs)
        self.heads = list(zip(texts, scored, strict=True))

    def close(self, disconnected: bool = False) -> None:
        """Cancel the tickets still running (a client that left: counted as disconnected)."""
        if self.closed:
            return
        self.closed = True
        unfinished = [t for i, t in enumerate(self.tickets) if i not in self.finished]
        if unfinished and disconnected:
            self.service.counters["disconnected"] += 1
        for ticket in unfinished:
            ticket.cancel()

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}

    async def events(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        if not self.tickets:  # max_tokens 0: every choice ends at once, having generated nothing
            for index in range(self.choices):
                self.finished.add(index)
                yield index, TokenEvent("", None, "length")
            return
        async with aclosing(_merged(self.tickets)) as merged:
            async for index, event in merged:
                if event.finish_reason is not None:
                    failure = _failure(event)
                    if failure:
                        raise failure
                    self.finished.add(index)
                    self.completion_tokens += event.completion_tokens
                yield index, event

    def _generated(self, event: TokenEvent) -> list[Logprob]:
        """The event's token with its log-probabilities, when the request asked for them."""
        if self.logprobs is None or event.token_id is None:
            return []
        return [self.service.token(event.token_id, event.logprob, event.top_logprobs)]

    def _logprobs(self, index: int, tokens: list[Logprob]) -> dict[str, Any] | None:
        """Choice `index`'s logprobs of these tokens (all of its tokens, or the next ones of a stream)."""
        if self.logprobs is None:
            return None
        if self.chat:
            return chat_logprobs(tokens)
        offset = self.offsets[index]
        self.offsets[index] += sum(len(t.token) for t in tokens)
        return legacy_logprobs(tokens, offset)

    async def collect(self, request: Request) -> dict[str, Any]:
        watcher = asyncio.create_task(self._watch(request))
        texts = [self.heads[i // self.n][0] for i in range(self.choices)]
        tokens = [list(self.heads[i // self.n][1]) for i in range(self.choices)]
        finish = [""] * self.choices
        try:
            async for index, event in self.events():
                texts[index] += event.text
                tokens[index] += self._generated(event)
                if event.finish_reason:
                    finish[index] = FINISH.get(event.finish_reason, event.finish_reason)
        finally:
            watcher.cancel()
            self.close()
        choices = []
        for i, (text, f) in enumerate(zip(texts, finish, strict=True)):
            body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
            choices.append({"index": i, **body, "logprobs": self._logprobs(i, tokens[i]), "finish_reason": f})
        return self._envelope(choices, chunk=False) | {"usage": self.usage()}

    async def _watch(self, request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        self.close(disconnected=True)

    def _chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        usage: bool,
        tokens: list[Logprob] | None = None,
        role: bool = False,
    ) -> str:
        logprobs = self._logprobs(index, tokens) if tokens else None  # of the tokens this chunk reports
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return _sse(self._envelope([choice], chunk=True) | ({"usage": None} if usage else {}))

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        """What every response body and stream chunk of this request carries around its choices."""
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        try:
            for index in range(self.choices):
                if self.chat:
                    yield self._chunk(index, None, None, include_usage, role=True)
                elif self.echo:
                    text, prompt = self.heads[index // self.n]
                    yield self._chunk(index, text, None, include_usage, prompt)
            async for index, event in self.events():
                generated = self._generated(event)
                if event.text or generated:  # a token whose text is held back still reports its logprob
                    yield self._chunk(index, event.text, None, include_usage, generated)
                if event.finish_reason:
                    yield self._chunk(index, None, FINISH.get(event.finish_reason), include_usage)
            if include_usage:
                yield _sse(self._envelope([], chunk=True) | {"usage": self.usage()})
        except APIError as exc:
            self.close()
            yield _sse({"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}})
        yield "data: [DONE]\n\n"


def _error(exc: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events whose tickets are cancelled however the response ends (client gone, task cancelled)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[bool], None]):
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close(True)


# --- the app -------------------------------------------------------------------------------------


def create_app(
    model: CardModel,
    *,
    max_batch: int = 8,
    max_queue: int = 64,
    served_name: str | None = None,
    drain_timeout: float = 30.0,
    api_key: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The app; its lifespan starts the batcher and, at shutdown, stops admitting and drains in-flight requests.
    `api_key`: every endpoint but /health requires it (runtime/guard.py, as `limits` are)."""
    limits = limits or Limits()
    batcher = model.batcher(max_batch=max_batch, max_queue=max_queue)
    service = Service(model, batcher, served_name)
    # Rendering and tokenizing run off the event loop, one request at a time (the tokenizer's special-token
    # switch is shared state): a long prompt delays only the requests behind it in this queue.
    encoder = ThreadPoolExecutor(1, thread_name_prefix="modeldeck-encode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            service.stopping = True
            await asyncio.to_thread(batcher.stop, drain=True, timeout=drain_timeout)
            encoder.shutdown(wait=False)

    app = FastAPI(title="modeldeck serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.batcher = service, batcher
    if api_key:
        require_api_key(app, api_key)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(APIError(400, f"invalid request: {exc.errors()[0].get('msg')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        message = f"internal server error ({type(exc).__name__}); see the server log"
        return _error(APIError(500, message, kind="server_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "shutting_down" if service.stopping else "ok", "model": service.id}
        body |= {"engine": batcher.stats, "server": dict(service.counters)}
        return JSONResponse(body, status_code=503 if service.stopping else 200)

    def model_entry() -> dict[str, Any]:
        card = model.card
        aliases = sorted({card.id, *card.aliases} - {service.id})
        return {
            "id": service.id,
            "object": "model",
            "created": 0,
            "owned_by": card.publisher,
            "aliases": aliases,
            "context_length": card.architecture.context_length,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        service.check_model(name)
        return model_entry()

    async def complete(request: Request, kind: type[CompletionRequest | ChatRequest]) -> Any:
        try:
            req = parse_request(kind, await read_body(request, limits), lambda data: check_json(data, limits))
            check_request(req, limits, batcher.max_batch + batcher.max_queue)
            tickets, prompts = await asyncio.get_running_loop().run_in_executor(encoder, service.submit, req)
            job = _Request(service, req, tickets, prompts)
            try:
                await job.prepare()
            except BaseException:
                job.close()
                raise
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return EventStream(job.sse(include_usage), job.close)
            return await job.collect(request)
        except APIError:
            raise
        except ClientDisconnect:  # it left while sending: nothing ran, and no one reads an answer; one line, no trace
            service.counters["disconnected"] += 1
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            log.info("%s disconnected while sending its request to %s; nothing was run", client, request.url.path)
            return Response(status_code=400)
        except GenerationError as exc:
            raise generation_error(exc, kind is ChatRequest) from None
        except ModeldeckError as exc:  # PromptError, ...: the request's fault
            raise APIError(400, str(exc)) from None
        except Exception:  # a bug: a clean 500, logged once here
            log.exception("internal error answering %s %s", request.method, request.url.path)
            raise APIError(500, "internal server error; see the server log", kind="server_error") from None

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, ChatRequest)

    return app


def make_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0, **config: Any
) -> Any:
    """A uvicorn.Server that stops admitting requests (503) as soon as shutdown begins, before it waits for the
    in-flight ones (up to `shutdown_timeout` s; then they are cancelled) and runs the app's lifespan shutdown."""
    import uvicorn

    service: Service = app.state.service

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            service.stopping = True
            await super().shutdown(sockets)

    return Server(
        uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=math.ceil(shutdown_timeout), **config)
    )


def serve(
    model: CardModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    served_name: str | None = None,
    shutdown_timeout: float = 30.0,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
    api_key: str | None = None,
) -> None:
    """Serve `model` until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout` seconds to finish. `sockets`:
    sockets already bound (and listening) to serve on instead of binding host:port. `api_key`: required by every
    endpoint but /health."""
    app = create_app(
        model,
        max_batch=max_batch,
        max_queue=max_queue,
        served_name=served_name,
        drain_timeout=shutdown_timeout,
        api_key=api_key,
    )
    make_server(app, host, port, shutdown_timeout, log_level=log_level).run(sockets=sockets)
