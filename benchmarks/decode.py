"""CPU decode speed, load-to-first-token and peak memory: modeldeck's runtime vs transformers, side by side.

For random checkpoints shaped like pythia-160m and pythia-1.4b (the exact Hugging Face layout: config.json +
model.safetensors stored in float16, both engines load them as float32 on the CPU), one run measures:

    decode tok/s     greedy, a 32-token prompt, N new tokens (exactly N: eos is forbidden by min_new_tokens),
                     batch 1 and batch 8; tokens/s = (N - 1) x batch / time after the first token, so prefill
                     is excluded (it is reported on its own); best of --repeats
    roofline         memory bandwidth measured in the same run (fp32 sum and GEMV over 512 MiB, best of 5),
                     divided by the bytes batch-1 decode reads per token (every weight but the input embedding,
                     plus the KV cache at the average context); each engine's batch-1 tok/s as a fraction of it
    load-to-first    from launching a fresh interpreter to the first generated token: imports, reading the
                     checkpoint, prefill and one token (modeldeck: runtime.load; transformers: from_pretrained)
    peak RSS         ru_maxrss of that fresh process after loading and all the generation above

Each engine runs in its own subprocess, one after another, with the same token ids and torch.set_num_threads.
The checkpoint was just written, so both engines read it from the page cache. Needs the GPT-NeoX tokenizer
(modeldeck's loader reads it even though only token ids are used) from ../shared/reference/tokenizers.

    .venv/bin/python benchmarks/decode.py [--shapes 160m,1.4b] [--new-tokens 64] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO.parent / "shared" / "reference" / "tokenizers" / "gpt-neox" / "tokenizer.json"
SHAPES = {  # pythia-160m and pythia-1.4b: vocab 50304, rotary 0.25, parallel residual, untied embeddings
    "160m": {"layers": 12, "hidden_size": 768, "heads": 12, "ffn_size": 3072},
    "1.4b": {"layers": 24, "hidden_size": 2048, "heads": 16, "ffn_size": 8192},
}
VOCAB, PROMPT_TOKENS, BATCHES, PAD = 50304, 32, (1, 8), 1
ENGINES = ("modeldeck", "transformers")


# --- the checkpoint ---------------------------------------------------------------------------------


def hf_config(shape: dict):
    import transformers

    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["ffn_size"],
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
        torch_dtype="float16",
    )


def build_checkpoint(shape: dict, directory: Path) -> int:
    """config.json + model.safetensors (fp16, random) + tokenizer.json; returns the parameter count."""
    import torch
    import transformers
    from safetensors.torch import save_file

    config = hf_config(shape)
    with torch.device("meta"):
        state = transformers.GPTNeoXForCausalLM(config).state_dict()
    # stored as save_pretrained (and EleutherAI's checkpoints) name them: the LM head is `embed_out`
    names = {k.replace("lm_head.", "embed_out.", 1): v.shape for k, v in state.items()}
    if not (directory / "model.safetensors").exists():
        directory.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        tensors = {}
        for name, size in names.items():
            if name.endswith("layernorm.weight") or name.endswith("final_layer_norm.weight"):
                tensors[name] = torch.ones(size, dtype=torch.float16)
            else:
                tensors[name] = torch.empty(size).normal_(0.0, 0.02, generator=generator).half()
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(directory)
        shutil.copy(TOKENIZER, directory)
    return sum(size.numel() for size in names.values())


def modeldeck_card(shape: dict):
    from modeldeck import registry
    from modeldeck.plugins import pythia

    data = pythia.card_data("pythia-1.4b")
    data["id"], data["aliases"], data["parameters"] = "bench", [], {}
    data["architecture"] = {**data["architecture"], **shape, "kv_heads": shape["heads"]}
    return registry.default().resolve_card(registry.card_from_data(data, "bench"), "bench")


# --- the hardware limit -----------------------------------------------------------------------------


def bandwidth(threads: int) -> dict[str, float]:
    """GB/s reading (sum, GEMV) and copying (read + write) 512 MiB of fp32, best of 5."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(128 * 2**20)
    y = torch.empty_like(x)
    w, v = x.view(16384, 8192), torch.ones(8192)
    cases = {"sum": (lambda: x.sum(), 1), "copy": (lambda: y.copy_(x), 2), "gemv": (lambda: torch.mv(w, v), 1)}
    found = {}
    for name, (fn, passes) in cases.items():
        fn()
        best = min(timed(fn) for _ in range(5))
        found[name] = passes * x.numel() * 4 / best / 1e9
    return found


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_per_token(shape: dict, params: int, new_tokens: int) -> int:
    """fp32 bytes batch-1 decode reads per token: all weights but the input embedding (one row), plus the KV cache."""
    hidden = shape["hidden_size"]
    context = PROMPT_TOKENS + new_tokens / 2
    return int(4 * (params - VOCAB * hidden + hidden) + 4 * 2 * shape["layers"] * context * hidden)


# --- one engine in a fresh process ------------------------------------------------------------------


