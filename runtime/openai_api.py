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
  max_tokens 0 generates nothing (finish_reason "length"): with echo, the request only scores its prompts.
- Log-probabilities, from the raw logits (log_softmax in fp32 before the card's sampling processors: repetition
  penalty, temperature, top-k/p never change them). /v1/completions: `logprobs` 0..20, OpenAI's legacy format
  (`legacy_logprobs`), and `echo` (the choice's text and logprobs begin with the prompt's: its tokens, decoded, so a
  card's prompt format shows; the first token has no log-probability).
  /v1/chat/completions: `logprobs` true and `top_logprobs` 0..20, the chat format (`chat_logprobs`). Streamed, each
  chunk carries its own tokens' log-probabilities.
- Fields that would change results and are not supported (best_of other than n, suffix, tools, functions,
  response_format other than text, logit_bias, non-zero frequency/presence penalty) are a 400 naming the field;
  unknown fields too (one of the other endpoint's, such as echo on chat, says so). user, metadata, store,
  service_tier, parallel_tool_calls are accepted and ignored.

Errors have OpenAI's body {"error": {"message", "type", "param", "code"}}: 400 invalid input (malformed JSON too),
404 unknown model, 429 queue full (at once), 503 shutting down, 500 only for a bug (logged).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modeldeck.registry.schema import Card
from modeldeck.runtime.generate import ContextLengthError, GenerationError

__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "Logprob",
    "chat_logprobs",
    "chat_messages",
    "generation_error",
    "generation_options",
    "legacy_logprobs",
    "logprobs_asked",
    "parse_request",
    "refuse_unsupported",
]

OPTION_PARAMS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "num_return_sequences": "n"}
MAX_LOGPROBS = 20
"""The most likely tokens a response may list at each position (OpenAI's limit)."""


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
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)  # beyond: logits overflow to inf/NaN
    min_tokens: int | None = Field(None, ge=0)
    do_sample: bool | None = None


class CompletionRequest(_Common):
    max_tokens: int | None = Field(None, ge=0)  # 0: nothing generated (with echo: the prompt is only scored)
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


ENDPOINTS: dict[type[BaseModel], tuple[type[BaseModel], str]] = {
    ChatRequest: (CompletionRequest, "/v1/completions"),
    CompletionRequest: (ChatRequest, "/v1/chat/completions"),
}
"""Each request's other endpoint: an unknown field that is one of its fields is named as such."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(model: type[BaseModel], body: bytes, check: Callable[[Any], None] | None = None) -> Any:
    """The request `model` from a JSON body; `check` sees the parsed JSON first (runtime/guard.py check_json)."""
    try:
        data = json.loads(body, parse_constant=_no_constant)  # NaN and Infinity are not JSON
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to read", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    if check is not None:
        check(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        where = (field or "") + "".join(f"[{x}]" for x in first["loc"][1:] if isinstance(x, int))
        if first["type"] == "extra_forbidden":
            elsewhere = ENDPOINTS.get(model)
            hint = ""
            if elsewhere and field in elsewhere[0].model_fields:
                hint = f" ('{field}' is a {elsewhere[1]} field)"
            raise APIError(400, f"Unrecognized request argument supplied: {field}{hint}", param=field) from None
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
            "suffix": bool(req.suffix),
            "best_of": req.best_of is not None and req.best_of != req.n,
        }
    else:
        fmt = (req.response_format or {}).get("type", "text")
        refused |= {
            "tools": bool(req.tools),
            "tool_choice": req.tool_choice not in (None, "none"),
            "functions": bool(req.functions),
            "function_call": req.function_call not in (None, "none"),
            "response_format": fmt != "text",
        }
    for field, bad in refused.items():
        if bad:
            raise APIError(400, f"'{field}' is not supported by this server (modeldeck serve)", param=field)


def logprobs_asked(req: CompletionRequest | ChatRequest) -> int | None:
    """How many most likely tokens each position reports (completions' `logprobs`, chat's `top_logprobs`, 0 when
    chat asks for logprobs alone); None: the request asked for no log-probabilities."""
    field, k = ("logprobs", req.logprobs) if isinstance(req, CompletionRequest) else ("top_logprobs", req.top_logprobs)
    if k is not None and not 0 <= k <= MAX_LOGPROBS:
        raise APIError(400, f"'{field}' must be between 0 and {MAX_LOGPROBS} (got {k})", param=field)
    if isinstance(req, CompletionRequest):
        return k
    if k is not None and not req.logprobs:
        raise APIError(400, "'top_logprobs' is only allowed with 'logprobs': true", param="top_logprobs")
    return (k or 0) if req.logprobs else None


# --- log-probabilities in the response -----------------------------------------------------------


@dataclass(frozen=True)
class Logprob:
    """One token of a choice as the response reports it: its text, its log-probability and the most likely tokens
    at its position as (text, logprob), best first (both None for a prompt's first token: nothing predicts it)."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None


def legacy_logprobs(tokens: list[Logprob], offset: int = 0) -> dict[str, Any]:
    """/v1/completions' `logprobs` of these tokens. text_offset counts the tokens' texts on from `offset` (the
    characters of the choice's text before the first of them), as OpenAI does: exact where the texts join into the
    choice's (not across a character split between tokens, a stop string or a stripped leading space). top_logprobs
    maps token text to logprob, the likelier kept where two tokens have one text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [None if t.top is None else _by_text(t.top) for t in tokens],
        "text_offset": offsets,
    }


def _by_text(top: list[tuple[str, float]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for token, logprob in top:  # best first: a later token with the same text is less likely
        best.setdefault(token, logprob)
    return best


def chat_logprobs(tokens: list[Logprob]) -> dict[str, Any]:
    """/v1/chat/completions' `logprobs` of these (generated) tokens, each with its text's UTF-8 bytes."""

    def entry(token: str, logprob: float | None) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [entry(t.token, t.logprob) | {"top_logprobs": [entry(*top) for top in t.top or []]} for t in tokens]
    return {"content": content, "refusal": None}


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
