"""`modeldeck serve` speaks log-probabilities (issue 13): /v1/completions' `logprobs` and `echo` (lm-eval's
local-completions backend included), chat's `logprobs`/`top_logprobs`, streamed and not, always the raw-logit
log-probabilities that Model.logprobs reports for the same tokens."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from modeldeck import runtime  # noqa: E402
from modeldeck.runtime.batching import ContinuousBatcher  # noqa: E402

from .test_serve import PROMPT, Served, serving, sse  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def neox() -> Any:
    return runtime.load("tiny-neox", device="cpu")


@pytest.fixture(scope="module")
def served(neox: Any) -> Iterator[Served]:
    with serving(neox, max_batch=4, max_queue=16) as s:
        yield s


def generated(model: Any, prompt: str | list[dict[str, str]], **options: Any) -> list[int]:
    """The token ids Model.generate (or Model.chat, for messages) produces: the server produces the same."""
    run = model.generate if isinstance(prompt, str) else model.chat
    return list(run(prompt, **options).completions[0].token_ids)


def expected(model: Any, ids: list[int], top_k: int) -> Any:
    """Model.logprobs of a whole sequence: the reference for every log-probability the server reports."""
    return model.logprobs(ids, top_k=top_k)


def assert_top(reported: dict[str, float] | list[Any], reference: list[tuple[str, float]]) -> None:
    pairs = list(reported.items()) if isinstance(reported, dict) else [(t.token, t.logprob) for t in reported]
    assert [t for t, _ in pairs] == [t for t, _ in reference]
    assert [lp for _, lp in pairs] == pytest.approx([lp for _, lp in reference], abs=TOL)


def streamed_legacy(chunks: list[Any], index: int = 0) -> tuple[str, dict[str, list[Any]]]:
    """A streamed completion choice's text and its chunks' logprobs joined into one legacy dict."""
    text, joined = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.index != index:
                continue
            text += choice.text
            if choice.logprobs is not None:
                for key in joined:
                    joined[key] += getattr(choice.logprobs, key)
    return text, joined


# --- /v1/completions -----------------------------------------------------------------------------


def test_completion_logprobs_are_the_raw_logits_of_the_generated_tokens(served, neox):
    client = served.client()
    request = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "logprobs": 5}
    request["extra_body"] = {"repetition_penalty": 1.0}  # plain greedy: each token is the most likely one
    result = client.completions.create(**request)
    choice = result.choices[0]
    ids = neox.encode(PROMPT)
    tokens = generated(neox, PROMPT, max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
    ref = expected(neox, ids + tokens, 5)
    lp = choice.logprobs
    assert lp.tokens == ref.tokens[len(ids) :] and "".join(lp.tokens) == choice.text
    assert lp.token_logprobs == pytest.approx(ref.logprobs[len(ids) :], abs=TOL)
    for i, top in enumerate(lp.top_logprobs):
        assert len(top) == 5 and sum(map(math.exp, top.values())) <= 1 + 1e-6
        assert_top(top, ref.top[len(ids) + i])
        assert lp.token_logprobs[i] == max(top.values())  # greedy: the chosen token is the most likely
    assert lp.text_offset[0] == 0
    for offset, token in zip(lp.text_offset, lp.tokens, strict=True):
        assert choice.text[offset : offset + len(token)] == token
    assert result.usage.completion_tokens == 16

    chunks = list(client.completions.create(**request, stream=True))
    text, joined = streamed_legacy(chunks)
    assert text == choice.text
    assert joined == lp.model_dump()  # the same numbers, the same offsets, chunk by chunk
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices[0].finish_reason)


def test_sampled_tokens_report_raw_logprobs_not_the_processed_ones(served, neox):
    """Repetition penalty, temperature and top-k choose the tokens; the reported log-probabilities are the model's."""
    options = {"temperature": 0.7, "seed": 5}
    card_options = {"repetition_penalty": 1.6, "top_k": 20}
    result = served.client().completions.create(
        model="tiny-neox", prompt=PROMPT, max_tokens=14, logprobs=2, extra_body=card_options, **options
    )
    tokens = generated(neox, PROMPT, max_new_tokens=14, **options, **card_options)
    ids = neox.encode(PROMPT)
    ref = expected(neox, ids + tokens, 2)
    lp = result.choices[0].logprobs
    assert lp.tokens == [neox.tokenizer.decode([t]) for t in tokens]
    assert lp.token_logprobs == pytest.approx(ref.logprobs[len(ids) :], abs=TOL)
    for i, top in enumerate(lp.top_logprobs):
        assert_top(top, ref.top[len(ids) + i])


