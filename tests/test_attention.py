"""Attention backends against each other and against a per-row loop reference (fp32, CPU; CUDA cases marked gpu)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from modeldeck.runtime.attention import (  # noqa: E402
    EagerMask,
    eager_attention,
    sdpa_attention,
    visible_keys,
    xformers_attention,
    xformers_bias,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (xformers kernels)")

# (heads, kv_heads): MHA, GQA, MQA
HEADS = {"mha": (8, 8), "gqa": (8, 2), "mqa": (8, 1)}
# (queries T, cache length S, start per row): prefill, decode with ragged starts, chunked prefill against a cache
CASES = {
    "prefill": (5, 5, [0, 0, 0]),
    "decode": (1, 9, [8, 3, 0]),
    "chunked": (3, 10, [7, 2, 4]),
}


def random_inputs(case, heads, kv_heads, dim=16, seed=0, dtype=torch.float32, device="cpu"):
    queries, keys, starts = CASES[case]
    g = torch.Generator().manual_seed(seed)
    batch = len(starts)
    q = torch.randn(batch, queries, heads, dim, generator=g)
    k = torch.randn(batch, keys, kv_heads, dim, generator=g)
    v = torch.randn(batch, keys, kv_heads, dim, generator=g)
    start = torch.tensor(starts)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [start.to(device)]


def loop_reference(q, k, v, start, scale, bias=None):
    """Explicit loops over batch, head and query: softmax over the visible keys j <= start[b] + t only."""
    batch, queries, heads, dim = q.shape
    group = heads // k.shape[2]
    out = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for t in range(queries):
                seen = int(start[b]) + t + 1
                keys, values = k[b, :seen, h // group].double(), v[b, :seen, h // group].double()
                scores = keys @ q[b, t, h].double() * scale
                if bias is not None:
                    scores = scores + bias[b, h, t, :seen].double()
                out[b, t, h] = scores.softmax(-1) @ values
    return out


def test_visible_keys_truth_table():
    mask = visible_keys(torch.tensor([0, 2]), 2, 4)
    assert mask.shape == (2, 1, 2, 4)
    # sequence 0: queries at positions 0 and 1; sequence 1: positions 2 and 3 (two tokens already cached)
    assert mask[0, 0].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert mask[1, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    decode = visible_keys(torch.tensor([3, 0, 1]), 1, 4)[:, 0, 0]
    assert decode.tolist() == [[True] * 4, [True, False, False, False], [True, True, False, False]]


def test_a_sliding_window_hides_keys_more_than_window_minus_one_back():
    # window 3: a query sees itself and the two keys before it (transformers: key j visible iff i - j < window)
    mask = visible_keys(torch.tensor([0, 3]), 3, 6, window=3)[:, 0]
    assert mask[0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert mask[1].int().tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def visible(q, k, start):
    """The mask the eager and sdpa backends take: visible_keys for these queries and cache positions."""
    return visible_keys(start, q.shape[1], k.shape[1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", HEADS)
def test_eager_and_sdpa_agree_with_the_loop_reference(kind, case):
    q, k, v, start = random_inputs(case, *HEADS[kind])
    scale = q.shape[-1] ** -0.5
    eager = eager_attention(q, k, v, EagerMask(visible(q, k, start), None), scale)
    sdpa = sdpa_attention(q, k, v, visible(q, k, start), scale)
    assert eager.shape == sdpa.shape == q.shape
    assert (eager - sdpa).abs().max().item() <= 1e-5
    reference = loop_reference(q, k, v, start, scale)
    assert (eager.double() - reference).abs().max().item() <= 1e-5
    assert (sdpa.double() - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_an_additive_bias_like_alibi_is_applied_the_same_way(kind, case):
    q, k, v, start = random_inputs(case, *HEADS[kind], seed=1)
    _, queries, heads, _ = q.shape
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(heads)])
    positions = start[:, None] + torch.arange(queries)  # [B, T]
    distance = positions[:, None, :, None] - torch.arange(k.shape[1])  # [B, 1, T, S]
    bias = -slopes[None, :, None, None] * distance.float()  # [B, H, T, S], ALiBi written out here
    scale = q.shape[-1] ** -0.5
    mask = visible(q, k, start)
    eager = eager_attention(q, k, v, EagerMask(mask, bias), scale)
    sdpa = sdpa_attention(q, k, v, bias.masked_fill(~mask, -math.inf), scale)
    assert (eager - sdpa).abs().max().item() <= 1e-5
    assert (eager.double() - loop_reference(q, k, v, start, scale, bias)).abs().max().item() <= 1e-5
    # the bias changes the answer (it is not silently dropped)
    assert (eager - eager_attention(q, k, v, EagerMask(mask, None), scale)).abs().max().item() > 1e-3


def block_diagonal(start, queries, cache_length, window=None):
    """visible_keys for queries packed as [B*T] and the cache as [B*S]: 0 where visible, -inf elsewhere."""
    batch = len(start)
    mask = torch.full((batch * queries, batch * cache_length), -math.inf)
    visible = visible_keys(start, queries, cache_length, window)[:, 0]  # [B, T, S]
    for b in range(batch):
        block = torch.zeros(queries, cache_length).masked_fill(~visible[b], -math.inf)
        mask[b * queries : (b + 1) * queries, b * cache_length : (b + 1) * cache_length] = block
    return mask


@pytest.mark.parametrize("window", [None, 2, 5])
@pytest.mark.parametrize("case", CASES)
def test_xformers_bias_materializes_to_visible_keys(case, window):
    pytest.importorskip("xformers.ops.fmha.attn_bias")
    queries, cache_length, starts = CASES[case]
    start = torch.tensor(starts)
    batch = len(starts)
    bias = xformers_bias(start, queries, cache_length, window)
    got = bias.materialize(shape=(batch * queries, batch * cache_length), dtype=torch.float32, device="cpu")
    assert torch.equal(got, block_diagonal(start, queries, cache_length, window))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", ["prefill", "decode", "chunked"])
def test_xformers_matches_sdpa_on_cuda_fp16(case):
    pytest.importorskip("xformers.ops")
    q, k, v, start = random_inputs(case, *HEADS["gqa"], dim=64, dtype=torch.float16, device="cuda")
    scale = q.shape[-1] ** -0.5
    ours = xformers_attention(q, k, v, xformers_bias(start, q.shape[1], k.shape[1]), scale)
    expected = sdpa_attention(q, k, v, visible(q, k, start), scale)
    assert ours.shape == q.shape and ours.dtype == torch.float16
    # fp16 tolerance: a few units in the last place of outputs that reach |v| ~ 3 (an ulp there is 2e-3)
    torch.testing.assert_close(ours.float(), expected.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
@needs_cuda
def test_a_tiny_checkpoint_on_cuda_with_xformers_matches_fp32_sdpa_on_cpu(tiny_checkpoint):
    pytest.importorskip("xformers.ops")
    from modeldeck import runtime
    from modeldeck.runtime.model import KVCache

    ckpt = tiny_checkpoint("falcon")  # GQA: 8 query heads, 2 kv heads
    fast = runtime.load(ckpt.card, weights=ckpt.directory, device="cuda", dtype="float16", attention="xformers")
    exact = runtime.load(ckpt.card, weights=ckpt.directory, device="cpu", attention="sdpa")
    assert fast.dtype == torch.float16 and fast.device.type == "cuda"
    tokens = torch.randint(20, 30000, (2, 7), generator=torch.Generator().manual_seed(0))

    def logits(model):
        arch = model.card.architecture
        cache = KVCache(arch, 2, 7, model.dtype, model.device)
        start = torch.zeros(2, dtype=torch.long, device=model.device)
        with torch.inference_mode():
            return model.decoder(tokens.to(model.device), cache, model.backend, start=start).float().cpu()

    expected = logits(exact)
    assert (logits(fast) - expected).abs().max().item() <= 2e-2 * max(1.0, expected.abs().max().item())
