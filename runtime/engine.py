"""`load` and `Model`: the public surface of the built-in engine (card in, text out)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as Many
from dataclasses import dataclass
from typing import Any, cast, overload

import torch

from modeldeck import registry
from modeldeck.registry.decoder import DTYPES
from modeldeck.registry.diagnostics import ModeldeckError, spell
from modeldeck.registry.prompting import render_segments
from modeldeck.registry.schema import Card
from modeldeck.registry.weights import require_pins, require_verified
from modeldeck.runtime.attention import choose_backend, get_backend
from modeldeck.runtime.generate import (
    Completion,
    GenerationError,
    Options,
    Sequence,
    generate,
    new_sequence,
    resolve_options,
)
from modeldeck.runtime.graphs import check_graphs
from modeldeck.runtime.kernels import check_quantize, describe_quantized
from modeldeck.runtime.loading import load_decoder
from modeldeck.runtime.model import Decoder
from modeldeck.runtime.scoring import RollingScore, Score, TokenLogprobs, rolling_windows, score_pairs, score_rows
from modeldeck.runtime.text import TextStream
from modeldeck.runtime.tokenizer import TextTokenizer, load_tokenizer, require_card_match

__all__ = ["CardModel", "Generation", "Model", "load"]

Messages = Many[Mapping[str, object]]
Conversation = str | Messages
_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}


@dataclass
class Generation:
    """The answer to one prompt: one completion per returned sequence (num_return_sequences)."""

    prompt: str
    completions: list[Completion]

    @property
    def text(self) -> str:
        return self.completions[0].text

    @property
    def finish_reason(self) -> str:
        return self.completions[0].finish_reason


class CardModel:
    """What a model shares whichever engine runs it: its card and tokenizer, prompts in the card's format, options
    resolved with the card's defaults, and generate/chat over the engine's `_run`. `Model` runs on modeldeck's own
    decoder; runtime/vllm.py's VLLMModel on a vLLM server."""

    card: Card
    tokenizer: TextTokenizer
    engine = "modeldeck"
    scores_prompts = True  # prompt log-probabilities (the server's echo, max_tokens 0)

    # --- prompts -------------------------------------------------------------------------------

    def render(self, conversation: Conversation, system: str | None = None) -> str:
        """The exact prompt text the model sees."""
        return "".join(s.text for s in render_segments(self.card.format, conversation, system))

    def encode(self, conversation: Conversation, system: str | None = None, raw: bool = False) -> list[int]:
        """Token ids of a prompt; `raw=True` skips the prompt format (the text is encoded as plain text)."""
        if raw:
            if not isinstance(conversation, str):
                raise GenerationError("raw=True takes a string prompt, not messages")
            return self.tokenizer.encode_text(conversation)
        return self.tokenizer.encode_segments(render_segments(self.card.format, conversation, system))

    # --- generation ----------------------------------------------------------------------------

    @overload
    def generate(
        self, prompt: Conversation, *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Generation: ...

    @overload
    def generate(
        self, prompt: list[str], *, system: str | None = None, raw: bool = False, **options: Any
    ) -> list[Generation]: ...

    def generate(
        self, prompt: Conversation | list[str], *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Generation | list[Generation]:
        """Generate for one prompt (-> Generation) or a list of prompts decoded together (-> list[Generation])."""
        many = isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
        prompts: list[Conversation] = [str(p) for p in prompt] if many else [cast(Conversation, prompt)]
        results = self._run(prompts, system, raw, options)
        return results if many else results[0]

    def chat(self, messages: Messages, *, system: str | None = None, **options: Any) -> Generation:
        """Answer the last user message of a conversation, rendered with the card's prompt format."""
        return self._run([messages], system, False, options)[0]

    def stream(
        self, prompt: Conversation, *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Iterator[str]:
        """Text deltas as they become safe to show (see runtime/text.py)."""
        raise NotImplementedError

    def options(self, **overrides: Any) -> Options:
        """The card's generation defaults and stop strings, overridden by `overrides`, validated once."""
        return resolve_options(self.card.generation, self.card.format.stop, overrides)

    def stream_options(self, **overrides: Any) -> Options:
        """`options` for stream(), which returns one sequence."""
        opts = self.options(**overrides)
        if opts.num_return_sequences != 1:
            raise GenerationError("stream() returns one sequence: set num_return_sequences=1", "num_return_sequences")
        return opts

    def text_stream(self, opts: Options, strip: bool = True) -> TextStream:
        """A sequence's text: the tokenizer's, the options' stop strings, the card's strip rule (`strip=False`:
        the text as generated, a continuation of plain text)."""
        return TextStream(self.tokenizer, opts.stop, self.card.format.strip_response if strip else "none")

    def batcher(self, max_batch: int = 8, max_queue: int = 64) -> Any:
        """The engine that serves many requests at once (runtime/server.py): submit -> Ticket."""
        raise NotImplementedError

    def _run(
        self, prompts: list[Conversation], system: str | None, raw: bool, options: dict[str, Any]
    ) -> list[Generation]:
        raise NotImplementedError

    def _prepared(
        self, prompts: list[Conversation], system: str | None, raw: bool, options: dict[str, Any]
    ) -> tuple[Options, list[list[int]]]:
        """`_run`'s start on every engine: the prompts checked and encoded, the options resolved."""
        if not prompts:
            raise GenerationError("no prompts given", "prompt", "invalid_prompt")
        return self.options(**options), [self.encode(p, system, raw) for p in prompts]

    def _generations(
        self, prompts: list[Conversation], system: str | None, raw: bool, completions: list[Completion], n: int
    ) -> list[Generation]:
        results = []
        for p, prompt in enumerate(prompts):
            shown = prompt if isinstance(prompt, str) and raw else self.render(prompt, system)
            results.append(Generation(shown, completions[p * n : (p + 1) * n]))
        return results


class Model(CardModel):
    """A card running on modeldeck's own decoder (`load`)."""

    def __init__(
        self,
        card: Card,
        decoder: Decoder,
        tokenizer: TextTokenizer,
        attention: str | None = None,
        quantize: str | None = None,
        cuda_graphs: bool = False,
    ):
        self.card, self.decoder, self.tokenizer = card, decoder, tokenizer
        self.backend = get_backend(choose_backend(attention, self.device, self.dtype))
        self.quantize = quantize  # the weight quantization, if any
        self.cuda_graphs = cuda_graphs  # decode steps replay CUDA graphs (runtime/graphs.py)
        if cuda_graphs:
            check_graphs(self.device, self.backend.name)

    @property
    def precision(self) -> str:
        """Why the model runs in its dtype (registry/decoder.default_precision, or "asked for")."""
        return self.decoder.precision

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.weight.dtype

    def __repr__(self) -> str:
        quantize = "" if self.quantize is None else f", quantize={self.quantize!r}"
        return (
            f"Model({self.card.id!r}, device={self.device}, dtype={self.dtype}{quantize}, "
            f"attention={self.backend.name!r}, precision={self.precision!r})"
        )

    def stream(
        self, prompt: Conversation, *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Iterator[str]:
        opts = self.stream_options(**options)
        sequence = self.sequence(self.encode(prompt, system, raw), opts)
        for _ in generate(self.decoder, [sequence], self.backend, self.tokenizer.pad_id, self.cuda_graphs):
            if sequence.delta:
                yield sequence.delta

    # --- scoring ---------------------------------------------------------------------------------

    def logprobs(self, text: str | list[int], top_k: int = 0) -> TokenLogprobs:
        """Each token's log-probability given the tokens before it (the first has none), from the raw logits;
        `top_k` > 0 adds the k most likely tokens at each position. `text` is encoded as plain text (no prompt
        format, no special tokens), or given as token ids; it must fit the context."""
        ids = self._scoring_ids(text, "text")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise GenerationError(f"top_k must be a whole number >= 0, got {top_k!r}", "top_k")
        if len(ids) > self.card.architecture.context_length:
            raise GenerationError(
                f"the text is {len(ids):,} tokens and card {self.card.id!r} has a {self.card.architecture.context_length:,}"
                "-token context: score it with loglikelihood_rolling, which works window by window",
                "text",
                "context_length_exceeded",
            )
        [row] = score_rows(self.decoder, self.backend, [ids], top_k)
        texts = [self.tokenizer.decode([i]) for i in ids]
        top: list[list[tuple[str, float]]] | None = None
        if top_k:
            top = [[]] + [[(self.tokenizer.decode([i]), lp) for i, lp in position] for position in row.top]
        return TokenLogprobs(ids, texts, [None, *row.logprobs], top)

    @overload
    def score(self, context: str | list[int], continuation: str | list[int], *, batch_size: int = 16) -> Score: ...

    @overload
    def score(
        self, context: list[tuple[str | list[int], str | list[int]]], continuation: None = None, *, batch_size: int = 16
    ) -> list[Score]: ...

    def score(
        self,
        context: str | list[int] | list[tuple[str | list[int], str | list[int]]],
        continuation: str | list[int] | None = None,
        *,
        batch_size: int = 16,
    ) -> Score | list[Score]:
        """The continuation's total log-probability given the context, and whether it is the greedy continuation
        (lm-eval's loglikelihood); a list of (context, continuation) pairs is scored in batches. Strings are encoded
        as lm-eval does: the context's trailing spaces move to the continuation, the pair is encoded whole and the
        continuation is what follows the context's own tokens. A context longer than the window is cut from the
        left (`Score.truncated` says by how many tokens); an empty context is the bos (else eos) token. A list is
        scored `batch_size` rows per forward pass, longest first."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationError(f"batch_size must be a whole number >= 1, got {batch_size!r}", "batch_size")
        if continuation is None:
            if not isinstance(context, list) or not all(isinstance(p, tuple) and len(p) == 2 for p in context):
                raise GenerationError("score() takes a context and a continuation, or a list of pairs", "context")
            pairs = [self._scoring_pair(c, n) for c, n in cast(list[tuple[str | list[int], str | list[int]]], context)]
            return score_pairs(self.decoder, self.backend, pairs, batch_size)
        return score_pairs(self.decoder, self.backend, [self._scoring_pair(cast(str, context), continuation)])[0]

    @overload
    def loglikelihood_rolling(self, text: str | list[int]) -> RollingScore: ...

    @overload
    def loglikelihood_rolling(self, text: list[str]) -> list[RollingScore]: ...

    def loglikelihood_rolling(self, text: str | list[int] | list[str]) -> RollingScore | list[RollingScore]:
        """The log-likelihood of a whole text of any length (lm-eval's loglikelihood_rolling): disjoint windows of
        the context length, the first predicted from the bos (else eos) token, each later one from the context
        before it. A list of strings is scored together (their windows batched)."""
        many = isinstance(text, list) and bool(text) and all(isinstance(t, str) for t in text)
        texts = cast(list[str], text) if many else [cast(str | list[int], text)]
        encoded = [self._scoring_ids(t, "text") for t in texts]
        context_length = self.card.architecture.context_length
        windows = [list(rolling_windows(ids, self._prefix_id, context_length)) for ids in encoded]
        scores = iter(score_pairs(self.decoder, self.backend, [w for each in windows for w in each]))
        results = []
        for ids, each in zip(encoded, windows, strict=True):
            results.append(RollingScore(sum(next(scores).logprob for _ in each), len(ids), len(each)))
        return results if many else results[0]

    @property
    def _prefix_id(self) -> int:
        tok = self.card.tokenizer
        return (tok.bos or tok.eos).id

    def _scoring_ids(self, text: str | list[int], field: str) -> list[int]:
        if isinstance(text, str):
            ids = self.tokenizer.encode_text(text)
        elif isinstance(text, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in text):
            ids = list(text)
        else:
            raise GenerationError(f"{field} must be a string or a list of token ids", field)
        outside = [i for i in ids if not 0 <= i < self.card.architecture.vocab_size]
        if outside:
            raise GenerationError(
                f"token id {outside[0]} is outside the vocabulary (0 .. {self.card.architecture.vocab_size - 1})",
                field,
            )
        return ids

    def _scoring_pair(self, context: str | list[int], continuation: str | list[int]) -> tuple[list[int], list[int]]:
        if isinstance(context, str) and isinstance(continuation, str):
            spaces = len(context) - len(context.rstrip(" "))
            context, continuation = context[: len(context) - spaces], context[len(context) - spaces :] + continuation
            whole, head = self.tokenizer.encode_text(context + continuation), self.tokenizer.encode_text(context)
            context_ids, continuation_ids = head, whole[len(head) :]
        else:
            context_ids, continuation_ids = (
                self._scoring_ids(context, "context"),
                self._scoring_ids(continuation, "continuation"),
            )
        if not continuation_ids:
            raise GenerationError("the continuation is empty: there is nothing to score", "continuation")
        if len(continuation_ids) > self.card.architecture.context_length:
            raise GenerationError(
                f"the continuation is {len(continuation_ids):,} tokens, more than card {self.card.id!r}'s "
                f"{self.card.architecture.context_length:,}-token context: it cannot be scored in one window",
                "continuation",
                "context_length_exceeded",
            )
        return (context_ids or [self._prefix_id]), continuation_ids

    # --- the pieces the batcher shares -----------------------------------------------------------

    def batcher(self, max_batch: int = 8, max_queue: int = 64) -> Any:
        from modeldeck.runtime.batching import ContinuousBatcher

        return ContinuousBatcher(self, max_batch=max_batch, max_queue=max_queue)

    def sequence(self, prompt_ids: list[int], opts: Options, choice: int = 0, strip: bool = True) -> Sequence:
        """One sequence to generate from these prompt ids (checked: in the vocabulary, fitting the context), with
        its own text stream and generator (`choice` i of a prompt is seeded seed + i). `strip=False` keeps the text
        as generated (no strip_response of the card's prompt format: a continuation of plain text)."""
        return new_sequence(
            self.decoder, prompt_ids, opts, self.tokenizer.eos_ids, self.text_stream(opts, strip), choice
        )

    def _run(
        self, prompts: list[Conversation], system: str | None, raw: bool, options: dict[str, Any]
    ) -> list[Generation]:
        opts, encoded = self._prepared(prompts, system, raw, options)
        n = opts.num_return_sequences
        sequences = [self.sequence(ids, opts, choice) for ids in encoded for choice in range(n)]
        for _ in generate(self.decoder, sequences, self.backend, self.tokenizer.pad_id, self.cuda_graphs):
            pass
        return self._generations(prompts, system, raw, [s.completion() for s in sequences], n)


def _requested_dtype(requested: str | torch.dtype | None, quantize: str | None) -> torch.dtype | None:
    """The dtype the user asked for (int8 computes in bfloat16); None: registry/decoder.default_precision's,
    decided when loading (it depends on how the checkpoint is stored)."""
    if isinstance(requested, torch.dtype):
        return requested
    if requested is not None:
        if requested not in _DTYPES:
            raise ModeldeckError(
                f"{spell('dtype', repr(requested))} is not supported; choose one of {', '.join(_DTYPES)}"
            )
        return _DTYPES[requested]
    return torch.bfloat16 if quantize is not None else None


def _check_engine(engine: str, **modeldeck_only: object) -> None:
    from modeldeck.registry.engines import ENGINES

    if engine not in ENGINES:
        raise ModeldeckError(f"{spell('engine', repr(engine))} is not an engine; choose one of {', '.join(ENGINES)}")
    if engine == "llama.cpp":
        modeldeck_only.pop("quantize")  # int8 is llama.cpp's q8_0
    given = [name for name, value in modeldeck_only.items() if value not in (None, False, "auto")]
    if engine != "modeldeck" and given:
        raise ModeldeckError(
            f"{spell(given[0])} is an option of modeldeck's runtime; the {engine} engine chooses its own kernels"
        )


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if dtype is not None and dtype not in _DTYPES:
        raise ModeldeckError(f"{spell('dtype', repr(dtype))} is not supported; choose one of {', '.join(_DTYPES)}")
    return dtype


def available_devices() -> list[str]:
    """The devices this torch build can use here: cpu, each CUDA device, mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def _choose_device(requested: str | torch.device | None) -> torch.device:
    """The device to run on (default: the first CUDA device when there is one, else the CPU), checked to exist."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise ModeldeckError(
            f"{spell('device', str(requested))}: not a device ({exc}); use one of {', '.join(available_devices())}"
        ) from None
    here = ", ".join(available_devices())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise ModeldeckError(
                f"{spell('device', str(requested))}: {why} (torch {torch.__version__}); devices available here: "
                f"{here}. Run on one of them, or install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModeldeckError(
                f"{spell('device', str(requested))}: there are {torch.cuda.device_count()} CUDA device(s); "
                f"devices available here: {here}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModeldeckError(f"{spell('device', str(requested))}: MPS is not available; devices available here: {here}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ModeldeckError(
            f"{spell('device', str(requested))}: modeldeck runs on cpu, cuda and mps; devices available here: {here}"
        )
    return device


def load(
    card: str | os.PathLike[str] | Card,
    *,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attention: str | None = None,
    allow_pickle: bool = False,
    verify: bool = False,
    quantize: str | None = None,
    cuda_graphs: bool = False,
    engine: str = "modeldeck",
    tensor_parallel_size: int | None = None,
    vllm_args: list[str] | None = None,
) -> Model:
    """A card (id, alias, hub repo, a card file, or Card) -> a Model with weights from `weights=DIR`, the package,
    or the hub.

    A card file is a path object, a name ending in .yaml or .yml, or the name of an existing file, read as
    `modeldeck generate PATH.yaml` reads it (`Registry.card_or_file`); its errors name the file. A card without
    source.repo needs `weights=DIR` (or bundled weights); without them NoRepositoryError says so, naming the card.
    When the weights folder has a tokenizer.json, the card's special token ids (bos, eos, pad, ...), markers and
    stop strings are checked against it before any weight is read: a disagreement is a CardError naming both ids.

    `verify=True` checks every file the card pins (source.files: sha256 and size) before any weight is read, and
    raises VerificationError naming each missing, wrong-size, wrong-hash or unpinned weight file (NoPinsError when
    the card pins nothing for this revision).

    `dtype=None` runs in the card's dtype on a GPU; on a CPU, float32 checkpoints in float32 and half-precision ones
    in bfloat16 where the CPU computes it natively, else float32 (registry/decoder.default_precision;
    `Model.precision` says why). `quantize="int8"`
    stores the linear layers' weights as int8 with one scale per output row (runtime/kernels.py). `cuda_graphs=True`
    replays each decode step of `generate`/`stream` as a CUDA graph (runtime/graphs.py; CUDA with sdpa or eager).

    `engine="vllm"` runs the card on a vLLM server instead (runtime/vllm.py: a VLLMModel with the same generate,
    chat and stream; close() stops it), `tensor_parallel_size` GPUs wide (default: the memory planner's), with
    `vllm_args` passed on to vLLM. `engine="llama.cpp"` runs the card's GGUF (exported once, then cached) on
    llama.cpp (runtime/llamacpp.py: a LlamaCppModel; `dtype` picks the GGUF type, `quantize="int8"` is q8_0)."""
    _check_engine(engine, attention=attention, quantize=quantize, cuda_graphs=cuda_graphs)
    if engine == "modeldeck" and (tensor_parallel_size is not None or vllm_args):
        raise ModeldeckError(
            f"{spell('tensor_parallel_size' if tensor_parallel_size is not None else 'vllm_args')} is an option of "
            f"{spell('engine', 'vllm')}; modeldeck's runtime runs on one device"
        )
    reg = registry.default()
    if isinstance(card, Card):
        origin = f"card {card.id!r}"
        resolved = reg.resolve_card(card, origin)
    else:
        resolved, origin = reg.card_or_file(card)
    layout = reg.checkpoint_layouts()[resolved.architecture.checkpoint_layout]
    if engine == "llama.cpp":  # before any weight is fetched: the card, the GGUF type and the environment
        from modeldeck.registry.engines import llamacpp

        if device is not None and str(device) != "cpu":
            raise ModeldeckError(f"{spell('device', str(device))}: the llama.cpp engine runs on the cpu here")
        llamacpp.check_card(resolved, llamacpp.outtype_for(_dtype_name(dtype), quantize, resolved))
        llamacpp.find_python()
    if engine == "vllm":  # before any weight is fetched: the card, the split and the environment
        from modeldeck.registry.engines.vllm import check_card, find_python

        device = str(device) if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
        check_card(resolved, tensor_parallel_size or 1, "cuda" if device.startswith("cuda") else "cpu")
        find_python()
    from modeldeck.registry.weights import resolve_weights

    if verify:
        require_pins(resolved, revision)  # before any download: a card without pins cannot be verified
    directory = resolve_weights(resolved, weights=weights, revision=revision, allow_pickle=allow_pickle)
    if verify:
        require_verified(resolved, directory, revision)
    if engine == "llama.cpp":
        from modeldeck.runtime.llamacpp import load_llamacpp

        tokenizer = load_tokenizer(resolved, directory)
        require_card_match(tokenizer, directory, origin)
        return load_llamacpp(  # type: ignore[return-value]
            resolved, directory, tokenizer, dtype=_dtype_name(dtype), quantize=quantize
        )
    if engine == "vllm":
        from modeldeck.runtime.vllm import load_vllm

        tokenizer = load_tokenizer(resolved, directory)
        require_card_match(tokenizer, directory, origin)
        names = [resolved.id, *resolved.aliases]
        return load_vllm(  # type: ignore[return-value]
            resolved, directory, tokenizer, device=str(device), dtype=_dtype_name(dtype),
            tensor_parallel_size=tensor_parallel_size, allow_pickle=allow_pickle, served_names=names,
            vllm_args=vllm_args,
        )  # fmt: skip
    where = _choose_device(device)
    if cuda_graphs:
        attention = "sdpa" if attention in (None, "auto") else attention  # the backends a graph can capture
        check_graphs(where, attention)
    chosen = _requested_dtype(dtype, quantize)
    if chosen is not None or where.type == "cpu":  # fail before reading weights (on a CPU the dtype never matters)
        choose_backend(attention, where, chosen or torch.float32)
    if chosen is not None:
        check_quantize(quantize, where, chosen)
    tokenizer = load_tokenizer(resolved, directory)
    require_card_match(tokenizer, directory, origin)  # before any weight is read
    decoder = load_decoder(resolved, layout, directory, chosen, where, allow_pickle, quantize)
    if quantize is not None and dtype is None:
        decoder.precision = describe_quantized(quantize, where)
    return Model(resolved, decoder, tokenizer, attention, quantize, cuda_graphs)
