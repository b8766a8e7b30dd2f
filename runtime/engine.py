"""`load` and `Model`: the public surface of the built-in engine (card in, text out)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modeldeck import registry
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.prompting import render_segments
from modeldeck.registry.schema import Card
from modeldeck.registry.weights import require_pins, require_verified
from modeldeck.runtime.attention import choose_backend, get_backend
from modeldeck.runtime.generate import Completion, GenerationError, Options, generate_tokens, resolve_options
from modeldeck.runtime.loading import load_decoder
from modeldeck.runtime.model import Decoder
from modeldeck.runtime.text import TextStream
from modeldeck.runtime.tokenizer import TextTokenizer, load_tokenizer

__all__ = ["Generation", "Model", "load"]

Conversation = str | Sequence[Mapping[str, object]]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


class Model:
    def __init__(self, card: Card, decoder: Decoder, tokenizer: TextTokenizer, attention: str | None = None):
        self.card, self.decoder, self.tokenizer = card, decoder, tokenizer
        self.backend = get_backend(choose_backend(attention, self.device, self.dtype))

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.weight.dtype

    def __repr__(self) -> str:
        return f"Model({self.card.id!r}, device={self.device}, dtype={self.dtype}, attention={self.backend.name!r})"

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

    def generate(
        self, prompt: Conversation | list[str], *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Generation | list[Generation]:
        """Generate for one prompt (-> Generation) or a list of prompts decoded together (-> list[Generation])."""
        many = isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
        prompts: list[Conversation] = list(prompt) if many else [prompt]  # type: ignore[arg-type]
        results = self._run(prompts, system, raw, options)
        return results if many else results[0]

    def chat(
        self, messages: Sequence[Mapping[str, object]], *, system: str | None = None, **options: Any
    ) -> Generation:
        """Answer the last user message of a conversation, rendered with the card's prompt format."""
        return self._run([messages], system, False, options)[0]

    def stream(
        self, prompt: Conversation, *, system: str | None = None, raw: bool = False, **options: Any
    ) -> Iterator[str]:
        """Text deltas as they become safe to show (see runtime/text.py)."""
        opts = self._options(options)
        if opts.num_return_sequences != 1:
            raise GenerationError("stream() returns one sequence: set num_return_sequences=1")
        ids = self.encode(prompt, system, raw)
        text = self._text_stream(opts)
        stopped: set[int] = set()
        for events in self._tokens([ids], opts, stopped):
            for _, token in events:
                delta = text.push(token)
                if text.stopped:
                    stopped.add(0)
                if delta:
                    yield delta
        rest = text.finish()
        if rest:
            yield rest

    def _options(self, overrides: dict[str, Any]) -> Options:
        return resolve_options(self.card.generation, self.card.format.stop, overrides)

    def _text_stream(self, opts: Options) -> TextStream:
        return TextStream(self.tokenizer, opts.stop, self.card.format.strip_response)

    def _tokens(self, prompts: list[list[int]], opts: Options, stopped: set[int]) -> Iterator[list[tuple[int, int]]]:
        if not prompts:
            raise GenerationError("no prompts given")
        if any(not p for p in prompts):
            raise GenerationError("a prompt encodes to no tokens; give some text")
        eos = sorted(self.tokenizer.eos_ids)
        return generate_tokens(self.decoder, prompts, opts, self.backend, eos, self.tokenizer.pad_id, stopped)

    def _run(
        self, prompts: list[Conversation], system: str | None, raw: bool, options: dict[str, Any]
    ) -> list[Generation]:
        opts = self._options(options)
        n = opts.num_return_sequences
        encoded = [self.encode(p, system, raw) for p in prompts]
        rows = [ids for ids in encoded for _ in range(n)]
        texts = [self._text_stream(opts) for _ in rows]
        finish: dict[int, str] = {}
        stopped: set[int] = set()
        for events in self._tokens(rows, opts, stopped):
            for index, token in events:
                texts[index].push(token)
                if texts[index].stopped:
                    stopped.add(index)
                    finish[index] = "stop"
                elif token in self.tokenizer.eos_ids:
                    finish[index] = "eos"
        results = []
        for p, prompt in enumerate(prompts):
            completions = [
                Completion(
                    texts[i].text,
                    texts[i].ids,
                    finish.get(i, "length"),  # type: ignore[arg-type]
                    len(encoded[p]),
                )
                for i in range(p * n, (p + 1) * n)
            ]
            shown = prompt if isinstance(prompt, str) and raw else self.render(prompt, system)
            results.append(Generation(shown, completions))
        return results


def _choose_dtype(card: Card, requested: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The weight dtype; None means the checkpoint's own (the card's `auto`, on a GPU)."""
    if isinstance(requested, torch.dtype):
        return requested
    if requested is not None:
        if requested not in _DTYPES:
            raise ModeldeckError(f"dtype={requested!r} is not supported; choose one of {', '.join(_DTYPES)}")
        return _DTYPES[requested]
    if device.type == "cpu":
        return torch.float32  # half-precision matmuls on CPUs are slow or missing; ask explicitly for them
    return None if card.dtype == "auto" else _DTYPES[card.dtype]


def load(
    card: str | Card,
    *,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attention: str | None = None,
    allow_pickle: bool = False,
    verify: bool = False,
) -> Model:
    """A card (id, alias, hub repo, or Card) -> a Model with weights from `weights=DIR`, the package, or the hub.

    `verify=True` checks every file the card pins (source.files: sha256 and size) before any weight is read, and
    raises VerificationError naming each missing, wrong-size, wrong-hash or unpinned weight file (NoPinsError when
    the card pins nothing for this revision)."""
    reg = registry.default()
    resolved = reg.get(card) if isinstance(card, str) else reg.resolve_card(card, f"card {card.id!r}")
    layout = reg.checkpoint_layouts()[resolved.architecture.checkpoint_layout]
    from modeldeck.runtime.hub import resolve_weights

    if verify:
        require_pins(resolved, revision)  # before any download: a card without pins cannot be verified
    directory = resolve_weights(resolved, weights=weights, revision=revision, allow_pickle=allow_pickle)
    if verify:
        require_verified(resolved, directory, revision)
    where = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = _choose_dtype(resolved, dtype, where)
    if chosen is not None:
        choose_backend(attention, where, chosen)  # fail before reading weights
    tokenizer = load_tokenizer(resolved, directory)
    decoder = load_decoder(resolved, layout, directory, chosen, where, allow_pickle)
    return Model(resolved, decoder, tokenizer, attention)
