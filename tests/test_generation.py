"""Generation from the outside: safe text streaming, option validation, and Model.generate/stream/chat end to end."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("torch")

from modeldeck import registry, runtime
from modeldeck.registry.prompting import PromptError
from modeldeck.runtime.generate import GenerationError, resolve_options
from modeldeck.runtime.text import TextStream
from modeldeck.runtime.tokenizer import IncrementalDecode, TextTokenizer

from .conftest import expected_text

# --- TextStream with a fake tokenizer: token i is PIECES[i] (bytes) ---------------------------------

PIECES = [b"Hello", b" wor", b"ld<", b"|st", b"op|>", b" more", b"caf\xc3", b"\xa9 ", b"\xf0\x9f", b"\x99", b"\x82!"]


class PieceTokenizer(TextTokenizer):
    """Token i decodes to pieces[i] (bytes); invalid or unfinished UTF-8 becomes U+FFFD, as real decoders do."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def decode_stream(self) -> IncrementalDecode:  # no byte-fallback pieces, no special tokens
        return IncrementalDecode(self.decode)


def run(ids: list[int], stops: tuple[str, ...] = (), strip: str = "none") -> tuple[TextStream, list[str]]:
    stream = TextStream(PieceTokenizer(PIECES), stops, strip)  # type: ignore[arg-type]
    deltas = [stream.push(i) for i in ids]
    deltas.append(stream.finish())
    return stream, deltas


def test_a_stop_string_over_three_tokens_is_never_shown():
    stream, deltas = run([0, 1, 2, 3, 4, 5], stops=("<|stop|>",))
    # "<" is held back once it may start the stop, "|st" too; the stop itself and what follows never appear
    assert deltas == ["Hello", " wor", "ld", "", "", "", ""]
    assert stream.text == "Hello world" == "".join(deltas)
    assert stream.stopped and stream.ids == [0, 1, 2, 3, 4]
    assert stream.push(0) == "" and stream.push(5) == "" and stream.text == "Hello world"


def test_a_held_back_stop_prefix_is_released_when_the_stop_does_not_follow():
    stream, deltas = run([0, 1, 2, 5], stops=("<|stop|>",))
    assert deltas == ["Hello", " wor", "ld", "< more", ""]
    assert not stream.stopped and stream.text == "Hello world< more"


def test_multi_byte_characters_split_over_tokens_are_shown_whole():
    stream, deltas = run([6, 7, 8, 9, 10])  # "café " then the 4 bytes of 🙂 over three tokens, then "!"
    assert deltas == ["caf", "é ", "", "", "🙂!", ""]
    assert stream.text == "café 🙂!"


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(data[at : at + size])
        at += size
    return pieces


CASES = [
    ("  Sí, café 🙂 ok<|prompt|> next", ("<|prompt|>", "<|answer|>")),  # whitespace-free before the stop
    (" Réponse: 🙂🙂<|answer|><|prompt|>", ("<|prompt|>", "<|answer|>")),
    (" A 🙂 answer \n <|prompt|>more", ("<|prompt|>",)),  # whitespace right before the stop (h2oGPT / Astrid)
    ("\n<bot>: done  ", ("<human>:",)),  # no stop: trailing whitespace waits for the end
]


@pytest.mark.parametrize("strip", ["none", "leading_space", "whitespace"])
@pytest.mark.parametrize("sizes", [[1], [2], [3, 1], [5, 2, 7]])
@pytest.mark.parametrize(("full", "stops"), CASES)
def test_streamed_text_is_always_a_prefix_of_the_final_text(full, stops, sizes, strip):
    pieces = split(full.encode(), sizes)
    stream = TextStream(PieceTokenizer(pieces), stops, strip)
    shown = ""
    for i in range(len(pieces)):
        delta = stream.push(i)
        assert "\ufffd" not in delta
        shown += delta
        # nothing shown is ever taken back: not a stop's first characters, not whitespace that is stripped later
        assert expected_text(full, stops, strip).startswith(shown), (shown, pieces[: i + 1])
    shown += stream.finish()
    assert shown == stream.text == expected_text(full, stops, strip)
    assert stream.stopped == any(s in full for s in stops)


@pytest.mark.parametrize(
    ("strip", "deltas", "text"),
    [
        ("none", [" ", " Hi", " ", "", " there ", ""], "  Hi  there "),
        ("leading_space", ["", " Hi", " ", "", " there ", ""], " Hi  there "),
        ("whitespace", ["", "Hi", "", "", "  there", ""], "Hi  there"),
    ],
)
def test_strip_modes_in_streamed_and_final_text(strip, deltas, text):
    pieces = [b" ", b" Hi", b" ", b"", b" there ", b""]
    stream = TextStream(PieceTokenizer(pieces), (), strip)
    got = [stream.push(i) for i in range(len(pieces) - 1)] + [stream.finish()]
    assert got == deltas
    assert stream.text == text == "".join(got)


