"""Generation: each request is a `Sequence`; `step` advances a batch of them by one token.

    prefill(prompts) ─► logits [B, V] of each prompt's last token
        └─► step(sequences, logits): process logits ─► sample ─► Sequence.push (text, stop strings, finish rule)
                └─► decode_one_token(tokens) ─► logits ─► step ─► ... until every sequence has finished

`Model.generate` and `Model.stream` run a static batch (`generate`); the continuous batcher (runtime/batching.py)
lets sequences join and leave between steps. Both drive the same `Sequence` and `step`: they differ only in
scheduling.

Options are resolved once per request (`resolve_options`): the card's defaults, then the caller's keywords, with
one rule for sampling everywhere (Python, CLI, server): `do_sample` when given decides; otherwise a temperature of
0 (below 1e-5) means greedy, and a temperature above 0, a top_p or a top_k asks for sampling; otherwise the card's
`do_sample` decides.

Logit processing follows Hugging Face's order and meaning: repetition_penalty (over prompt and generated tokens),
min_new_tokens (eos forbidden until then), then, when sampling, temperature, top_k and top_p, and finally
renormalize_logits (log-softmax). Each sequence samples with its own torch.Generator, so a seeded sequence draws the
same tokens whatever it is batched with; choice i of a prompt is seeded `seed + i`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError

from modeldeck.registry.decoder import ATTENTION_BUDGET, prefill_chunk
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import GenerationDefaults
from modeldeck.runtime.attention import Backend
from modeldeck.runtime.graphs import DecodeGraphs
from modeldeck.runtime.model import Decoder, KVCache
from modeldeck.runtime.text import TextStream

__all__ = [
    "ATTENTION_BUDGET",
    "Completion",
    "ContextLengthError",
    "FinishReason",
    "GenerationError",
    "Options",
    "Sequence",
    "check_prompt",
    "decode_one_token",
    "generate",
    "generate_tokens",
    "make_generator",
    "new_sequence",
    "prefill",
    "prefill_chunk",
    "resolve_options",
    "step",
]

FinishReason = Literal["stop", "length", "eos", "cancelled", "error"]
ErrorCode = Literal[
    "unknown_option", "invalid_option", "unsupported_option", "invalid_prompt", "context_length_exceeded"
]
GREEDY_BELOW = 1e-5
"""A temperature this small means greedy decoding (dividing logits by it would overflow)."""


class GenerationError(ModeldeckError, ValueError):
    """An option or input generation cannot use: `option` names it (None: a rule across options), `code` says how."""

    def __init__(self, message: str, option: str | None = None, code: ErrorCode = "invalid_option"):
        super().__init__(message)
        self.option, self.code = option, code


class ContextLengthError(GenerationError):
    """The prompt and max_new_tokens do not fit the context (option: "prompt" when the prompt alone fills it)."""

    def __init__(self, message: str, context_length: int, prompt_tokens: int, max_new_tokens: int):
        room = context_length - prompt_tokens
        super().__init__(message, "max_new_tokens" if room >= 1 else "prompt", "context_length_exceeded")
        self.context_length, self.prompt_tokens, self.max_new_tokens = context_length, prompt_tokens, max_new_tokens


# --- options -------------------------------------------------------------------------------------


class Options(GenerationDefaults):
    """One request's generation options: the card's generation defaults (their fields, names and checks) merged with
    the caller's keywords, plus what only a request has: its seed and all its stop strings (the card's first)."""

    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch's generators take
    stop: tuple[str, ...] = ()


SAMPLING_OPTIONS = ("temperature", "top_p", "top_k")


def _sampling_rule(overrides: dict[str, Any]) -> dict[str, Any]:
    """The one rule for do_sample (see the module docstring), applied to the caller's keywords."""
    overrides = dict(overrides)
    temperature = overrides.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and 0 <= temperature < GREEDY_BELOW:
        if overrides.get("do_sample") is True:
            raise GenerationError(
                f"temperature={temperature} means greedy decoding, but do_sample=True asks for sampling; give a "
                "temperature above 0 to sample, or leave do_sample out",
                "temperature",
            )
        del overrides["temperature"]  # the card's temperature stays (unused: greedy)
        overrides["do_sample"] = False
    elif overrides.get("do_sample") is None and any(overrides.get(k) is not None for k in SAMPLING_OPTIONS):
        overrides["do_sample"] = True
    elif "do_sample" in overrides and overrides["do_sample"] is None:
        del overrides["do_sample"]
    return overrides


