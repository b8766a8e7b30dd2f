"""The decode section of benchmarks/gpu.py: greedy decode tok/s of modeldeck against transformers on a random
pythia-shaped checkpoint, in a worker process of its own, and the section's Markdown table. The shape, prompts and
card are benchmarks/decode_worker.py's, as the CPU decode benchmark uses them."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decode_worker import PAD, PROMPT_TOKENS, VOCAB, modeldeck_card, prompts, pythia_config
from gpu_sections import (
    GB,
    Plan,
    Result,
    build_once,
    measure_row,
    number,
    random_tensor,
    settle,
    short,
    synchronizer,
    table,
    timed,
    write_tokenizer,
    xformers_unavailable,
)

DECODE_ROWS = (  # (engine, attention, static: modeldeck's CUDA graphs, transformers' static cache + torch.compile)
    ("modeldeck", "sdpa", False),
    ("modeldeck", "xformers", False),
    ("modeldeck", "sdpa", True),
    ("transformers", "sdpa", False),
    ("transformers", "sdpa", True),
)


def pythia_checkpoint(plan: Plan, work: Path, result: Result) -> tuple[Path, int]:
    """A random pythia-shaped checkpoint: config.json and model.safetensors in float16 as Pythia's, its tensors
    named as EleutherAI's are (transformers' GPT-NeoX names, the LM head `embed_out`). Drawn on the device, and
    reused from a folder that exists (decode.build_checkpoint draws on the CPU and needs the reference tokenizer)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    shape = plan.pythia
    config = pythia_config(shape)  # parallel residual, untied head, rotary on 1/4
    with torch.device("meta"):
        state = transformers.GPTNeoXForCausalLM(config).state_dict()
    shapes = {name.replace("lm_head.", "embed_out.", 1): tuple(t.shape) for name, t in state.items()}

    def write(directory: Path) -> None:
        generator = torch.Generator(device=plan.device).manual_seed(0)
        tensors = {
            name: torch.ones(shape, dtype=torch.float16)
            if name.endswith(("layernorm.weight", "final_layer_norm.weight"))
            else random_tensor(shape, 0.02, torch.float16, plan.device, generator)
            for name, shape in shapes.items()
        }
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(directory)
        result["tokenizer"] = write_tokenizer(directory, modeldeck_card(plan.pythia), "gpt-neox")

    directory = work / ("pythia-tiny-random" if plan.dry_run else "pythia-1.4b-random")
    build_once(directory, write)
    return directory, sum(math.prod(shape) for shape in shapes.values())


def bytes_per_token(shape: dict[str, int], params: int, dtype_bytes: int, new_tokens: int) -> int:
    """Bytes batch-1 decode reads per token: every weight but the input embedding (one row), plus the KV cache at
    the average context."""
    vocab, hidden = VOCAB, shape["hidden_size"]
    context = PROMPT_TOKENS + new_tokens / 2
    return int(dtype_bytes * (params - vocab * hidden + hidden + 2 * shape["layers"] * context * hidden))


Generate = Callable[[list[list[int]], int], list[list[int]]]


