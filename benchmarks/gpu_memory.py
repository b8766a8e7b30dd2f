"""The prefill and planner sections of benchmarks/gpu.py, on GPT-JX-3B (= BTLM-3B-8K: ALiBi, SwiGLU, muP): the
allocator's peak of an 8192-token prefill per attention backend, and registry/memory.py's `estimate` against what
the allocator measured for the same load and generation; each in a worker process of its own, with the plumbing
of benchmarks/gpu_sections.py, and the sections' Markdown tables."""

from __future__ import annotations

import functools
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from decode_worker import prompts
from gpu_sections import (
    REPO,
    Plan,
    Result,
    build_once,
    gb,
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


@functools.cache
def btlm_reference() -> Any:
    """tests/btlm_reference.py (not in a package, so loaded by path): BTLM's Hugging Face config.json, tensor names
    and shapes, initial scales and ALiBi slopes."""
    path = REPO / "tests" / "btlm_reference.py"
    spec = importlib.util.spec_from_file_location("_modeldeck_gpu_btlm_reference", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jx_card(plan: Plan) -> Any:
    """The gpt-jx-3b card, or for a dry run the same card with only its architecture shrunk."""
    import yaml

    from modeldeck import registry

    if plan.jx is None:
        return registry.default().get("gpt-jx-3b")
    data = yaml.safe_load((REPO / "cards" / "gpt-jx-3b.yaml").read_text(encoding="utf-8"))
    data["id"], data["aliases"], data["parameters"] = "gpt-jx-tiny", [], {}
    data["architecture"] = {**data["architecture"], **plan.jx}
    return registry.default().resolve_card(registry.card_from_data(data, "gpt-jx-tiny"), "gpt-jx-tiny")


def jx_checkpoint(plan: Plan, work: Path, result: Result) -> tuple[Any, Path]:
    """A random BTLM checkpoint in its exact Hugging Face layout (GPT-2 Conv1D weights, fused c_attn, stored
    slopes), in bfloat16 as published; config.json and tensor names from tests/btlm_reference.py."""
    import torch
    from safetensors.torch import save_file

    card, btlm = jx_card(plan), btlm_reference()
    a = card.architecture
    config = btlm.btlm_config(
        layers=a.layers, hidden=a.hidden_size, heads=a.heads, ffn=a.ffn_size, vocab=a.vocab_size,
        context=a.context_length,
    )  # fmt: skip

    def tensor(name: str, shape: tuple[int, ...], generator: Any) -> Any:
        if name == "transformer.relative_pe.slopes":
            return torch.tensor(btlm.alibi_slopes_reference(a.heads)).reshape(shape).to(torch.bfloat16)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            return torch.ones(shape, dtype=torch.bfloat16)
        std = btlm.BIAS_NOISE if name.endswith(".bias") else btlm.INITIALIZER_RANGE
        return random_tensor(shape, std, torch.bfloat16, plan.device, generator)

    def write(directory: Path) -> None:
        generator = torch.Generator(device=plan.device).manual_seed(0)
        shapes = btlm.btlm_parameter_shapes(config)
        tensors = {name: tensor(name, shape, generator) for name, shape in shapes.items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        result["tokenizer"] = write_tokenizer(directory, card, "gpt2")

    directory = work / f"{card.id}-random"
    build_once(directory, write)
    return card, directory


def jx_backends(plan: Plan) -> tuple[list[str], str | None]:
    """xformers (what `auto` picks for half precision on CUDA) when it can run here, and sdpa; why not xformers."""
    why = xformers_unavailable(plan, plan.jx_dtype)
    return (["sdpa"], f"xformers not measured: {why}") if why else (["xformers", "sdpa"], None)


def reset_peak(plan: Plan) -> int | None:
    """On CUDA: the allocator's cache emptied and its peak reset, and what is allocated now; elsewhere None."""
    if plan.device != "cuda":
        return None
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def settle_backends(result: Result) -> None:
    errors = [f"{r['backend']}: {r['error']}" for r in result["rows"] if "error" in r]
    settle(result, errors, measured=len(errors) < len(result["rows"]))


# --- section: prefill ------------------------------------------------------------------------------------


def measure_prefill(plan: Plan, model: Any, backend_name: str, ids: list[int]) -> dict[str, Any]:
    """One prefill of `ids` into a fresh cache (chunked as generate chunks it): time, and on CUDA the allocator's
    peak and that peak minus what was allocated before (weights, KV cache)."""
    import torch

    from modeldeck.runtime.attention import get_backend
    from modeldeck.runtime.generate import prefill
    from modeldeck.runtime.model import KVCache

    sync = synchronizer(plan.device)
    cache = KVCache(model.decoder.arch, 1, len(ids), model.dtype, model.device)
    backend = get_backend(backend_name)
    prefill(model.decoder, [ids[:64]], cache, backend, pad_id=model.tokenizer.pad_id)  # warm-up: kernels
    sync()
    before = reset_peak(plan)
    start = time.perf_counter()
    logits = prefill(model.decoder, [ids], cache, backend, pad_id=model.tokenizer.pad_id)
    sync()
    row: dict[str, Any] = {"seconds": time.perf_counter() - start, "finite": bool(torch.isfinite(logits).all())}
    if before is None:
        row["memory"] = "not measured: torch.cuda.max_memory_allocated needs CUDA"
    else:
        peak = torch.cuda.max_memory_allocated()
        row.update(before_bytes=before, peak_bytes=peak, working_bytes=peak - before)
    return row


def prefill_worker(plan: Plan, work: Path, result: Result) -> None:
    from modeldeck import runtime
    from modeldeck.runtime.generate import prefill_chunk

    card, directory = jx_checkpoint(plan, work, result)
    a = card.architecture
    tokens = a.context_length
    model = runtime.load(card, weights=directory, device=plan.device, dtype=plan.jx_dtype)
    backends, note = jx_backends(plan)
    chunk = prefill_chunk(a.heads, 1, tokens)
    result.update(
        card=card.id, dtype=plan.jx_dtype, tokens=tokens, chunk=chunk, passes=-(-tokens // chunk),
        one_bias_bytes=a.heads * tokens * tokens * 4, note=note, rows=[],
    )  # fmt: skip
    ids = prompts(1, tokens)[0]
    for backend in backends:
        row: dict[str, Any] = {"backend": backend}
        result["rows"].append(row)
        measure_row(plan, result, row, measure_prefill, plan, model, backend, ids)
    settle_backends(result)


# --- section: planner ------------------------------------------------------------------------------------


def estimate_terms(estimate: Any) -> dict[str, Any]:
    return {
        "attention": estimate.scenario.attention,
        "weights": estimate.weights.bytes,
        "loading": estimate.loading.bytes,
        "kv_cache": estimate.kv_cache.bytes,
        "activations": estimate.activations.bytes,
        "activations_formula": estimate.activations.formula,
        "running": estimate.running,
        "total": estimate.total,
    }


def load_measured(plan: Plan, card: Any, directory: Path) -> tuple[Any, dict[str, int]]:
    """runtime.load, and on CUDA what it left allocated (the weights) and its peak, above what was there before."""
    import torch

    from modeldeck import runtime

    base = reset_peak(plan)
    model = runtime.load(card, weights=directory, device=plan.device, dtype=plan.jx_dtype)
    synchronizer(plan.device)()
    if base is None:
        return model, {"base": 0, "weights": 0, "loading": 0}
    weights, peak = torch.cuda.memory_allocated() - base, torch.cuda.max_memory_allocated() - base
    return model, {"base": base, "weights": weights, "loading": peak}


def measure_generation(
    plan: Plan, model: Any, row: dict[str, Any], prompt: list[int], loaded: dict[str, int]
) -> dict[str, Any]:
    """The runtime's own generation of one new token after `prompt` (what the planner plans), and on CUDA the
    allocator's peak of it next to the loading peak."""
    import torch

    from modeldeck.runtime.attention import get_backend
    from modeldeck.runtime.generate import generate_tokens, resolve_options

    opts = resolve_options(model.card.generation, [], {"max_new_tokens": 1, "do_sample": False})
    backend = get_backend(row["backend"])

    def generate() -> None:
        for _ in generate_tokens(model.decoder, [prompt], opts, backend, [], model.tokenizer.pad_id):
            pass

    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    found: dict[str, Any] = {"seconds": timed(synchronizer(plan.device), generate)}
    if plan.device != "cuda":
        return found | {"measured": None, "reason": "not measured: torch.cuda.max_memory_allocated needs CUDA"}
    generation = torch.cuda.max_memory_allocated() - loaded["base"]
    total = max(loaded["loading"], generation)
    found["measured"] = {
        "weights": loaded["weights"],
        "loading": loaded["loading"],
        "generation": generation,
        "kv_and_activations": generation - loaded["weights"],
        "total": total,
    }
    found["estimate_over_measured"] = row["estimate"]["total"] / total
    return found


def planner_worker(plan: Plan, work: Path, result: Result) -> None:
    from modeldeck import registry
    from modeldeck.registry import memory

    card, directory = jx_checkpoint(plan, work, result)
    a = card.architecture
    layout = registry.default().checkpoint_layouts()[a.checkpoint_layout]
    backends, note = jx_backends(plan)
    options = {"dtype": plan.jx_dtype, "batch": 1, "context": a.context_length, "new_tokens": 1, "device": "cuda"}
    result.update(card=card.id, scenario=options | {"prompt": a.context_length - 1}, note=note, rows=[])
    for backend in backends:
        estimate = memory.estimate(card, attention=backend, checkpoint_dtype="bfloat16", layout=layout, **options)
        result["rows"].append({"backend": backend, "estimate": estimate_terms(estimate)})
    result.save()
    model, loaded = load_measured(plan, card, directory)
    prompt = prompts(1, a.context_length - 1)[0]
    for row in result["rows"]:
        measure_row(plan, result, row, measure_generation, plan, model, row, prompt, loaded)
    settle_backends(result)


# --- the Markdown of these sections ---------------------------------------------------------------------


def prefill_headline(section: dict[str, Any]) -> str:
    peaks = [f"{r['backend']} {gb(r['peak_bytes'])} GB" for r in section.get("rows", []) if "peak_bytes" in r]
    return "peak " + ", ".join(peaks) if peaks else "ran; its memory needs CUDA"


def planner_headline(section: dict[str, Any]) -> str:
    rows = [r for r in section.get("rows", []) if "estimate_over_measured" in r]
    ratios = [f"{r['backend']} {r['estimate_over_measured']:.2f}" for r in rows]
    return "estimate / measured " + ", ".join(ratios) if ratios else "estimated; measuring needs CUDA"


def prefill_lines(report: dict[str, Any]) -> list[str]:
    section = report["sections"]["prefill"]
    if not section.get("rows"):
        return []
    how = f"{section['passes']} passes of {section['chunk']} queries" if section["passes"] > 1 else "one pass"
    lines = [
        f"Prefill: {section['card']} (random weights, {section['dtype']}), one {section['tokens']:,}-token prompt "
        f"prefilled in {how}; peak = torch.cuda.max_memory_allocated during the prefill (weights and KV "
        f"cache included), working memory = peak - allocated before it; one fp32 [H, T, T] ALiBi bias = "
        f"{gb(section['one_bias_bytes'])} GB (GB = 10^9 bytes)."
        + (f" {section['note']}." if section.get("note") else ""),
        "",
    ]
    rows = []
    for r in section["rows"]:
        if "error" in r:
            rows.append([r["backend"], "error: " + short(r["error"]), "", "", ""])
            continue
        ratio = f"{r['working_bytes'] / section['one_bias_bytes']:.2f}" if "working_bytes" in r else "n/a"
        rows.append([r["backend"], gb(r.get("peak_bytes")), gb(r.get("working_bytes")), ratio, f"{r['seconds']:.2f}"])
    return lines + table(["backend", "peak GB", "working memory GB", "working / one bias", "time s"], rows, "lrrrr")


def planner_lines(report: dict[str, Any]) -> list[str]:
    section = report["sections"]["planner"]
    if not section.get("rows"):
        return []
    s = section["scenario"]
    lines = [
        f"Memory planner: `registry/memory.py estimate` for {section['card']} ({s['dtype']}, cuda, batch 1, prompt "
        f"{s['prompt']:,} + {s['new_tokens']} new token) against torch.cuda.max_memory_allocated of the same load "
        "and generation (both count tensors only: the CUDA context and the allocator's cache are outside them); "
        "each cell is estimate / measured, GB.",
        "",
    ]
    rows = []
    for r in section["rows"]:
        e, m = r["estimate"], r.get("measured") or {}
        pairs = [
            (e["weights"], m.get("weights")),
            (e["loading"], m.get("loading")),
            (e["kv_cache"] + e["activations"], m.get("kv_and_activations")),
            (e["total"], m.get("total")),
        ]
        ratio = number(r.get("estimate_over_measured"), 2)
        rows.append([r["backend"], *(f"{gb(est)} / {gb(got)}" for est, got in pairs), ratio])
    header = ["backend", "weights", "loading peak", "KV cache + activations", "total (peak)", "estimate / measured"]
    return lines + table(header, rows, "lrrrrr")
