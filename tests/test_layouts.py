"""Checkpoint layouts as data: config rules both ways (checking a card, writing one), value maps, implied facts per
model_type, value-comparing `unsupported` rules, and the errors a plugin author meets."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from modeldeck import registry
from modeldeck.plugins import checkpoint_layouts, gpt_style_layouts
from modeldeck.registry.cardfile import CardError
from modeldeck.registry.layouts import CheckpointLayout, ConfigRule, Unsupported
from modeldeck.registry.schema import Architecture

from .conftest import REFERENCE, first_party_card_data

LAYOUT = {layout.name: layout for layout in (*checkpoint_layouts.LAYOUTS, *gpt_style_layouts.LAYOUTS)}


def qwen2_architecture(**changes) -> Architecture:
    data = {
        "family": "Qwen2",
        "checkpoint_layout": "llama",
        "layers": 2,
        "hidden_size": 64,
        "heads": 8,
        "kv_heads": 2,
        "ffn_size": 128,
        "vocab_size": 300,
        "context_length": 64,
        "positions": {"kind": "rotary", "base": 10000.0},
        "norm": {"kind": "rmsnorm", "eps": 1e-6},
        "mlp": "swiglu",
        "residual": {"kind": "sequential"},
        "bias": {"qkv": True},
        "tied_embeddings": True,
    }
    data.update(changes)
    return Architecture.model_validate(data)


def qwen2_config(**changes) -> dict:
    config = {
        "model_type": "qwen2",
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 28,
        "layer_types": ["full_attention", "full_attention"],
        "attention_dropout": 0.0,
    }
    config.update(changes)
    return config


def messages(arch: Architecture, config: dict, layout: str = "llama") -> list[str]:
    return [m.describe() for m in LAYOUT[layout].config_mismatches(arch, config)]


def test_a_qwen2_config_fits_a_qwen2_card_through_the_llama_layout():
    assert messages(qwen2_architecture(), qwen2_config()) == []


def test_use_sliding_window_false_is_fine_and_true_needs_the_card_to_say_so():
    # an older Qwen2 config states a window it does not use: sliding_window counts only with use_sliding_window
    assert messages(qwen2_architecture(), qwen2_config(sliding_window=32768)) == []
    switched_on = qwen2_config(use_sliding_window=True, sliding_window=16, layer_types=["sliding_attention"] * 2)
    found = messages(qwen2_architecture(), switched_on)
    assert any("use_sliding_window=True disagrees with the card's architecture.sliding_window" in m for m in found)
    assert any("sliding_window=16 disagrees with the card's architecture.sliding_window (None" in m for m in found)
    assert messages(qwen2_architecture(sliding_window=16), switched_on) == []


def test_a_mix_of_windowed_and_full_layers_is_named_as_inexpressible():
    mixed = qwen2_config(
        use_sliding_window=True, sliding_window=16, layer_types=["full_attention", "sliding_attention"]
    )
    found = messages(qwen2_architecture(sliding_window=16), mixed)
    assert found == [
        "config.json layer_types=['full_attention', 'sliding_attention'] (model_type qwen2) mixes values in a way "
        "that modeldeck's architecture vocabulary cannot express (it reads full_attention -> False, sliding_attention -> "
        "True); this checkpoint needs a decoder feature modeldeck does not have"
    ]


def test_a_config_value_the_vocabulary_cannot_express_is_named_with_the_family():
    found = messages(qwen2_architecture(), qwen2_config(hidden_act="gelu_fast"))
    assert found == [
        "config.json hidden_act='gelu_fast' (model_type qwen2): 'gelu_fast' is a value that modeldeck's architecture "
        "vocabulary cannot express (it reads silu -> swiglu, swish -> swiglu, gelu -> geglu, gelu_new -> geglu_tanh, "
        "gelu_pytorch_tanh -> geglu_tanh); this checkpoint needs a decoder feature modeldeck does not have"
    ]


def test_what_a_model_type_implies_is_checked():
    # Qwen2 always has q/k/v biases: a Qwen2 config with a card that says otherwise is named
    found = messages(qwen2_architecture(bias={"qkv": False}), qwen2_config())
    assert found == [
        "config.json model_type='qwen2' disagrees with the card's architecture.bias.qkv (False; rule: model_type "
        "<-> bias.qkv = True (implied))"
    ]
    gemma = qwen2_architecture(norm={"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True}, bias={})
    config = qwen2_config(model_type="gemma", hidden_act="gelu_pytorch_tanh")
    found = messages(gemma.model_copy(update={"mlp": "geglu_tanh"}), config)
    assert found == [
        "config.json model_type='gemma' disagrees with the card's architecture.multipliers.embedding (1.0; rule: "
        "model_type <-> multipliers.embedding = 8.0 (implied))"
    ]


def test_unsupported_rules_compare_values():
    layout = LAYOUT["opt"]
    arch = Architecture.model_validate(
        {
            **{k: v for k, v in qwen2_architecture().model_dump().items() if k not in ("positions", "bias")},
            "checkpoint_layout": "opt",
            "kv_heads": 8,
            "positions": {"kind": "learned", "offset": 2},
            "norm": {"kind": "layernorm"},
            "mlp": "relu",
        }
    )
    assert [m.describe() for m in layout.config_mismatches(arch, {"do_layer_norm_before": True})] == []
    assert [m.describe() for m in layout.config_mismatches(arch, {"do_layer_norm_before": False})] == [
        "config.json sets do_layer_norm_before=False, which switches on post-LayerNorm blocks (OPT-350m), which "
        "modeldeck does not implement"
    ]
    shorthand = CheckpointLayout(
        name="x", description="x", config_model_types=["x"], qkv="separate", tensors={}, unsupported={"k": "a thing"}
    )
    assert [shorthand.config_mismatches(arch, {"k": v}) != [] for v in (None, False, True, 2)] == [
        False,
        False,
        True,
        True,
    ]


def test_a_layout_mapping_a_tensor_the_decoder_does_not_have_is_refused():
    with pytest.raises(ValidationError) as exc:
        CheckpointLayout(
            name="mine",
            description="a plugin's layout",
            config_model_types=["mine"],
            qkv="separate",
            tensors={"embed.weight": "wte", "blocks.{i}.attn.rotary.weight": "h.{i}.rot"},
        )
    assert (
        "layout 'mine' maps blocks.{i}.attn.rotary.weight, which the decoder does not have (a typo, or a feature "
        "modeldeck's architecture vocabulary lacks); the names a layout may map: embed.weight, pos_embed.weight"
    ) in str(exc.value)


def test_every_decoder_tensor_and_qkv_part_is_mappable():
    from modeldeck.registry.decoder import LAYOUT_TENSORS, TENSORS

    assert {t.name for t in TENSORS} <= set(LAYOUT_TENSORS)
    for part in ("q", "k", "v"):
        assert {f"blocks.{{i}}.attn.{part}.weight", f"blocks.{{i}}.attn.{part}.bias"} <= set(LAYOUT_TENSORS)


def test_a_sliding_window_larger_than_the_context_is_refused(card_data):
    data = card_data("aira-2-1b1")
    data["architecture"]["sliding_window"] = data["architecture"]["context_length"] + 1
    with pytest.raises(CardError) as exc:
        registry.card_from_data(data, "card.yaml")
    assert (
        f"sliding_window {data['architecture']['context_length'] + 1} exceeds context_length "
        f"{data['architecture']['context_length']}, so it never limits attention; drop sliding_window"
    ) in str(exc.value)


def test_rules_read_in_reverse_write_the_architecture():
    found = LAYOUT["llama"].architecture_from_config(qwen2_config(max_window_layers=28, odd_new_key=1))
    assert found.problems == []
    assert found.unread == ["odd_new_key"]
    assert found.fields["bias.qkv"] is True and found.sources["bias.qkv"] == "model_type qwen2"
    assert found.fields["kv_heads"] == 2 and found.sources["kv_heads"] == "config.json num_key_value_heads"
    assert found.fields["sliding_window"] is None and found.fields["mlp"] == "swiglu"
    gpt2 = LAYOUT["gpt2"].architecture_from_config({"model_type": "gpt2", "n_embd": 64, "n_inner": None})
    assert gpt2.fields["ffn_size"] == 256  # n_inner null: 4 x n_embd


def test_a_rule_maps_one_value_to_several_fields():
    rule = ConfigRule(fields=["residual.kind", "residual.shared_norm"], values={"true": ["parallel", True]})
    layout = CheckpointLayout(
        name="x", description="x", config_model_types=["x"], qkv="separate", tensors={}, config={"par": rule}
    )
    assert layout.architecture_from_config({"par": True}).fields == {
        "residual.kind": "parallel",
        "residual.shared_norm": True,
    }
    assert Unsupported(feature="f").allowed == [None, False]


SEED_CONFIGS = {  # reference config.json -> the first-party card it belongs to
    "pythia-1.4b.config.json": "pythia-1.4b",
    "TinyLlama-1.1B.config.json": None,
    "Aira-2-1B1.config.json": "aira-2-1b1",
    "h2ogpt-oasst1-falcon-40b.config.json": "h2ogpt-oig-oasst1-falcon-40b",
    "btlm-3b-8k-base.config.json": "gpt-jx-3b",
}


@pytest.mark.parametrize("name", sorted(n for n, card in SEED_CONFIGS.items() if card))
def test_the_seed_cards_still_fit_their_real_configs(reference, name):
    card = registry.card_from_data(first_party_card_data(SEED_CONFIGS[name]), name)
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    config = json.loads((REFERENCE / "configs" / name).read_text())
    assert [m.describe() for m in layout.config_mismatches(card.architecture, config)] == []
    # and read in reverse, the config writes the card's own architecture
    found = layout.architecture_from_config(config)
    assert found.problems == []
    for path, value in found.fields.items():
        if path in ("unscaled_context_length", "positions.scaling.kind"):
            continue
        ours = card.architecture
        for part in path.split("."):
            ours = getattr(ours, part)
        assert ours == pytest.approx(value) if isinstance(value, float) else ours == value, path


@pytest.mark.parametrize(
    "changes",
    [
        {"norm": {"kind": "layernorm", "bias": False}},
        {"norm": {"kind": "layernorm"}, "embedding_norm": True, "qk_norm": True},
        {"positions": {"kind": "learned", "offset": 2}, "mlp": "geglu"},
        {"head_dim": 16, "mlp": "relu", "bias": {"lm_head": True}, "tied_embeddings": False},
    ],
)
def test_the_torch_decoder_has_exactly_the_tensors_the_spec_says(changes):
    """registry/decoder.py (torch-free) and runtime/model.py agree on every architecture choice's tensors."""
    torch = pytest.importorskip("torch")
    from modeldeck.registry.decoder import decoder_tensors
    from modeldeck.runtime.model import Decoder

    arch = qwen2_architecture(**changes)
    with torch.device("meta"):
        ours = {name: tuple(t.shape) for name, t in Decoder(arch).state_dict().items()}
    assert ours == decoder_tensors(arch)
    if changes.get("norm") == {"kind": "layernorm", "bias": False}:
        assert not any(name.endswith("norm.bias") for name in ours)
