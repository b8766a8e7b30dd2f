"""Tokenization that keeps user text away from special tokens.

A rendered prompt is a list of segments: the format's own text, and message content. Only the
markers the card declares special, found in the format's own text, become special token ids.
Everything else (including a user typing `<|endofinstruction|>`) is encoded as plain text, with the
tokenizer told not to recognise special tokens in it. Plain text between two special markers is
encoded as one piece, exactly as Hugging Face tokenizers split around added tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from modeldeck.registry.checks import check_loaded_tokenizer
from modeldeck.registry.diagnostics import CardError, ModeldeckError
from modeldeck.registry.prompting import Segment
from modeldeck.registry.schema import Card

__all__ = ["IncrementalDecode", "TextTokenizer", "load_tokenizer", "require_card_match"]


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, card: Card):
        self.backend = tokenizer
        self.card = card
        declared = card.tokenizer.declared_special()
        special_markers = sorted((m.text for m in card.tokenizer.markers if m.special), key=len, reverse=True)
        self.marker_ids = {text: declared[text] for text in special_markers}
        self._marker_pattern = re.compile("|".join(map(re.escape, special_markers))) if special_markers else None
        self.eos_ids = {card.tokenizer.eos.id}
        self.pad_id = (card.tokenizer.pad or card.tokenizer.eos).id
        pieces = (tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256))
        self._byte_pieces = frozenset(i for i in pieces if i is not None)  # SentencePiece's byte fallback
        self._skipped = frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special)

    def encode_text(self, text: str) -> list[int]:
        """Plain text: special-token strings in it are ordinary characters."""
        if not text:
            return []
        self.backend.encode_special_tokens = True
        try:
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        finally:
            self.backend.encode_special_tokens = False

    def encode_segments(self, segments: list[Segment]) -> list[int]:
        ids: list[int] = []
        pending = ""  # plain text waiting for the next special marker
        for segment in segments:
            if not segment.from_format or self._marker_pattern is None:
                pending += segment.text
                continue
            last = 0
            for match in self._marker_pattern.finditer(segment.text):
                ids += [*self.encode_text(pending + segment.text[last : match.start()]), self.marker_ids[match.group()]]
                pending, last = "", match.end()
            pending += segment.text[last:]
        return ids + self.encode_text(pending)

    def decode(self, ids: list[int]) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=True))

    def decode_stream(self) -> IncrementalDecode:
        """Decodes generated ids one at a time, each at a cost independent of the text before it."""
        return IncrementalDecode(self.decode, self._byte_pieces, self._skipped)


class IncrementalDecode:
    """The text of ids given one at a time, equal in the end to `decode` of all of them (as tokenizers'
    `decoders.DecodeStream`, which this follows). Each step decodes a short window: the ids of the last piece
    of text (context for decoders that strip or join at the start of a text) and the ids since. Text that ends
    in an unfinished character (U+FFFD while its bytes are incomplete) comes out up to that character; the
    rest when its bytes are complete. A run of byte-fallback pieces (<0xAB>, skipped special tokens between
    them ignored) waits for its end: the ByteFallback decoder decodes a run as a whole, and an invalid run
    becomes one U+FFFD per byte, valid characters in it included. Whatever is held back at the very end is
    `pending`: decode all ids to see it."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        byte_pieces: frozenset[int] = frozenset(),
        skipped: frozenset[int] = frozenset(),
    ):
        self._decode, self._byte_pieces, self._skipped = decode, byte_pieces, skipped
        self._window: list[int] = []
        self._context = 0  # how many of the window's first ids are context, their text given out before
        self._given = 0  # characters of the window's text given out (the context's included)
        self._in_bytes = False  # the last id (skipped special tokens aside) is a byte-fallback piece
        self.pending = False  # text is held back: an unfinished character or a run of byte pieces

    def step(self, token: int) -> str:
        """Add an id; returns the new text (empty while it is a skipped special token or incomplete bytes)."""
        self._window.append(token)
        if token in self._byte_pieces or (self._in_bytes and token in self._skipped):
            self._in_bytes = self.pending = True
            return ""
        self._in_bytes = False
        text = self._decode(self._window)
        end = len(text.rstrip("\ufffd"))
        new = text[self._given : end]
        self.pending = end < len(text)
        if self.pending or end == self._given:  # nothing complete yet: keep the window (and its context)
            self._given = max(self._given, end)
            return new
        self._window = self._window[self._context :]
        self._context = len(self._window)
        self._given = len(self._decode(self._window))
        return new


