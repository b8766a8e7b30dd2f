"""ALiBi in the attention backends: slopes and bias against transformers' BLOOM helper, exactness in half
precision at large positions, and the xformers tensor bias (materialized on the CPU; kernels on CUDA, marked gpu)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from modeldeck.runtime.attention import (  # noqa: E402
    alibi_bias,
    eager_attention,
    eager_mask,
    sdpa_attention,
    sdpa_mask,
    xformers_alibi_bias,
)
from modeldeck.runtime.model import alibi_slopes  # noqa: E402

from .btlm_reference import alibi_slopes_reference  # noqa: E402
from .conftest import REFERENCE  # noqa: E402
from .test_attention import CASES, HEADS, loop_reference, random_inputs  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (xformers kernels)")


def bloom_alibi(heads: int, keys: int) -> torch.Tensor:
    """transformers' own ALiBi (BLOOM's build_alibi_tensor): slope_h * j for key j, shape [H, S]."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    return bloom.build_alibi_tensor(torch.ones(1, keys), heads, torch.float32)[:, 0, :]


@pytest.mark.parametrize("heads", [8, 12, 32, 40])
def test_slopes_match_transformers_bloom_helper(heads):
    bloom_slopes = bloom_alibi(heads, 2)[:, 1]  # slope * 1
    ours = alibi_slopes(heads)
    assert ours.shape == (heads,)
    torch.testing.assert_close(ours.double(), bloom_slopes.double(), rtol=1e-6, atol=0.0)
    # and the formula as BTLM's notes write it (power of two, then every other slope of the next power)
    torch.testing.assert_close(
        ours.double(), torch.tensor(alibi_slopes_reference(heads), dtype=torch.float64), rtol=1e-6, atol=0.0
    )


def test_32_head_slopes_are_powers_of_two_to_the_minus_quarter_steps():
    assert alibi_slopes(32).tolist() == pytest.approx([2 ** (-(i + 1) / 4) for i in range(32)], rel=1e-7)
    published = REFERENCE / "alibi_slopes_32heads.txt"
    if published.exists():
        values = [float(x) for x in published.read_text().strip().strip("[]").split(",")]
        assert alibi_slopes(32).tolist() == pytest.approx(values, abs=6e-8)  # 8 decimals, fp32


