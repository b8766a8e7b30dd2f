"""TextStream with real tokenizers: the streamed text is the full decode of the same ids, and streaming costs work
linear in the number of tokens (decode work and stop-string scanning counted, nothing timed)."""

from __future__ import annotations

import random

import pytest

tokenizers = pytest.importorskip("tokenizers")

from modeldeck import registry  # noqa: E402
from modeldeck.runtime import text as text_module  # noqa: E402
from modeldeck.runtime.text import TextStream  # noqa: E402
from modeldeck.runtime.tokenizer import TextTokenizer, load_tokenizer  # noqa: E402

from .conftest import CARDS, REFERENCE, expected_text  # noqa: E402

CORPUS = (
    "Hello there! Once upon a time, in 1987, café owners said: «naïve» — ok?\n\n"
    "  Two  spaces,\ttabs\tand\r\nCRLF. 日本語のテキスト, 한국어, Ελληνικά, русский; emoji 🙂🎉👩‍💻 and ẞ ﬁ a\u0301 "
    "<|endoftext|> <s> </s> <unk> ▁ 0x41 <0x41> 3.14159 -2e10 {'json': [1, 2]} </code>"
)
MULTI_BYTE = ["é", "ß", "€", "日", "한", "🙂", "🎉", "\U0010ffff", "a\u0301", "👩\u200d💻"]

# name -> (card whose tokenizer section is used, folder of tokenizer.json or tokenizer.model). A tokenizer.json loads
# with any card (decoding reads none of it); the SentencePiece model is converted with Aira's special tokens.
TOKENIZERS = {
    "tiny-neox": ("tiny-neox", CARDS / "tiny-neox"),
    "gpt2": ("tiny-neox", REFERENCE / "tokenizers" / "gpt2"),
    "gpt-neox": ("tiny-neox", REFERENCE / "tokenizers" / "gpt-neox"),
    "falcon": ("tiny-neox", REFERENCE / "tokenizers" / "falcon"),
    "llama-spm": ("aira-2-1b1", REFERENCE / "tokenizers" / "llama-spm"),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request) -> TextTokenizer:
    card_id, folder = TOKENIZERS[request.param]
    if not folder.is_dir():
        pytest.skip(f"the {request.param} tokenizer is not at {folder} (../shared/reference beside the clone)")
    if (folder / "tokenizer.model").exists():
        pytest.importorskip("sentencepiece")
    return load_tokenizer(registry.get(card_id), folder)