def load_tokenizer(card: Card, directory: Path) -> TextTokenizer:
    """tokenizer.json if the checkpoint has one; else a SentencePiece tokenizer.model, converted (the card's special
    tokens checked to land on its ids). A tokenizer.json is loaded as it is, whatever the card says (decoding needs
    none of it): `require_card_match` checks the card against it, for `runtime.load`."""
    path = directory / "tokenizer.json"
    if path.exists():
        try:
            return TextTokenizer(Tokenizer.from_file(str(path)), card)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions
            raise ModeldeckError(f"cannot load the tokenizer {path}: {exc}") from None
    if (directory / "tokenizer.model").exists():
        return TextTokenizer(_from_sentencepiece(card, directory / "tokenizer.model"), card)
    raise ModeldeckError(
        f"no tokenizer in {directory}: expected tokenizer.json (or tokenizer.model); the card lists {card.tokenizer.files}"
    )


def require_card_match(tokenizer: TextTokenizer, directory: Path, where: str) -> None:
    """CardError when the card disagrees with the checkpoint's tokenizer.json, as `modeldeck validate --weights DIR`
    reports it (`registry.checks.check_tokenizer`: the bos/eos/pad/unk and other special tokens' ids, markers, stop
    strings, the vocabulary against the embedding), each error naming `where` (the card file) and both ids.

    A wrong id would make the model stop, pad or prompt on the wrong tokens without a word, so `runtime.load` calls
    this before it reads any weight. Warnings pass. A checkpoint without tokenizer.json (a SentencePiece
    tokenizer.model, converted) was checked as it was converted."""
    path = directory / "tokenizer.json"
    if not path.exists():
        return
    found = check_loaded_tokenizer(tokenizer.card, tokenizer.backend, path, where)
    errors = [d for d in found if d.severity == "error"]
    if errors:
        raise CardError(errors)


def _from_sentencepiece(card: Card, model_file: Path) -> Tokenizer:
    """A Llama SentencePiece tokenizer.model as a fast BPE tokenizer (Hugging Face's "legacy" Llama-2 setup),
    plus the card's special tokens, which must land on the ids the card declares."""
    try:
        import sentencepiece
    except ImportError as exc:
        raise ModeldeckError(f"reading {model_file} needs sentencepiece: {exc}") from None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=sentencepiece_merges(pieces),
            unk_token=sp.id_to_piece(sp.unk_id()),
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    controls = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in controls])
    for text, token_id in sorted(card.tokenizer.declared_special().items(), key=lambda item: item[1]):
        if tokenizer.token_to_id(text) is None:
            tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if tokenizer.token_to_id(text) != token_id:
            raise ModeldeckError(
                f"{model_file}: special token {text!r} gets id {tokenizer.token_to_id(text)}, the card says {token_id}; "
                "ship the checkpoint's tokenizer.json or fix the card's ids"
            )
    return tokenizer


def sentencepiece_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary (pieces with their scores, by id): every split of a piece into two
    pieces, by the merged piece's score (highest first), then the longer left part, then the piece's id. The order
    Hugging Face's converters give (`generate_merges` with scores), so the fast tokenizer encodes as SentencePiece."""
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    ranked = [
        (-score, -k, k - len(piece), i, piece[:k], piece[k:])
        for i, (piece, score) in enumerate(pieces)
        for k in range(1, len(piece))
        if piece[:k] in vocab and piece[k:] in vocab
    ]
    return [(left, right) for *_, left, right in sorted(ranked)]
