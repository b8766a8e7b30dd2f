"""The CPU speed report: modeldeck vs transformers vs llama.cpp vs the floors, measured side by side in one run.

For random checkpoints shaped like pythia-160m, -410m and -1.4b (the exact Hugging Face layout, stored in float16
as Pythia is), one run measures, for each engine and precision:

    decode tok/s b1, b8   greedy, a 32-token prompt, N new tokens (exactly N: eos is forbidden), tokens after the
                          first / time after the first
    prefill tok/s         a P-token prompt to its first token
    first token s         load-to-first-token from launching a fresh interpreter (imports, reading the checkpoint,
                          a 32-token prefill and one token), beside the load floor: an interpreter that imports
                          torch, maps the checkpoint and touches every page of it
    agreement             leading greedy batch-1 tokens equal to modeldeck float32's

and the floors for each shape and dtype (benchmarks/decode_worker.py): one batch-1 pass over every weight with
F.linear ("torch's GEMV pass") and with the kernel modeldeck uses, and the streaming-read bandwidth divided by
the bytes of those weights (the memory roofline).

Engines: modeldeck at its default precision (what `runtime.load` picks on this CPU) and at float32, bfloat16,
float16 and int8 weights; transformers at float32, bfloat16 and float16; llama.cpp itself (benchmarks/llamacpp.py)
and modeldeck's `--engine llama.cpp` (md-llama.cpp: the same GGUF behind modeldeck's front end and sampling) at
f32, f16 and q8_0, batch 1, from llama.cpp's environment (`modeldeck engine install llama.cpp`; skipped with the
reason when absent) and modeldeck's GGUF export of the card. Every measurement is a fresh process; the engines take turns within each round (interleaved) and
the report gives medians over rounds. A trial during which other processes took more than --max-others of the
CPU time is discarded (the share is read from /proc/stat around the trial), so a busy machine shows up as
discarded trials rather than as slow engines.

    .venv/bin/python benchmarks/decode.py [--shapes 160m,410m,1.4b] [--rounds 3] [--new-tokens 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode_worker
import llamacpp
from decode_worker import SHAPES

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO.parent / "shared" / "reference" / "tokenizers" / "gpt-neox" / "tokenizer.json"
WORKER = Path(__file__).resolve().parent / "decode_worker.py"
MODELDECK = ("default", "float32", "bfloat16", "float16", "int8")
TRANSFORMERS = ("float32", "bfloat16", "float16")
LLAMACPP = ("f32", "f16", "q8_0")
FLOORS = ("float32", "bfloat16", "float16", "int8")


# --- the checkpoint ---------------------------------------------------------------------------------


def build_checkpoint(shape: dict, directory: Path) -> int:
    """config.json + model.safetensors (fp16, random) + tokenizer.json; returns the parameter count."""
    import torch
    import transformers
    from safetensors.torch import save_file

    config = decode_worker.pythia_config(shape)
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


# --- trials -----------------------------------------------------------------------------------------


def cpu_busy() -> float:
    """CPU-seconds all processes of the machine have spent busy so far (/proc/stat), or 0 where there is none."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    jiffies = [int(x) for x in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ours() -> float:
    """CPU-seconds this process and its finished children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def trial(cmd: list[str], stdin: str | None = None) -> tuple[dict, float]:
    """Run one measurement process; returns its JSON and the share of the machine's CPU others took meanwhile."""
    busy, mine, began = cpu_busy(), ours(), time.perf_counter()
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    others = max(0.0, (cpu_busy() - busy) - (ours() - mine)) / (wall * (os.cpu_count() or 1))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), others


def warm(checkpoint: Path) -> None:
    """Read the checkpoint into the page cache, so that no trial pays for what the one before it evicted."""
    for path in checkpoint.glob("*"):
        with path.open("rb") as file:
            while file.read(2**24):
                pass


def worker(spec: dict) -> tuple[dict, float]:
    if "checkpoint" in spec:
        warm(Path(spec["checkpoint"]))
    return trial([sys.executable, str(WORKER), json.dumps({**spec, "launched": time.time()})])