@pytest.mark.parametrize("heads", [8, 12, 32, 40])
def test_bias_equals_bloom_up_to_a_constant_per_query_row_and_gives_the_same_attention(heads):
    queries, keys, start = 6, 20, 14  # queries at positions 14..19 against 20 cached keys
    ours = alibi_bias(torch.tensor([start]), queries, keys, alibi_slopes(heads))[0]  # [H, T, S]
    bloom = bloom_alibi(heads, keys)[:, None, :].expand(-1, queries, -1)  # [H, T, S], slope * j
    visible = torch.arange(keys) <= (start + torch.arange(queries))[:, None]  # [T, S]
    difference = (ours - bloom).masked_fill(~visible, math.nan)  # BTLM -slope*(i-j) minus BLOOM slope*j
    row_constant = difference.nanmean(dim=-1, keepdim=True)  # = -slope * i
    assert torch.allclose(difference[:, visible], row_constant.expand_as(difference)[:, visible], atol=1e-4)
    scores = torch.randn(heads, queries, keys, generator=torch.Generator().manual_seed(heads), dtype=torch.float64)
    probs = [(scores + b.double()).masked_fill(~visible, -math.inf).softmax(-1) for b in (ours, bloom)]
    torch.testing.assert_close(probs[0], probs[1], rtol=0, atol=1e-6)
    # the bias matters: without it the attention is different
    assert (scores.masked_fill(~visible, -math.inf).softmax(-1) - probs[0]).abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_bias_is_exact_in_half_precision_at_positions_near_8192(dtype):
    heads, queries, keys = 32, 4, 8192
    start = torch.tensor([keys - queries, 4000])  # the end of an 8k context, and the middle
    slopes = alibi_slopes(heads)
    ours = sdpa_mask(start, queries, keys, slopes, dtype)  # what sdpa (and, aligned, xformers) adds to the scores
    assert ours.dtype == dtype
    positions = (start[:, None] + torch.arange(queries))[:, None, :, None].double()  # [B, 1, T, 1]
    truth = -slopes.double()[None, :, None, None] * (positions - torch.arange(keys).double())  # [B, H, T, S]
    visible = torch.arange(keys) <= positions  # [B, 1, T, S]
    visible = visible.expand_as(truth)
    error = (ours.double() - truth)[visible].abs()
    # One rounding to the half dtype, no more: at most half an ulp of the true value (plus fp32's own rounding).
    bound = truth[visible].abs() * torch.finfo(dtype).eps / 2 * (1 + 1e-4)
    assert bool((error <= bound).all())
    near = visible & ((positions - torch.arange(keys)) < 32)  # the keys that dominate the softmax
    assert (ours.double() - truth)[near].abs().max().item() <= 32 * 0.85 * torch.finfo(dtype).eps / 2
    assert bool(torch.isneginf(ours[~visible]).all())
    # The test can fail: the same bias built from positions (BLOOM's slope * j, shifted per row) in half
    # precision is off by whole units near position 8192.
    naive = (slopes[None, :, None, None] * torch.arange(keys)).to(dtype) - (slopes[None, :, None, None] * positions).to(
        dtype
    )
    assert (naive.double() - truth)[visible].abs().max().item() > 1.0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_backends_with_their_own_alibi_masks_match_the_loop_reference(kind, case):
    q, k, v, start = random_inputs(case, *HEADS[kind], seed=3)
    heads, queries, keys = q.shape[2], q.shape[1], k.shape[1]
    slopes = alibi_slopes(heads)
    scale = 1 / q.shape[-1]  # muP: divide by head_dim
    bias = torch.tensor(  # written out, independently of runtime/attention.py
        [[[[-slopes[h].item() * (s + t - j) for j in range(keys)] for t in range(queries)] for h in range(heads)]
         for s in start.tolist()]
    )  # fmt: skip
    reference = loop_reference(q, k, v, start, scale, bias)
    eager = eager_attention(q, k, v, eager_mask(start, queries, keys, slopes, q.dtype), scale)
    sdpa = sdpa_attention(q, k, v, sdpa_mask(start, queries, keys, slopes, q.dtype), scale)
    assert (eager.double() - reference).abs().max().item() <= 1e-5
    assert (sdpa.double() - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_xformers_alibi_bias_materializes_to_the_sdpa_bias(case, dtype):
    queries, keys, starts = CASES[case]
    start, heads = torch.tensor(starts), 8
    slopes = alibi_slopes(heads)
    bias = xformers_alibi_bias(start, queries, keys, slopes, dtype)
    assert bias.shape == (len(starts), heads, queries, keys) and bias.dtype == dtype
    assert torch.equal(bias, sdpa_mask(start, queries, keys, slopes, dtype))
    # the kernels' memory contract: rows start on 16-byte boundaries, unit stride along keys
    assert bias.stride(-1) == 1 and all(s % 8 == 0 for s in bias.stride()[:-1])
    cutlass = pytest.importorskip("xformers.ops.fmha.cutlass")
    reasons: list[str] = []
    cutlass._check_bias_alignment(reasons, bias)
    assert reasons == []
    # and the grouped (GQA) view the backend hands xformers is a view, not a copy
    grouped = bias.view(len(starts), 2, heads // 2, queries, keys)
    assert grouped.data_ptr() == bias.data_ptr()


def test_xformers_alibi_inputs_pass_xformers_shape_validation_on_the_cpu():
    common = pytest.importorskip("xformers.ops.fmha.common")
    q, k, v, start = random_inputs("chunked", *HEADS["gqa"], dtype=torch.float16)
    batch, queries, heads, dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bias = xformers_alibi_bias(start, queries, keys, alibi_slopes(heads), torch.float16)
    inputs = common.Inputs(  # exactly the 5-D arguments xformers_attention builds
        query=q.view(batch, queries, kv_heads, group, dim),
        key=k.unsqueeze(3).expand(-1, -1, -1, group, -1),
        value=v.unsqueeze(3).expand(-1, -1, -1, group, -1),
        attn_bias=bias.view(batch, kv_heads, group, queries, keys),
        scale=1 / dim,
    )
    inputs.validate_inputs()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_xformers_with_alibi_matches_fp32_sdpa_on_cuda(kind, case):
    pytest.importorskip("xformers.ops")
    from modeldeck.runtime.attention import xformers_attention

    q, k, v, start = random_inputs(case, *HEADS[kind], dim=64, seed=4, device="cuda")
    heads, queries, keys = q.shape[2], q.shape[1], k.shape[1]
    slopes = alibi_slopes(heads)
    half = [t.half() for t in (q, k, v)]
    ours = xformers_attention(*half, xformers_alibi_bias(start, queries, keys, slopes, torch.float16), 1 / 64)
    expected = sdpa_attention(q, k, v, sdpa_mask(start, queries, keys, slopes, torch.float32), 1 / 64)
    assert ours.dtype == torch.float16
    torch.testing.assert_close(ours.float(), expected, atol=3e-3, rtol=3e-3)