def resolve_options(
    card_defaults: GenerationDefaults, card_stop: Collection[str], overrides: Mapping[str, Any]
) -> Options:
    """The card's defaults and stop strings, then the caller's keywords: one validated Options."""
    known = set(Options.model_fields)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise GenerationError(
            f"unknown generation option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}",
            unknown[0],
            "unknown_option",
        )
    given = _sampling_rule(dict(overrides))
    stop = given.get("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop):
        raise GenerationError("stop must be a non-empty string or a list of non-empty strings", "stop")
    seed = given.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise GenerationError(f"seed must be an integer, got {seed!r}", "seed")
    merged = card_defaults.model_dump() | {k: v for k, v in given.items() if k in GenerationDefaults.model_fields}
    try:
        opts = Options.model_validate({**merged, "seed": seed, "stop": (*card_stop, *stop)})
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across options (min_new_tokens > max_new_tokens, ...)
            raise GenerationError(f"invalid generation options: {reason}") from None
        option = ".".join(map(str, first["loc"]))
        raise GenerationError(
            f"invalid generation option {option}={first.get('input')!r}: {reason}", str(first["loc"][0])
        ) from None
    if opts.num_beams > 1:
        raise GenerationError(
            f"num_beams={opts.num_beams}: beam search is not supported by modeldeck's runtime yet; use num_beams=1 "
            "(greedy or sampling)",
            "num_beams",
            "unsupported_option",
        )
    return opts


def check_prompt(ids: list[int], vocab_size: int, context_length: int, max_new_tokens: int) -> None:
    """The checks every request's prompt passes once: not empty, ids in the vocabulary, room for max_new_tokens."""
    if not ids:
        raise GenerationError("a prompt encodes to no tokens; give some text", "prompt", "invalid_prompt")
    bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size), None)
    if bad is not None:
        raise GenerationError(
            f"prompt token id {bad!r} is not in the vocabulary (0 to {vocab_size - 1})", "prompt", "invalid_prompt"
        )
    n = len(ids)
    if n >= context_length:
        raise ContextLengthError(
            f"a prompt of {n} tokens fills the context length {context_length} and leaves no room for a new token; "
            f"shorten the prompt to at most {context_length - 1} tokens",
            context_length,
            n,
            max_new_tokens,
        )
    if n + max_new_tokens > context_length:
        raise ContextLengthError(
            f"a prompt of {n} tokens plus max_new_tokens={max_new_tokens} exceeds the context length "
            f"{context_length}; lower max_new_tokens to at most {context_length - n} or shorten the prompt",
            context_length,
            n,
            max_new_tokens,
        )


def new_sequence(
    decoder: Decoder,
    prompt: list[int],
    opts: Options,
    eos: Collection[int],
    text: TextStream | None = None,
    choice: int = 0,
) -> Sequence:
    """A sequence to generate on `decoder`: its prompt checked (`check_prompt`), its generator seeded for choice
    `choice` of its prompt (`make_generator`)."""
    arch = decoder.arch
    check_prompt(prompt, arch.vocab_size, arch.context_length, opts.max_new_tokens)
    device = next(decoder.parameters()).device
    return Sequence(prompt, opts, eos, text, make_generator(opts, device, choice))


def make_generator(opts: Options, device: torch.device, offset: int = 0) -> torch.Generator | None:
    """The random generator of one sampled sequence: seeded `seed + offset`, or at random; None when greedy."""
    if not opts.do_sample:
        return None
    generator = torch.Generator(device=device)
    seed = opts.seed + offset if opts.seed is not None else int(torch.randint(0, 2**62, ()).item())
    generator.manual_seed(seed % 2**64)  # seed + offset may pass 2**64 - 1: wrap, as torch does for negatives
    return generator


# --- one sequence --------------------------------------------------------------------------------


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


class Sequence:
    """One request being generated: its prompt, options, generator and text, and the rule that ends it.

    After each `push`, `delta` is the text newly safe to show (runtime/text.py) and `finish` says whether and why it
    ended: a stop string ("stop", the text ends before it), an eos token ("eos", the token is kept), or
    max_new_tokens ("length"). A sequence without a TextStream generates tokens only (no stop strings)."""

    def __init__(
        self,
        prompt: list[int],
        opts: Options,
        eos: Collection[int],
        text: TextStream | None = None,
        generator: torch.Generator | None = None,
    ):
        self.prompt, self.opts, self.eos, self.text, self.generator = (
            list(prompt),
            opts,
            frozenset(eos),
            text,
            generator,
        )
        self.generated: list[int] = []
        self.finish: FinishReason | None = None
        self.delta = ""

    def push(self, token: int) -> None:
        """Take the next token: record it, extend the text, and apply the finish rule."""
        self.generated.append(token)
        self.delta = self.text.push(token) if self.text is not None else ""
        if self.text is not None and self.text.stopped:
            self.delta += self.end("stop")
        elif token in self.eos:
            self.delta += self.end("eos")
        elif len(self.generated) >= self.opts.max_new_tokens:
            self.delta += self.end("length")

    def end(self, reason: FinishReason) -> str:
        """End the sequence (once; later calls change nothing); returns the text held back until now."""
        if self.finish is not None:
            return ""
        self.finish = reason
        return self.text.finish() if self.text is not None else ""

    def completion(self) -> Completion:
        text = self.text.text if self.text is not None else ""
        return Completion(text, list(self.generated), self.finish or "length", len(self.prompt))


# --- logits -> next token ------------------------------------------------------------------------


