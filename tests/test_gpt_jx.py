"""GPT-JX-3B (= Cerebras BTLM-3B-8K: ALiBi + SwiGLU + muP) on the generic decoder, against the independent fp64
reference in btlm_reference.py, on tiny random checkpoints in BTLM's exact Hugging Face layout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")
from safetensors.torch import load_file  # noqa: E402

from modeldeck import registry, runtime  # noqa: E402
from modeldeck.registry.decoder import default_precision  # noqa: E402
from modeldeck.runtime.attention import get_backend  # noqa: E402
from modeldeck.runtime.generate import generate_tokens, prefill, prefill_chunk, resolve_options  # noqa: E402
from modeldeck.runtime.loading import CheckpointError  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

from .btlm_reference import (  # noqa: E402
    GPT2_TOKENIZER,
    alibi_slopes_reference,
    btlm_config,
    btlm_logits_fp64,
    write_btlm_checkpoint,
    write_sparse_btlm_checkpoint,
)
from .conftest import load_model, tiny_card_data  # noqa: E402

LENGTHS = [5, 11, 3]
TINY = {"layers": 2, "hidden_size": 64, "heads": 8, "kv_heads": 8, "ffn_size": 170, "context_length": 512}


def tiny_jx_card(**changes):
    """The gpt-jx-3b card with only its architecture shrunk (tokenizer, prompt format, defaults, layout kept)."""
    data = tiny_card_data("gpt-jx-3b", {**TINY, **changes})
    return registry.default().resolve_card(registry.card_from_data(data, "tiny-gpt-jx"), "tiny-gpt-jx")


def config_for(card, **overrides) -> dict:
    a = card.architecture
    return btlm_config(
        layers=a.layers,
        hidden=a.hidden_size,
        heads=a.heads,
        ffn=a.ffn_size,
        vocab=a.vocab_size,
        context=a.context_length,
        **overrides,
    )


@pytest.fixture(scope="module")
def jx(tmp_path_factory):
    """(card, checkpoint folder, its state dict, its config) for a tiny GPT-JX with the real GPT-2 tokenizer."""
    card = tiny_jx_card()
    directory = tmp_path_factory.mktemp("tiny-gpt-jx")
    config = config_for(card)
    write_btlm_checkpoint(directory, config, seed=0)
    return card, directory, load_file(directory / "model.safetensors"), config


def load(card, directory, attention: str = "sdpa"):
    """The whole runtime.load path when the real GPT-2 tokenizer is beside the clone; the decoder alone otherwise."""
    return load_model(card, directory, with_tokenizer=GPT2_TOKENIZER.is_dir(), attention=attention)


needs_gpt2_tokenizer = pytest.mark.skipif(
    not GPT2_TOKENIZER.is_dir(), reason=f"the GPT-2 tokenizer is not at {GPT2_TOKENIZER} (shared/ beside the clone)"
)


def prompts(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (n,), generator=g).tolist() for n in LENGTHS]


def padded(batch: list[list[int]]) -> torch.Tensor:
    longest = max(map(len, batch))
    return torch.tensor([p + [0] * (longest - len(p)) for p in batch])  # [B, T]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_match_the_independent_fp64_reference_for_a_padded_batch(jx, backend):
    card, directory, state, config = jx
    model = load(card, directory, attention=backend)
    batch = prompts()
    cache = KVCache(card.architecture, len(batch), max(LENGTHS), torch.float32, "cpu")
    with torch.inference_mode():
        ours = model.decoder(padded(batch), cache, model.backend, start=torch.zeros(3, dtype=torch.long))  # [B, T, V]
    for row, ids in enumerate(batch):
        reference = btlm_logits_fp64(state, config, ids)  # [T, V]
        assert reference.abs().max() > 1.0  # logits that are not all tiny: the comparison means something
        assert (ours[row, : len(ids)].double() - reference).abs().max().item() <= 1e-5


def test_chunked_prefill_equals_one_pass(jx):
    card, directory, _, _ = jx
    model = load(card, directory)
    batch = prompts(seed=2)
    results = []
    for chunk in (None, 4, 1):
        cache = KVCache(card.architecture, len(batch), max(LENGTHS), torch.float32, "cpu")
        results.append((prefill(model.decoder, batch, cache, model.backend, pad_id=0, chunk=chunk), cache))
    (whole, whole_cache), *chunked = results
    for logits, cache in chunked:
        assert (logits - whole).abs().max().item() <= 1e-5
        assert torch.equal(cache.lengths, whole_cache.lengths)
        for row, n in enumerate(LENGTHS):  # the cached keys of every real token agree
            assert (cache.k[:, row, :n] - whole_cache.k[:, row, :n]).abs().max().item() <= 1e-5


def test_prefill_chunks_keep_every_attention_mask_within_the_budget():
    seen = []
    backend = get_backend("eager")
    spy = type(backend)(
        backend.name, lambda *a: seen.append(a[1:3]) or backend.prepare(*a), backend.attend, backend.packs_cache
    )
    card = tiny_jx_card(heads=32, kv_heads=32, hidden_size=64, context_length=2048)
    with torch.device("meta"):
        from modeldeck.runtime.model import Decoder

        decoder = Decoder(card.architecture)
    decoder = decoder.to_empty(device="cpu")
    torch.nn.init.normal_(decoder.embed.weight)
    budget = 4 * 2**20  # 4 MiB: 32 heads x 2048 keys x 4 bytes = 256 KiB per query row -> 16 rows
    chunk = prefill_chunk(32, 1, 2048, budget)
    assert chunk == 16
    cache = KVCache(card.architecture, 1, 2048, torch.float32, "cpu")
    prefill(decoder, [list(range(2048))], cache, spy, pad_id=0, chunk=chunk)
    assert len(seen) == 2048 // 16
    assert all(queries == 16 and 32 * queries * keys * 4 <= budget for queries, keys in seen)
    assert [keys for _, keys in seen] == list(range(16, 2049, 16))  # each pass reads only the keys it can see


def test_greedy_decoding_with_the_kv_cache_equals_recomputation(jx):
    card, directory, state, config = jx
    model = load(card, directory)
    batch = prompts(seed=1)
    opts = resolve_options(card.generation, [], {"max_new_tokens": 6, "do_sample": False})
    generated: list[list[int]] = [[] for _ in batch]
    for events in generate_tokens(model.decoder, batch, opts, model.backend, eos=[], pad_id=0):
        for index, token in events:
            generated[index].append(token)
    for ids, new in zip(batch, generated, strict=True):
        assert len(new) == 6
        sequence = list(ids)
        for token in new:  # recomputed from scratch, in fp64, at every step
            assert token == int(btlm_logits_fp64(state, config, sequence, last=1)[0].argmax())
            sequence.append(token)


@needs_gpt2_tokenizer
def test_the_card_generates_with_the_real_gpt2_tokenizer(jx):
    card, directory, state, config = jx
    assert card.format.name == "plain"
    model = load(card, directory)
    text = "def fibonacci(n):"
    expected_ids = tokenizers.Tokenizer.from_file(str(GPT2_TOKENIZER / "tokenizer.json")).encode(text).ids
    assert model.render(text) == text and model.encode(text) == expected_ids
    assert model.encode("<|endoftext|>") != [50256]  # user text never becomes the special token
    result = model.generate(text, max_new_tokens=8)
    [completion] = result.completions
    reference, sequence = [], list(expected_ids)
    for _ in range(len(completion.token_ids)):
        reference.append(int(btlm_logits_fp64(state, config, sequence, last=1)[0].argmax()))
        sequence.append(reference[-1])
    assert completion.token_ids == reference
    assert completion.text == model.tokenizer.decode(reference)


def test_dtype_defaults_the_cards_on_a_gpu_and_by_checkpoint_and_cpu_on_the_cpu():
    card = registry.default().get("gpt-jx-3b")
    assert card.dtype == "float16"
    assert default_precision("cuda", card.dtype, "bfloat16").dtype == "float16"
    assert default_precision("cuda", "auto", "bfloat16").dtype is None  # the checkpoint's own
    assert default_precision("cpu", card.dtype, "float32").dtype == "float32"  # never more precise than stored
    assert default_precision("cpu", card.dtype, "bfloat16", bf16_native=True).dtype == "bfloat16"
    assert default_precision("cpu", card.dtype, "float16", bf16_native=True).dtype == "bfloat16"
    assert default_precision("cpu", card.dtype, "float16", bf16_native=False).dtype == "float32"


@needs_gpt2_tokenizer
def test_the_full_size_card_refuses_the_tiny_checkpoint_by_name(jx):
    _, directory, _, _ = jx
    with pytest.raises(CheckpointError) as error:
        runtime.load("gpt-jx-3b", weights=directory, device="cpu")
    message = str(error.value)
    assert "config.json n_embd=64 disagrees with the card's architecture.hidden_size (2560" in message
    assert "transformer.h.0.attn.c_attn.weight: expected shape [2560, 7680]" in message


@pytest.mark.slow
@needs_gpt2_tokenizer
def test_the_real_card_loads_a_full_size_checkpoint_by_name(tmp_path):
    """runtime.load("gpt-jx-3b", weights=DIR) on a checkpoint of the real size and layout (5.3 GB of bf16, as
    published; a sparse file of zeros here, so it costs no disk), loaded in its own dtype: memory-mapped, not copied."""
    config = btlm_config(layers=32, hidden=2560, heads=32, ffn=6826, vocab=50257, context=8192)
    size = write_sparse_btlm_checkpoint(tmp_path, config)
    assert size > 5.29e9
    model = runtime.load("gpt-jx-3b", weights=tmp_path, device="cpu", dtype="bfloat16")
    assert model.card.id == "gpt-jx-3b" and model.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.decoder.parameters()) == 2_646_255_744  # + 32 slopes = the card's stated
    assert torch.equal(model.decoder.alibi, torch.tensor(alibi_slopes_reference(32)).bfloat16().float())
    result = model.generate("def fibonacci(n):", max_new_tokens=2)
    assert result.completions[0].completion_tokens == 2 and result.finish_reason == "length"


# --- checkpoints that must be refused, each with the tensor or field named ------------------------


def test_wrong_alibi_slopes_are_refused(jx, tmp_path):
    card, _, _, _ = jx
    config = config_for(card)
    wrong = [2.0 ** -(i + 1) for i in range(8)][::-1]  # right values, wrong head order
    write_btlm_checkpoint(tmp_path, config, slopes=wrong, tokenizer=True)
    with pytest.raises(CheckpointError) as error:
        load(card, tmp_path)
    assert "tensor transformer.relative_pe.slopes holds ALiBi slopes that are not the standard ones" in str(error.value)
    assert "head 0 has 0.00390625, expected 0.5" in str(error.value)


def test_bfloat16_checkpoint_slopes_are_accepted_and_used_as_stored(jx, tmp_path):
    card = tiny_jx_card(heads=12, kv_heads=12, hidden_size=96)  # 12 heads: slopes such as 2^-0.5, inexact in bf16
    saved = write_btlm_checkpoint(tmp_path, config_for(card), dtype=torch.bfloat16)
    model = load(card, tmp_path)
    stored = saved["transformer.relative_pe.slopes"].float().flatten()
    exact = torch.tensor(alibi_slopes_reference(12), dtype=torch.float32)
    assert not torch.equal(stored, exact)  # bf16 rounding moved some of them ...
    assert torch.equal(model.decoder.alibi, stored)  # ... and BTLM itself multiplies with the stored copy
    expected = default_precision("cpu", card.dtype, "bfloat16").dtype  # bf16 on CPUs that compute it, else fp32
    assert model.dtype == getattr(torch, expected)


def test_a_c_attn_stored_the_wrong_way_round_is_named(jx, tmp_path):
    card, _, state, _ = jx
    name = "transformer.h.1.attn.c_attn.weight"
    write_btlm_checkpoint(tmp_path, config_for(card), tensors={name: state[name].t()})
    with pytest.raises(CheckpointError) as error:
        load(card, tmp_path)
    assert f"tensor {name}: expected shape [64, 192]" in str(error.value)
    assert "got [192, 64] - stored as [out, in]; layout 'btlm' stores this weight [in, out] (GPT-2 Conv1D)" in str(
        error.value
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"mup_output_alpha": 1.0}, "config.json mup_output_alpha * mup_width_scale=0.1 disagrees with the card's "
         "architecture.multipliers.logits (0.222"),
        ({"mup_width_scale": 0.2}, "mup_output_alpha * mup_width_scale=0.444"),
        ({"mup_embeddings_scale": 10.0}, "config.json mup_embeddings_scale=10.0 disagrees with the card's "
         "architecture.multipliers.embedding (14.6"),
        ({"mup_scale_qk_dot_by_d": False}, "config.json mup_scale_qk_dot_by_d=False disagrees with the card's "
         "architecture.multipliers.attention ('inverse_head_dim'"),
        ({"output_logits_scale": 0.5}, "config.json output_logits_scale=0.5"),  # the pre-rename key
        ({"position_embedding_type": "learned"}, "config.json position_embedding_type='learned'"),
        ({"activation_function": "gelu"}, "config.json activation_function='gelu' disagrees with the card's "
         "architecture.mlp ('swiglu'"),
        ({"alibi_scaling": {"type": "linear", "factor": 2.0}}, "config.json sets alibi_scaling="),
        ({"model_type": "gpt2"}, "config.json model_type 'gpt2' is not one the 'btlm' layout reads"),
    ],
)  # fmt: skip
def test_config_json_disagreeing_with_the_card_is_named(jx, tmp_path, override, named):
    card, _, _, _ = jx
    write_btlm_checkpoint(tmp_path, config_for(card, **override), tokenizer=True)
    with pytest.raises(CheckpointError) as error:
        load(card, tmp_path)
    assert named in str(error.value)


def test_the_published_configs_agree_with_the_card(reference):
    layout = registry.default().checkpoint_layouts()["btlm"]
    card = registry.default().get("gpt-jx-3b")
    for name in [
        "btlm-3b-8k-base.config.json",
        "GPT-JX-3b.KnutJaegersberg-reupload.config.json",
        "btlm-3b-8k-base.config@19c3116_old_param_names.json",
    ]:
        config = json.loads((reference / "configs" / name).read_text())
        assert layout.config_mismatches(card.architecture, config) == [], name


# --- 8192 tokens -----------------------------------------------------------------------------------

PREFILL_8K = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from modeldeck import registry
    from modeldeck.runtime.attention import get_backend
    from modeldeck.runtime.generate import prefill
    from modeldeck.runtime.loading import load_decoder
    from modeldeck.runtime.model import KVCache

    card = registry.card_from_data(json.loads(sys.argv[2]), "tiny-gpt-jx-8k")
    layout = registry.default().checkpoint_layouts()["btlm"]
    decoder = load_decoder(card, layout, Path(sys.argv[1]), torch.float32, torch.device("cpu"))
    backend = get_backend(sys.argv[3])
    ids = json.loads(sys.argv[4])
    cache = KVCache(card.architecture, 1, len(ids), torch.float32, "cpu")
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        decoder(tokens[:, :8], cache, backend, start=torch.zeros(1, dtype=torch.long))  # warm up
    def status(field):  # kB -> bytes, from this process' own memory accounting
        line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    try:  # reset the high-water mark to the current resident size (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak also counts loading: an overestimate, never an underestimate
    before = status("VmRSS")
    logits = prefill(decoder, [ids], cache, backend, pad_id=0)  # [1, V], the last position
    peak = status("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "logits": logits[0].tolist()}))
    """
)