def test_echo_scores_token_id_prompts(served, neox):
    """max_tokens 0 with echo only scores the prompts: each choice is its prompt's text and tokens, the first
    without a log-probability; several token-id prompts in one request, choice index = prompt * n + i."""
    prompts = [neox.encode(PROMPT), neox.encode("A class definition is an executable statement"), neox.encode("x")]
    assert len(prompts[2]) == 1
    result = served.client().completions.create(
        model="tiny-neox", prompt=prompts, max_tokens=0, echo=True, logprobs=3, n=2
    )
    assert [c.index for c in result.choices] == list(range(6))
    assert result.usage.prompt_tokens == sum(map(len, prompts)) and result.usage.completion_tokens == 0
    for choice in result.choices:
        ids = prompts[choice.index // 2]
        ref = expected(neox, ids, 3)
        lp = choice.logprobs
        assert choice.text == neox.tokenizer.decode(ids) and choice.finish_reason == "length"
        assert lp.tokens == ref.tokens and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.token_logprobs[1:] == pytest.approx(ref.logprobs[1:], abs=TOL)
        for top, ref_top in zip(lp.top_logprobs[1:], ref.top[1:], strict=True):
            assert_top(top, ref_top)
    # without echo, max_tokens 0 is an empty completion
    empty = served.client().completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=0, logprobs=1)
    assert empty.choices[0].text == "" and empty.choices[0].finish_reason == "length"
    assert empty.choices[0].logprobs.tokens == [] and empty.usage.completion_tokens == 0


def test_echo_with_generation_continues_the_prompt(served, neox):
    client = served.client()
    request = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 2}
    result = client.completions.create(**request)
    ids = neox.encode(PROMPT)
    tokens = generated(neox, PROMPT, max_new_tokens=4, do_sample=False)
    ref = expected(neox, ids + tokens, 2)
    choice = result.choices[0]
    assert choice.text == PROMPT + neox.generate(PROMPT, max_new_tokens=4, do_sample=False).text
    lp = choice.logprobs
    assert lp.tokens == ref.tokens and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(ref.logprobs[1:], abs=TOL)
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert result.usage.completion_tokens == 4

    chunks = list(client.completions.create(**request, stream=True))
    first = chunks[0].choices[0]
    assert first.text == PROMPT and first.logprobs.tokens == ref.tokens[: len(ids)]  # the prompt comes first
    text, joined = streamed_legacy(chunks)
    assert text == choice.text and joined == lp.model_dump()


def test_lm_eval_local_completions_requests(served, neox):
    """lm-eval's `local-completions` backend: its loglikelihood payload, read with its own parse_logprobs, gives
    Model.score's log-likelihood and is-greedy."""
    completions = pytest.importorskip("lm_eval.models.openai_completions")
    pairs = [(PROMPT, " is used to iterate"), ("A class", " definition"), (PROMPT, ".\n\nThe")]  # the last: greedy
    contexts = [neox.encode(c) for c, _ in pairs]
    rows = [neox.encode(c + n) for c, n in pairs]
    assert all(r[: len(c)] == c for r, c in zip(rows, contexts, strict=True))
    payload = {"model": "tiny-neox", "prompt": rows, "temperature": 0, "max_tokens": 1, "logprobs": 1}
    payload |= {"seed": 1234, "echo": True}
    response = httpx.post(f"{served.url}/v1/completions", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    parsed = completions.LocalCompletionsAPI.parse_logprobs(response.json(), ctxlens=list(map(len, contexts)))
    scores = [neox.score(c, r[len(c) :]) for c, r in zip(contexts, rows, strict=True)]
    assert [logprob for logprob, _ in parsed] == pytest.approx([s.logprob for s in scores], abs=TOL)
    assert [greedy for _, greedy in parsed] == [s.greedy for s in scores] == [False, False, True]


def test_a_token_whose_text_is_held_back_still_reports_its_logprob(served, neox):
    """A possible stop string holds text back (events with no text): streamed, every token still has its entry."""
    client = served.client()
    request = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "logprobs": 1}
    request["stop"] = [" the@@", "\n\n@@"]  # never completed, often begun
    whole = client.completions.create(**request)
    chunks = list(client.completions.create(**request, stream=True))
    assert any(c.choices[0].text == "" and c.choices[0].logprobs for c in chunks)  # the case is exercised
    text, joined = streamed_legacy(chunks)
    assert text == whole.choices[0].text
    assert len(joined["tokens"]) == whole.usage.completion_tokens == 40
    assert joined == whole.choices[0].logprobs.model_dump()


# --- /v1/chat/completions ------------------------------------------------------------------------


