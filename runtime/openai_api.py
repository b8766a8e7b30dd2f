"""The OpenAI API as `modeldeck serve` speaks it: request bodies, what they mean as generation options, errors.

Request fields -> generation options (the card's defaults apply to every field a request leaves out):

- max_tokens (or max_completion_tokens): max_new_tokens; left out: the card's max_new_tokens, lowered to what the
  context has room for. Given and prompt + max_tokens beyond the context: 400 context_length_exceeded.
- temperature, top_p, top_k, do_sample follow the runtime's one rule (runtime/generate.py, README): do_sample when
  given decides; else temperature 0 (below 1e-5) is greedy, and a temperature above 0, top_p or top_k samples; else
  the card's do_sample. (OpenAI's default temperature is 1; here a request without one gets the card's decoding,
  which for most cards is greedy.) top_k 0 or -1 turns the card's top_k off.
- stop (string or list, besides the card's stop strings), seed (choice i of n gets seed + i), n (n tickets; with
  greedy decoding n identical choices), and the card's own options: repetition_penalty, min_tokens
  (-> min_new_tokens).
- /v1/completions applies the card's prompt format to a text prompt, as `modeldeck generate` does (for a `plain`
  card the text is unchanged); `"raw": true` encodes it as plain text instead; token-id prompts are used as given.
- Fields that would change results and are not supported (logprobs, echo, best_of other than n, suffix, tools,
  functions, response_format other than text, logit_bias, non-zero frequency/presence penalty) are a 400 naming the
  field; unknown fields too. user, metadata, store, service_tier, parallel_tool_calls are accepted and ignored.

Errors have OpenAI's body {"error": {"message", "type", "param", "code"}}: 400 invalid input (malformed JSON too),
404 unknown model, 429 queue full (at once), 503 shutting down, 500 only for a bug (logged).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modeldeck.registry.schema import Card
from modeldeck.runtime.generate import ContextLengthError, GenerationError

__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "chat_messages",
    "generation_error",
    "generation_options",
    "parse_request",
    "refuse_unsupported",
]

OPTION_PARAMS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "num_return_sequences": "n"}


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- requests ------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # the card's own options
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)
    do_sample: bool | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    raw: bool = False
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatRequest(_Common):
    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(model: type[BaseModel], body: bytes) -> Any:
    try:
        data = json.loads(body, parse_constant=_no_constant)  # NaN and Infinity are not JSON
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        where = (field or "") + "".join(f"[{x}]" for x in first["loc"][1:] if isinstance(x, int))
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {field}", param=field) from None
        if first["type"] == "missing":
            raise APIError(400, f"Missing required parameter: '{where}'.", param=field) from None
        given = json.dumps(first.get("input"), default=str)[:80]
        if sum(e["loc"][:1] == first["loc"][:1] for e in exc.errors()) > 1:  # every member of a union failed
            raise APIError(
                400, f"Invalid type for '{where}': {given} is not one of the accepted types", param=field
            ) from None
        raise APIError(400, f"Invalid value for '{where}': {first['msg']} (got {given})", param=field) from None


def refuse_unsupported(req: CompletionRequest | ChatRequest) -> None:
    """Fields whose results this server cannot produce: a 400 naming the field, never a silent difference."""
    refused = {
        "logit_bias": bool(req.logit_bias),
        "frequency_penalty": bool(req.frequency_penalty),
        "presence_penalty": bool(req.presence_penalty),
    }
    if isinstance(req, CompletionRequest):
        refused |= {
            "logprobs": req.logprobs is not None,
            "echo": bool(req.echo),
            "suffix": bool(req.suffix),
            "best_of": req.best_of is not None and req.best_of != req.n,
        }
    else:
        fmt = (req.response_format or {}).get("type", "text")
        refused |= {
            "logprobs": bool(req.logprobs),
            "top_logprobs": req.top_logprobs is not None,
            "tools": bool(req.tools),
            "tool_choice": req.tool_choice not in (None, "none"),
            "functions": bool(req.functions),
            "function_call": req.function_call not in (None, "none"),
            "response_format": fmt != "text",
        }
    for field, bad in refused.items():
        if bad:
            raise APIError(400, f"'{field}' is not supported by this server (modeldeck serve)", param=field)


def chat_messages(raw: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages -> {role, content} with text content (developer = system)."""
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        extra = sorted(k for k, v in m.items() if k not in ("role", "content", "name") and v not in (None, []))
        if extra or m.get("role") in ("tool", "function"):
            what = f"fields {', '.join(extra)}" if extra else f"role {m.get('role')!r}"
            raise APIError(400, f"{where}: {what} not supported (no tool calling)", param=where)
        content = m.get("content")
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise APIError(400, f"{where}.content: only text parts are supported", param=where)
            content = "\n".join(p["text"] for p in content)
        role = "system" if m.get("role") == "developer" else m.get("role")
        messages.append({"role": role, "content": content})
    return messages


def generation_options(card: Card, req: CompletionRequest | ChatRequest, prompt_len: int) -> dict[str, Any]:
    """The runtime options (Model.generate's keywords) for one choice of a request whose prompt has `prompt_len`
    tokens (see the module docstring). The runtime checks them, and the prompt, once (runtime/generate.py):
    its GenerationError becomes a 400 through `generation_error`."""
    asked = req.max_completion_tokens if isinstance(req, ChatRequest) and req.max_tokens is None else req.max_tokens
    room = card.architecture.context_length - prompt_len
    opts: dict[str, Any] = {
        "max_new_tokens": asked if asked is not None else max(1, min(card.generation.max_new_tokens, room))
    }
    if card.generation.num_return_sequences != 1:
        opts["num_return_sequences"] = 1  # n is n tickets
    if req.top_k is not None:
        opts["top_k"] = None if req.top_k in (0, -1) else req.top_k
    for field, option in (
        ("temperature", "temperature"),  # 0 is greedy: the runtime's one sampling rule
        ("top_p", "top_p"),
        ("repetition_penalty", "repetition_penalty"),
        ("min_tokens", "min_new_tokens"),
        ("do_sample", "do_sample"),
        ("stop", "stop"),
        ("seed", "seed"),
    ):
        if getattr(req, field) is not None:
            opts[option] = getattr(req, field)
    return opts


def generation_error(exc: GenerationError, chat: bool) -> APIError:
    """A GenerationError from the runtime (an invalid option, a prompt that does not fit) as a 400 naming the request
    field it concerns (its `option`, in the request's terms) and, for a context overflow, OpenAI's code and words."""
    param = "messages" if chat and exc.option == "prompt" else OPTION_PARAMS.get(exc.option or "", exc.option)
    if isinstance(exc, ContextLengthError):
        wanted = exc.prompt_tokens + exc.max_new_tokens
        return APIError(
            400,
            f"This model's maximum context length is {exc.context_length} tokens. However, you requested {wanted} "
            f"tokens ({exc.prompt_tokens} in the prompt, {exc.max_new_tokens} for the completion). Please reduce the "
            "length of the prompt or max_tokens.",
            param=param,
            code="context_length_exceeded",
        )
    return APIError(400, str(exc), param=param)
