"""The SentencePiece conversion (runtime/tokenizer.py, tokenizers and sentencepiece alone) against SentencePiece
itself and against transformers' own conversion, on the Llama-2 tokenizer.model that Aira ships (in
../shared/reference; skipped without it)."""

from __future__ import annotations

import inspect
import random

import pytest

sentencepiece = pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")

from modeldeck import registry  # noqa: E402
from modeldeck.runtime.tokenizer import load_tokenizer, sentencepiece_merges  # noqa: E402

from .conftest import REFERENCE  # noqa: E402

TEXTS = [
    "Hello world",
    "What is a language model?",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "double  space and   triple",
    " ",
    "  ",
    "\n",
    "tab\tnew\nline\r\nCRLF",
    "digits 1234567890 and 3.14159, -2e10, 1,000,000",
    "café naïve façade Ærøskøbing ß ẞ",
    "日本語のテキストと한국어 and русский текст, Ελληνικά",
    "emoji 🙂🎉 and a family 👩\u200d👩\u200d👧 and a flag 🇧🇷",
    "combining a\u0301 e\u0308 and precomposed á ë",
    "byte fallback: \U0010ffff \U0001d518\U0001d52b\U0001d526 \x00 \x7f ﬁ ǅ \u200b",
    "<s> </s> <unk> written as text",
    "▁ the metaspace character itself ▁▁",
    "{'json': [1, 2, {\"k\": null}]} <code>x = y + 1</code>",
]


def varied_texts(count: int) -> list[str]:
    """The fixed texts plus random mixes of their characters (spaces, digits, scripts, bytes, markers)."""
    rng = random.Random(6)
    alphabet = [*sorted(set("".join(TEXTS))), "  ", "\r\n", "<s>", "</s>", "🙂", "日本", "\U0010ffff"]
    return TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def model_file():
    path = REFERENCE / "tokenizers" / "llama-spm" / "tokenizer.model"
    if not path.exists():
        pytest.skip(f"{path} not found (../shared/reference beside the clone)")
    return path


@pytest.fixture(scope="module")
def converted(model_file):
    return load_tokenizer(registry.get("aira-2-1b1"), model_file.parent)


def test_the_merges_are_those_transformers_generates(model_file):
    try:
        from transformers.tokenization_utils_base import generate_merges  # what the runtime used before
    except ImportError:
        pytest.skip("this transformers has no generate_merges")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    assert sentencepiece_merges(pieces) == generate_merges(vocab, dict(pieces))


def test_the_conversion_encodes_and_decodes_as_sentencepiece(model_file, converted):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    for text in varied_texts(1000):
        ids = converted.encode_text(text)
        assert ids == sp.encode(text), text
        assert converted.decode(ids) == sp.decode(ids) == text.replace("▁", " "), text  # "▁" is the space piece


def transformers_conversion(model_file):
    """transformers' own conversion of the SentencePiece model, in legacy mode (Llama's). Not LlamaTokenizerFast:
    transformers 5 builds it with merges by piece rank, not score, so it differs from SentencePiece on runs of spaces
    (" " is [29871] there; SentencePiece, transformers 4's LlamaConverter and this runtime say [259])."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    build = getattr(convert.SpmConverter, "build_tokenizer_from_spm_proto", None)
    if build is None or "legacy" not in inspect.signature(build).parameters:
        pytest.skip("this transformers has no legacy-mode converter from a SentencePiece model (5.24 has)")
    proto = convert.import_protobuf().ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    return build(proto, vocab, legacy=True)


def test_the_conversion_encodes_and_decodes_as_transformers_does(model_file, converted):
    theirs = transformers_conversion(model_file)
    theirs.encode_special_tokens = True  # plain text, as TextTokenizer.encode_text encodes it
    for text in varied_texts(1000):
        ids = converted.encode_text(text)
        assert ids == theirs.encode(text, add_special_tokens=False).ids, text
        assert converted.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    rng = random.Random(7)  # any ids of the SentencePiece vocabulary: byte pieces, control tokens, pieces
    for _ in range(300):
        ids = [rng.randrange(32000) for _ in range(rng.randrange(1, 30))]
        assert converted.decode(ids) == theirs.decode(ids, skip_special_tokens=True), ids