def byte_tokens(backend) -> dict[int, int]:
    """Byte b -> the id of the token that is that single byte: SentencePiece's byte-fallback pieces (<0xAB>), else
    GPT-2's byte-level alphabet (printable bytes as themselves, the rest shifted past 255). Some byte-level
    vocabularies lack bytes that UTF-8 never uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    alphabet = {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}
    ids = {b: backend.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    if None in ids.values():
        ids = {b: backend.token_to_id(alphabet[b]) for b in range(256)}
    found = {b: i for b, i in ids.items() if i is not None}
    assert all(b in found for b in "".join(MULTI_BYTE).encode()), "no token for some byte of MULTI_BYTE"
    return found


def adversarial_ids(tokenizer: TextTokenizer, rng: random.Random) -> list[int]:
    """Ids a model may generate: any id, multi-byte characters spelt byte by byte (some cut short), stray bytes
    that are never valid UTF-8, special tokens (skipped in decoding), and runs of ids from real text."""
    backend = tokenizer.backend
    bytes_ = byte_tokens(backend)
    specials = sorted(backend.get_added_tokens_decoder())
    corpus = tokenizer.encode_text(CORPUS)
    ids: list[int] = []
    for _ in range(rng.randrange(1, 24)):
        kind = rng.random()
        if kind < 0.2:
            ids.append(rng.randrange(backend.get_vocab_size()))
        elif kind < 0.45:
            data = rng.choice(MULTI_BYTE).encode()
            ids += [bytes_[b] for b in data[: rng.randrange(1, len(data) + 1) if rng.random() < 0.3 else None]]
        elif kind < 0.55:
            ids.append(rng.choice([i for b, i in bytes_.items() if b >= 128]))
        elif kind < 0.65:
            ids.append(rng.choice(specials))
        else:
            start = rng.randrange(len(corpus))
            ids += corpus[start : start + rng.randrange(1, 8)]
    return ids


def stream_all(tokenizer: TextTokenizer, ids: list[int], stops: tuple[str, ...], strip: str, final: str) -> TextStream:
    """Push every id, checking after each that what was shown is never taken back; then the end."""
    stream = TextStream(tokenizer, stops, strip)  # type: ignore[arg-type]
    shown = ""
    for token in ids:
        shown += stream.push(token)
        assert final.startswith(shown), (shown, final)
    shown += stream.finish()
    assert shown == stream.text == final
    return stream


def test_streamed_text_is_the_full_decode_of_random_and_adversarial_ids(tokenizer):
    rng = random.Random(10)
    for _ in range(150):
        ids = adversarial_ids(tokenizer, rng)
        full = tokenizer.decode(ids)
        stream = TextStream(tokenizer, ())
        shown = ""
        for i, token in enumerate(ids):
            shown += stream.push(token)
            # what is shown so far is the decode so far, less an unfinished character at its end
            assert tokenizer.decode(ids[: i + 1]).startswith(shown), ids[: i + 1]
        shown += stream.finish()
        assert shown == stream.text == full, ids
        assert stream.ids == ids and not stream.stopped


@pytest.mark.parametrize("strip", ["none", "leading_space", "whitespace"])
def test_stop_strings_and_strip_modes_on_real_decoded_text(tokenizer, strip):
    rng = random.Random(strip)
    for _ in range(60):
        ids = adversarial_ids(tokenizer, rng)
        full = tokenizer.decode(ids)
        at = rng.randrange(len(full) + 1)
        stops = (full[at : at + rng.randrange(1, 5)] or "never", "<|prompt|>")
        stream = stream_all(tokenizer, ids, stops, strip, expected_text(full, stops, strip))
        assert stream.stopped == any(s in full for s in stops)


class CountingTokenizer(TextTokenizer):
    """The runtime tokenizer, counting the ids it decodes (incrementally or in full)."""

    decoded = 0

    def decode(self, ids: list[int]) -> str:
        self.decoded += len(ids)
        return super().decode(ids)


def long_ids(tokenizer: TextTokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode_text(CORPUS)
    return ids[:n]


@pytest.mark.parametrize("strip", ["none", "whitespace"])
def test_streaming_work_is_linear_in_the_number_of_tokens(monkeypatch, strip):
    """2,000 tokens: the ids decoded and the characters scanned for stop strings grow with n, not n²."""
    card = registry.get("tiny-neox")
    tokenizer = CountingTokenizer(load_tokenizer(card, CARDS / "tiny-neox").backend, card)
    scanned, first_stop = 0, text_module.first_stop

    def counting_first_stop(text: str, stops: tuple[str, ...]) -> int:
        nonlocal scanned
        scanned += len(text) * len(stops)  # str.find looks at each character once per stop string
        return first_stop(text, stops)

    monkeypatch.setattr(text_module, "first_stop", counting_first_stop)
    n = 2000
    ids = long_ids(tokenizer, n)
    stops = ("<|prompt|>", "\n\nUser:", "</code>x")  # their beginnings ("<|", "\n\n", "</code>") occur: held back
    full = tokenizer.decode(ids)
    tokenizer.decoded = 0
    stream_all(tokenizer, ids, stops, strip, expected_text(full, stops, strip))
    # the old stream decoded all ids after every token: n(n+1)/2 = 2,001,000 ids. Now a token decodes its window
    # (the last piece's ids and its own) and then the next window's context: about 3 ids, more while the bytes of a
    # character arrive one token at a time, as most non-ASCII characters do with this 2,048-token vocabulary.
    assert tokenizer.decoded < 5 * n, tokenizer.decoded
    # a stop string is looked for in the new text and the characters before it that could begin one
    reach = max(map(len, stops)) - 1
    assert scanned <= len(stops) * (len(full) + reach * n), scanned  # the old stream scanned ~ n * len(full) / 2
    assert len(full) > n  # a real text: the bounds are not met by a few characters


def test_finish_decodes_in_full_only_when_the_text_ends_in_an_unfinished_character():
    card = registry.get("tiny-neox")
    tokenizer = CountingTokenizer(load_tokenizer(card, CARDS / "tiny-neox").backend, card)
    emoji = [byte_tokens(tokenizer.backend)[b] for b in "🙂".encode()]
    ids = tokenizer.encode_text("Hello there")
    for tail, final in [([], "Hello there"), (emoji[:2], "Hello there\ufffd"), (emoji, "Hello there🙂")]:
        stream = TextStream(tokenizer, ())
        deltas = [stream.push(token) for token in ids + tail]
        tokenizer.decoded = 0
        assert "".join(deltas) + stream.finish() == final == stream.text
        assert tokenizer.decoded == (len(ids) + 2 if tail == emoji[:2] else 0)


def test_push_after_finish_is_an_error_and_after_a_stop_is_ignored():
    card = registry.get("tiny-neox")
    tokenizer = load_tokenizer(card, CARDS / "tiny-neox")
    ids = tokenizer.encode_text("Hello there")
    stream = TextStream(tokenizer, ())
    for token in ids:
        stream.push(token)
    stream.finish()
    assert stream.finish() == ""
    with pytest.raises(RuntimeError, match=r"push\(\) after finish\(\)"):
        stream.push(ids[0])
    stopped = TextStream(tokenizer, ("there",))
    assert "".join(stopped.push(token) for token in ids) == "Hello " and stopped.stopped
    assert stopped.push(ids[0]) == "" and stopped.finish() == "" and stopped.text == "Hello "
