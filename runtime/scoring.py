"""Scoring: log-probabilities of given tokens, on the same decoder and KV cache as generation.

    token_logprobs    log-probabilities of given next tokens (and the top k) from raw logits: scored rows and the
                      server's generated tokens (runtime/batching.py) both use it
    score_rows        per-token log-probabilities of right-padded rows, prefilled in chunks (and, with top_k,
                      the k most likely tokens at each position); what every other function here is built on
    continuation      lm-eval's `loglikelihood`: the continuation's total log-probability given a context, whether
                      it is the greedy continuation, and how many context tokens did not fit the window
    rolling_windows   lm-eval's `loglikelihood_rolling` windows: a long text cut into disjoint windows of the
                      context length, each predicted given the tokens before it (the first given a prefix token)

Log-probabilities come from the raw logits (log_softmax in fp32, after the card's logit multiplier, as the model
defines them), never from the card's sampling processors. Work is bounded: one pass handles as many positions as
keep its [B, T, V] fp32 log-probabilities within `LOGITS_BUDGET` (and attention within the prefill budget).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from modeldeck.registry.decoder import prefill_chunk
from modeldeck.runtime.attention import Backend
from modeldeck.runtime.model import Decoder, KVCache

__all__ = ["LOGITS_BUDGET", "ScoredRow", "continuation_window", "rolling_windows", "score_rows", "token_logprobs"]

LOGITS_BUDGET = 256 * 2**20
"""Bytes of fp32 log-probabilities [B, T, V] one scoring pass may hold."""


@dataclass(frozen=True)
class ScoredRow:
    """One row's scores: logprobs[t] and greedy[t] are for token t + 1 given tokens 0..t (the first token has
    none); top[t] (with top_k) are the k most likely (id, logprob) pairs at that position, best first."""

    logprobs: list[float]
    greedy: list[bool]
    top: list[list[tuple[int, float]]]


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw logits [..., V] -> each target's log-probability [...], whether it is the most likely token [...], and
    the top_k most likely tokens' log-probabilities and ids [..., k], best first: log_softmax in fp32. The one
    place log-probabilities are computed, for scored rows and for generated tokens (runtime/batching.py)."""
    scores = logits.float().log_softmax(-1)  # [..., V]
    values, ids = scores.topk(min(top_k, scores.shape[-1]), dim=-1)  # [..., k]
    return scores.gather(-1, targets[..., None])[..., 0], scores.argmax(-1) == targets, values, ids


@torch.inference_mode()
def score_rows(
    decoder: Decoder, backend: Backend, rows: list[list[int]], top_k: int = 0, budget: int = LOGITS_BUDGET
) -> list[ScoredRow]:
    """Per-token log-probabilities of each row (token ids, each at least 2 long to score anything), batched with
    right padding through one KV cache; passes of `chunk` positions keep memory bounded for long rows."""
    if not rows:
        return []
    device, vocab = decoder.embed.weight.device, decoder.arch.vocab_size
    longest = max(map(len, rows))
    tokens = torch.tensor([r + [0] * (longest - len(r)) for r in rows], device=device)  # [B, T]
    inputs = tokens[:, :-1]  # the last token is only predicted: a row of context_length + 1 tokens fits
    cache = KVCache.for_decoder(decoder, len(rows), max(1, inputs.shape[1]))
    chunk = min(prefill_chunk(decoder.arch.heads, len(rows), longest), max(1, budget // (len(rows) * vocab * 4)))
    logprobs, greedy, top_values, top_ids = [], [], [], []
    for begin in range(0, inputs.shape[1], chunk):
        part = inputs[:, begin : begin + chunk]  # [B, C]
        start = torch.full((len(rows),), begin, device=device)
        targets = tokens[:, begin + 1 : begin + 1 + part.shape[1]]  # [B, C]: the next token of each position
        chosen, is_greedy, values, ids = token_logprobs(decoder(part, cache, backend, start=start), targets, top_k)
        logprobs.append(chosen)  # [B, C]
        greedy.append(is_greedy)  # [B, C]
        top_values.append(values)  # [B, C, k]
        top_ids.append(ids)  # [B, C, k]
    if not logprobs:  # every row is a single token: nothing to score
        return [ScoredRow([], [], []) for _ in rows]
    all_logprobs, all_greedy = torch.cat(logprobs, 1).tolist(), torch.cat(greedy, 1).tolist()
    values_list = torch.cat(top_values, 1).tolist() if top_k else None
    ids_list = torch.cat(top_ids, 1).tolist() if top_k else None
    scored = []
    for b, row in enumerate(rows):
        n = len(row) - 1
        top = []
        if values_list is not None and ids_list is not None:
            top = [list(zip(ids_list[b][t], values_list[b][t], strict=True)) for t in range(n)]
        scored.append(ScoredRow(all_logprobs[b][:n], all_greedy[b][:n], top))
    return scored


def continuation_window(context: list[int], continuation: list[int], context_length: int) -> tuple[list[int], int]:
    """The tokens to run for scoring `continuation` after `context` within the model's window, and how many context
    tokens were cut from the left to fit (lm-eval's rule: the last context_length + 1 tokens; the final one is only
    predicted). A continuation that alone does not fit is not cut: the caller refuses it."""
    whole = context + continuation
    kept = whole[-(context_length + 1) :]
    return kept, len(whole) - len(kept)


def rolling_windows(tokens: list[int], prefix: int, context_length: int) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that together predict every token of `tokens` once, each window
    at most `context_length` tokens long (lm-eval's rolling windows with context_len 1, made disjoint): the first
    window is predicted from `prefix` (the prefix token), each later one from the tokens before it."""
    predicted = 0
    while predicted < len(tokens):
        end = min(len(tokens), predicted + context_length)
        target = tokens[predicted:end]
        yield ([prefix] if predicted == 0 else tokens[max(0, end - context_length - 1) : predicted]), target
        predicted = end


# --- the results Model returns --------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprobs:
    """A sequence's tokens with their log-probabilities: logprobs[0] is None (nothing precedes the first token);
    top[t] (with top_k) holds the k most likely (token text, logprob) at position t, best first ([] at 0)."""

    ids: list[int]
    tokens: list[str]
    logprobs: list[float | None]
    top: list[list[tuple[str, float]]] | None = None


@dataclass(frozen=True)
class Score:
    """A continuation's total log-probability given its context (lm-eval's loglikelihood), whether greedy decoding
    would produce it, how many tokens it has, and how many context tokens were cut from the left to fit."""

    logprob: float
    greedy: bool
    tokens: int
    truncated: int = 0


@dataclass(frozen=True)
class RollingScore:
    """The log-likelihood of a whole text over disjoint windows (lm-eval's loglikelihood_rolling)."""

    logprob: float
    tokens: int
    windows: int


def score_pairs(
    decoder: Decoder, backend: Backend, pairs: list[tuple[list[int], list[int]]], batch: int = 16
) -> list[Score]:
    """Score each (context ids, continuation ids), `batch` rows per pass, longest first (less padding)."""
    context_length = decoder.arch.context_length
    windows = [continuation_window(c, n, context_length) for c, n in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(windows[i][0]))
    scores: list[Score | None] = [None] * len(pairs)
    for first in range(0, len(order), batch):
        group = order[first : first + batch]
        rows = score_rows(decoder, backend, [windows[i][0] for i in group])
        for i, row in zip(group, rows, strict=True):
            n = len(pairs[i][1])
            scores[i] = Score(sum(row.logprobs[-n:]), all(row.greedy[-n:]), n, windows[i][1])
    return [s for s in scores if s is not None]