def llamacpp_trial(name: str, checkpoint: Path, outtype: str, args: argparse.Namespace) -> tuple[dict, float]:
    gguf = llamacpp.convert(decode_worker.modeldeck_card(SHAPES[name]), checkpoint, outtype)
    with gguf.open("rb") as file:  # into the page cache, as `warm` does for the other engines
        while file.read(2**24):
            pass
    busy, mine, began = cpu_busy(), ours(), time.perf_counter()
    result = llamacpp.measure(gguf, decode_worker.prompts(1)[0], args.new_tokens, args.threads, 1)
    wall = time.perf_counter() - began
    others = max(0.0, (cpu_busy() - busy) - (ours() - mine)) / (wall * (os.cpu_count() or 1))
    return result, others


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- the report -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def agreement(a: list[int] | None, b: list[int] | None) -> str:
    if not a or not b:
        return "-"
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"{same}/{min(len(a), len(b))}"


def machine(threads: int) -> str:
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return (
        f"{cpu or platform.processor()} ({', '.join(features)}), {threads} threads; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def collect(name: str, args: argparse.Namespace, checkpoint: Path) -> dict:
    """Every trial of one shape: `rounds` rounds, each running every engine configuration once, in turn."""
    configs = [("modeldeck", p) for p in args.modeldeck] + [("transformers", p) for p in args.transformers]
    skipped = llamacpp.available() if args.llamacpp or args.llamacpp_engine else "not asked for"
    if skipped is None:
        configs += [("llama.cpp", p) for p in args.llamacpp]
        configs += [("md-llama.cpp", p) for p in args.llamacpp_engine]
        for outtype in {*args.llamacpp, *args.llamacpp_engine}:  # exported (and cached) before any trial
            llamacpp.convert(decode_worker.modeldeck_card(SHAPES[name]), checkpoint, outtype)
    runs: dict[str, list[tuple[dict, float]]] = {f"{e} {p}": [] for e, p in configs}
    base = {"kind": "engine", "shape": name, "checkpoint": str(checkpoint), "threads": args.threads}
    base |= {"new_tokens": args.new_tokens, "prefill_tokens": args.prefill_tokens, "batches": [1, 8]}
    floors: dict[str, list[tuple[dict, float]]] = {p: [] for p in FLOORS}
    mmap_runs: list[tuple[dict, float]] = []
    if configs and configs[0][0] != "llama.cpp":  # a discarded first trial: the first process after another
        worker({**base, "engine": configs[0][0], "precision": configs[0][1]})  # shape's runs starts slower
    for round_ in range(args.rounds):
        for engine, precision in configs:
            key = f"{engine} {precision}"
            print(f"  {name} round {round_ + 1}/{args.rounds}: {key}", file=sys.stderr, flush=True)
            if engine == "llama.cpp":
                runs[key].append(llamacpp_trial(name, checkpoint, precision, args))
            else:
                batches = [1] if engine == "md-llama.cpp" else base["batches"]
                runs[key].append(worker({**base, "engine": engine, "precision": precision, "batches": batches}))
        spec = {"kind": "mmap", "checkpoint": str(checkpoint)}
        mmap_runs.append(worker(spec))
        for precision in FLOORS:
            floors[precision].append(worker({"kind": "floor", "shape": name, "precision": precision, "threads": 2}))
    return {"runs": runs, "floors": floors, "mmap": mmap_runs, "llamacpp_skipped": skipped}


def kept(trials: list[tuple[dict, float]], limit: float) -> list[dict]:
    return [result for result, others in trials if others <= limit]


def summarize(name: str, params: int, data: dict, limit: float) -> tuple[dict, list[str]]:
    """Medians of the kept trials of one shape, and its Markdown table."""
    summary: dict = {"parameters": params, "engines": {}, "floors": {}}
    for key, trials in data["runs"].items():
        good = kept(trials, limit)
        row: dict = {"trials": f"{len(good)}/{len(trials)}", "others": [round(o, 3) for _, o in trials]}
        for metric in ("tok_s_b1", "tok_s_b8", "prefill_tok_s", "first_token_s", "peak_rss_gb"):
            row[metric] = median([r[metric] for r in good if metric in r])
        if "prefill_b1_s" in (good[0] if good else {}):  # llama.cpp: a 32-token prompt's prefill
            row["prefill_tok_s"] = median([decode_worker.PROMPT_TOKENS / r["prefill_b1_s"] for r in good])
        row["tokens_b1"] = good[0].get("tokens_b1") if good else None
        row["dtype"] = good[0].get("dtype") if good else None
        row["why"] = good[0].get("why") if good else None
        summary["engines"][key] = row
    passes = {p: kept(trials, limit) for p, trials in data["floors"].items()}
    # The machine's read bandwidth: the fastest stream over memory any method reached in this run (a 1 GiB sum,
    # or a batch-1 pass over weights far larger than the caches).
    rates = [r["sum_gb_s"] for good in passes.values() for r in good]
    rates += [
        r["weight_bytes"] / r[k] / 1e9 for good in passes.values() for r in good for k in r if k.endswith("_pass_s")
    ]
    bandwidth = max(rates, default=None)
    summary["read_gb_s"] = bandwidth
    for precision, good in passes.items():
        if not good or bandwidth is None:
            continue
        summary["floors"][precision] = {
            "f_linear_tok_s": median([1 / r["f_linear_pass_s"] for r in good if "f_linear_pass_s" in r]),
            "kernel_tok_s": median([1 / r["kernel_pass_s"] for r in good]),
            "roofline_tok_s": bandwidth * 1e9 / good[0]["weight_bytes"],
        }
    summary["load_floor_s"] = median([r["done_s"] for r in kept(data["mmap"], limit)])
    summary["llamacpp_skipped"] = data["llamacpp_skipped"]
    reference = summary["engines"].get("modeldeck float32", {}).get("tokens_b1")
    lines = [
        f"**{name}** ({params / 1e6:,.0f}M parameters; load floor {fmt(summary['load_floor_s'], 2)} s; memory read "
        f"{fmt(bandwidth)} GB/s)",
        "",
        "| engine | dtype | decode tok/s b1 | decode tok/s b8 | prefill tok/s | first token s | peak RSS GB "
        "| greedy = md fp32 | trials kept |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in summary["engines"].items():
        lines.append(
            f"| {key} | {row['dtype'] or '-'} | {fmt(row['tok_s_b1'])} | {fmt(row['tok_s_b8'])} "
            f"| {fmt(row['prefill_tok_s'])} | {fmt(row['first_token_s'], 2)} | {fmt(row['peak_rss_gb'], 2)} "
            f"| {agreement(row['tokens_b1'], reference)} | {row['trials']} |"
        )
    if summary["llamacpp_skipped"] and summary["llamacpp_skipped"] != "not asked for":
        lines.append(f"| llama.cpp | {summary['llamacpp_skipped']} |||||||| ")
    lines += ["", "| floor, batch 1 | F.linear pass tok/s | modeldeck's kernel pass tok/s | memory roofline tok/s |"]
    lines.append("|---|---:|---:|---:|")
    for precision, f in summary["floors"].items():
        lines.append(
            f"| {precision} | {fmt(f['f_linear_tok_s'])} | {fmt(f['kernel_tok_s'])} | {fmt(f['roofline_tok_s'])} |"
        )
    return summary, lines


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def verdicts(name: str, s: dict) -> list[str]:
    """The issue's acceptance ratios for one shape, from its summary."""
    e, floors = s["engines"], s["floors"]

    def get(key: str, metric: str) -> float | None:
        return e.get(key, {}).get(metric)

    default = e.get("modeldeck default", {})
    dtype = default.get("dtype") or "float32"
    hf_same = f"transformers {dtype}"
    best_hf = {m: max((get(f"transformers {p}", m) or 0 for p in TRANSFORMERS), default=0) or None for m in
               ("prefill_tok_s", "tok_s_b8")}  # fmt: skip
    lines = [
        f"- {name}: default = {dtype} ({default.get('why') or '-'})",
        f"  - b1 / torch's GEMV pass ({dtype}, F.linear): {ratio(get('modeldeck default', 'tok_s_b1'), floors.get(dtype, {}).get('f_linear_tok_s'))}; "
        f"/ modeldeck's kernel pass: {ratio(get('modeldeck default', 'tok_s_b1'), floors.get(dtype, {}).get('kernel_tok_s'))}; "
        f"/ memory roofline: {ratio(get('modeldeck default', 'tok_s_b1'), floors.get(dtype, {}).get('roofline_tok_s'))}",
        f"  - vs {hf_same}: b1 {ratio(get('modeldeck default', 'tok_s_b1'), get(hf_same, 'tok_s_b1'))}, "
        f"b8 {ratio(get('modeldeck default', 'tok_s_b8'), get(hf_same, 'tok_s_b8'))}",
        f"  - prefill vs modeldeck fp32 {ratio(get('modeldeck default', 'prefill_tok_s'), get('modeldeck float32', 'prefill_tok_s'))}, "
        f"vs transformers' best {ratio(get('modeldeck default', 'prefill_tok_s'), best_hf['prefill_tok_s'])}; "
        f"b8 vs modeldeck fp32 {ratio(get('modeldeck default', 'tok_s_b8'), get('modeldeck float32', 'tok_s_b8'))}, "
        f"vs transformers' best {ratio(get('modeldeck default', 'tok_s_b8'), best_hf['tok_s_b8'])}",
        f"  - int8 / fp32 b1: {ratio(get('modeldeck int8', 'tok_s_b1'), get('modeldeck float32', 'tok_s_b1'))}",
        f"  - vs llama.cpp b1: f32 {ratio(get('modeldeck float32', 'tok_s_b1'), get('llama.cpp f32', 'tok_s_b1'))}, "
        f"half (default vs f16) {ratio(get('modeldeck default', 'tok_s_b1'), get('llama.cpp f16', 'tok_s_b1'))}, "
        f"int8 vs q8_0 {ratio(get('modeldeck int8', 'tok_s_b1'), get('llama.cpp q8_0', 'tok_s_b1'))}",
        f"  - modeldeck's llama.cpp engine / llama.cpp b1: f32 "
        f"{ratio(get('md-llama.cpp f32', 'tok_s_b1'), get('llama.cpp f32', 'tok_s_b1'))}, f16 "
        f"{ratio(get('md-llama.cpp f16', 'tok_s_b1'), get('llama.cpp f16', 'tok_s_b1'))}, q8_0 "
        f"{ratio(get('md-llama.cpp q8_0', 'tok_s_b1'), get('llama.cpp q8_0', 'tok_s_b1'))}",
        f"  - load-to-first-token / floor: {ratio(get('modeldeck default', 'first_token_s'), s['load_floor_s'])}",
    ]
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="160m,410m,1.4b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--modeldeck", default=",".join(MODELDECK), help="modeldeck precisions ('' for none)")
    parser.add_argument("--transformers", default=",".join(TRANSFORMERS), help="transformers dtypes ('' for none)")
    parser.add_argument("--llamacpp", default=",".join(LLAMACPP), help="llama.cpp GGUF types ('' for none)")
    parser.add_argument(
        "--llamacpp-engine", default=",".join(LLAMACPP), help="modeldeck's --engine llama.cpp GGUF types ('' for none)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the report gives medians")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-others", type=float, default=0.10, help="discard trials where others took more CPU")
    parser.add_argument("--checkpoints", type=Path, help="keep (and reuse) the random checkpoints here")
    parser.add_argument("--out", type=Path, help="write decode.json and decode.md here")
    args = parser.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    choices = [("modeldeck", MODELDECK), ("transformers", TRANSFORMERS), ("llamacpp", LLAMACPP)]
    for option, allowed in [*choices, ("llamacpp_engine", LLAMACPP)]:
        chosen = [p.strip() for p in getattr(args, option).split(",") if p.strip()]
        if unknown := [p for p in chosen if p not in allowed]:
            parser.error(
                f"--{option.replace('_', '-')}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}"
            )
        setattr(args, option, chosen)
    if args.rounds < 1 or args.new_tokens < 2 or args.prefill_tokens < 1:
        parser.error("--rounds must be >= 1, --new-tokens >= 2 and --prefill-tokens >= 1")
    return args


def main() -> None:
    args = parse()
    if not TOKENIZER.exists():
        sys.exit(f"skipped: modeldeck's loader needs a tokenizer file and {TOKENIZER} is absent")
    import tempfile

    root = args.checkpoints or Path(tempfile.mkdtemp(prefix="modeldeck-decode-"))
    lines = [
        f"Machine: {machine(args.threads)}.",
        f"Greedy, prompt {decode_worker.PROMPT_TOKENS} tokens, {args.new_tokens} new tokens; prefill of "
        f"{args.prefill_tokens} tokens; medians of {args.rounds} interleaved rounds, trials discarded when other "
        f"processes took more than {args.max_others:.0%} of the CPU.",
        "",
    ]
    report, checks = {"machine": machine(args.threads), "shapes": {}}, ["", "Acceptance ratios:", ""]
    try:
        for name in args.shapes:
            checkpoint = root / f"pythia-{name}-random"
            params = build_checkpoint(SHAPES[name], checkpoint)
            summary, table = summarize(name, params, collect(name, args, checkpoint), args.max_others)
            report["shapes"][name] = summary
            lines += [*table, ""]
            checks += verdicts(name, summary)
    finally:
        if args.checkpoints is None:
            shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines + checks) + "\n"
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        (args.out / "decode.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
