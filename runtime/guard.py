"""What keeps one client from costing every other client: the server's limits and its API key.

    read_body       the request body, at most `max_body_bytes` (413 before or while reading, never buffered whole)
    check_json      JSON nesting and text that cannot be encoded (lone surrogates): 400 naming the field
    check_request   stop strings (count, length), prompts per request, choices against the engine's capacity
    require_api_key every endpoint but /health answers 401 without `Authorization: Bearer KEY`

Each limit is a 400 (413 for the body) naming the limit and its value, so a client knows what to change. The limits
are documented in README ("Serving"); `modeldeck serve --api-key` (or MODELDECK_API_KEY) sets the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from modeldeck.runtime.openai_api import APIError, ChatRequest, CompletionRequest

__all__ = ["Limits", "check_json", "check_request", "read_body", "require_api_key"]

API_KEY_ENV = "MODELDECK_API_KEY"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 2**20  # 1 MiB: the longest context of any card (8,192 tokens) is ~40 KB of text
    max_json_depth: int = 32
    max_prompts: int = 64  # prompts in one /v1/completions request
    max_stop: int = 16  # stop strings a request adds to the card's
    max_stop_chars: int = 256  # characters of each


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused (413) as soon as it is known to exceed the limit: by its Content-Length, or while read."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    too_big = APIError(
        413,
        f"the request body is over the server's limit of {limit:,} bytes; send a shorter prompt",
        code="request_too_large",
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def check_json(data: Any, limits: Limits) -> None:
    """Nesting at most `max_json_depth` deep and text that is valid Unicode (a lone surrogate, which JSON's \\ud800
    escape can spell, cannot be tokenized): 400 naming the field. Iterative: a deep body cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > limits.max_json_depth:
            raise APIError(
                400, f"the request nests deeper than {limits.max_json_depth} levels (at {where or 'the top'})"
            )
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                field = where.split(".")[0].split("[")[0] or None
                raise APIError(
                    400, f"'{where}' holds a lone surrogate (\\ud800-\\udfff), which is not text", param=field
                ) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, where or "(a key)", depth + 1))
                stack.append((item, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def check_request(req: CompletionRequest | ChatRequest, limits: Limits, capacity: int) -> None:
    """The limits on what one request may ask: stop strings, prompts, and choices (prompts x n) the engine can hold
    at once (`capacity`: its batch plus its queue), which would otherwise be a 429 however idle the server is."""
    stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stop) > limits.max_stop:
        raise APIError(400, f"'stop' has {len(stop)} strings; the limit is {limits.max_stop}", param="stop")
    longest = max((len(s) for s in stop), default=0)
    if longest > limits.max_stop_chars:
        raise APIError(
            400, f"a stop string has {longest:,} characters; the limit is {limits.max_stop_chars}", param="stop"
        )
    prompts = 1
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list) and req.prompt:
        prompts = 1 if isinstance(req.prompt[0], int) else len(req.prompt)
        if prompts > limits.max_prompts:
            raise APIError(
                400, f"'prompt' has {prompts} prompts; the limit is {limits.max_prompts} per request", param="prompt"
            )
    if prompts * req.n > capacity:
        raise APIError(
            400,
            f"{prompts} prompt(s) x n={req.n} = {prompts * req.n} choices; this server holds at most {capacity} at "
            "once (--max-batch + --max-queue): split the request",
            param="n",
        )


def require_api_key(app: FastAPI, key: str) -> None:
    """Every endpoint but /health needs `Authorization: Bearer KEY` (compared in constant time): 401 otherwise."""
    expected = f"Bearer {key}".encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                error = APIError(
                    401,
                    "a valid API key is required: send the header 'Authorization: Bearer KEY' (the server's --api-key)",
                    code="invalid_api_key",
                )
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)