def test_whitespace_before_a_stop_is_not_streamed_when_the_final_text_strips_it():
    pieces = [b" Hello", b" <|", b"prompt|>"]  # Astrid answers "Hello <|prompt|>": the final text is "Hello"
    stream = TextStream(PieceTokenizer(pieces), ("<|prompt|>",), "whitespace")
    deltas = [stream.push(0), stream.push(1), stream.push(2), stream.finish()]
    assert (deltas, stream.text) == (["Hello", "", "", ""], "Hello")


# --- resolve_options against a real card ---------------------------------------------------------


@pytest.fixture(scope="module")
def astrid():
    card = registry.get("astrid-1b")
    return lambda **overrides: resolve_options(card.generation, card.format.stop, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"temprature": 0.5},
            "unknown generation option(s) temprature; known options: do_sample, early_stopping, length_penalty, "
            "max_new_tokens, min_new_tokens, num_beams, num_return_sequences, renormalize_logits, repetition_penalty, "
            "seed, stop, temperature, top_k, top_p",
        ),
        ({"temperature": -1}, "invalid generation option temperature=-1: Input should be greater than 0"),
        ({"top_p": 0}, "invalid generation option top_p=0: Input should be greater than 0"),
        ({"top_p": 1.5}, "invalid generation option top_p=1.5: Input should be less than or equal to 1"),
        ({"max_new_tokens": 0}, "invalid generation option max_new_tokens=0: Input should be greater than 0"),
        (
            {"num_beams": 2},
            "num_beams=2: beam search is not supported by modeldeck's runtime yet; use num_beams=1 (greedy or sampling)",
        ),
        ({"stop": [""]}, "stop must be a non-empty string or a list of non-empty strings"),
        ({"stop": ["ok", 3]}, "stop must be a non-empty string or a list of non-empty strings"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
    ],
)
def test_invalid_options_are_named_exactly(astrid, overrides, message):
    with pytest.raises(GenerationError) as exc:
        astrid(**overrides)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"min_new_tokens": 300}, "min_new_tokens 300 exceeds max_new_tokens 256"),
        (
            {"num_return_sequences": 2},
            "num_return_sequences 2 with greedy decoding (do_sample false, num_beams 1) would return identical "
            "sequences; enable do_sample or raise num_beams",
        ),
    ],
)
def test_options_that_conflict_say_why_without_dumping_every_option(astrid, overrides, reason):
    with pytest.raises(GenerationError) as exc:
        astrid(**overrides)
    message = str(exc.value)
    assert message.startswith("invalid generation option") and message.endswith(": " + reason)
    assert "{" not in message and "renormalize_logits" not in message, message


def test_card_defaults_apply_and_every_keyword_overrides(astrid):
    opts = astrid()
    assert (opts.max_new_tokens, opts.min_new_tokens, opts.temperature, opts.repetition_penalty) == (256, 2, 0.3, 1.2)
    assert opts.do_sample is False and opts.renormalize_logits is True and opts.seed is None
    assert opts.stop == ("<|prompt|>", "<|answer|>")
    opts = astrid(max_new_tokens=7, min_new_tokens=0, do_sample=True, temperature=0.9, top_k=5, top_p=0.5)
    assert (opts.max_new_tokens, opts.min_new_tokens, opts.do_sample, opts.temperature) == (7, 0, True, 0.9)
    assert (opts.top_k, opts.top_p, opts.repetition_penalty) == (5, 0.5, 1.2)
    opts = astrid(repetition_penalty=1.0, renormalize_logits=False, num_return_sequences=3, do_sample=True, seed=4)
    assert (opts.repetition_penalty, opts.renormalize_logits, opts.num_return_sequences, opts.seed) == (
        1.0,
        False,
        3,
        4,
    )
    assert astrid(stop="\n\n").stop == ("<|prompt|>", "<|answer|>", "\n\n")
    assert astrid(stop=["A", "B"]).stop == ("<|prompt|>", "<|answer|>", "A", "B")


# --- end to end on the tiny GPT-NeoX checkpoint with its real tokenizer --------------------------------

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = tiny_checkpoint("gpt-neox")
    return runtime.load(ckpt.card, weights=ckpt.directory, device="cpu")


@pytest.fixture(scope="module")
def greedy(model):
    return model.generate(PROMPT, max_new_tokens=24)


def test_greedy_generation_runs_to_length(model, greedy):
    (completion,) = greedy.completions
    assert greedy.prompt == PROMPT and greedy.finish_reason == "length"
    assert completion.completion_tokens == 24 and completion.prompt_tokens == len(model.encode(PROMPT))
    assert completion.text == model.tokenizer.decode(completion.token_ids) == greedy.text
    short = model.generate(PROMPT, max_new_tokens=5).completions[0]
    assert (short.finish_reason, short.completion_tokens, short.token_ids) == ("length", 5, completion.token_ids[:5])


