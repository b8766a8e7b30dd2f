"""llama.cpp itself beside modeldeck and transformers: batch-1 greedy decode timing of a card's GGUF.

llama.cpp is the usual yardstick for CPU decoding, so benchmarks/decode.py can put it in the same table, beside
modeldeck's own runtime and modeldeck's `--engine llama.cpp` (the same GGUF behind modeldeck's front end). It runs
in llama.cpp's environment (`modeldeck engine install llama.cpp`); the GGUF is modeldeck's export of the card
(registry/export/gguf.py, cached), so all three read the same file. The measuring code is this file, run by that
environment's python with --worker (it imports nothing of modeldeck there).

    convert(card, checkpoint, outtype)   the card's GGUF (f32, f16 or q8_0), exported once and cached
    measure(gguf, prompt_ids, ...)       load with llama_cpp.Llama, evaluate the prompt, then greedy-decode exactly
                                         N tokens one at a time (argmax of the last logits, eos never stops it);
                                         prefill seconds (prompt through the first token) and tok/s = (N - 1) /
                                         time after the first token, best of --repeats; the first repeat's tokens
    available()                          None when llama.cpp's environment works, else the line to print instead

    .venv/bin/python benchmarks/llamacpp.py --gguf FILE [--new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUTTYPES = ("f32", "f16", "q8_0")


def python() -> Path:
    from modeldeck.registry.engines import llamacpp

    return llamacpp.find_python()


def available() -> str | None:
    """None when llama.cpp's environment can convert and run models, else why not (a line to print)."""
    from modeldeck.registry.engines.environment import EngineNotInstalledError

    try:
        python()
    except EngineNotInstalledError as error:
        return f"skipped: {error}"
    return None


def convert(card: Any, checkpoint: Path, outtype: str) -> Path:
    """The card's GGUF at `outtype` for the checkpoint (exported once, then taken from the cache)."""
    from modeldeck.registry.export.gguf import cached_export

    return cached_export(card, checkpoint, outtype)


# --- measurement ------------------------------------------------------------------------------------


def measure(gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int, repeats: int) -> dict[str, Any]:
    """Batch-1 greedy decode with llama.cpp in a fresh process of its environment; see the module docstring."""
    if new_tokens < 2 or repeats < 1 or not prompt_ids:
        raise ValueError("needs a prompt, new_tokens >= 2 (tok/s counts the tokens after the first) and repeats >= 1")
    if reason := available():
        raise RuntimeError(reason)
    spec = {
        "gguf": str(gguf.resolve()),
        "prompt_ids": prompt_ids,
        "new_tokens": new_tokens,
        "threads": threads,
        "repeats": repeats,
    }
    done = subprocess.run(
        [str(python()), __file__, "--worker"], input=json.dumps(spec), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp on {gguf} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs under llama.cpp's environment's python: load, then `repeats` timed greedy decodes."""
    start = time.perf_counter()
    import llama_cpp  # type: ignore[import-not-found]  # installed in llama.cpp's environment only
    import numpy as np

    prompt: list[int] = spec["prompt_ids"]
    new_tokens: int = spec["new_tokens"]
    imported = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        n_ctx=len(prompt) + new_tokens,
        n_batch=len(prompt),  # the whole prompt in one decode call
        verbose=False,
        logits_all=False,  # only the last position's logits: all greedy decoding needs
    )
    loaded = time.perf_counter()
    vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(logits.argmax())

    def generate() -> tuple[float, float, list[int]]:
        llm.reset()  # the next eval drops the KV cache from position 0
        began = time.perf_counter()
        llm.eval(prompt)
        tokens = [next_token()]
        first = time.perf_counter()
        while len(tokens) < new_tokens:
            llm.eval(tokens[-1:])
            tokens.append(next_token())
        return first - began, time.perf_counter() - first, tokens

    runs = [generate() for _ in range(spec["repeats"])]
    return {
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "gguf": spec["gguf"],
        "threads": spec["threads"],
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "import_s": imported - start,
        "load_s": loaded - imported,
        "prefill_b1_s": min(prefill for prefill, _, _ in runs),
        "tok_s_b1": max((new_tokens - 1) / decode for _, decode, _ in runs),
        "tokens_b1": runs[0][2],
        "repeats_agree": all(tokens == runs[0][2] for _, _, tokens in runs),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


# --- command line -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="a GGUF file (modeldeck export CARD --format gguf writes one)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the timings")
    parser.add_argument("--prompt-ids", help="comma-separated token ids; default: 32 seeded random ids")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.load(sys.stdin))))
        return
    if reason := available():
        sys.exit(reason)
    if args.gguf is None:
        parser.error("give --gguf FILE")
    if args.prompt_ids:
        prompt = [int(token) for token in args.prompt_ids.split(",")]
    else:
        rng = random.Random(0)
        prompt = [rng.randrange(2, 50000) for _ in range(32)]
    print(json.dumps(measure(args.gguf, prompt, args.new_tokens, args.threads, args.repeats), indent=2))


if __name__ == "__main__":
    main()
