"""Half precision and int8 weights against fp32, on the tiny parity checkpoints; the kernels against F.linear.

The accuracy each precision costs, stated as bounds these tests pin (tiny random models, logits with a spread of
about 0.8 per position):

    precision                 max |logit - fp32 logit|     greedy choice
    float16                   <= 0.01                      fp32's wherever fp32's top token leads by > 2 x bound
    bfloat16                  <= 0.1                       ditto
    int8 weights              <= 0.25 (0.3 without VNNI)   ditto
      (x86: FBGEMM, inputs rounded to 8 bits per row, 7 without VNNI; elsewhere bf16 math)

Free-running greedy text also agrees for long stretches, but a near-tie in a random model can flip one token and
everything after it; the margin rule is the property that holds token for token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from modeldeck import registry  # noqa: E402
from modeldeck.registry.decoder import default_precision  # noqa: E402
from modeldeck.registry.diagnostics import ModeldeckError  # noqa: E402
from modeldeck.runtime import kernels  # noqa: E402
from modeldeck.runtime.attention import get_backend  # noqa: E402
from modeldeck.runtime.generate import prefill  # noqa: E402
from modeldeck.runtime.kernels import (  # noqa: E402
    DynamicInt8Linear,
    Int8Linear,
    OneDNNLinear,
    SplitHalfLinear,
    _fbgemm_runs,
    _vnni,
    check_quantize,
    quantize_int8,
)
from modeldeck.runtime.loading import load_decoder  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

ONEDNN_BF16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
SEVEN_BIT = _fbgemm_runs(torch.device("cpu")) and not _vnni()
BOUNDS = {"float16": 0.01, "bfloat16": 0.1, "int8": 0.3 if SEVEN_BIT else 0.25}
LENGTHS = (24, 40, 16)


def load(ckpt, precision: str):
    layout = registry.default().checkpoint_layouts()[ckpt.card.architecture.checkpoint_layout]
    dtype = torch.bfloat16 if precision == "int8" else getattr(torch, precision)
    quantize = "int8" if precision == "int8" else None
    return load_decoder(ckpt.card, layout, Path(ckpt.directory), dtype, torch.device("cpu"), quantize=quantize)


def logits(decoder, card, batch: list[list[int]]) -> torch.Tensor:
    """fp32 logits [B, T, V] of a right-padded batch."""
    longest = max(map(len, batch))
    tokens = torch.tensor([p + [0] * (longest - len(p)) for p in batch])
    cache = KVCache(card.architecture, len(batch), longest, decoder.embed.weight.dtype, "cpu")
    with torch.inference_mode():
        return decoder(tokens, cache, get_backend("sdpa"), start=torch.zeros(len(batch), dtype=torch.long)).float()


def write_float16_copy(ckpt, directory: Path) -> None:
    """The tiny checkpoint stored in float16, as published half-precision checkpoints are, in `directory`."""
    shutil.copy(Path(ckpt.directory) / "config.json", directory)
    tensors = load_file(Path(ckpt.directory) / "model.safetensors")
    save_file({name: t.half() for name, t in tensors.items()}, directory / "model.safetensors")


@pytest.mark.parametrize("family", ["gpt-neox", "falcon", "falcon-7b", "llama"])
@pytest.mark.parametrize("precision", list(BOUNDS))
def test_half_precision_and_int8_stay_within_their_bounds_of_fp32(tiny_checkpoint, family, precision):
    ckpt = tiny_checkpoint(family, tokenizer=False)
    g = torch.Generator().manual_seed(0)
    vocab = ckpt.card.architecture.vocab_size
    batch = [torch.randint(20, min(vocab, 30000), (n,), generator=g).tolist() for n in LENGTHS]
    exact = logits(load(ckpt, "float32"), ckpt.card, batch)
    ours = logits(load(ckpt, precision), ckpt.card, batch)
    bound = BOUNDS[precision]
    checked = 0
    for row, ids in enumerate(batch):
        got, want = ours[row, : len(ids)], exact[row, : len(ids)]
        worst = (got - want).abs().max().item()
        assert worst <= bound
        top2 = want.topk(2, dim=-1).values  # [T, 2]
        clear = (top2[:, 0] - top2[:, 1]) > 2 * worst  # positions where the error cannot flip the choice
        assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])
        checked += int(clear.sum())
    assert checked >= 5  # the rule was exercised, not vacuous
    assert (ours - exact).abs().max().item() > 0  # and the precision really differs from fp32


def test_the_onednn_kernels_equal_f_linear():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    x = torch.randn(3, 5, 64, generator=g)
    assert torch.allclose(OneDNNLinear(weight, bias)(x), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    if not ONEDNN_BF16:
        pytest.skip("oneDNN has no bf16 linear on this CPU (it needs AVX-512 or AVX-NE-CONVERT): fp32 checked only")
    packed = OneDNNLinear(weight.bfloat16(), bias.bfloat16())  # packed once into oneDNN's layout
    assert packed.weight.is_mkldnn and packed.weight.shape == (96, 64)
    want = F.linear(x.bfloat16().float(), weight.bfloat16().float(), bias.bfloat16().float())
    assert (packed(x.bfloat16()).float() - want).abs().max().item() <= 2**-7 * want.abs().max().item()  # bf16 output


def test_int8_rounds_each_weight_to_within_half_a_step_of_its_rows_scale():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(40, 32, generator=g) * torch.linspace(0.01, 3, 40)[:, None]  # rows of very different size
    kept = weight.clone()
    quantized, scale = quantize_int8(weight, torch.float32)
    assert torch.equal(weight, kept)  # the weight itself is left as it was
    assert quantized.dtype == torch.int8 and int(quantized.abs().max()) == 127
    assert torch.equal(scale, weight.abs().amax(1) / 127)
    assert ((quantized.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    layer = Int8Linear(weight, torch.ones(40), torch.bfloat16)
    x = torch.randn(2, 3, 32, generator=g).bfloat16()
    dequantized = quantized.float() * scale.bfloat16().float()[:, None]
    want = F.linear(x.float(), dequantized) + 1
    assert layer(x).shape == (2, 3, 40)
    assert (layer(x).float() - want).abs().max().item() <= 0.05 * want.abs().max().item()


@pytest.mark.skipif(not _fbgemm_runs(torch.device("cpu")), reason="torch has no FBGEMM engine on this CPU")
def test_fbgemm_int8_rounds_each_row_of_a_batch_on_its_own_scale():
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(48, 64, generator=g) * 0.05, torch.randn(48, generator=g)
    quantized, scale = quantize_int8(weight, torch.float32)
    dequantized = quantized.float() * scale[:, None]
    # rows whose sizes differ by 10^4: on one shared 8-bit scale the small rows would round to nothing
    x = torch.randn(2, 3, 64, generator=g) * torch.tensor([1e-2, 1.0, 1e2])[:, None]
    layer = DynamicInt8Linear(weight, bias)
    got, want = layer(x), F.linear(x, dequantized, bias)
    assert got.shape == (2, 3, 48) and got.dtype == torch.float32
    for row in range(3):  # each row within 2% of its own size (8-bit input: 1/255 of its range per value)
        size = (want[:, row] - bias).abs().max().item()
        assert (got[:, row] - want[:, row]).abs().max().item() <= 0.02 * size
    single = layer(x[:1, 2:])  # one row: FBGEMM's own scale is already the row's
    assert (single - want[:1, 2:]).abs().max().item() <= 0.02 * (want[:1, 2:] - bias).abs().max().item()
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_a_quantization_that_cannot_run_is_refused_before_loading():
    cpu = torch.device("cpu")
    with pytest.raises(ModeldeckError, match=r"quantize='int4' is not supported; choose 'int8'"):
        check_quantize("int4", cpu, torch.bfloat16)
    with pytest.raises(ModeldeckError, match=r"computes in bfloat16.*dtype='bfloat16'"):
        check_quantize("int8", cpu, torch.float32)
    check_quantize("int8", cpu, torch.bfloat16)  # runs here


def test_the_default_keeps_fp32_weights_and_runs_half_weights_as_this_cpu_computes_best(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(kernels, "fp16_gemv_is_faster", lambda: False)  # the split default: tested below
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    layout = registry.default().checkpoint_layouts()["gpt-neox"]
    cpu = torch.device("cpu")
    fp32 = load_decoder(ckpt.card, layout, Path(ckpt.directory), None, cpu)
    assert fp32.embed.weight.dtype == torch.float32 and fp32.precision == "the checkpoint's own dtype"
    write_float16_copy(ckpt, tmp_path)
    half = load_decoder(ckpt.card, layout, tmp_path, None, cpu)
    expected = default_precision("cpu", ckpt.card.dtype, "float16")
    assert half.embed.weight.dtype == getattr(torch, expected.dtype) and half.precision == expected.reason
    assert default_precision("cpu", "float16", "float16", bf16_native=True).dtype == "bfloat16"
    assert default_precision("cpu", "float16", "float16", bf16_native=False).dtype == "float32"
    assert default_precision("cpu", "float16", "float32", bf16_native=True).dtype == "float32"


@pytest.mark.parametrize("family", ["gpt-neox", "falcon", "llama"])  # QKV per head, grouped, separate q/k/v
def test_a_float16_checkpoint_loads_into_bfloat16_exactly_as_a_cast_of_each_tensor(tiny_checkpoint, tmp_path, family):
    # loading converts (blockwise through fp32, into per-thread scratch), reorders QKV and packs, tensors in
    # parallel: every tensor must be exactly the checkpoint's, reordered as fp32 loading does, then cast to bf16
    ckpt = tiny_checkpoint(family, tokenizer=False)
    layout = registry.default().checkpoint_layouts()[ckpt.card.architecture.checkpoint_layout]
    write_float16_copy(ckpt, tmp_path)
    cpu = torch.device("cpu")
    wide = load_decoder(ckpt.card, layout, tmp_path, torch.float32, cpu).state_dict()
    half = load_decoder(ckpt.card, layout, tmp_path, torch.bfloat16, cpu).state_dict()
    assert half.keys() == wide.keys()
    packed = [name for name, t in half.items() if t.is_mkldnn]
    assert bool(packed) == ONEDNN_BF16  # where oneDNN has bf16, the linear weights are packed
    for name, tensor in half.items():
        dense = tensor.to_dense() if tensor.is_mkldnn else tensor
        assert dense.dtype == torch.bfloat16 and torch.equal(dense, wide[name].to(torch.bfloat16)), name


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN has no bf16 linear on this CPU: nothing is packed, nothing split")
def test_a_split_layer_multiplies_one_row_from_fp16_and_more_rows_from_the_packed_copy():
    g = torch.Generator().manual_seed(4)
    weight, bias = (torch.randn(96, 64, generator=g) * 0.1).half(), torch.randn(96, generator=g).half()
    packed = OneDNNLinear(weight.bfloat16(), bias.bfloat16())
    layer = SplitHalfLinear(packed, weight, bias)
    one, rows = torch.randn(1, 1, 64, generator=g).bfloat16(), torch.randn(2, 3, 64, generator=g).bfloat16()
    one, rows = one.half(), rows.half()  # a split model runs in float16
    assert torch.equal(layer(one), F.linear(one, weight, bias))
    assert torch.equal(layer(rows), packed(rows.bfloat16()).half())
    assert not layer.state_dict().keys() & {"weight16", "bias16"}  # the fp16 copy is not a second checkpoint


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN has no bf16 linear on this CPU: nothing is packed, nothing split")
@pytest.mark.parametrize("family", ["gpt-neox", "llama", "falcon"])  # QKV reordered / separate q, k, v / tied head
def test_the_default_runs_a_float16_checkpoint_as_stored_where_fp16_is_faster_for_one_row(
    tiny_checkpoint, tmp_path, monkeypatch, family
):
    ckpt = tiny_checkpoint(family, tokenizer=False)
    layout = registry.default().checkpoint_layouts()[ckpt.card.architecture.checkpoint_layout]
    write_float16_copy(ckpt, tmp_path)
    cpu = torch.device("cpu")
    monkeypatch.setattr(kernels, "fp16_gemv_is_faster", lambda: True)
    split = load_decoder(ckpt.card, layout, tmp_path, None, cpu)
    assert "run as stored; prompts and batches multiply a packed bfloat16 copy" in split.precision
    assert split.embed.weight.dtype == torch.float16
    if ckpt.card.architecture.tied_embeddings:
        assert isinstance(getattr(split.tied_head, "__self__", None), SplitHalfLinear)
    wide = load_decoder(ckpt.card, layout, tmp_path, torch.float32, cpu)
    for name, module in split.named_modules():
        if isinstance(module, SplitHalfLinear):  # the checkpoint's values, reordered as fp32 loading does
            assert torch.equal(module.weight16, wide.get_submodule(name).weight.half()), name
    monkeypatch.setattr(kernels, "fp16_gemv_is_faster", lambda: False)
    packed_only = load_decoder(ckpt.card, layout, tmp_path, None, cpu)
    assert packed_only.embed.weight.dtype == torch.bfloat16
    assert not any(isinstance(m, SplitHalfLinear) for m in packed_only.modules())
    count = sum(isinstance(m, SplitHalfLinear) for m in split.modules())
    assert count == sum(isinstance(m, OneDNNLinear) for m in packed_only.modules()) > 0  # every packed layer
    batch = [[5, 6, 7, 8, 9, 10]]  # prompts: bf16 products between fp16 activations, within bf16's bound
    assert (logits(split, ckpt.card, batch) - logits(wide, ckpt.card, batch)).abs().max().item() <= BOUNDS["bfloat16"]
    one = logits(split, ckpt.card, [[5]])  # one row: float16 throughout, within fp16's bound
    assert 0 < (one - logits(wide, ckpt.card, [[5]])).abs().max().item() <= BOUNDS["float16"]
    monkeypatch.setattr(kernels, "fp16_gemv_is_faster", lambda: True)
    monkeypatch.setattr(kernels, "_available_memory", lambda: 0)  # both copies would not fit: packed only
    assert not any(
        isinstance(m, SplitHalfLinear) for m in load_decoder(ckpt.card, layout, tmp_path, None, cpu).modules()
    )


# --- the static forward and CUDA graphs ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt-neox", "falcon", "llama"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])  # bf16: its cache is fp32 on the CPU
def test_the_static_forward_for_cuda_graphs_equals_the_dynamic_one(tiny_checkpoint, family, precision):
    """The capturable pass (every cache position read, masked; no host reads of `start`) decodes the same logits
    for a batch whose sequences sit at different lengths (each written at its own position)."""
    ckpt = tiny_checkpoint(family, tokenizer=False)
    decoder = load(ckpt, precision)
    batch = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]

    def decode(static: bool) -> torch.Tensor:
        cache = KVCache.for_decoder(decoder, len(batch), 12)
        prefill(decoder, batch, cache, get_backend("sdpa"), 0)
        steps = []
        for token in (21, 22, 23):
            tokens = torch.full((len(batch), 1), token)
            with torch.inference_mode():
                steps.append(decoder(tokens, cache, get_backend("sdpa"), static=static)[:, 0])
            cache.lengths = cache.lengths + 1
        return torch.stack(steps).float()  # [steps, B, V]

    tolerance = 1e-5 if precision == "float32" else 2e-2  # bf16: masked keys change the kernels' summation order
    torch.testing.assert_close(decode(static=True), decode(static=False), atol=tolerance, rtol=tolerance)


def test_cuda_graphs_are_refused_where_they_cannot_run():
    from modeldeck.runtime.graphs import check_graphs

    with pytest.raises(ModeldeckError, match=r"cuda_graphs=True needs a CUDA device \(the model is on cpu\)"):
        check_graphs(torch.device("cpu"), "sdpa")
    with pytest.raises(ModeldeckError, match=r"cannot capture the xformers backend.*attention='sdpa'"):
        check_graphs(torch.device("cuda"), "xformers")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decoding_equals_launching_each_kernel(tiny_checkpoint):
    from modeldeck import runtime
    from modeldeck.runtime.generate import generate_tokens, resolve_options

    ckpt = tiny_checkpoint("llama")
    model = runtime.load(ckpt.card, weights=ckpt.directory, device="cuda", dtype="float32", attention="sdpa")
    opts = resolve_options(model.card.generation, [], {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False,
                                                      "num_return_sequences": 1})  # fmt: skip
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]

    def run(graphs: bool) -> list[list[tuple[int, int]]]:
        return list(generate_tokens(model.decoder, prompts, opts, model.backend, [], 0, cuda_graphs=graphs))

    assert run(True) == run(False)


def test_without_onednn_the_linear_layers_keep_f_linear(tiny_checkpoint, monkeypatch):
    """A torch build or CPU without oneDNN (or without its bf16) loads plain nn.Linear layers, with the same logits."""
    ckpt = tiny_checkpoint("llama", tokenizer=False)
    batch = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    fast = load(ckpt, "bfloat16")
    if not ONEDNN_BF16:  # this CPU is the case itself: bf16 loads as plain layers
        assert type(fast.blocks[0].attn.qkv) is torch.nn.Linear and not fast.blocks[0].attn.qkv.weight.is_mkldnn
        return
    assert isinstance(fast.blocks[0].attn.qkv, OneDNNLinear)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    plain = load(ckpt, "bfloat16")
    assert type(plain.blocks[0].attn.qkv) is torch.nn.Linear and not plain.blocks[0].attn.qkv.weight.is_mkldnn
    difference = (logits(plain, ckpt.card, batch) - logits(fast, ckpt.card, batch)).abs().max().item()
    assert difference <= BOUNDS["bfloat16"]  # two bf16 kernels: different sums, within bf16's bound
