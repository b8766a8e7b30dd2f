"""Load test for `modeldeck serve`: N concurrent streaming clients for a bounded time.

Starts `modeldeck serve CARD` as a subprocess on a free loopback port (or uses --url), then runs --clients
asyncio clients (httpx, server-sent events), each sending streaming /v1/completions requests back to back until
--seconds have passed (requests in flight then finish). A 429 is counted and retried after a short pause.
Reports requests completed, 429s, errors, time to first token (p50/p99), tokens/s (aggregate, and per request
after its first token), the server's engine counters, and the server's RSS (start, peak, end) read from /proc.

    .venv/bin/python benchmarks/serve_load.py --clients 64 --seconds 30 [--max-batch 8 --max-queue 64]
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 12345   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "The for statement",
    "A class definition",
    "The while statement",
    "An expression statement",
    "The import system",
    "Lambda expressions",
    "The try statement",
    "Function definitions",
]


@dataclass
class Results:
    completed: int = 0
    rejected: int = 0  # 429
    errors: dict[str, int] = field(default_factory=dict)
    ttft: list[float] = field(default_factory=list)  # seconds from sending to the first text
    tokens: int = 0  # completion tokens of completed requests
    rates: list[float] = field(default_factory=list)  # per request: tokens after the first / time after it
    latency: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def one_request(http: httpx.AsyncClient, body: dict[str, Any], results: Results) -> None:
    sent = time.perf_counter()
    first: float | None = None
    usage: dict[str, int] | None = None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code == 429:
            results.rejected += 1
            await response.aread()
            await asyncio.sleep(0.1)
            return
        if response.status_code != 200:
            results.error(f"HTTP {response.status_code}")
            await response.aread()
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                results.error(f"stream error: {chunk['error'].get('code')}")
                return
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    done = time.perf_counter()
    if usage is None or first is None:
        results.error("no usage or no text")
        return
    results.completed += 1
    results.tokens += usage["completion_tokens"]
    results.ttft.append(first - sent)
    results.latency.append(done - sent)
    if usage["completion_tokens"] > 1 and done > first:
        results.rates.append((usage["completion_tokens"] - 1) / (done - first))


async def client(
    index: int, http: httpx.AsyncClient, args: argparse.Namespace, deadline: float, results: Results
) -> None:
    n = 0
    while time.perf_counter() < deadline:
        body = {
            "model": args.model,
            "prompt": PROMPTS[(index + n) % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "seed": index * 1000 + n,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        n += 1
        try:
            await one_request(http, body, results)
        except httpx.HTTPError as exc:
            results.error(type(exc).__name__)
            await asyncio.sleep(0.1)


async def watch_rss(pid: int | None, samples: list[int], stop: asyncio.Event) -> None:
    while pid is not None and not stop.is_set():
        samples.append(rss_bytes(pid))
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, url: str, pid: int | None) -> tuple[Results, float, list[int], dict[str, Any]]:
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    timeout = httpx.Timeout(args.seconds + 120)
    results, samples, stop = Results(), [], asyncio.Event()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        watcher = asyncio.create_task(watch_rss(pid, samples, stop))
        began = time.perf_counter()
        deadline = began + args.seconds
        await asyncio.gather(*(client(i, http, args, deadline, results) for i in range(args.clients)))
        wall = time.perf_counter() - began
        health = (await http.get("/health")).json()
        stop.set()
        await watcher
    return results, wall, samples, health


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:  # a free port (the server binds it a moment later)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    modeldeck = str(Path(sys.executable).with_name("modeldeck"))
    command = [modeldeck, "serve", args.card, "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    command += ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start (exit code {process.poll()})")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(args: argparse.Namespace, results: Results, wall: float, samples: list[int], health: dict[str, Any]) -> None:
    engine = health.get("engine", {})
    mb = 1024 * 1024
    print(
        f"modeldeck serve {args.card}: max_batch {engine.get('max_batch')}, max_queue {engine.get('max_queue')}; "
        f"{args.clients} streaming clients for {args.seconds:g} s; max_tokens {args.max_tokens}, "
        f"temperature {args.temperature:g}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print("| metric | value |")
    print("|---|---:|")
    rows = [
        ("requests completed", f"{results.completed}"),
        ("429 (queue full, retried)", f"{results.rejected}"),
        ("errors", f"{sum(results.errors.values())}" + (f" {results.errors}" if results.errors else "")),
        ("wall time (s, until the last request ended)", f"{wall:.1f}"),
        ("time to first token p50 (s)", f"{percentile(results.ttft, 50):.3f}"),
        ("time to first token p99 (s)", f"{percentile(results.ttft, 99):.3f}"),
        (
            "request latency p50 / p99 (s)",
            f"{percentile(results.latency, 50):.2f} / {percentile(results.latency, 99):.2f}",
        ),
        ("tokens/s, aggregate", f"{results.tokens / wall:.1f}"),
        ("tokens/s per request after its first token (median)", f"{statistics.median(results.rates or [0]):.1f}"),
        ("engine: peak running / decode steps", f"{engine.get('peak_running')} / {engine.get('decode_steps')}"),
    ]
    if samples:
        rows.append(
            (
                "server RSS MiB: start / peak / end",
                f"{samples[0] / mb:.0f} / {max(samples) / mb:.0f} / {samples[-1] / mb:.0f}",
            )
        )
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--card", default="tiny-neox")
    parser.add_argument("--model", help="The model name in requests (default: --card).")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--url", help="Use a running server instead of starting one.")
    parser.add_argument("--pid", type=int, help="With --url: the server's process id, for its RSS.")
    args = parser.parse_args()
    args.model = args.model or args.card
    process = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        process, url = start_server(args)
        pid = process.pid
    try:
        results, wall, samples, health = asyncio.run(run(args, url, pid))
        if pid is not None:
            samples.append(rss_bytes(pid))  # after every request ended
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    report(args, results, wall, samples, health)


if __name__ == "__main__":
    main()
