"""`modeldeck serve`: a real server on a loopback port, driven by the official `openai` client (and httpx for what
the client cannot send): results equal to the runtime's, streaming, errors, batching, disconnects, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from modeldeck import runtime  # noqa: E402

from .conftest import Served, serve_process, serving  # noqa: E402

PROMPT = "The for statement"


@pytest.fixture(scope="module")
def neox() -> Any:
    return runtime.load("tiny-neox", device="cpu")


@pytest.fixture
def slow(neox: Any) -> Iterator[Callable[[float], None]]:
    """slow(seconds): every decoder call (prefill or one decode step) sleeps that long, to make requests last."""
    delay = [0.0]
    handle = neox.decoder.register_forward_pre_hook(lambda module, args: time.sleep(delay[0]))
    yield lambda seconds: delay.__setitem__(0, seconds)
    handle.remove()


@pytest.fixture(scope="module")
def served(neox: Any) -> Iterator[Served]:
    with serving(neox, max_batch=4, max_queue=16) as s:
        yield s


def sse(response: Any) -> list[str]:
    """The `data:` payloads of a server-sent-events response, checking the framing."""
    payloads = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            payloads.append(line.removeprefix("data: "))
    return payloads


# --- results -------------------------------------------------------------------------------------


def test_models_and_health(served):
    models = served.client().models.list().data
    assert [m.id for m in models] == ["tiny-neox"]
    assert models[0].owned_by == "modeldeck" and models[0].model_extra["aliases"] == []
    assert models[0].model_extra["context_length"] == 256
    assert served.client().models.retrieve("TINY-NEOX").id == "tiny-neox"
    health = served.health()
    assert health["status"] == "ok" and health["model"] == "tiny-neox"
    assert {"running", "waiting", "max_batch", "max_queue", "completed"} <= set(health["engine"])
    assert health["engine"]["max_batch"] == 4 and health["engine"]["max_queue"] == 16


def test_greedy_completion_equals_the_runtime(served, neox):
    client = served.client()
    result = client.completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=30, temperature=0)
    expected = neox.generate(PROMPT, max_new_tokens=30, do_sample=False).completions[0]
    assert result.object == "text_completion" and result.model == "tiny-neox"
    assert result.choices[0].text == expected.text and result.choices[0].finish_reason == "length"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, 30)
    assert usage.total_tokens == expected.prompt_tokens + 30
    # no sampling fields: the card's defaults (tiny-neox: greedy, repetition_penalty 1.2, 64 new tokens)
    default = client.completions.create(model="tiny-neox", prompt=PROMPT)
    assert default.choices[0].text == neox.generate(PROMPT).text and default.usage.completion_tokens == 64
    # a token-id prompt is used as given (and a temperature below 1e-5 is greedy); a list of prompts: a choice each
    ids = client.completions.create(model="tiny-neox", prompt=neox.encode(PROMPT), max_tokens=30, temperature=1e-9)
    assert ids.choices[0].text == expected.text
    both = client.completions.create(model="tiny-neox", prompt=[PROMPT, "A class"], max_tokens=8, temperature=0)
    assert [c.text for c in both.choices] == [g.text for g in neox.generate([PROMPT, "A class"], max_new_tokens=8)]
    assert both.usage.prompt_tokens == len(neox.encode(PROMPT)) + len(neox.encode("A class"))


def test_streaming_equals_non_streaming(served):
    client = served.client()
    request = {"model": "tiny-neox", "max_tokens": 40, "temperature": 0}
    whole = client.completions.create(prompt=PROMPT, **request)
    chunks = list(
        client.completions.create(prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **request)
    )
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()

    messages = [{"role": "user", "content": "The while statement"}]
    chat = client.chat.completions.create(messages=messages, **request)
    stream = list(client.chat.completions.create(messages=messages, stream=True, **request))
    assert stream[0].object == "chat.completion.chunk" and stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason == "length"
    assert all(c.usage is None for c in stream)

    with httpx.stream(
        "POST", f"{served.url}/v1/chat/completions", json={**request, "messages": messages, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = sse(r)
    assert payloads[-1] == "[DONE]" and json.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"


def test_n_choices_and_seeded_sampling(served):
    client = served.client()
    request = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "n": 3, "seed": 11}
    first = client.completions.create(**request)
    again = client.completions.create(**request)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]  # the same seed, the same choices
    assert len(set(texts)) > 1  # choice i samples with seed + i
    assert first.usage.model_dump() == again.usage.model_dump() and 3 <= first.usage.completion_tokens <= 3 * 16
    other = client.completions.create(**{**request, "seed": 12})
    assert [c.text for c in other.choices][:2] == texts[1:]  # seed 12 is choice 1 of seed 11
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(**request, stream=True):
        streamed[chunk.choices[0].index] = streamed.get(chunk.choices[0].index, "") + chunk.choices[0].text
    assert [streamed[i] for i in range(3)] == texts
    greedy = client.chat.completions.create(
        model="tiny-neox", messages=[{"role": "user", "content": PROMPT}], max_tokens=8, n=2, temperature=0
    )
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_stop_strings(served, neox):
    client = served.client()
    text = neox.generate(PROMPT, max_new_tokens=40, do_sample=False).text
    stop = text[12:16]
    cut = text[: text.find(stop)]
    for given in (stop, ["@@never@@", stop]):
        result = client.completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=40, temperature=0, stop=given)
        assert (result.choices[0].text, result.choices[0].finish_reason) == (cut, "stop")
        chunks = client.completions.create(
            model="tiny-neox", prompt=PROMPT, max_tokens=40, temperature=0, stop=given, stream=True
        )
        assert "".join(c.choices[0].text for c in chunks) == cut


def test_chat_on_a_plain_card(served, neox):
    client = served.client()
    messages = [{"role": "user", "content": [{"type": "text", "text": "The while statement"}]}]
    result = client.chat.completions.create(model="tiny-neox", messages=messages, max_tokens=20, temperature=0)
    expected = neox.chat([{"role": "user", "content": "The while statement"}], max_new_tokens=20, do_sample=False)
    assert result.choices[0].message.role == "assistant" and result.choices[0].message.content == expected.text
    # `plain` has no system prompt (when_unsupported: error) and takes one turn: 400s naming messages
    for bad in (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}],
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny-neox", messages=bad, max_tokens=4)
        assert caught.value.body["param"] == "messages"
        assert "system prompt" in caught.value.message or "single user message" in caught.value.message


@pytest.mark.parametrize("family", ["falcon", "llama"])
def test_chat_with_a_chat_format_card(tiny_checkpoint, family):
    """h2oGPT (human_bot) and Aira formats: the system prompt is prepended to the first user message, as the cards
    say; the server answers what Model.chat answers, with the card's own defaults (Aira samples, two sequences)."""
    ckpt = tiny_checkpoint(family)
    model = runtime.load(ckpt.card, weights=ckpt.directory, device="cpu")
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
    ]
    with serving(model, max_batch=2, max_queue=4, served_name="chatty") as s:
        client = s.client()
        assert [m.id for m in client.models.list().data] == ["chatty"]
        assert client.models.list().data[0].model_extra["aliases"] == [ckpt.card.id]
        greedy = client.chat.completions.create(model="chatty", messages=messages, max_tokens=12, temperature=0)
        assert (
            greedy.choices[0].message.content
            == model.chat(messages, max_new_tokens=12, do_sample=False, num_return_sequences=1).text
        )
        assert greedy.usage.prompt_tokens == len(model.encode(messages))
        assert "Answer briefly." in model.render(messages) and "system" not in model.render(messages)
        stream = client.chat.completions.create(
            model=ckpt.card.id, messages=messages, max_tokens=12, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == greedy.choices[0].message.content
        # no sampling fields: the card's decoding (Aira: do_sample, top_k 30, top_p 0.3, ...), one choice per n
        defaults = client.chat.completions.create(model="chatty", messages=messages, max_tokens=10, seed=5)
        expected = model.chat(messages, max_new_tokens=10, seed=5, num_return_sequences=1)
        assert [c.message.content for c in defaults.choices] == [expected.text]


# --- errors --------------------------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
ERRORS = [
    # (endpoint, request fields, openai exception, param, code)
    ("completions", {"model": "gpt-4"}, openai.NotFoundError, "model", "model_not_found"),
    ("chat", {"model": "nope"}, openai.NotFoundError, "model", "model_not_found"),
    ("completions", {"max_tokens": 300}, openai.BadRequestError, "max_tokens", "context_length_exceeded"),
    (
        "chat",
        {"max_tokens": None, "max_completion_tokens": 256},
        openai.BadRequestError,
        "max_tokens",
        "context_length_exceeded",
    ),
    ("completions", {"prompt": "word " * 300}, openai.BadRequestError, "prompt", "context_length_exceeded"),
    ("completions", {"prompt": [5000]}, openai.BadRequestError, "prompt", None),
    ("completions", {"temperature": -0.5}, openai.BadRequestError, "temperature", None),
    ("completions", {"temperature": 2.5}, openai.BadRequestError, "temperature", None),
    ("completions", {"top_p": 0}, openai.BadRequestError, "top_p", None),
    ("completions", {"n": 0}, openai.BadRequestError, "n", None),
    ("completions", {"seed": 2**64}, openai.BadRequestError, "seed", None),
    ("completions", {"max_tokens": -1}, openai.BadRequestError, "max_tokens", None),  # 0: no generation
    ("chat", {"max_tokens": 0}, openai.BadRequestError, "max_tokens", None),
    ("completions", {"stop": ""}, openai.BadRequestError, "stop", None),  # the runtime names the option it refused
    ("completions", {"extra_body": {"min_tokens": 10}}, openai.BadRequestError, None, None),
    ("completions", {"extra_body": {"repetition_penalty": 0}}, openai.BadRequestError, "repetition_penalty", None),
    ("completions", {"extra_body": {"top_k": -2}}, openai.BadRequestError, "top_k", None),
    ("completions", {"prompt": ""}, openai.BadRequestError, "prompt", None),
    ("completions", {"logprobs": 21}, openai.BadRequestError, "logprobs", None),  # 0..20: test_serve_logprobs.py
    ("completions", {"best_of": 3}, openai.BadRequestError, "best_of", None),
    ("completions", {"suffix": "end"}, openai.BadRequestError, "suffix", None),
    ("completions", {"frequency_penalty": 0.5}, openai.BadRequestError, "frequency_penalty", None),
    ("completions", {"logit_bias": {"5": 10}}, openai.BadRequestError, "logit_bias", None),
    ("completions", {"extra_body": {"beam_width": 4}}, openai.BadRequestError, "beam_width", None),
    ("chat", {"top_logprobs": 2}, openai.BadRequestError, "top_logprobs", None),  # only with logprobs: true
    ("chat", {"extra_body": {"echo": True}}, openai.BadRequestError, "echo", None),  # a /v1/completions field
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools", None),
    ("chat", {"response_format": {"type": "json_object"}}, openai.BadRequestError, "response_format", None),
    ("chat", {"messages": []}, openai.BadRequestError, "messages", None),
    ("chat", {"messages": [{"role": "tool", "content": "1"}]}, openai.BadRequestError, "messages[0]", None),
    ("chat", {"messages": [{"role": "user", "content": 3}]}, openai.BadRequestError, "messages", None),
    ("chat", {"messages": [{"role": "assistant", "content": "Hi"}]}, openai.BadRequestError, "messages", None),
]


@pytest.mark.parametrize(("endpoint", "fields", "error", "param", "code"), ERRORS)
def test_errors(served, endpoint, fields, error, param, code):
    client = served.client()
    base = {"model": "tiny-neox", "max_tokens": 4} | ({"prompt": PROMPT} if endpoint == "completions" else CHAT)
    create = client.completions.create if endpoint == "completions" else client.chat.completions.create
    with pytest.raises(error) as caught:
        create(**(base | fields))
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert (body["param"], body["code"]) == (param, code), body
    assert body["message"] and "Traceback" not in body["message"]


def test_malformed_requests_are_400_never_422_or_500(served):
    url = f"{served.url}/v1/completions"
    nan = b'{"model": "tiny-neox", "prompt": "x", "temperature": NaN}'
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"", nan):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", (raw, r.text)
    r = httpx.post(url, json={"prompt": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(url, json={"model": "tiny-neox", "prompt": "hi", "max_tokens": "5"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.get(url)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{served.url}/v2/nothing").status_code == 404


def test_harmless_fields_are_accepted(served, neox):
    expected = neox.generate(PROMPT, max_new_tokens=6, do_sample=False).text
    result = served.client().completions.create(
        model="tiny-neox", prompt=PROMPT, max_tokens=6, temperature=0, user="u1", frequency_penalty=0,
        presence_penalty=0, best_of=1, logit_bias={}
    )  # fmt: skip
    assert result.choices[0].text == expected
    chat = served.client().chat.completions.create(
        model="tiny-neox", messages=[{"role": "user", "content": PROMPT}], max_tokens=6, temperature=0,
        response_format={"type": "text"}, metadata={"a": "b"}, store=False, tool_choice="none", user="u1"
    )  # fmt: skip
    assert chat.choices[0].message.content == neox.chat([{"role": "user", "content": PROMPT}], max_new_tokens=6).text


def test_max_tokens_left_out_fits_the_context(served, neox):
    prompt = PROMPT
    while len(neox.encode(prompt)) < 220:
        prompt += " is used to iterate over the elements of a sequence"
    room = 256 - len(neox.encode(prompt))
    assert 0 < room < 64
    result = served.client().completions.create(model="tiny-neox", prompt=prompt)
    assert result.usage.completion_tokens <= room


def test_an_internal_error_is_a_clean_500(served, monkeypatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.app.state.service, "prompts", broken)
    with pytest.raises(openai.InternalServerError) as caught:
        served.client().completions.create(model="tiny-neox", prompt="x")
    assert caught.value.status_code == 500 and caught.value.body["type"] == "server_error"
    assert "a bug" not in caught.value.body["message"] and "Traceback" not in caught.value.body["message"]


# --- concurrency, disconnects, backpressure, shutdown ----------------------------------------------


def test_concurrent_streams_are_batched(neox, slow):
    prompts = [PROMPT, "A class definition", "The while statement", "An expression", "The import system", "Lambda"]
    expected = [neox.generate(p, max_new_tokens=24, do_sample=False).text for p in prompts]
    slow(0.02)
    with serving(neox, max_batch=4, max_queue=8) as s:
        clients = [s.client() for _ in prompts]
        barrier = threading.Barrier(len(prompts))

        def stream(index: int) -> str:
            barrier.wait()  # all at once
            chunks = clients[index].completions.create(
                model="tiny-neox", prompt=prompts[index], max_tokens=24, temperature=0, stream=True
            )
            return "".join(c.choices[0].text for c in chunks)

        with ThreadPoolExecutor(len(prompts)) as pool:
            texts = list(pool.map(stream, range(len(prompts))))
        engine = s.health()["engine"]
    assert texts == expected
    assert engine["completed"] == len(prompts) and engine["running"] == engine["waiting"] == 0
    assert engine["peak_running"] == 4  # six streams, four batch rows: they were decoded together


def test_a_client_that_disconnects_frees_its_slot(neox, slow):
    slow(0.02)
    with serving(neox, max_batch=1, max_queue=4) as s:
        body = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 200, "temperature": 0}
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body | {"stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # one token arrived; now leave
        health = s.wait_for(lambda h: h["engine"]["running"] == 0, seconds=5)
        assert health["server"]["disconnected"] == 1 and health["engine"]["completed"] == 1
        # a non-streamed request whose client gives up is cancelled too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/v1/completions", json=body, timeout=0.5)
        health = s.wait_for(lambda h: h["server"]["disconnected"] == 2 and h["engine"]["running"] == 0, seconds=5)
        slow(0)
        result = s.client().completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=5, temperature=0)
        assert result.choices[0].finish_reason == "length"


def test_a_full_queue_is_answered_429_at_once(neox, slow):
    slow(0.02)
    with serving(neox, max_batch=1, max_queue=1) as s:
        body = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 200, "stream": True}
        with httpx.Client(base_url=s.url, timeout=30) as http:
            first = http.send(http.build_request("POST", "/v1/completions", json=body), stream=True)
            s.wait_for(lambda h: h["engine"]["running"] == 1)
            second = http.send(http.build_request("POST", "/v1/completions", json=body), stream=True)
            s.wait_for(lambda h: h["engine"]["waiting"] == 1)
            began = time.monotonic()
            with pytest.raises(openai.RateLimitError) as caught:
                s.client().completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=5)
            assert time.monotonic() - began < 2
            assert caught.value.body["code"] == "queue_full" and caught.value.response.headers["retry-after"]
            first.close()
            second.close()
        health = s.wait_for(lambda h: h["engine"]["running"] == h["engine"]["waiting"] == 0)
        assert health["server"]["rejected_queue_full"] == 1


def test_graceful_shutdown_finishes_the_request_in_flight(neox, slow):
    expected = neox.generate(PROMPT, max_new_tokens=60, do_sample=False).text
    slow(0.01)
    before = set(threading.enumerate())
    with serving(neox, max_batch=2, max_queue=2) as s:
        body = {"model": "tiny-neox", "prompt": PROMPT, "max_tokens": 60, "temperature": 0, "stream": True}
        payloads = []
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    payloads.append(line.removeprefix("data: "))
                if len(payloads) == 2:
                    s.server.should_exit = True  # what SIGINT / SIGTERM do
        s.thread.join(30)
        assert not s.thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{s.url}/health")
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert s.app.state.batcher.stats["completed"] == 1
    assert not [t for t in threading.enumerate() if t not in before]  # batcher and server threads are gone


def test_a_stopped_engine_answers_503(neox):
    with serving(neox, max_batch=1, max_queue=1) as s:
        s.app.state.batcher.stop()
        with pytest.raises(openai.InternalServerError) as caught:
            s.client().completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=3)
        assert caught.value.status_code == 503 and caught.value.body["code"] == "shutting_down"


