"""The generic decoder against transformers on tiny random checkpoints of each family (fp32, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from modeldeck.runtime.attention import get_backend  # noqa: E402
from modeldeck.runtime.generate import generate_tokens, resolve_options  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

from .conftest import REFERENCE, load_model  # noqa: E402

FAMILIES = ["gpt-neox", "falcon", "falcon-7b", "llama"]
TOKENIZERS_HERE = (REFERENCE / "tokenizers").is_dir()  # without them, the decoder is loaded without a tokenizer
LENGTHS = [5, 11, 3]


def prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(20, min(vocab, 30000), (n,), generator=g).tolist() for n in LENGTHS]


def batch_logits(model, batch: list[list[int]], backend: str) -> torch.Tensor:
    """Our logits for a right-padded batch: [B, T, V]."""
    longest = max(map(len, batch))
    tokens = torch.tensor([p + [0] * (longest - len(p)) for p in batch])
    cache = KVCache(model.card.architecture, len(batch), longest, torch.float32, "cpu")
    with torch.inference_mode():
        return model.decoder(tokens, cache, get_backend(backend), start=torch.zeros(len(batch), dtype=torch.long))


@pytest.fixture(params=FAMILIES)
def family(request, tiny_checkpoint):
    ckpt = tiny_checkpoint(request.param, tokenizer=False)  # logits and token ids only: no tokenizer needed
    return ckpt, load_model(ckpt.card, ckpt.directory, with_tokenizer=TOKENIZERS_HERE)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_match_transformers_for_a_padded_batch(family, backend):
    ckpt, model = family
    batch = prompts(ckpt.card.architecture.vocab_size)
    ours = batch_logits(model, batch, backend)
    for row, ids in enumerate(batch):
        with torch.no_grad():
            reference = ckpt.reference(torch.tensor([ids])).logits[0]
        assert (ours[row, : len(ids)] - reference).abs().max().item() <= 1e-4


def test_kv_cache_decoding_equals_recomputation(family):
    ckpt, model = family
    attend = get_backend("sdpa")
    arch = ckpt.card.architecture
    batch = prompts(arch.vocab_size, seed=1)
    cache = KVCache(arch, len(batch), max(LENGTHS) + 6, torch.float32, "cpu")
    lengths = torch.tensor(LENGTHS)
    longest = max(LENGTHS)
    tokens = torch.tensor([p + [0] * (longest - len(p)) for p in batch])
    sequences = [list(p) for p in batch]
    with torch.inference_mode():
        step = model.decoder(tokens, cache, attend, start=torch.zeros(3, dtype=torch.long), last=lengths - 1)
        cache.lengths = lengths.clone()
        for _ in range(6):
            nxt = step.argmax(-1)
            for seq, token in zip(sequences, nxt.tolist(), strict=True):
                seq.append(token)
            step = model.decoder(nxt[:, None], cache, attend)[:, 0]
            cache.lengths += 1
            full = batch_logits(model, sequences, "eager")
            expected = torch.stack([full[i, len(s) - 1] for i, s in enumerate(sequences)])
            assert (step - expected).abs().max().item() <= 1e-4


def test_greedy_generation_is_token_identical_to_transformers(family):
    ckpt, model = family
    eos = ckpt.card.tokenizer.eos.id
    opts = resolve_options(
        ckpt.card.generation,
        [],
        {
            "max_new_tokens": 32,
            "do_sample": False,
            "repetition_penalty": 1.2,
            "min_new_tokens": 4,
            "num_return_sequences": 1,
        },
    )
    for ids in prompts(ckpt.card.architecture.vocab_size, seed=2):
        ours = [t for events in generate_tokens(model.decoder, [ids], opts, model.backend, [eos], 0) for _, t in events]
        with torch.no_grad():
            hf = ckpt.reference.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=32,
                do_sample=False,
                repetition_penalty=1.2,
                min_new_tokens=4,
                eos_token_id=eos,
                pad_token_id=eos,
            )[0, len(ids) :].tolist()
        assert ours == hf


def test_batched_generation_equals_one_prompt_at_a_time(family):
    ckpt, model = family
    eos = ckpt.card.tokenizer.eos.id
    opts = resolve_options(
        ckpt.card.generation, [], {"max_new_tokens": 12, "do_sample": False, "num_return_sequences": 1}
    )

    def run(batch):
        out = [[] for _ in batch]
        for events in generate_tokens(model.decoder, batch, opts, model.backend, [eos], 0):
            for i, t in events:
                out[i].append(t)
        return out

    batch = prompts(ckpt.card.architecture.vocab_size, seed=3)
    assert run(batch) == [run([p])[0] for p in batch]


def test_min_new_tokens_holds_back_a_likely_eos(tiny_checkpoint):
    """Make eos the most likely token everywhere: greedy stops at once, unless min_new_tokens forbids it."""
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    model = load_model(ckpt.card, ckpt.directory, with_tokenizer=TOKENIZERS_HERE)
    eos = ckpt.card.tokenizer.eos.id
    with torch.no_grad():
        model.decoder.lm_head.bias = torch.nn.Parameter(torch.zeros(ckpt.card.architecture.vocab_size))
        model.decoder.lm_head.bias[eos] = 1e4
    ids = prompts(ckpt.card.architecture.vocab_size)[0]

    def run(**options):
        opts = resolve_options(ckpt.card.generation, [], {"max_new_tokens": 10, "num_return_sequences": 1, **options})
        return [t for events in generate_tokens(model.decoder, [ids], opts, model.backend, [eos], 0) for _, t in events]

    assert run() == [eos]
    held = run(min_new_tokens=3)
    assert len(held) == 4 and held[-1] == eos and eos not in held[:3]
