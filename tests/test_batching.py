"""Continuous batching: every request gets exactly what Model.generate gives it alone, while decode steps batch."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from modeldeck import runtime  # noqa: E402
from modeldeck.runtime import batching, generate  # noqa: E402
from modeldeck.runtime.batching import (  # noqa: E402
    ContinuousBatcher,
    EngineStoppedError,
    QueueFullError,
    Ticket,
    TicketTimeoutError,
)
from modeldeck.runtime.generate import GenerationError  # noqa: E402

WAIT = 120  # seconds: a generous bound on any one request, so a bug fails instead of hanging

PROMPTS = [  # (prompt, max_new_tokens): different lengths in and out
    ("The for statement", 40),
    ("A class definition", 12),
    ("import os\n", 30),
    ("def f(x):\n    return x * 2\n\nThe result of", 25),
    ("x", 50),
    ("The while loop executes", 3),
]


@pytest.fixture(scope="module")
def model():
    return runtime.load("tiny-neox", device="cpu")


@pytest.fixture
def make_batcher(model) -> Iterator:
    """make_batcher(**kwargs) -> a ContinuousBatcher on the tiny model, stopped (without draining) after the test."""
    made: list[ContinuousBatcher] = []

    def make(m=None, **kwargs) -> ContinuousBatcher:
        made.append(ContinuousBatcher(m or model, **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.stop(drain=False)
        assert b._thread is None or not b._thread.is_alive()


def alone(model, prompt: str, **options):
    """What Model.generate gives the prompt by itself."""
    return model.generate(prompt, raw=True, **options).completions[0]


def same(completion, reference) -> tuple:
    return (completion.text, completion.token_ids, completion.finish_reason, completion.prompt_tokens) == (
        reference.text,
        reference.token_ids,
        reference.finish_reason,
        reference.prompt_tokens,
    )


def first_event(ticket: Ticket):
    return next(ticket.events(timeout=WAIT))


# --- the same results as Model.generate ---------------------------------------------------------------


def test_a_single_greedy_request_equals_model_generate(model, make_batcher):
    b = make_batcher()
    prompt = "The for statement"
    ticket = b.submit(model.encode(prompt, raw=True), {})  # the card's defaults (repetition_penalty 1.2, 64 tokens)
    events = list(ticket.events(timeout=WAIT))
    reference = alone(model, prompt)
    assert same(ticket.result(), reference)
    assert [e.token_id for e in events] == reference.token_ids
    assert "".join(e.text for e in events) == reference.text
    assert [e.finish_reason for e in events] == [None] * (len(events) - 1) + [reference.finish_reason]
    assert ticket.done and ticket.error is None
    last = events[-1]
    assert (last.prompt_tokens, last.completion_tokens, last.error) == (reference.prompt_tokens, 64, None)
    assert b.stats == {
        "running": 0,
        "waiting": 0,
        "max_batch": 8,
        "max_queue": 64,
        "completed": 1,
        "peak_running": 1,
        "decode_steps": 63,  # the first token comes from the prefill
    }


def test_requests_submitted_together_each_equal_generate_alone(model, make_batcher):
    b = make_batcher(max_batch=4)  # six requests: two wait for a free row and join while others decode
    tickets = [b.submit(model.encode(p, raw=True), {"max_new_tokens": n}) for p, n in PROMPTS]
    for (prompt, n), ticket in zip(PROMPTS, tickets, strict=True):
        assert same(ticket.result(timeout=WAIT), alone(model, prompt, max_new_tokens=n)), prompt
    assert b.stats["peak_running"] == 4 and b.stats["completed"] == len(PROMPTS)


def test_requests_joining_while_others_decode_each_equal_generate_alone(model, make_batcher):
    b = make_batcher(max_batch=3)
    long = b.submit(model.encode("The for statement", raw=True), {"max_new_tokens": 150, "min_new_tokens": 150})
    first_event(long)  # it is decoding now
    tickets = []
    for prompt, n in PROMPTS:
        tickets.append(b.submit(model.encode(prompt, raw=True), {"max_new_tokens": n}))
        time.sleep(0.01)
    assert not long.done  # the others really joined a running batch
    for (prompt, n), ticket in zip(PROMPTS, tickets, strict=True):
        assert same(ticket.result(timeout=WAIT), alone(model, prompt, max_new_tokens=n)), prompt
    reference = alone(model, "The for statement", max_new_tokens=150, min_new_tokens=150)
    assert same(long.result(timeout=WAIT), reference)  # the long one survived every row move around it
    assert b.stats["peak_running"] == 3


def test_the_decode_step_batches_the_running_requests(model, make_batcher):
    calls: list[tuple[int, int]] = []  # (batch, queries) of every decoder forward
    hook = model.decoder.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    try:
        b = make_batcher()
        options = {"max_new_tokens": 30, "min_new_tokens": 30}
        tickets = [b.submit(model.encode(p, raw=True), options) for p, _ in PROMPTS[:4]]
        assert all(t.result(timeout=WAIT).completion_tokens == 30 for t in tickets)
    finally:
        hook.remove()
    decodes = [batch for batch, queries in calls if queries == 1]
    assert max(decodes) == 4  # one forward for four rows
    assert len(decodes) < 4 * 29  # one after another would take 29 decode steps each
    assert b.stats["decode_steps"] == len(decodes)


@pytest.mark.parametrize("family", ["falcon", "llama"])
def test_another_family_together_and_staggered_equals_generate_alone(tiny_checkpoint, make_batcher, family):
    ckpt = tiny_checkpoint(family)  # grouped-query attention, the real tokenizer; skips without ../shared
    model = runtime.load(ckpt.card, weights=ckpt.directory, device="cpu")
    b = make_batcher(model, max_batch=3)
    greedy = {"do_sample": False, "num_return_sequences": 1}  # Aira's card samples two sequences by default
    tickets = []
    for index, (prompt, n) in enumerate(PROMPTS):
        tickets.append(b.submit(model.encode(prompt, raw=True), {"max_new_tokens": n, **greedy}))
        if index == 2:
            first_event(tickets[0])  # the rest arrive while the first three decode
    for (prompt, n), ticket in zip(PROMPTS, tickets, strict=True):
        assert same(ticket.result(timeout=WAIT), alone(model, prompt, max_new_tokens=n, **greedy)), prompt
    assert b.stats["peak_running"] == 3


# --- options per request ---------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_whatever_else_runs(model, make_batcher):
    options = {"do_sample": True, "temperature": 0.9, "top_k": 40, "max_new_tokens": 30, "seed": 7}
    prompt = "A class definition"
    reference = alone(model, prompt, **options)  # Model.generate seeds one generator for its batch of one
    b = make_batcher()
    ids = model.encode(prompt, raw=True)
    first = b.submit(ids, options).result(timeout=WAIT)
    crowd = [b.submit(model.encode(p, raw=True), {"do_sample": True, "max_new_tokens": 40}) for p, _ in PROMPTS]
    second = b.submit(ids, options)
    other_seed = b.submit(ids, {**options, "seed": 8})
    assert same(first, reference) and same(second.result(timeout=WAIT), reference)
    assert other_seed.result(timeout=WAIT).token_ids != reference.token_ids
    assert all(t.result(timeout=WAIT).finish_reason in ("length", "eos") for t in crowd)


def test_a_stop_string_ends_the_request_and_never_shows(model, make_batcher):
    prompt = "The for statement"
    full = alone(model, prompt, max_new_tokens=40)
    ids = full.token_ids
    prefixes = [model.tokenizer.decode(ids[:k]) for k in range(1, len(ids))]
    bounds = [len(p) if full.text.startswith(p) else -1 for p in prefixes]
    stop = next(  # from the last character of one token over a whole token to the first of the next
        full.text[a - 1 : c + 1] for a, c in itertools.pairwise(bounds[5:]) if 0 < a < c < len(full.text) - 1
    )
    b = make_batcher()
    crowd = b.submit(model.encode("x", raw=True), {"max_new_tokens": 40})
    ticket = b.submit(model.encode(prompt, raw=True), {"max_new_tokens": 40, "stop": [stop]})
    events = list(ticket.events(timeout=WAIT))
    expected = full.text[: full.text.index(stop)]
    assert same(ticket.result(), alone(model, prompt, max_new_tokens=40, stop=[stop]))
    assert (ticket.result().text, events[-1].finish_reason) == (expected, "stop")
    assert "".join(e.text for e in events) == expected
    assert events[-1].completion_tokens < 40
    assert crowd.result(timeout=WAIT).finish_reason == "length"


def test_submit_refuses_what_model_generate_refuses_with_its_messages(model, make_batcher):
    b = make_batcher()
    ids = model.encode("The for statement", raw=True)
    cases = [({"max_new_tokens": 254}, "The for statement"), ({"temprature": 1.0}, "x"), ({"top_p": 2}, "x")]
    for options, prompt in cases:
        with pytest.raises(GenerationError) as expected:
            model.generate(prompt, raw=True, **options)
        with pytest.raises(GenerationError) as got:
            b.submit(model.encode(prompt, raw=True), options)
        assert str(got.value) == str(expected.value)
    with pytest.raises(GenerationError, match=r"^a prompt encodes to no tokens; give some text$"):
        b.submit([], {})
    with pytest.raises(GenerationError, match=r"^num_return_sequences=2: a batcher request returns one sequence"):
        b.submit(ids, {"do_sample": True, "num_return_sequences": 2})
    with pytest.raises(GenerationError, match=r"^prompt token id 2048 is not in the vocabulary \(0 to 2047\)$"):
        b.submit([1, 2048], {})
    assert b.stats["waiting"] == b.stats["completed"] == 0


# --- queue, cancel, stop -----------------------------------------------------------------------------


def long_request(model, b: ContinuousBatcher, tokens: int = 200) -> Ticket:
    return b.submit(model.encode("The for statement", raw=True), {"max_new_tokens": tokens, "min_new_tokens": tokens})


def test_a_full_queue_refuses_at_once_and_cancel_frees_the_row(model, make_batcher):
    b = make_batcher(max_batch=1, max_queue=2)
    running = long_request(model, b)
    first_event(running)
    queued = [long_request(model, b, 20), long_request(model, b, 20)]
    began = time.monotonic()
    with pytest.raises(QueueFullError, match=r"^the request queue is full: 2 requests already wait for one of 1 "):
        b.submit([1, 2, 3], {})
    assert time.monotonic() - began < 0.5
    assert (b.stats["running"], b.stats["waiting"]) == (1, 2)
    with pytest.raises(TicketTimeoutError):
        next(queued[0].events(timeout=0.05))  # still waiting for the row
    queued[1].cancel()  # cancelled while waiting: never runs
    running.cancel()  # frees the row: the first queued request starts
    last = list(running.events(timeout=WAIT))[-1]
    assert (last.finish_reason, last.token_id) == ("cancelled", None)
    assert 0 < last.completion_tokens < 200 and running.result().finish_reason == "cancelled"
    assert queued[0].result(timeout=WAIT).finish_reason == "length"
    assert (queued[1].result(timeout=WAIT).finish_reason, queued[1].result().token_ids) == ("cancelled", [])
    assert b.stats["completed"] == 3 and b.stats["running"] == b.stats["waiting"] == 0


def test_stop_with_drain_finishes_running_and_queued_requests(model, make_batcher):
    b = make_batcher(max_batch=2)
    tickets = [b.submit(model.encode(p, raw=True), {"max_new_tokens": n}) for p, n in PROMPTS[:4]]
    first_event(tickets[0])
    b.stop(drain=True)
    assert b._thread is not None and not b._thread.is_alive()
    for (prompt, n), ticket in zip(PROMPTS[:4], tickets, strict=True):
        assert ticket.done and same(ticket.result(), alone(model, prompt, max_new_tokens=n))
    with pytest.raises(EngineStoppedError, match=r"^the engine is stopping and takes no new requests"):
        b.submit([1, 2, 3], {})


def test_stop_without_drain_and_a_drain_timeout_end_requests_with_error(model, make_batcher):
    b = make_batcher(max_batch=1)
    running, queued = long_request(model, b), long_request(model, b)
    first_event(running)
    b.stop(drain=False)
    for ticket in (running, queued):
        last = list(ticket.events(timeout=WAIT))[-1]
        assert last.finish_reason == "error" and ticket.result().finish_reason == "error"
        assert last.error == "the engine shut down before this request finished (stopped without draining); retry it"
        assert ticket.error == last.error
    b = make_batcher(max_batch=1)
    running, queued = long_request(model, b, 250), long_request(model, b, 250)
    first_event(running)
    b.stop(drain=True, timeout=0.05)
    assert not b._thread.is_alive()
    for ticket in (running, queued):
        last = list(ticket.events(timeout=0))[-1]
        assert last.error == "the engine shut down before this request finished (drain timeout of 0.05 s); retry it"


# --- failures ------------------------------------------------------------------------------------------


def test_an_error_in_one_requests_processing_ends_only_that_request(model, make_batcher, monkeypatch):
    b = make_batcher()
    bad = model.options(max_new_tokens=30)
    real = generate.process_logits

    def flaky(logits, seen, generated, opts, eos):
        if opts is bad and generated == [3]:
            raise RuntimeError("injected failure")
        return real(logits, seen, generated, opts, eos)

    monkeypatch.setattr(generate, "process_logits", flaky)
    others = [b.submit(model.encode(p, raw=True), {"max_new_tokens": n}) for p, n in PROMPTS[:3]]
    failing = b.submit(model.encode("import os\n", raw=True), bad)
    events = list(failing.events(timeout=WAIT))
    assert [e.finish_reason for e in events] == [None, None, None, "error"]
    assert events[-1].error == "generation failed: RuntimeError: injected failure"
    assert events[-1].completion_tokens == 3 == len(failing.result().token_ids)
    for (prompt, n), ticket in zip(PROMPTS[:3], others, strict=True):
        assert same(ticket.result(timeout=WAIT), alone(model, prompt, max_new_tokens=n))


def test_a_failed_decode_step_ends_the_running_requests_and_the_loop_serves_on(model, make_batcher, monkeypatch):
    b = make_batcher()
    real, failures = batching.decode_one_token, [1]

    def out_of_memory(*args):
        if failures:
            failures.pop()
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args)

    monkeypatch.setattr(batching, "decode_one_token", out_of_memory)
    hit = [b.submit(model.encode(p, raw=True), {"max_new_tokens": 10}) for p, _ in PROMPTS[:2]]
    for ticket in hit:
        last = list(ticket.events(timeout=WAIT))[-1]
        assert last.finish_reason == "error"
        assert last.error == "generation failed in the decode step: RuntimeError: CUDA out of memory (simulated)"
    later = b.submit(model.encode("x", raw=True), {"max_new_tokens": 10})
    assert same(later.result(timeout=WAIT), alone(model, "x", max_new_tokens=10))
    assert b._thread.is_alive()


# --- asyncio -----------------------------------------------------------------------------------------------


def test_aevents_streams_to_asyncio(model, make_batcher):
    b = make_batcher()

    async def collect(prompt: str, n: int) -> list:
        ticket = b.submit(model.encode(prompt, raw=True), {"max_new_tokens": n})
        return [event async for event in ticket.aevents()]

    async def main() -> list[list]:
        return await asyncio.wait_for(asyncio.gather(*(collect(p, n) for p, n in PROMPTS[:3])), WAIT)

    for (prompt, n), events in zip(PROMPTS[:3], asyncio.run(main()), strict=True):
        reference = alone(model, prompt, max_new_tokens=n)
        assert len(events) == n and events[-1].finish_reason == "length"
        assert "".join(e.text for e in events) == reference.text
        assert [e.token_id for e in events] == reference.token_ids
