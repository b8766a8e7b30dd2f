"""Generation: prefill, decode one token at a time against a preallocated KV cache, sample.

    prefill(prompts) ─► logits for each prompt's last token
        └─► loop: process(logits) ─► sample ─► check eos / stop strings ─► decode_one_token ─► ...

Logit processing follows Hugging Face's order and meaning: repetition_penalty (over prompt and
generated tokens), min_new_tokens (eos forbidden until then), then, when sampling, temperature,
top_k and top_p, and finally renormalize_logits (log-softmax).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import ValidationError

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.memory import ATTENTION_BUDGET  # shared with the memory planner: one value for both
from modeldeck.registry.schema import GenerationDefaults
from modeldeck.runtime.attention import Backend
from modeldeck.runtime.model import Decoder, KVCache

__all__ = ["Completion", "GenerationError", "Options", "generate_tokens", "resolve_options"]

FinishReason = Literal["stop", "length", "eos"]


class GenerationError(ModeldeckError, ValueError):
    """An option or input generation cannot use."""


@dataclass(frozen=True)
class Options:
    """Card defaults merged with the caller's keywords, validated."""

    defaults: GenerationDefaults
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.defaults, name)


RUNTIME_OPTIONS = ("seed", "stop")


def resolve_options(card_defaults: GenerationDefaults, card_stop: list[str], overrides: dict[str, Any]) -> Options:
    known = set(GenerationDefaults.model_fields) | set(RUNTIME_OPTIONS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise GenerationError(
            f"unknown generation option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
        )
    merged = card_defaults.model_dump() | {k: v for k, v in overrides.items() if k in GenerationDefaults.model_fields}
    try:
        defaults = GenerationDefaults.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across options (min_new_tokens > max_new_tokens, ...)
            raise GenerationError(f"invalid generation options: {reason}") from None
        option = ".".join(map(str, first["loc"]))
        raise GenerationError(f"invalid generation option {option}={first.get('input')!r}: {reason}") from None
    if defaults.num_beams > 1:
        raise GenerationError(
            f"num_beams={defaults.num_beams}: beam search is not supported by modeldeck's runtime yet; use num_beams=1 "
            "(greedy or sampling)"
        )
    stop = overrides.get("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop):
        raise GenerationError("stop must be a non-empty string or a list of non-empty strings")
    seed = overrides.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise GenerationError(f"seed must be an integer, got {seed!r}")
    return Options(defaults, seed, tuple(card_stop) + stop)


@dataclass
class Completion:
    """One generated sequence."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


# --- logits -> next token ------------------------------------------------------------------------


def process_logits(
    logits: torch.Tensor, seen: list[list[int]], generated: int, opts: Options, eos: list[int]
) -> torch.Tensor:
    """logits [B, V] -> scores [B, V], Hugging Face's processors in Hugging Face's order."""
    scores = logits.float()
    if opts.repetition_penalty != 1.0:
        for row, ids in enumerate(seen):
            index = torch.tensor(ids, device=scores.device)
            picked = scores[row, index]
            scores[row, index] = torch.where(
                picked < 0, picked * opts.repetition_penalty, picked / opts.repetition_penalty
            )
    if generated < opts.min_new_tokens:
        scores[:, eos] = float("-inf")
    if opts.do_sample:
        scores = scores / opts.temperature
        if opts.top_k is not None and opts.top_k < scores.shape[-1]:
            kth = torch.topk(scores, opts.top_k, dim=-1).values[:, -1:]  # [B, 1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if opts.top_p is not None and opts.top_p < 1.0:
            ordered, order = scores.sort(dim=-1)  # ascending
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - opts.top_p
            drop[:, -1] = False  # always keep the most likely token
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if opts.renormalize_logits:
        scores = scores.log_softmax(dim=-1)
    return scores


def sample(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """scores [B, V] -> next tokens [B]."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- the loop ------------------------------------------------------------------------------------


def prefill_chunk(heads: int, batch: int, keys: int, budget: int = ATTENTION_BUDGET) -> int:
    """Queries per prefill pass: as many as keep B x H x T x S fp32 scores within `budget` (at least 16)."""
    return max(16, budget // (batch * heads * keys * 4))


@torch.inference_mode()
def prefill(
    decoder: Decoder,
    prompts: list[list[int]],
    cache: KVCache,
    backend: Backend,
    pad_id: int,
    chunk: int | None = None,
) -> torch.Tensor:
    """Run all prompts (right-padded to one length) through the decoder, `chunk` queries per pass (default:
    `prefill_chunk`); logits of each prompt's last token [B, V]."""
    device = cache.k.device
    longest = max(map(len, prompts))
    tokens = torch.tensor([p + [pad_id] * (longest - len(p)) for p in prompts], device=device)  # [B, T]
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    last = lengths - 1  # [B]
    chunk = chunk or prefill_chunk(decoder.arch.heads, len(prompts), longest)
    logits = torch.empty(0)
    for begin in range(0, longest, chunk):
        part = tokens[:, begin : begin + chunk]  # [B, C]
        start = torch.full_like(lengths, begin)
        here = decoder(part, cache, backend, start=start, last=(last - begin).clamp(0, part.shape[1] - 1))  # [B, V]
        ends_here = ((last >= begin) & (last < begin + part.shape[1]))[:, None]  # [B, 1]
        logits = here if begin == 0 else torch.where(ends_here, here, logits)
    cache.lengths = lengths
    return logits


@torch.inference_mode()
def decode_one_token(decoder: Decoder, tokens: torch.Tensor, cache: KVCache, backend: Backend) -> torch.Tensor:
    """tokens [B] -> logits of the next position [B, V]; each sequence continues at its own length."""
    logits = decoder(tokens[:, None], cache, backend)[:, 0]  # [B, V]
    cache.lengths = cache.lengths + 1
    return logits


def check_fits(context_length: int, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt that leaves no room for max_new_tokens in the context."""
    if prompt_tokens + max_new_tokens > context_length:
        raise GenerationError(
            f"a prompt of {prompt_tokens} tokens plus max_new_tokens={max_new_tokens} exceeds the context length "
            f"{context_length}; lower max_new_tokens to at most {max(context_length - prompt_tokens, 0)} or shorten the prompt"
        )


@dataclass
class _Sequence:
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None


@torch.inference_mode()
def generate_tokens(
    decoder: Decoder,
    prompts: list[list[int]],
    opts: Options,
    backend: Backend,
    eos: list[int],
    pad_id: int,
    stopped: set[int] | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """Yields, per step, (sequence index, new token) for every sequence still running.

    Sequences end at an eos token (which is yielded), at max_new_tokens, or when the caller adds
    their index to `stopped` (a stop string it found in the text).
    """
    stopped = set() if stopped is None else stopped
    arch = decoder.arch
    longest = max(map(len, prompts))
    capacity = longest + opts.max_new_tokens
    check_fits(arch.context_length, longest, opts.max_new_tokens)
    device = next(decoder.parameters()).device
    dtype = next(decoder.parameters()).dtype
    generator = None
    if opts.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(opts.seed if opts.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    cache = KVCache(arch, len(prompts), capacity, dtype, device)
    sequences = [_Sequence(list(p)) for p in prompts]
    logits = prefill(decoder, prompts, cache, backend, pad_id)
    for step in range(opts.max_new_tokens):
        scores = process_logits(logits, [s.prompt + s.generated for s in sequences], step, opts, eos)
        tokens = sample(scores, opts.do_sample, generator)
        events = []
        for index, (seq, token) in enumerate(zip(sequences, tokens.tolist(), strict=True)):
            if seq.finish is None and index in stopped:
                seq.finish = "stop"
            if seq.finish is not None:
                continue
            seq.generated.append(token)
            if token in eos:
                seq.finish = "eos"
            elif len(seq.generated) == opts.max_new_tokens:
                seq.finish = "length"
            events.append((index, token))
        yield events
        if all(s.finish is not None or i in stopped for i, s in enumerate(sequences)):
            return
        logits = decode_one_token(decoder, tokens, cache, backend)
