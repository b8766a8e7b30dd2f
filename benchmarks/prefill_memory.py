"""Peak memory (and time) of a long ALiBi prefill: GPT-JX-3B-shaped random model, xformers vs sdpa vs eager.

For each attention backend the run prefills one random prompt of --tokens tokens (default 8192, GPT-JX's whole
context) twice: in chunks (what `modeldeck generate` does: each pass's fp32 scores kept within
runtime.generate.ATTENTION_BUDGET) and in one pass (the whole [H, T, T] ALiBi bias at once). It reports

    working memory   peak allocated during the prefill minus what was allocated before it (weights, KV cache);
                     on CUDA from torch.cuda.max_memory_allocated, on the CPU from the resident set sampled every
                     0.2 ms by a thread (approximate)
    vs one bias      that peak / the size of one fp32 [H, T, T] bias (32 x 8192^2 x 4 B = 8 GiB), the tensor a
                     naive ALiBi implementation builds per forward pass
    vs device        that peak / the device's memory (the hardware limit, read in the same run)
    time, TFLOP/s    prefill seconds; achieved matmul FLOP/s as a fraction of the fp16/fp32 GEMM rate measured in
                     the same run (4096^3, best of 5)

The model is the gpt-jx-3b card's architecture (32 layers, d 2560, 32 heads, ffn 6826, vocab 50257; --layers can
shrink it), built on the meta device and filled with random weights on the target device: loading is measured by
benchmarks/decode.py and tested in tests/test_gpt_jx.py; this benchmark is about attention memory. transformers has
no BTLM/GPT-JX model without trust_remote_code, so there is no transformers column.

    .venv/bin/python benchmarks/prefill_memory.py                      # CUDA: full size, fp16, all backends
    .venv/bin/python benchmarks/prefill_memory.py --device cpu --layers 1 --tokens 4096 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from pathlib import Path

import torch

from modeldeck import registry
from modeldeck.runtime.attention import _xformers_importable, get_backend
from modeldeck.runtime.generate import ATTENTION_BUDGET, prefill, prefill_chunk
from modeldeck.runtime.model import Decoder, KVCache

GiB = 2**30


def build(layers: int | None, dtype: torch.dtype, device: torch.device) -> Decoder:
    arch = registry.default().get("gpt-jx-3b").architecture
    if layers:
        arch = arch.model_copy(update={"layers": layers})
    with torch.device("meta"):
        decoder = Decoder(arch)
    decoder = decoder.to_empty(device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    decoder.alibi = decoder.alibi.to(device) if decoder.alibi is not None else None
    return decoder.eval()


class PeakRSS:
    """The process' resident set size, sampled by a thread while active (CPU runs)."""

    def __init__(self) -> None:
        self.page = resource.getpagesize()
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """FLOP/s of an n x n x n matmul in `dtype`, best of 5 (the hardware limit for the compute column)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def prefill_flops(decoder: Decoder, tokens: int) -> float:
    """Matmul FLOPs of a causal prefill: 2 x (weights touched per token) x T, plus q.k and p.v over T^2 / 2 pairs."""
    a = decoder.arch
    per_token = sum(p.numel() for n, p in decoder.named_parameters() if "norm" not in n and n != "embed.weight")
    per_token += a.vocab_size * a.hidden_size / tokens  # the LM head runs for the last token of each pass only
    attention = 2 * 2 * a.layers * a.heads * a.head_dim * tokens * tokens / 2
    return 2 * per_token * tokens + attention


def measure(decoder: Decoder, backend: str, tokens: int, chunk: int, device: torch.device) -> dict:
    arch = decoder.arch
    dtype = decoder.embed.weight.dtype
    ids = torch.randint(0, arch.vocab_size, (tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    cache = KVCache(arch, 1, tokens, dtype, device)
    attend = get_backend(backend)  # type: ignore[arg-type]
    prefill(decoder, [ids[:64]], cache, attend, pad_id=0)  # warm up kernels and allocator
    sync(device)
    row: dict = {"backend": backend, "chunk": chunk, "passes": -(-tokens // chunk)}
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            prefill(decoder, [ids], cache, attend, pad_id=0, chunk=chunk)
            sync(device)
            row["seconds"] = time.perf_counter() - start
            row["working_bytes"] = torch.cuda.max_memory_allocated(device) - base
        else:
            with PeakRSS() as rss:
                start = time.perf_counter()
                prefill(decoder, [ids], cache, attend, pad_id=0, chunk=chunk)
                row["seconds"] = time.perf_counter() - start
            row["working_bytes"] = rss.peak - rss.base
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    parser.add_argument("--layers", type=int, default=None, help="shrink the model (default: the card's 32)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--backends", default=None, help="comma-separated (default: xformers on CUDA, sdpa, eager)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    backends = args.backends.split(",") if args.backends else ["sdpa", "eager"]
    if not args.backends and device.type == "cuda" and _xformers_importable():
        backends.insert(0, "xformers")
    torch.manual_seed(0)
    decoder = build(args.layers, dtype, device)
    arch = decoder.arch
    heads, tokens = arch.heads, args.tokens
    one_bias = heads * tokens * tokens * 4
    if device.type == "cuda":
        device_bytes = torch.cuda.mem_get_info(device)[1]
        name = torch.cuda.get_device_name(device)
    else:
        device_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        name = f"CPU, {torch.get_num_threads()} threads"
    rate = gemm_rate(dtype, device)
    flops = prefill_flops(decoder, tokens)
    chunk = prefill_chunk(heads, 1, tokens)
    rows = []
    for backend in backends:
        for size in (chunk, tokens):
            # fp32 [H, size, T] tensors alive at once: the bias (sdpa), plus scores and probabilities (eager)
            peak_guess = (3 if backend == "eager" else 1.2) * heads * size * tokens * 4
            if device.type == "cpu" and peak_guess > 0.6 * device_bytes:
                rows.append({"backend": backend, "chunk": size, "passes": 1, "error": "skipped: would not fit"})
                continue
            rows.append(measure(decoder, backend, tokens, size, device))
            print(json.dumps(rows[-1]), flush=True)

    print(
        f"\n{name}; gpt-jx-3b shape, {arch.layers} layers, {dtype}, {tokens}-token prefill; "
        f"GEMM {rate / 1e12:.1f} TFLOP/s; one fp32 [H, T, T] bias = {one_bias / GiB:.2f} GiB; "
        f"ATTENTION_BUDGET {ATTENTION_BUDGET / 2**20:.0f} MiB\n"
    )
    print("| backend | prefill | working memory | vs one bias | vs device | time | of GEMM rate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        how = f"{row['passes']} x {row['chunk']}" if row["passes"] > 1 else "one pass"
        if "error" in row:
            print(f"| {row['backend']} | {how} | {row['error']} | | | | |")
            continue
        used = row["working_bytes"]
        print(
            f"| {row['backend']} | {how} | {used / GiB:.2f} GiB | {used / one_bias:.2f} | "
            f"{used / device_bytes:.1%} | {row['seconds']:.2f} s | {flops / row['seconds'] / rate:.0%} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"device": name, "dtype": str(dtype), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
