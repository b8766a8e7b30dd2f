"""Hostile input, cause 4: the server answers every client mistake with a 4xx naming the limit or field, and one
client's huge or degenerate request does not stall the others (runtime/guard.py)."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from modeldeck import runtime  # noqa: E402
from modeldeck.runtime.guard import Limits  # noqa: E402

SHORT = {"model": "tiny-neox", "prompt": "The for statement", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def neox() -> Any:
    return runtime.load("tiny-neox", device="cpu")


def post(url: str, body: Any, path: str = "/v1/completions", **headers: str) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}{path}", content=data, headers={"content-type": "application/json", **headers}, timeout=60)


def error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


def test_a_10_mb_prompt_is_refused_at_once_and_others_keep_their_latency(neox: Any, serve_app: Any) -> None:
    with serve_app(neox, max_batch=4) as served:
        post(served.url, SHORT)  # warm
        alone = []
        for _ in range(5):
            start = time.perf_counter()
            assert post(served.url, SHORT).status_code == 200
            alone.append(time.perf_counter() - start)
        huge = {**SHORT, "prompt": "x " * (5 * 2**20)}  # 10 MB
        answers: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: answers.append(post(served.url, huge)))
        sender.start()
        during = []
        for _ in range(5):
            start = time.perf_counter()
            assert post(served.url, SHORT).status_code == 200
            during.append(time.perf_counter() - start)
        sender.join(60)
        assert answers[0].status_code == 413 and error(answers[0])["code"] == "request_too_large"
        assert f"over the server's limit of {Limits().max_body_bytes:,} bytes" in error(answers[0])["message"]
        assert statistics.median(during) <= 2 * statistics.median(alone)  # a ratio in one run, not a wall clock


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ('{"model": "tiny-neox", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, None, "nests"),
        ('{"model": "tiny-neox", "prompt": "a\\ud800b"}', 400, "prompt", "'prompt' holds a lone surrogate"),
        ({**SHORT, "repetition_penalty": 1e-300, "temperature": 0.8}, 400, "repetition_penalty", "greater than"),
        ({**SHORT, "stop": [f"s{i}" for i in range(17)]}, 400, "stop", "'stop' has 17 strings; the limit is 16"),
        ({**SHORT, "stop": ["x" * 300]}, 400, "stop", "a stop string has 300 characters; the limit is 256"),
        ({**SHORT, "prompt": ["a"] * 200}, 400, "prompt", "'prompt' has 200 prompts; the limit is 64 per request"),
        ({**SHORT, "prompt": ["a"] * 40, "n": 2}, 400, "n", "40 prompt(s) x n=2 = 80 choices; this server holds"),
    ],
)
def test_client_mistakes_are_4xx_naming_the_limit(
    neox: Any, serve_app: Any, body: Any, status: int, param: str | None, says: str
) -> None:
    with serve_app(neox, max_batch=8, max_queue=64) as served:
        answer = post(served.url, body)
        assert answer.status_code == status, answer.text
        assert says in error(answer)["message"] and error(answer)["param"] == param
        assert post(served.url, SHORT).status_code == 200  # and the server goes on


def test_chat_content_with_a_lone_surrogate_is_named(neox: Any, serve_app: Any) -> None:
    body = '{"model": "tiny-neox", "messages": [{"role": "user", "content": "\\udfff"}]}'
    with serve_app(neox) as served:
        answer = post(served.url, body, "/v1/chat/completions")
    assert answer.status_code == 400 and "'messages[0].content' holds a lone surrogate" in error(answer)["message"]


def test_an_api_key_guards_every_endpoint_but_health(neox: Any, serve_app: Any) -> None:
    with serve_app(neox, api_key="s3cret") as served:
        refused = post(served.url, SHORT)
        assert refused.status_code == 401 and error(refused)["code"] == "invalid_api_key"
        assert httpx.get(f"{served.url}/v1/models").status_code == 401
        assert post(served.url, SHORT, authorization="Bearer wrong").status_code == 401
        assert post(served.url, SHORT, authorization="Bearer s3cret").status_code == 200
        assert httpx.get(f"{served.url}/health").status_code == 200
        client = served.client().with_options(api_key="s3cret")
        assert client.models.list().data[0].id == "tiny-neox"


def test_serving_beyond_the_loopback_without_a_key_warns() -> None:
    command = [sys.executable, "-m", "modeldeck.registry.cli", "serve", "tiny-neox", "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
    finally:
        process.kill()
        process.wait()
    assert "warning: serving on 0.0.0.0 without --api-key: anyone who can reach this address can use the model" in first


def test_clients_leaving_mid_upload_are_logged_once_each_at_info(
    neox: Any, serve_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with caplog.at_level(logging.INFO), serve_app(neox) as served:
        port = int(served.url.rsplit(":", 1)[1])
        for _ in range(20):  # headers promise 1,000 bytes; 100 arrive, then the connection closes
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 1000\r\n\r\n" + b'{"prompt": "' + b"x" * 88
                )
        health = served.wait_for(lambda h: h["server"]["disconnected"] >= 20)
        assert post(served.url, SHORT).status_code == 200  # and it still serves
    records = [r for r in caplog.records if r.name.startswith(("modeldeck", "uvicorn"))]
    left = [r for r in records if "disconnected while sending its request" in r.getMessage()]
    assert len(left) == 20 == health["server"]["disconnected"]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in left)
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info], [r.getMessage() for r in records]