def process_logits(
    logits: torch.Tensor, seen: list[list[int]] | None, generated: list[int], opts: Options, eos: Collection[int]
) -> torch.Tensor:
    """logits [B, V] -> scores [B, V], Hugging Face's processors in Hugging Face's order. `seen`: each row's prompt
    and generated ids (needed only for a repetition penalty); `generated`: how many tokens each row has made."""
    scores = logits.float()
    if opts.repetition_penalty != 1.0:
        assert seen is not None, "a repetition penalty needs the ids each row has seen"
        for row, ids in enumerate(seen):
            index = torch.tensor(ids, device=scores.device)
            picked = scores[row, index]
            scores[row, index] = torch.where(
                picked < 0, picked * opts.repetition_penalty, picked / opts.repetition_penalty
            )
    early = [row for row, n in enumerate(generated) if n < opts.min_new_tokens]
    if early and eos:
        scores[torch.tensor(early, device=scores.device)[:, None], torch.tensor(sorted(eos), device=scores.device)] = (
            float("-inf")
        )
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


def sample(scores: torch.Tensor, do_sample: bool, generators: list[torch.Generator | None]) -> torch.Tensor:
    """scores [B, V] -> next tokens [B]; row i draws with generators[i]."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)[0] for i, g in enumerate(generators)])


def _pick(sequences: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] of sequences that share one Options -> their next tokens [B]."""
    opts = sequences[0].opts
    seen = [s.prompt + s.generated for s in sequences] if opts.repetition_penalty != 1.0 else None
    scores = process_logits(logits, seen, [len(s.generated) for s in sequences], opts, sequences[0].eos)
    return sample(scores, opts.do_sample, [s.generator for s in sequences])


def step(
    sequences: list[Sequence],
    logits: torch.Tensor,
    on_error: Callable[[Sequence, Exception], None] | None = None,
) -> torch.Tensor:
    """Advance every running sequence by one token: logits [B, V] (row i: sequences[i]) -> tokens [B], each pushed
    into its sequence (text, stop strings, finish rule). Finished sequences are left as they are (their row's token
    is 0). Sequences sharing one Options object are processed together. Without `on_error` a failure raises; with it,
    the failure is handed over with each sequence it concerns and the others go on."""
    tokens = torch.zeros(len(sequences), dtype=torch.long, device=logits.device)
    groups: dict[int, list[int]] = {}
    for row, sequence in enumerate(sequences):
        if sequence.finish is None:
            groups.setdefault(id(sequence.opts), []).append(row)
    picked: list[int] = []
    for rows in groups.values():
        try:
            part = logits if len(rows) == len(sequences) else logits[rows]  # all rows: no copy
            tokens[rows] = _pick([sequences[r] for r in rows], part)
            picked += rows
        except Exception as exc:
            if on_error is None:
                raise
            for r in rows:
                on_error(sequences[r], exc)
    values = tokens.tolist()  # one device sync for the whole step
    for row in sorted(picked):
        try:
            sequences[row].push(values[row])
        except Exception as exc:
            if on_error is None:
                raise
            on_error(sequences[row], exc)
    return tokens


# --- the decoder passes --------------------------------------------------------------------------


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
    logits: torch.Tensor = decoder(tokens[:, None], cache, backend)[:, 0]  # [B, V]
    cache.lengths = cache.lengths + 1
    return logits


@torch.inference_mode()
def generate(
    decoder: Decoder, sequences: list[Sequence], backend: Backend, pad_id: int, cuda_graphs: bool = False
) -> Iterator[None]:
    """A static batch: prefill every prompt together, then `step` and decode until every sequence has finished,
    yielding after each step (read each sequence's `delta` and `finish` then). `cuda_graphs`: each decode step
    replays a captured CUDA graph (runtime/graphs.py)."""
    capacity = max(map(len, (s.prompt for s in sequences))) + max(s.opts.max_new_tokens for s in sequences)
    cache = KVCache.for_decoder(decoder, len(sequences), capacity)
    logits = prefill(decoder, [s.prompt for s in sequences], cache, backend, pad_id)
    graphs = DecodeGraphs(decoder, cache, backend) if cuda_graphs else None
    while True:
        tokens = step(sequences, logits)
        yield
        if all(s.finish is not None for s in sequences):
            return
        logits = decode_one_token(decoder, tokens, cache, backend) if graphs is None else graphs(tokens)


def generate_tokens(
    decoder: Decoder,
    prompts: list[list[int]],
    opts: Options,
    backend: Backend,
    eos: Collection[int],
    pad_id: int,
    cuda_graphs: bool = False,
) -> Iterator[list[tuple[int, int]]]:
    """Token-level `generate` without a tokenizer (no text, no stop strings): yields, per step, (prompt index, new
    token) for every sequence that took one. Each prompt is one choice, seeded as Model.generate seeds choice 0."""
    sequences = [new_sequence(decoder, ids, opts, eos) for ids in prompts]
    counts = [0] * len(sequences)
    for _ in generate(decoder, sequences, backend, pad_id, cuda_graphs):
        events = []
        for i, s in enumerate(sequences):
            if len(s.generated) > counts[i]:
                counts[i] = len(s.generated)
                events.append((i, s.generated[-1]))
        yield events
