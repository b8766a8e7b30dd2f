"""The memory planner (registry/memory.py, `modeldeck memory`): each term for known cards, what fits, the multi-GPU
split, the command line, and the estimates against the peak memory measured on the CPU for tiny models of four
families (gpt-neox, falcon with GQA, llama, btlm with ALiBi)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeldeck import registry
from modeldeck.registry import memory
from modeldeck.registry.decoder import DTYPE_BYTES, default_precision
from modeldeck.registry.memory import MemoryPlanError

FALCON_40B = "h2ogpt-oig-oasst1-falcon-40b"


def card_and_layout(card_id: str):
    card = registry.get(card_id)
    return card, registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]


def plan(card_id: str, **options) -> memory.Estimate:
    card, layout = card_and_layout(card_id)
    return memory.estimate(card, layout=layout, **options)


def phase(estimate: memory.Estimate, name: str) -> int:
    return next(t.bytes for t in estimate.phases if t.name == name)


# --- each term --------------------------------------------------------------------------------------


def test_weights_are_the_parameter_count_times_the_dtype_bytes():
    assert plan("pythia-1.4b", dtype="float16").weights.bytes == 1_414_647_808 * 2
    assert plan("pythia-1.4b", dtype="float32").weights.bytes == 1_414_647_808 * 4
    default = default_precision("cpu", "float16", "float16").dtype  # the CPU default for fp16 weights: this CPU's
    assert plan("pythia-1.4b").weights.bytes == 1_414_647_808 * DTYPE_BYTES[default]
    falcon = plan(FALCON_40B, dtype="bfloat16")
    assert falcon.weights.bytes == 41_303_293_952 * 2 == 82_606_587_904  # more than an 80 GB GPU


def test_the_kv_cache_counts_key_value_heads():
    # Falcon-40B: 128 query heads share 8 kv heads; per token 2 (k, v) x 60 layers x 8 x 64 head_dim x 2 bytes.
    per_token = 2 * 60 * 8 * 64 * 2
    assert per_token == 122_880
    falcon = plan(FALCON_40B, dtype="bfloat16", context=2048, batch=3, device="cuda")
    assert falcon.kv_cache.bytes == 3 * 2048 * per_token  # 16x less than 128 heads would need
    pythia = plan("pythia-1.4b", dtype="float16", context=1000, batch=2, device="cuda")
    assert pythia.kv_cache.bytes == 2 * 1000 * (2 * 24 * 16 * 128 * 2)  # multi-head: kv_heads = heads
    # On a CPU a half-precision model keeps its cache (and runs attention) in float32: registry/decoder.cache_dtype
    assert plan("pythia-1.4b", dtype="float16", context=1000, batch=2).kv_cache.bytes == 2 * pythia.kv_cache.bytes
    # preallocated for prompt + new tokens, whatever the split between them
    assert (
        plan("pythia-1.4b", context=1000, new_tokens=999).kv_cache.bytes
        == plan("pythia-1.4b", context=1000).kv_cache.bytes
    )


def test_the_prefill_peak_of_pythia_is_one_blocks_mlp_worked_out_by_hand():
    """pythia-1.4b on the CPU in float32, one prompt of 1,792 tokens (2,048 - 256 new): prefill_chunk gives
    2^28 // (16 heads x 1,792 x 4) = 2,340 >= 1,792 queries, so one pass. At its fullest a block holds, besides its
    input x: h = attn_norm(x), attended, x + attended, mlp_norm(x) ([1792, 2048] fp32 each) and the MLP's up(h2)
    and gelu(up) ([1792, 8192] fp32 each). Around the blocks: the int64 tokens, sdpa's boolean mask
    [1, 1, 1792, 1792] and the fp32 rotary cos and sin [1, 1792, 1, 32]."""
    estimate = plan("pythia-1.4b", context=2048, dtype="float32")
    assert (estimate.scenario.prompt, estimate.scenario.new_tokens) == (1792, 256)
    t, d, f, rotary = 1792, 2048, 8192, 32
    expected = 8 * t + t * t + 2 * 4 * t * rotary + 5 * 4 * t * d + 2 * 4 * t * f
    assert phase(estimate, "prefill") == expected == estimate.activations.bytes
    assert phase(estimate, "sampling") == 50304 * (4 + 26)  # logits + top-p's temporaries, per vocabulary entry
    assert estimate.running == estimate.weights.bytes + estimate.kv_cache.bytes + expected  # nothing mapped: fp32
    assert estimate.total == max(estimate.running, estimate.loading.bytes)


def test_the_alibi_mask_of_a_long_prefill_is_bounded_by_the_attention_budget():
    # GPT-JX at 8,192 tokens: chunks of 2^28 // (32 x 8192 x 4) = 256 queries, whose fp32 ALiBi mask
    # [1, 32, 256, 8192] is exactly ATTENTION_BUDGET; building it adds the int64 distances and their fp32 copy.
    estimate = plan("gpt-jx-3b", context=8192, new_tokens=1)
    assert memory.prefill_chunk(32, 1, 8191) == 256
    build = 8191 * 256 * (1 + 8 + 4) + memory.ATTENTION_BUDGET * 8191 // 8192  # visible, distances, float, bias
    assert memory.ATTENTION_BUDGET < phase(estimate, "prefill") < 2 * memory.ATTENTION_BUDGET
    assert phase(estimate, "prefill") >= build
    # one pass over 8,192 tokens would hold a 32 x 8192 x 8192 fp32 mask: 8 GiB
    assert phase(estimate, "prefill") < 32 * 8192 * 8192 * 4 / 20


def test_the_runtime_and_the_planner_share_the_budget_and_the_chunk_size():
    pytest.importorskip("torch")
    from modeldeck.runtime.generate import ATTENTION_BUDGET, prefill_chunk

    assert ATTENTION_BUDGET is memory.ATTENTION_BUDGET
    for heads in (1, 4, 32, 128):
        for batch in (1, 3, 64):
            for keys in (1, 17, 1000, 8192):
                assert memory.prefill_chunk(heads, batch, keys) == prefill_chunk(heads, batch, keys)


def test_loading_counts_the_mapped_checkpoint_pages():
    params = 1_414_647_808
    # Converted on the CPU (fp16 file -> fp32): every page of the file is read while the weights are built.
    converted = plan("pythia-1.4b", dtype="float32", checkpoint_dtype="float16")
    assert converted.loading.bytes == params * 4 + params * 2
    assert converted.mapped.bytes == 0  # the mapping is released when loading returns
    # Unconverted, tensors are used in place; the GPT-NeoX QKV (reordered per head) is copied, and its file pages
    # stay mapped with the rest for the whole run.
    in_place = plan("pythia-1.4b", dtype="float16", checkpoint_dtype="float16")
    qkv = 6144 * 2048 + 6144  # (16 + 2 x 16) x 128 rows, weight and bias
    assert in_place.mapped.bytes == 24 * qkv * 2 == in_place.loading.bytes - in_place.weights.bytes
    assert in_place.running == in_place.weights.bytes + in_place.mapped.bytes + in_place.kv_cache.bytes + (
        in_place.activations.bytes
    )
    # BTLM stores every linear weight transposed (GPT-2 Conv1D): all of them are copied.
    jx = plan("gpt-jx-3b", dtype="float32", checkpoint_dtype="float32")
    per_block = 3 * 2560 * 2560 + 2560 * 2560 + 3 * 2560 * 6826
    assert jx.mapped.bytes == 32 * per_block * 4
    # On a GPU the conversion happens on the host; the device sees one fused QKV weight in the checkpoint's dtype.
    falcon = plan(FALCON_40B, device="cuda")
    assert falcon.scenario.dtype == "bfloat16"  # the card's dtype, as the runtime picks on a GPU
    assert falcon.loading.bytes == falcon.weights.bytes + 9216 * 8192 * 2
    assert falcon.mapped.bytes == 0


def test_defaults_follow_the_runtime():
    cpu = plan(FALCON_40B)  # a bfloat16 checkpoint: bfloat16 where this CPU computes it, else float32
    expected = default_precision("cpu", "bfloat16", "bfloat16").dtype
    assert (cpu.scenario.dtype, cpu.scenario.device, cpu.scenario.attention) == (expected, "cpu", "sdpa")
    assert plan("tiny-neox").scenario.dtype == "float32"  # never more precise than the weights: fp32 stays fp32
    assert (cpu.scenario.context, cpu.scenario.new_tokens) == (2048, 100)  # context_length, max_new_tokens
    gpu = plan(FALCON_40B, device="cuda")
    assert (gpu.scenario.dtype, gpu.scenario.attention) == ("bfloat16", "xformers")
    assert plan(FALCON_40B, device="cuda", dtype="float32").scenario.attention == "sdpa"
    assert plan("tiny-neox", context=10).scenario.new_tokens == 9  # the card's 64 does not fit: context - 1
    with pytest.raises(MemoryPlanError, match=r"astrid-1b.*dtype auto.*--dtype"):
        plan("astrid-1b", device="cuda")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"context": -5}, r"context must be at least 2 tokens.*got -5"),
        ({"context": 4096}, r"context 4,096 exceeds the context_length of card 'h2ogpt-oig-oasst1-falcon-40b' \(2,048"),
        ({"dtype": "float8"}, r"dtype 'float8' is not supported; choose one of float32, float16, bfloat16"),
        ({"checkpoint_dtype": "int4"}, r"checkpoint dtype 'int4'"),
        ({"batch": 0}, r"batch must be at least 1, got 0"),
        ({"context": 100, "new_tokens": 100}, r"new tokens 100 leave no room for a prompt.*from 1 to 99"),
        ({"new_tokens": 0}, r"new tokens must be at least 1, got 0"),
        ({"attention": "flash"}, r"attention 'flash' is not a backend"),
        ({"attention": "xformers"}, r"xformers needs device cuda"),
        ({"device": "tpu"}, r"device 'tpu' is not supported"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(MemoryPlanError, match=message):
        plan(FALCON_40B, **options)


# --- what fits --------------------------------------------------------------------------------------


def scan(fits, low: int, high: int) -> int | None:
    """The reference: the largest n such that every value from low to n fits, one value at a time."""
    best = None
    for n in range(low, high + 1):
        if not fits(n):
            break
        best = n
    return best


@pytest.mark.parametrize(
    ("card_id", "options"),
    [
        ("pythia-1.4b", {"dtype": "float16", "batch": 4, "new_tokens": 8, "device": "cuda", "attention": "sdpa"}),
        (FALCON_40B, {"new_tokens": 8, "device": "cuda"}),
        ("aira-2-1b1", {"new_tokens": 8}),
    ],
)
def test_largest_context_and_batch_fit_and_grow_with_memory(card_id, options):
    card, layout = card_and_layout(card_id)
    options = {**options, "layout": layout}
    weights = memory.estimate(card, **options).weights.bytes
    limit = card.architecture.context_length
    contexts, batches = [], []
    for share in (1.0001, 1.01, 1.05, 1.3, 2.0):
        device = int(weights * share)
        context = memory.largest_context(card, device, **options)
        batch = memory.largest_batch(card, device, **{**options, "context": 512})
        contexts.append(context or 0)
        batches.append(batch or 0)

        def total(**o):
            return memory.estimate(card, **{**options, **o}).total

        assert context == scan(lambda n, device=device: total(context=n) <= device, 9, limit)
        assert batch == scan(lambda b, device=device: total(context=512, batch=b) <= device, 1, 5000)
        if context is not None and context < limit:
            assert total(context=context) <= device < total(context=context + 1)
        if batch is not None:
            assert total(context=512, batch=batch) <= device < total(context=512, batch=batch + 1)
    assert contexts == sorted(contexts) and batches == sorted(batches)  # more memory never fits less
    assert contexts[-1] > contexts[0] or contexts[0] == limit


def test_a_longer_prompt_can_need_less_memory_and_the_largest_context_is_one_every_shorter_one_fits():
    """Past one pass, prefill chunks shrink as the prompt grows (ATTENTION_BUDGET), so Falcon-40B's total dips;
    the largest context is one that every shorter context also fits, not just any context that fits."""
    card, layout = card_and_layout(FALCON_40B)
    options = {"device": "cuda", "new_tokens": 8, "layout": layout}

    def total(n: int) -> int:
        return memory.estimate(card, context=n, **options).total

    dip = next(n for n in range(100, 2048) if total(n + 1) < total(n))
    device = total(dip + 1)  # dip + 1 fits, dip does not
    largest = memory.largest_context(card, device, **options)
    assert largest is not None and largest < dip
    assert largest == scan(lambda n: total(n) <= device, 9, 2048)


@pytest.mark.parametrize(("gb", "gpus"), [(141, 1), (80, 2), (40, 4), (24, 4), (10, 16)])
def test_falcon_40b_in_bfloat16_is_split_over_the_fewest_gpus_tensor_parallelism_allows(gb, gpus):
    card, layout = card_and_layout(FALCON_40B)
    estimate = memory.estimate(card, dtype="bfloat16", device="cuda", layout=layout)
    device = gb * 10**9
    plan = memory.tensor_parallel_plan(card, estimate, device)
    assert plan is not None and plan.gpus == gpus
    assert plan.weights * gpus >= estimate.weights.bytes  # every GPU holds its slice of every layer
    assert plan.per_gpu == plan.weights + plan.kv_cache + plan.activations <= 0.9 * device
    smaller = [tp for tp in memory.tensor_parallel_sizes(card.architecture) if tp < gpus]
    assert all(estimate.weights.bytes / tp > 0.9 * device for tp in smaller)  # fewer GPUs could not hold it
    if gb == 80:
        assert memory.largest_context(card, device, dtype="bfloat16", device="cuda", layout=layout) is None


def test_tensor_parallel_sizes_follow_the_heads():
    card, _ = card_and_layout(FALCON_40B)  # 128 query heads, 8 kv heads, ffn 32768
    assert memory.tensor_parallel_sizes(card.architecture) == [1, 2, 4, 8, 16, 32, 64, 128]
    arch = card.architecture.model_copy(update={"heads": 12, "kv_heads": 4, "ffn_size": 96})
    assert memory.tensor_parallel_sizes(arch) == [1, 2, 4, 12]  # 3, 6: kv heads would not split evenly
    estimate = memory.estimate(card, dtype="bfloat16", device="cuda")
    assert memory.tensor_parallel_plan(card, estimate, 10**8) is None  # 128 GPUs of 0.1 GB are not enough


# --- the command line --------------------------------------------------------------------------------


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_cli_plans_falcon_40b_on_80_gb_gpus(run_cli):
    result = run_cli("memory", "h2ogpt-falcon-40b", "--dtype", "bfloat16", "--device-memory", "80")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bfloat16 on cuda, attention xformers; batch 1, context 2,048 = prompt 1,948 + 100 new tokens" in out
    assert "82.61 GB  41,303,293,952 parameters x 2 bytes (bfloat16)" in out
    assert "2 (k, v) x 60 layers x 1 x 2,048 positions x 8 kv heads x 64 head_dim x 2 bytes" in out
    assert "device memory 80.00 GB: does not fit" in out
    assert "largest context at batch 1: none fits (the weights alone are 82.61 GB)" in out
    assert (
        "tensor parallel over 2 GPUs of 80.00 GB (modeldeck serve h2ogpt-oig-oasst1-falcon-40b --engine vllm "
        "--tensor-parallel-size 2): per GPU 41.49 GB = weights 41.30 GB" in out
    )


def test_cli_json(run_cli):
    result = run_cli("memory", "pythia-1.4b", "--dtype", "float16", "--context", "1024", "--batch", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    terms = {t["name"]: t for t in report["terms"]}
    assert terms["weights"]["bytes"] == 1_414_647_808 * 2
    assert terms["KV cache"]["bytes"] == 2 * 24 * 2 * 1024 * 16 * 128 * 4  # float32 on a CPU: decoder.cache_dtype
    assert "runtime/model.py KVCache" in terms["KV cache"]["source"]
    assert report["scenario"] == {
        "dtype": "float16",
        "device": "cpu",
        "attention": "sdpa",
        "batch": 2,
        "prompt": 768,
        "new_tokens": 256,
        "checkpoint_dtype": "float16",
        "context": 1024,
    }
    assert report["total"] == max(report["running"], terms["loading"]["bytes"])
    fits = json.loads(run_cli("memory", "pythia-1.4b", "--device-memory", "24", "--json").stdout)
    assert (
        fits["fits"]
        and fits["tensor_parallel"] is None
        and fits["largest_context"] == 2048
        and fits["largest_batch"] > 1
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--context", "-5"], 1, "error: context must be at least 2 tokens (a prompt token and a new one), got -5"),
        (["--context", "4096"], 1, "exceeds the context_length of card 'h2ogpt-oig-oasst1-falcon-40b' (2,048 tokens)"),
        (["--dtype", "float8"], 2, "Invalid value for '--dtype': 'float8' is not one of"),
        (["--batch", "0"], 1, "error: batch must be at least 1, got 0"),
        (["--device-memory", "-1"], 1, "--device-memory must be a positive number of GB up to 1,000,000, got -1"),
    ],
)
def test_cli_bad_input_is_one_clean_message(run_cli, args, code, message):
    result = run_cli("memory", "h2ogpt-falcon-40b", *args)
    assert result.returncode == code, result.stdout
    assert message in result.stderr
    no_traceback(result)


def test_cli_unknown_card(run_cli):
    result = run_cli("memory", "falcon-41b")
    assert result.returncode == 1 and "No card named 'falcon-41b'" in result.stderr
    no_traceback(result)


# --- estimates against measured peak memory -----------------------------------------------------------

# The subprocess: after the imports, a warm-up that loads and runs a one-layer copy of the model (the first load
# and generation pull in code and lazily built state -- torch's meta-device decompositions alone are ~70 MB -- that
# belong to the process, not to the model), then the baseline, then the peak over the real load (VmHWM after
# clear_refs, as tests/test_gpt_jx.py does) and, reset again, over one generation.
MEASURE = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    import torch
    from modeldeck import registry
    from modeldeck.runtime.attention import get_backend
    from modeldeck.runtime.generate import generate_tokens, resolve_options
    from modeldeck.runtime.loading import load_decoder

    def status(field):  # kB -> bytes, from this process' own memory accounting
        line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    def reset_peak():  # VmHWM := VmRSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    directory, batch, prompt, new = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    reg = registry.default()
    backend = get_backend("sdpa")

    def run(folder, prompts, new):
        data = json.loads((folder / "card.json").read_text())
        card = reg.resolve_card(registry.card_from_data(data, folder.name), folder.name)
        layout = reg.checkpoint_layouts()[card.architecture.checkpoint_layout]
        # top-k and top-p: the sampling path with the most temporaries; no eos, so every new token is made
        options = {"max_new_tokens": new, "do_sample": True, "top_k": 50, "top_p": 0.9, "seed": 0}
        opts = resolve_options(card.generation, [], options)
        decoder = load_decoder(card, layout, folder, torch.float32, torch.device("cpu"))
        yield
        for _ in generate_tokens(decoder, prompts, opts, backend, eos=[], pad_id=0):
            pass
        yield

    for _ in run(Path(str(directory) + "-micro"), [[1] * 40, [2] * 40], 3):
        pass
    gc.collect()
    ids = torch.randint(0, 16000, (batch, prompt), generator=torch.Generator().manual_seed(0)).tolist()
    steps = run(directory, ids, new)
    try:
        reset_peak()
    except OSError:
        print(json.dumps({"skip": "/proc/self/clear_refs is not writable: no per-phase peak"}))
        raise SystemExit
    base = status("VmRSS")
    next(steps)  # loaded
    loading = status("VmHWM") - base
    reset_peak()
    next(steps)  # generated
    running = status("VmHWM") - base
    print(json.dumps({"base": base, "loading": loading, "running": running}))
    """
)