def test_a_stop_string_across_tokens_cuts_generate_and_stream_alike(model, greedy):
    ids, text = greedy.completions[0].token_ids, greedy.text
    prefixes = [model.tokenizer.decode(ids[:k]) for k in range(1, len(ids))]
    bounds = [len(p) if text.startswith(p) else -1 for p in prefixes]  # where a token ends in the text
    # a stop from the last character of one token, over a whole token, to the first character of the next
    stop = next(
        text[a - 1 : b + 1]
        for a, b in itertools.pairwise(bounds[3:])
        if 0 < a < b < len(text) - 1 and "\ufffd" not in text[a - 1 : b + 1]
    )
    expected = text[: text.index(stop)]
    stopped = model.generate(PROMPT, max_new_tokens=24, stop=[stop])
    assert (stopped.text, stopped.finish_reason) == (expected, "stop")
    assert stopped.completions[0].completion_tokens < 24
    assert "".join(model.stream(PROMPT, max_new_tokens=24, stop=[stop])) == expected


def test_streaming_without_stop_equals_generate(model, greedy):
    assert "".join(model.stream(PROMPT, max_new_tokens=24)) == greedy.text


def test_sampling_is_reproducible_with_a_seed_and_top_k_1_is_greedy(model, greedy):
    options = {"do_sample": True, "temperature": 0.9, "max_new_tokens": 12, "num_return_sequences": 3}
    first = model.generate(PROMPT, seed=123, **options)
    assert len(first.completions) == 3
    assert [c.token_ids for c in model.generate(PROMPT, seed=123, **options).completions] == [
        c.token_ids for c in first.completions
    ]
    assert len({tuple(c.token_ids) for c in first.completions}) > 1  # three draws, not one copied
    top1 = model.generate(PROMPT, do_sample=True, top_k=1, seed=7, max_new_tokens=24)
    assert top1.completions[0].token_ids == greedy.completions[0].token_ids


def test_a_batch_of_prompts_equals_each_prompt_alone(model):
    prompts = ["Hello there", "The capital of France is a city that", "1 2 3"]
    batch = model.generate(prompts, max_new_tokens=10)
    assert [g.prompt for g in batch] == prompts
    for prompt, generation in zip(prompts, batch, strict=True):
        alone = model.generate(prompt, max_new_tokens=10)
        assert (generation.text, generation.completions[0].token_ids) == (alone.text, alone.completions[0].token_ids)


def test_prompts_that_do_not_fit_the_context_are_refused(model):
    n = len(model.encode(PROMPT))
    with pytest.raises(GenerationError) as exc:
        model.generate(PROMPT, max_new_tokens=2047)
    assert str(exc.value) == (
        f"a prompt of {n} tokens plus max_new_tokens=2047 exceeds the context length 2048; "
        f"lower max_new_tokens to at most {2048 - n} or shorten the prompt"
    )
    assert (exc.value.option, exc.value.code) == ("max_new_tokens", "context_length_exceeded")
    # A prompt that fills the context by itself: only shortening it helps (not "lower max_new_tokens to at most 0")
    for length in (2048, 2100):
        long = " hello" * length
        assert len(model.encode(long)) == length
        with pytest.raises(GenerationError) as exc:
            model.generate(long, max_new_tokens=1)
        assert str(exc.value) == (
            f"a prompt of {length} tokens fills the context length 2048 and leaves no room for a new token; "
            "shorten the prompt to at most 2047 tokens"
        )
        assert (exc.value.option, exc.value.code) == ("prompt", "context_length_exceeded")
    with pytest.raises(GenerationError, match=r"^a prompt encodes to no tokens; give some text$"):
        model.generate("", max_new_tokens=1)


def test_the_plain_format_takes_one_user_message_and_no_system_prompt(model, greedy):
    chat = model.chat([{"role": "user", "content": PROMPT}], max_new_tokens=24)
    assert (chat.prompt, chat.text) == (PROMPT, greedy.text)
    refusal = "prompt format 'plain' has no system prompt; put the instructions in the user message instead"
    with pytest.raises(PromptError) as exc:
        model.generate(PROMPT, system="Be brief.", max_new_tokens=2)
    assert str(exc.value) == refusal
    with pytest.raises(PromptError) as exc:
        model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}])
    assert str(exc.value) == refusal
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "?"},
    ]
    with pytest.raises(PromptError) as exc:
        model.chat(turns, max_new_tokens=2)
    assert str(exc.value) == "prompt format 'plain' takes a single user message, not a multi-turn conversation"


def test_a_system_prompt_is_prepended_where_the_format_has_none(tiny_checkpoint):
    ckpt = tiny_checkpoint("astrid")
    astrid = runtime.load(ckpt.card, weights=ckpt.directory, device="cpu")
    answer = astrid.generate("Hi", system="Be brief.", max_new_tokens=8)
    assert answer.prompt == "<|prompt|>Be brief.\n\nHi<|endoftext|><|answer|>"
    assert answer.completions[0].prompt_tokens == len(astrid.encode("Hi", system="Be brief."))
    assert answer.text == answer.text.strip()  # Astrid strips whitespace
    assert "".join(astrid.stream("Hi", system="Be brief.", max_new_tokens=8)) == answer.text
    assert astrid.chat([{"role": "user", "content": "Hi"}], system="Be brief.", max_new_tokens=8).text == answer.text


def test_stream_refuses_several_sequences(model):
    with pytest.raises(GenerationError, match=r"^stream\(\) returns one sequence: set num_return_sequences=1$"):
        next(model.stream(PROMPT, do_sample=True, num_return_sequences=2))