@pytest.mark.slow
def test_8192_token_prefill_on_the_cpu_has_bounded_memory_and_matches_the_reference(tmp_path):
    """A GPT-JX-shaped model with 32 heads and an 8192-token context, prefilled with 8192 tokens on the CPU.

    One fp32 ALiBi bias (or score tensor) for the whole sequence would be 32 heads x 8192 x 8192 x 4 bytes = 8 GiB,
    per layer. Prefill works in chunks of queries sized so that one layer's fp32 scores stay within
    ATTENTION_BUDGET (256 MiB: 256 queries x 8192 keys x 32 heads x 4 bytes); a chunk holds a few such tensors at
    once (the additive mask, the scores and their softmax), and the weights and KV cache of this model are ~20 MB.
    So the prefill's own peak must stay under 6 x 256 MiB = 1.5 GiB: a fifth of one full-sequence bias.
    """
    changes = {"layers": 2, "hidden_size": 128, "heads": 32, "kv_heads": 32, "ffn_size": 341}
    data = tiny_card_data("gpt-jx-3b", {**changes, "context_length": 8192})
    card = registry.card_from_data(data, "tiny-gpt-jx-8k")
    config = config_for(card)
    state = write_btlm_checkpoint(tmp_path, config, seed=3)
    ids = torch.randint(0, 50257, (8192,), generator=torch.Generator().manual_seed(8)).tolist()
    run = subprocess.run(
        [sys.executable, "-c", PREFILL_8K, str(tmp_path), json.dumps(data), "sdpa", json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    grown = report["peak"] - report["before"]  # VmHWM: the peak of this process alone (ru_maxrss inherits the parent's)
    assert grown < 1.5 * 2**30, f"prefill grew the process by {grown / 2**30:.2f} GiB"
    reference = btlm_logits_fp64(state, config, ids, last=1)[0]
    ours = torch.tensor(report["logits"], dtype=torch.float64)
    error = (ours - reference).abs().max().item()
    print(f"8192-token prefill: grew {grown / 2**20:.0f} MiB; max |logit error| {error:.2e}")
    assert error <= 1e-4 * max(1.0, reference.abs().max().item())
    assert int(ours.argmax()) == int(reference.argmax())


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (xformers kernels)")
@needs_gpt2_tokenizer
def test_xformers_fp16_matches_fp32_sdpa_at_8192_tokens_on_cuda(tmp_path):
    pytest.importorskip("xformers.ops")
    changes = {"layers": 2, "hidden_size": 256, "heads": 32, "kv_heads": 32, "ffn_size": 682, "context_length": 8192}
    card = tiny_jx_card(**changes)
    write_btlm_checkpoint(tmp_path, config_for(card), seed=4)
    ids = torch.randint(0, 50257, (8192,), generator=torch.Generator().manual_seed(9)).tolist()

    def last_logits(**how) -> torch.Tensor:
        model = runtime.load(card, weights=tmp_path, device="cuda", **how)
        cache = KVCache(card.architecture, 1, 8192, model.dtype, model.device)
        return prefill(model.decoder, [ids], cache, model.backend, pad_id=0)[0].float().cpu()

    fast = last_logits(dtype="float16", attention="xformers")
    exact = last_logits(dtype="float32", attention="sdpa")
    scale = exact.abs().max().item()
    assert (fast - exact).abs().max().item() <= 2e-2 * max(1.0, scale)
    assert torch.topk(fast, 5).indices.tolist()[:1] == torch.topk(exact, 5).indices.tolist()[:1]


def test_the_reference_module_is_independent_of_the_runtime():
    source = (Path(__file__).parent / "btlm_reference.py").read_text()
    assert "modeldeck" not in source.replace("deliberately imports nothing from modeldeck", "")