# Tiny models, one per family, with 20-80 MB of fp32 weights and prompts of 1,500-3,000 tokens, so that the model's
# own memory (100-350 MB: weights, a KV cache of tens of MB, activations of 30-250 MB) is far above what the
# process does besides (page-sized noise, Python objects for the token lists, under 1 MB), and each run takes a
# few seconds. The checkpoints are stored in bfloat16, as published checkpoints are, and loaded in float32, the
# runtime's CPU default: every weight is converted, so it becomes ordinary memory (used in place, an mmapped
# fp32 file would count only the pages read: the embedding rows a prompt never looks up would not count).
TINY = {  # family: seed card, architecture, batch, prompt tokens (16 new tokens each)
    "gpt-neox": ("pythia-1.4b", {"heads": 4, "kv_heads": 4, "ffn_size": 1024, "vocab_size": 16384}, 1, 3000),
    # GQA, tied embeddings, fused QKV grouped by kv head; 2 x 8 heads x 2,500 keys: two prefill chunks
    "falcon": (FALCON_40B, {"heads": 8, "kv_heads": 2, "ffn_size": 1024, "vocab_size": 16384}, 2, 2500),
    # GQA, SwiGLU, RMSNorm, sequential residual, separate q/k/v (Aira's special tokens need 32,000+ rows)
    "llama": ("aira-2-1b1", {"heads": 8, "kv_heads": 2, "ffn_size": 688, "vocab_size": 32768}, 2, 1500),
    # ALiBi: the mask is a [B, H, T, S] bias; SwiGLU, tied embeddings, GPT-2 Conv1D weights
    "btlm": ("gpt-jx-3b", {"heads": 4, "kv_heads": 4, "ffn_size": 682}, 1, 2500),
}