def modeldeck_engine(plan: Plan, directory: Path, attention: str, graphs: bool) -> tuple[Generate, dict[str, Any]]:
    from modeldeck import runtime
    from modeldeck.runtime.generate import generate_tokens, resolve_options

    card = modeldeck_card(plan.pythia)
    model = runtime.load(card, weights=directory, device=plan.device, dtype=plan.decode_dtype, attention=attention)

    def generate(ids: list[list[int]], n: int) -> list[list[int]]:
        opts = resolve_options(
            model.card.generation, [], {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
        )
        out: list[list[int]] = [[] for _ in ids]
        for events in generate_tokens(model.decoder, ids, opts, model.backend, [], PAD, cuda_graphs=graphs):
            for index, token in events:
                out[index].append(token)
        return out

    return generate, {"attention": model.backend.name}


def transformers_engine(plan: Plan, directory: Path, static: bool) -> tuple[Generate, dict[str, Any]]:
    """transformers with sdpa; `static`: a static cache, for which generate compiles the decoding forward pass
    with torch.compile on an accelerator (its CompileConfig: inductor, reduce-overhead)."""
    import torch
    import transformers

    dtype = getattr(torch, plan.decode_dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    model = model.to(plan.device).eval()
    extra = {"cache_implementation": "static"} if static else {}
    info: dict[str, Any] = {}
    if static and plan.device == "cuda" and not hasattr(model, "get_compiled_call"):  # older: compile it here
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        info["compiled"] = "torch.compile(model.forward): this transformers' generate does not compile"

    def generate(ids: list[list[int]], n: int) -> list[list[int]]:
        tokens = torch.tensor(ids, device=plan.device)
        out = model.generate(
            tokens, attention_mask=torch.ones_like(tokens), do_sample=False, min_new_tokens=n, max_new_tokens=n,
            pad_token_id=PAD, **extra,
        )  # fmt: skip
        if static and "compiled" not in info:
            info["compiled"] = hasattr(model, "_compiled_call")  # set by generate when it compiled
        return out[:, tokens.shape[1] :].tolist()

    return generate, info


def measure_rates(plan: Plan, generate: Generate) -> dict[str, Any]:
    """tok/s per batch: (N - 1) x batch / (median time of N new tokens - median time of 1), after a warm-up."""
    sync = synchronizer(plan.device)
    found: dict[str, Any] = {"tok_s": {}, "warmup_s": {}, "median_s": {}}
    for batch in plan.batches:
        ids, key = prompts(batch), f"b{batch}"
        began = time.perf_counter()
        tokens = generate(ids, plan.new_tokens)  # kernels, allocator, and torch.compile when it compiles
        sync()
        found["warmup_s"][key] = time.perf_counter() - began
        if batch == 1:
            found["tokens_b1"] = tokens[0]
        full, first = [], []
        for _ in range(plan.trials):
            full.append(timed(sync, generate, ids, plan.new_tokens))
            first.append(timed(sync, generate, ids, 1))
        decoding = statistics.median(full) - statistics.median(first)
        found["median_s"][key] = {"new_tokens": statistics.median(full), "one_token": statistics.median(first)}
        found["tok_s"][key] = (plan.new_tokens - 1) * batch / decoding if decoding > 0 else None
    return found


def decode_row(plan: Plan, directory: Path, engine: str, attention: str, static: bool) -> dict[str, Any]:
    if engine == "modeldeck" and attention == "xformers" and (why := xformers_unavailable(plan, plan.decode_dtype)):
        return {"skipped": why}
    if engine == "modeldeck" and static and plan.dry_run:
        return {"skipped": "CUDA graphs need a CUDA device"}
    began = time.perf_counter()
    if engine == "modeldeck":
        generate, info = modeldeck_engine(plan, directory, attention, static)
    else:
        generate, info = transformers_engine(plan, directory, static)
    loaded = time.perf_counter() - began
    return {"load_s": loaded, **measure_rates(plan, generate), **info}


def row_label(row: dict[str, Any]) -> str:
    static = ", CUDA graphs" if row["engine"] == "modeldeck" else ", static cache + torch.compile"
    return f"{row['engine']} {row['attention']}" + (static if row["static_compile"] else "")


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading greedy tokens two engines share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def decode_worker(plan: Plan, work: Path, result: Result) -> None:
    directory, params = pythia_checkpoint(plan, work, result)
    dtype_bytes = 2 if plan.decode_dtype in ("bfloat16", "float16") else 4
    result.update(
        shape_name="tiny pythia" if plan.dry_run else "pythia-1.4b",
        shape=plan.pythia,
        params=params,
        dtype=plan.decode_dtype,
        bytes_per_token=bytes_per_token(plan.pythia, params, dtype_bytes, plan.new_tokens),
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=plan.new_tokens,
        trials=plan.trials,
        batches=list(plan.batches),
        rows=[],
    )
    for engine, attention, static in DECODE_ROWS:
        row: dict[str, Any] = {"engine": engine, "attention": attention, "static_compile": static}
        result["rows"].append(row)
        result.save()
        measure_row(plan, result, row, decode_row, plan, directory, engine, attention, static, keep_traceback=True)
    reference = result["rows"][0].get("tokens_b1")
    for row in result["rows"][1:]:
        if reference and row.get("tokens_b1"):
            row["agree_b1"] = agreement(reference, row["tokens_b1"])
    errors = [f"{row_label(r)}: {r['error']}" for r in result["rows"] if "error" in r]
    settle(result, errors, measured=any("tok_s" in r for r in result["rows"]))


# --- the Markdown ---------------------------------------------------------------------------------------


def decode_headline(section: dict[str, Any]) -> str:
    rows = section.get("rows", [])
    return f"{sum('tok_s' in r for r in rows)} of {len(rows)} engines measured"


def roofline_of(report: dict[str, Any]) -> tuple[float | None, float | None]:
    """(roofline GB/s, roofline batch-1 tok/s) when both the roofline and decode sections produced them."""
    bandwidth = report["sections"]["roofline"].get("roofline_gb_s")
    per_token = report["sections"]["decode"].get("bytes_per_token")
    return bandwidth, bandwidth * GB / per_token if bandwidth and per_token else None


def decode_lines(report: dict[str, Any]) -> list[str]:
    section = report["sections"]["decode"]
    if not section.get("rows"):
        return []
    bandwidth, roof = roofline_of(report)
    batches = section["batches"]
    n = section["new_tokens"]
    roofline = (
        f"{bandwidth:,.0f} GB/s / {section['bytes_per_token'] / GB:.2f} GB read per batch-1 token = {roof:,.0f} tok/s"
        if roof and bandwidth
        else "not measured in this run"
    )
    lines = [
        f"Decode: {section['shape_name']} shape ({section['params'] / 1e6:,.0f}M parameters, random weights), "
        f"{section['dtype']}, greedy, prompt {section['prompt_tokens']} tokens, {n} new tokens; tok/s = ({n} - 1) x "
        f"batch / (time of {n} new tokens - time of 1), median of {section['trials']}. Roofline: {roofline}.",
        "",
    ]
    header = ["engine", "attention", *(f"tok/s b{b}" for b in batches), "b1 / roofline", "b1 greedy = modeldeck sdpa"]
    rows = []
    for i, r in enumerate(section["rows"]):
        how = row_label(r).removeprefix(r["engine"] + " ")
        rates = [number(r.get("tok_s", {}).get(f"b{b}")) for b in batches]
        b1 = r.get("tok_s", {}).get("b1")
        fraction = f"{b1 / roof:.0%}" if b1 and roof else "n/a"
        agree = "(reference)" if i == 0 else f"{r['agree_b1']}/{section['new_tokens']}" if "agree_b1" in r else "n/a"
        rows.append([r["engine"], how, *rates, fraction, agree, row_note(r)])
    return lines + table([*header, "note"], rows, "ll" + "r" * (len(header) - 2) + "l")


def row_note(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return "skipped: " + short(row["skipped"])
    if "error" in row:
        return "error: " + short(row["error"])
    notes = [f"load {row['load_s']:.1f} s"] if "load_s" in row else []
    if row.get("static_compile"):
        notes.append(f"compiled: {'yes' if row.get('compiled') else 'no'}")
    if warm := row.get("warmup_s"):
        notes.append("first call " + ", ".join(f"{k} {v:.1f} s" for k, v in warm.items()))
    return "; ".join(notes)