# --- the command ---------------------------------------------------------------------------------


def test_modeldeck_serve_command(neox):
    """`modeldeck serve tiny-neox` as a real process: it answers, then stops cleanly on SIGINT."""
    env = {k: v for k, v in os.environ.items() if k != "MODELDECK_DEBUG"}
    with serve_process(["serve", "tiny-neox", "--port", "0", "--max-batch", "2"], timeout=90, env=env) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)
        result = client.completions.create(model="tiny-neox", prompt=PROMPT, max_tokens=20, temperature=0)
        assert result.choices[0].text == neox.generate(PROMPT, max_new_tokens=20, do_sample=False).text
        assert httpx.get(f"{served.url}/health").json()["engine"]["max_batch"] == 2
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(30) == 0
    assert "serving tiny-neox (cpu, float32; up to 2 requests batched, 64 queued)" in served.log
    assert "Traceback" not in served.log and "Application shutdown complete" in served.log


def test_modeldeck_serve_errors(run_cli, fake_site):
    unknown = run_cli("serve", "no-such-model")
    assert unknown.returncode == 1 and "No card named 'no-such-model'" in unknown.stderr
    fake_site.add("no-fastapi", {"fastapi": "raise ImportError('No module named fastapi')"}, {})
    missing = run_cli("serve", "tiny-neox")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "install the serve extra: pip install 'modeldeck[serve]'" in missing.stderr


