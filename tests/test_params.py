"""Parameter counts from the architecture: pinned to the upstream numbers and to transformers' own models."""

from __future__ import annotations

import pytest

from modeldeck import registry
from modeldeck.registry import check_card, count_parameters


@pytest.mark.parametrize(
    ("card_id", "total"),
    [
        ("pythia-1.4b", 1_414_647_808),  # Pythia's table, total params column
        ("astrid-1b", 1_011_781_632),  # = pythia-1b's shape
        ("gpt-jx-3b", 2_646_255_744),  # BTLM with tied embeddings, without the 32 ALiBi slopes
        ("aira-2-1b1", 1_100_068_864),  # TinyLlama shape with vocab 32005
        ("h2ogpt-oig-oasst1-falcon-40b", 41_303_293_952),  # the seed only says "40 billion"
        ("tiny-neox", 1_892_800),  # the bundled demo model
    ],
)
def test_counts_from_the_cards(card_id, total):
    assert count_parameters(registry.get(card_id).architecture).total == total


def test_pythia_non_embedding_count_matches_its_table():
    assert count_parameters(registry.get("pythia-1.4b").architecture).non_embedding == 1_208_602_624


def _diagnostics(card_id: str, field: str = "parameters.stated"):
    card = registry.get(card_id)
    return [d for d in check_card(card, card_id) if d.field == field]


def test_gpt_jx_difference_is_explained_by_the_slopes():
    [d] = _diagnostics("gpt-jx-3b")
    assert d.severity == "info"
    assert "2,646,255,776 = 2,646,255,744 from the architecture + 32 stored extra" in d.message
    assert "ALiBi" in d.message


def test_aira_difference_is_reported_not_hidden():
    [d] = _diagnostics("aira-2-1b1")
    assert d.severity == "warning"
    assert "stated 1,261,545,472, computed from the architecture 1,100,068,864, difference +161,476,608" in d.message


def test_exact_match_is_silent():
    assert _diagnostics("pythia-1.4b") == []
    assert _diagnostics("pythia-1.4b", "parameters.stated_non_embedding") == []


def test_silent_mismatch_is_an_error(card_data):
    data = card_data("pythia-1.4b")
    data["parameters"] = {"stated": 1_414_647_000}
    card = registry.default().resolve_card(registry.card_from_data(data, "x"), "x")
    [d] = [d for d in check_card(card, "x") if d.field == "parameters.stated"]
    assert d.severity == "error"
    assert (
        d.message
        == "parameter count differs: stated 1,414,647,000, computed from the architecture 1,414,647,808, difference -808"
    )
    assert "parameters.note" in d.hint


# --- parity with transformers: the same architecture built by the reference implementation ----------


def _hf_model_parameters(card_id: str) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = registry.get(card_id).architecture
    common = {"vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size, "num_hidden_layers": arch.layers}
    if arch.checkpoint_layout == "gpt-neox":
        config = transformers.GPTNeoXConfig(
            **common,
            num_attention_heads=arch.heads,
            intermediate_size=arch.ffn_size,
            rotary_pct=arch.positions.fraction,
            use_parallel_residual=arch.residual.kind == "parallel",
            tie_word_embeddings=arch.tied_embeddings,
        )
    elif arch.checkpoint_layout == "llama":
        config = transformers.LlamaConfig(
            **common,
            num_attention_heads=arch.heads,
            num_key_value_heads=arch.kv_heads,
            intermediate_size=arch.ffn_size,
            tie_word_embeddings=arch.tied_embeddings,
        )
    else:
        config = transformers.FalconConfig(
            **common,
            num_attention_heads=arch.heads,
            num_kv_heads=arch.kv_heads,
            new_decoder_architecture=True,
            parallel_attn=True,
            bias=False,
            ffn_hidden_size=arch.ffn_size,
            tie_word_embeddings=arch.tied_embeddings,
        )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once


@pytest.mark.parametrize("card_id", ["pythia-1.4b", "astrid-1b", "aira-2-1b1", "h2ogpt-oig-oasst1-falcon-40b"])
def test_count_matches_transformers(card_id):
    assert count_parameters(registry.get(card_id).architecture).total == _hf_model_parameters(card_id)