def prompts(batch: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(batch)
    return torch.randint(2, 50000, (batch, PROMPT_TOKENS), generator=generator).tolist()


def worker(args: argparse.Namespace) -> None:
    """Load one engine, time the first token, then decode; prints one JSON line."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "modeldeck":
        from modeldeck import runtime
        from modeldeck.runtime.generate import generate_tokens, resolve_options
    else:
        import transformers
        from transformers.generation.streamers import BaseStreamer
    imported = time.perf_counter()

    if args.worker == "modeldeck":
        model = runtime.load(modeldeck_card(SHAPES[args.shape]), weights=args.checkpoint, device="cpu", dtype="float32")

        def generate(ids: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
            opts = resolve_options(model.card.generation, [], {"max_new_tokens": n, "min_new_tokens": n})
            out: list[list[int]] = [[] for _ in ids]
            began, first = time.perf_counter(), None
            for events in generate_tokens(model.decoder, ids, opts, model.backend, [], PAD):
                first = first or time.perf_counter()
                for index, token in events:
                    out[index].append(token)
            return first - began, time.perf_counter() - first, out

    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()

        class Clock(BaseStreamer):  # put(): the prompt, then every new token as it is chosen
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        def generate(ids: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
            tokens, clock = torch.tensor(ids), Clock()
            began = time.perf_counter()
            out = model.generate(
                tokens, attention_mask=torch.ones_like(tokens), do_sample=False, min_new_tokens=n,
                max_new_tokens=n, pad_token_id=PAD, streamer=clock,
            )  # fmt: skip
            return clock.times[1] - began, time.perf_counter() - clock.times[1], out[:, tokens.shape[1] :].tolist()

    loaded = time.perf_counter()
    prefill, _, first = generate(prompts(1), 1)
    result = {
        "import_s": imported - start,
        "load_s": loaded - imported,
        "first_token_s": time.time() - args.started,  # from launching this interpreter
        "prefill_b1_s": prefill,
        "peak_rss_first_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "first_token": first[0][0],
    }
    for batch in BATCHES:
        runs = [generate(prompts(batch), args.new_tokens) for _ in range(args.repeats)]
        result[f"tok_s_b{batch}"] = max((args.new_tokens - 1) * batch / decode for _, decode, _ in runs)
        result[f"tokens_b{batch}"] = runs[0][2][0]
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def run_engine(engine: str, shape: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--shape", shape, "--checkpoint", str(checkpoint)]
    cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run([*cmd, "--started", repr(time.time())], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{engine} on {shape} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the report -------------------------------------------------------------------------------------


def machine(threads: int) -> str:
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return (
        f"{cpu or platform.processor()}, {threads} threads; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading greedy tokens two engines share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="160m,1.4b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the throughput numbers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, help="keep (and reuse) the random checkpoints here")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    for hidden in ("--worker", "--shape", "--checkpoint", "--started"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.started = float(args.started)
        worker(args)
        return
    shapes = [s.strip() for s in args.shapes.split(",")]
    if unknown := [s for s in shapes if s not in SHAPES]:
        sys.exit(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if not TOKENIZER.exists():
        sys.exit(f"skipped: modeldeck's loader needs a tokenizer file and {TOKENIZER} is absent")

    root = args.checkpoints or Path(tempfile.mkdtemp(prefix="modeldeck-decode-"))
    bw = bandwidth(args.threads)
    peak = max(bw["sum"], bw["gemv"])
    lines = [
        f"Machine: {machine(args.threads)}.",
        f"Memory bandwidth ({args.threads} threads, 512 MiB fp32): sum {bw['sum']:.1f} GB/s, GEMV {bw['gemv']:.1f} GB/s, "
        f"copy {bw['copy']:.1f} GB/s (read + write); the roofline uses {peak:.1f} GB/s.",
        f"Greedy, fp32, prompt {PROMPT_TOKENS} tokens, {args.new_tokens} new tokens, decode tok/s best of "
        f"{args.repeats}, prefill excluded; load-to-first-token includes interpreter start and imports.",
        "",
        "| shape | engine | decode tok/s b1 | decode tok/s b8 | b1 / roofline | prefill b1 s | import s "
        "| load-to-first-token s | peak RSS GB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    try:
        for name in shapes:
            directory = root / f"pythia-{name}-random"
            params = build_checkpoint(SHAPES[name], directory)
            per_token = bytes_per_token(SHAPES[name], params, args.new_tokens)
            roofline = peak * 1e9 / per_token
            found = {engine: run_engine(engine, name, directory, args) for engine in ENGINES}
            for engine, r in found.items():
                lines.append(
                    f"| {name} | {engine} | {r['tok_s_b1']:.2f} | {r['tok_s_b8']:.2f} | {r['tok_s_b1'] / roofline:.0%} "
                    f"| {r['prefill_b1_s']:.3f} | {r['import_s']:.2f} | {r['first_token_s']:.2f} | {r['peak_rss_gb']:.2f} |"
                )
            same = agreement(found["modeldeck"]["tokens_b1"], found["transformers"]["tokens_b1"])
            notes.append(
                f"- {name}: {params / 1e6:.0f}M parameters, {per_token / 1e9:.2f} GB read per batch-1 token, roofline "
                f"{roofline:.2f} tok/s; greedy batch-1 tokens agree for {same}/{args.new_tokens}."
            )
    finally:
        if args.checkpoints is None:
            shutil.rmtree(root, ignore_errors=True)
    report = "\n".join([*lines, "", *notes]) + "\n"
    print(report, end="")
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