def test_the_cli_the_python_api_and_the_server_apply_one_sampling_rule(served, neox):
    """temperature 0 is greedy everywhere; a temperature alone samples everywhere (README: the one rule)."""
    client = served.client()
    for temperature, seed in ((0.0, None), (0.8, 3)):
        extra = ["--seed", str(seed)] if seed is not None else []
        flags = ["--json", "--max-new-tokens", "12", "--temperature", str(temperature), *extra]
        cli = subprocess.run(
            [sys.executable, "-m", "modeldeck.registry.cli", "generate", "tiny-neox", PROMPT, *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        by_cli = json.loads(cli.stdout)["completions"][0]["text"]
        by_server = client.completions.create(
            model="tiny-neox", prompt=PROMPT, max_tokens=12, temperature=temperature, seed=seed
        )
        options = {"max_new_tokens": 12, "temperature": temperature, "seed": seed}
        assert by_cli == by_server.choices[0].text == neox.generate(PROMPT, **options).text
    greedy = neox.generate(PROMPT, max_new_tokens=12).text
    assert by_cli != greedy  # the last round sampled (temperature 0.8 without --do-sample)


def test_modeldeck_serve_on_a_busy_port(run_cli):
    """The port is bound before the model is loaded and before anything is announced: a busy port is one error."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "tiny-neox", "--port", str(port))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "serving" not in result.stderr and "Uvicorn running" not in result.stderr
    assert result.stderr.startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "choose another port with --port (--port 0 takes any free one)" in result.stderr