def test_chat_logprobs(served, neox):
    client = served.client()
    messages = [{"role": "user", "content": "The while statement"}]
    request = {"model": "tiny-neox", "messages": messages, "max_tokens": 12, "temperature": 0}
    result = client.chat.completions.create(**request, logprobs=True, top_logprobs=3)
    ids = neox.encode(messages)
    tokens = generated(neox, messages, max_new_tokens=12, do_sample=False)
    ref = expected(neox, ids + tokens, 3)
    content = result.choices[0].logprobs.content
    assert [e.token for e in content] == ref.tokens[len(ids) :]
    assert [e.logprob for e in content] == pytest.approx(ref.logprobs[len(ids) :], abs=TOL)
    for i, entry in enumerate(content):
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3 and all(t.bytes == list(t.token.encode()) for t in entry.top_logprobs)
        assert_top(entry.top_logprobs, ref.top[len(ids) + i])
    assert result.choices[0].logprobs.refusal is None

    stream = list(client.chat.completions.create(**request, logprobs=True, top_logprobs=3, stream=True))
    entries = [e for c in stream if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in content]
    assert "".join(c.choices[0].delta.content or "" for c in stream) == result.choices[0].message.content

    alone = client.chat.completions.create(**request, logprobs=True)  # no top_logprobs: none listed
    assert [e.token for e in alone.choices[0].logprobs.content] == [e.token for e in content]
    assert all(e.top_logprobs == [] for e in alone.choices[0].logprobs.content)
    assert client.chat.completions.create(**request).choices[0].logprobs is None


# --- the batcher ---------------------------------------------------------------------------------


def test_the_batcher_scores_only_the_rows_that_ask(neox):
    batcher = ContinuousBatcher(neox, max_batch=2, max_queue=2)
    try:
        options = {"max_new_tokens": 5, "do_sample": False}
        asked = batcher.submit(neox.encode(PROMPT), options, logprobs=2)
        other = batcher.submit(neox.encode("A class"), options)
        events, plain = list(asked.events(timeout=60)), list(other.events(timeout=60))
    finally:
        batcher.stop()
    assert all(e.logprob is None and e.top_logprobs is None for e in plain)
    with_tokens = [e for e in events if e.token_id is not None]
    assert len(with_tokens) == 5 and with_tokens[-1].finish_reason == "length"  # the last event has its token's
    ids = neox.encode(PROMPT)
    ref = expected(neox, ids + [e.token_id for e in with_tokens], 2)
    assert [e.logprob for e in with_tokens] == pytest.approx(ref.logprobs[len(ids) :], abs=TOL)
    assert all(len(e.top_logprobs) == 2 for e in with_tokens)
    with pytest.raises(Exception, match="logprobs must be a whole number"):
        batcher.submit(ids, options, logprobs=-1)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fields", "param", "words"),
    [
        ("completions", {"logprobs": 21}, "logprobs", "between 0 and 20"),
        ("completions", {"logprobs": -1}, "logprobs", "between 0 and 20"),
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ("chat", {"top_logprobs": 2}, "top_logprobs", "'logprobs': true"),
        ("chat", {"logprobs": False, "top_logprobs": 2}, "top_logprobs", "'logprobs': true"),
        ("chat", {"extra_body": {"echo": True}}, "echo", "/v1/completions field"),
        ("chat", {"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ("completions", {"max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
        ("completions", {"max_tokens": 0, "echo": True, "prompt": [[1] * 257]}, "prompt", "context length"),
        ("completions", {"max_tokens": 0, "prompt": [[5000]]}, "prompt", "vocabulary"),
    ],
)
def test_logprob_errors(served, endpoint, fields, param, words):
    client = served.client()
    base = {"model": "tiny-neox", "max_tokens": 4}
    base |= {"prompt": PROMPT} if endpoint == "completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    create = client.completions.create if endpoint == "completions" else client.chat.completions.create
    with pytest.raises(openai.BadRequestError) as caught:
        create(**(base | fields))
    assert caught.value.body["param"] == param and words in caught.value.body["message"], caught.value.body


def test_a_prompt_filling_the_context_can_be_scored(served, neox):
    ids = (neox.encode(PROMPT) * 100)[:256]
    body = {"model": "tiny-neox", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=60) as r:
        payloads = sse(r)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    first = chunks[0]["choices"][0]["logprobs"]
    assert len(first["tokens"]) == 256 and first["top_logprobs"][1:] == [{}] * 255
    assert first["token_logprobs"][1:] == pytest.approx(neox.logprobs(ids).logprobs[1:], abs=TOL)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