def write_tiny_checkpoint(directory: Path, seed: str, changes: dict) -> dict:
    """A random bfloat16 checkpoint in the family's Hugging Face layout, with its card data beside it."""
    import torch

    from .btlm_reference import btlm_config, write_btlm_checkpoint
    from .conftest import hf_config, tiny_card_data

    data = tiny_card_data(seed, {"context_length": 4096, **changes})
    a = data["architecture"]
    if seed == "gpt-jx-3b":
        shape = {"hidden": a["hidden_size"], "heads": a["heads"], "ffn": a["ffn_size"], "vocab": a["vocab_size"]}
        config = btlm_config(layers=a["layers"], context=a["context_length"], **shape)
        write_btlm_checkpoint(directory, config, seed=0, dtype=torch.bfloat16, tokenizer=False)
    else:
        import transformers

        card = registry.default().resolve_card(registry.card_from_data(data, seed), seed)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(hf_config(card)).to(torch.bfloat16)
        model.save_pretrained(directory)
    (directory / "card.json").write_text(json.dumps(data))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY))
def test_the_estimate_is_within_15_percent_of_the_measured_peak_on_the_cpu(family, tmp_path):
    pytest.importorskip("transformers")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
    seed, changes, batch, prompt = TINY[family]
    new = 16
    directory = tmp_path / family
    data = write_tiny_checkpoint(directory, seed, {"layers": 4, "hidden_size": 256, **changes})
    write_tiny_checkpoint(
        Path(f"{directory}-micro"), seed, {**changes, "layers": 1, "hidden_size": 64, "ffn_size": 128}
    )
    # glibc keeps freed blocks below its dynamic mmap threshold (raised up to 32 MiB by every large free) in its
    # heaps and reuses them with fragmentation: with its default, these four runs measured -2% (btlm, whose large
    # blocks are above 32 MiB anyway) to +42% (llama: +27% and +42% in two runs) above the estimate, run to run.
    # The planner counts live tensors (a dispatch-mode trace of every tensor allocated agrees with its KV cache +
    # activations to 0.2% for falcon, llama and btlm), so the allocator is pinned instead: blocks of 1 MiB and more
    # are mapped and unmapped, freed tensors leave the process, and RSS follows the live tensors. What remains
    # (0-7%) is inside kernels: MKL's cached GEMM buffers (MKL_DISABLE_FAST_MM=1 takes llama from +2.6% to +0.5%)
    # and SDPA's per-thread blocks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(directory), str(batch), str(prompt), str(new)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    if "skip" in measured:
        pytest.skip(measured["skip"])
    card = registry.default().resolve_card(registry.card_from_data(data, family), family)
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    estimate = memory.estimate(
        card,
        dtype="float32",
        batch=batch,
        context=prompt + new,
        new_tokens=new,
        checkpoint_dtype="bfloat16",
        layout=layout,
    )
    peak = max(measured["loading"], measured["running"])
    mb = 10**6
    report = (
        f"{family}: estimate {estimate.total / mb:.1f} MB (loading {estimate.loading.bytes / mb:.1f}, running "
        f"{estimate.running / mb:.1f} = weights {estimate.weights.bytes / mb:.1f} + KV {estimate.kv_cache.bytes / mb:.1f} "
        f"+ activations {estimate.activations.bytes / mb:.1f}); measured {peak / mb:.1f} MB (loading "
        f"{measured['loading'] / mb:.1f}, running {measured['running'] / mb:.1f}) above a baseline of "
        f"{measured['base'] / mb:.0f} MB"
    )
    print(report)
    assert abs(peak / estimate.total - 1) <= 0.15, report
    assert abs(measured["loading"] / estimate.loading.bytes - 1) <= 0.15, report
    assert abs(measured["running"] / estimate.running - 1) <= 0.15, report
