"""Tiny decoder families as data: a transformers config for each, and the modeldeck card architecture that describes
the same model. Shared by tests/test_families.py (parity with transformers) and any test that needs a real
`save_pretrained` checkpoint of a family (e.g. `modeldeck card new`).

    FAMILIES[name] = Family(config, architecture)
        config()        a fresh transformers config (imports transformers only when called)
        architecture    the card's `architecture` section, as a plain dict
    card_data(name)     a whole valid card dict for the family (id tiny-<name>, plain prompt format, safetensors)
    build_checkpoint(name, directory)   seeded random weights written by save_pretrained; returns the model (fp32,
                        eval, eager attention), the reference to compare with

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

VOCAB = 320
HIDDEN = 64
LAYERS = 2
HEADS = 8
FFN = 128
CONTEXT = 64
PAD, BOS, EOS = 0, 1, 2  # inside the vocabulary, in every config and card


class Family(NamedTuple):
    config: Callable[[], Any]  # () -> transformers.PretrainedConfig
    architecture: dict[str, Any]  # the card's architecture section


def _tokens() -> dict[str, int]:
    return {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}


def _config(cls_name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import transformers

        return getattr(transformers, cls_name)(**{"initializer_range": 0.1, **_tokens(), **kwargs})

    return make


def _hf(**kwargs: Any) -> dict[str, Any]:
    """The keyword names most transformers decoders share."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": CONTEXT,
        **kwargs,
    }


def _arch(family: str, layout: str, **fields: Any) -> dict[str, Any]:
    return {
        "family": family,
        "checkpoint_layout": layout,
        "layers": LAYERS,
        "hidden_size": HIDDEN,
        "heads": HEADS,
        "kv_heads": HEADS,
        "ffn_size": FFN,
        "vocab_size": VOCAB,
        "context_length": CONTEXT,
        **fields,
    }


def _rotary(**fields: Any) -> dict[str, Any]:
    return {"kind": "rotary", "fraction": 1.0, "base": 10000.0, "rotation": "half_split", "scaling": None, **fields}


LAYERNORM = {"kind": "layernorm", "eps": 1e-5, "bias": True}
RMSNORM = {"kind": "rmsnorm", "eps": 1e-5}
RMSNORM_6 = {"kind": "rmsnorm", "eps": 1e-6}
SEQUENTIAL = {"kind": "sequential", "shared_norm": False}
PARALLEL_SHARED = {"kind": "parallel", "shared_norm": True}
NO_BIAS = {"qkv": False, "attention_output": False, "mlp": False, "lm_head": False}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        _config(
            "GPT2Config",
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=FFN,
            n_positions=CONTEXT,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
        ),
        _arch(
            "GPT-2",
            "gpt2",
            positions={"kind": "learned", "offset": 0},
            norm=LAYERNORM,
            mlp="gelu_tanh",
            residual=SEQUENTIAL,
            bias={"qkv": True, "attention_output": True, "mlp": True, "lm_head": False},
            tied_embeddings=True,
        ),
    ),
    "gptj": Family(
        _config(
            "GPTJConfig",
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=FFN,
            n_positions=CONTEXT,
            rotary_dim=4,  # of head_dim 8
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=False,
        ),
        _arch(
            "GPT-J",
            "gptj",
            positions=_rotary(fraction=0.5, rotation="interleaved"),
            norm=LAYERNORM,
            mlp="gelu_tanh",
            residual=PARALLEL_SHARED,
            bias={"qkv": False, "attention_output": False, "mlp": True, "lm_head": True},
            tied_embeddings=False,
        ),
    ),
    "opt": Family(
        _config(
            "OPTConfig",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            ffn_dim=FFN,
            max_position_embeddings=CONTEXT,
            word_embed_proj_dim=HIDDEN,
            activation_function="relu",
            do_layer_norm_before=True,
            enable_bias=True,
            tie_word_embeddings=True,
        ),
        _arch(
            "OPT",
            "opt",
            positions={"kind": "learned", "offset": 2},
            norm=LAYERNORM,
            mlp="relu",
            residual=SEQUENTIAL,
            bias={"qkv": True, "attention_output": True, "mlp": True, "lm_head": False},
            tied_embeddings=True,
        ),
    ),
    "bloom": Family(
        _config(
            "BloomConfig", vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, layer_norm_epsilon=1e-5
        ),
        _arch(
            "BLOOM",
            "bloom",
            ffn_size=4 * HIDDEN,  # BLOOM's MLP is always 4 x hidden
            positions={"kind": "alibi"},
            norm=LAYERNORM,
            embedding_norm=True,
            mlp="gelu_tanh",
            residual=SEQUENTIAL,
            bias={"qkv": True, "attention_output": True, "mlp": True, "lm_head": False},
            tied_embeddings=True,
        ),
    ),
    "llama3": Family(
        _config(
            "LlamaConfig",
            **_hf(num_key_value_heads=2, rms_norm_eps=1e-5, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
        ),
        _arch(
            "Llama",
            "llama",
            kv_heads=2,
            positions=_rotary(
                base=500000.0,
                scaling={
                    "kind": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_context_length": 16,
                },
            ),
            norm=RMSNORM,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias=NO_BIAS,
            tied_embeddings=False,
        ),
    ),
    "llama-rope-linear": Family(
        _config(
            "LlamaConfig",
            **_hf(
                num_key_value_heads=2,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                tie_word_embeddings=False,
            ),
        ),
        _arch(
            "Llama",
            "llama",
            kv_heads=2,
            positions=_rotary(scaling={"kind": "linear", "factor": 2.0}),
            norm=RMSNORM,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias=NO_BIAS,
            tied_embeddings=False,
        ),
    ),
    "llama-rope-dynamic": Family(
        _config(
            "LlamaConfig",
            **_hf(
                num_key_value_heads=2,
                rms_norm_eps=1e-5,
                max_position_embeddings=16,  # transformers' dynamic NTK grows the base past this length
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                tie_word_embeddings=False,
            ),
        ),
        _arch(
            "Llama",
            "llama",
            kv_heads=2,
            positions=_rotary(scaling={"kind": "dynamic", "factor": 2.0, "original_context_length": 16}),
            norm=RMSNORM,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias=NO_BIAS,
            tied_embeddings=False,
        ),
    ),
    "mistral": Family(
        _config(
            "MistralConfig",
            **_hf(num_key_value_heads=2, rms_norm_eps=1e-5, sliding_window=8, tie_word_embeddings=False),
        ),
        _arch(
            "Mistral",
            "llama",
            kv_heads=2,
            positions=_rotary(),
            norm=RMSNORM,
            mlp="swiglu",
            residual=SEQUENTIAL,
            sliding_window=8,
            bias=NO_BIAS,
            tied_embeddings=False,
        ),
    ),
    "qwen2": Family(
        _config(
            "Qwen2Config",
            **_hf(num_key_value_heads=2, rms_norm_eps=1e-6, use_sliding_window=False, tie_word_embeddings=True),
        ),
        _arch(
            "Qwen2",
            "llama",
            kv_heads=2,
            positions=_rotary(),
            norm=RMSNORM_6,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias={"qkv": True, "attention_output": False, "mlp": False, "lm_head": False},
            tied_embeddings=True,
        ),
    ),
    "qwen3": Family(
        _config(
            "Qwen3Config",
            **_hf(
                num_key_value_heads=4,
                head_dim=16,
                rms_norm_eps=1e-6,
                attention_bias=False,
                use_sliding_window=False,
                tie_word_embeddings=False,
            ),
        ),
        _arch(
            "Qwen3",
            "llama",
            kv_heads=4,
            head_dim=16,  # != 64 / 8
            positions=_rotary(),
            norm=RMSNORM_6,
            qk_norm=True,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias=NO_BIAS,
            tied_embeddings=False,
        ),
    ),
    "gemma": Family(
        _config(
            "GemmaConfig",
            **_hf(
                num_key_value_heads=1,
                head_dim=16,
                rms_norm_eps=1e-6,
                hidden_activation="gelu_pytorch_tanh",
                tie_word_embeddings=True,
            ),
        ),
        _arch(
            "Gemma",
            "llama",
            kv_heads=1,
            head_dim=16,  # != 64 / 8
            positions=_rotary(),
            norm={"kind": "rmsnorm", "eps": 1e-6, "unit_offset": True},
            mlp="geglu_tanh",
            residual=SEQUENTIAL,
            bias=NO_BIAS,
            tied_embeddings=True,
            multipliers={"embedding": float(HIDDEN) ** 0.5},  # 8.0
        ),
    ),
    "stablelm": Family(
        _config(
            "StableLmConfig",
            **_hf(
                num_attention_heads=4,  # head_dim 16: 4 rotary dims at 0.25
                num_key_value_heads=4,
                partial_rotary_factor=0.25,
                use_qkv_bias=True,
                qk_layernorm=False,
                use_parallel_residual=False,
                hidden_act="silu",
                layer_norm_eps=1e-5,
                tie_word_embeddings=False,
            ),
        ),
        _arch(
            "StableLM",
            "llama",
            heads=4,
            kv_heads=4,
            positions=_rotary(fraction=0.25),
            norm=LAYERNORM,
            mlp="swiglu",
            residual=SEQUENTIAL,
            bias={"qkv": True, "attention_output": False, "mlp": False, "lm_head": False},
            tied_embeddings=False,
        ),
    ),
    "phi": Family(
        _config(
            "PhiConfig",
            **_hf(
                num_key_value_heads=HEADS,
                partial_rotary_factor=0.5,
                hidden_act="gelu_new",
                layer_norm_eps=1e-5,
                qk_layernorm=False,
                tie_word_embeddings=False,
            ),
        ),
        _arch(
            "Phi",
            "phi",
            positions=_rotary(fraction=0.5),
            norm=LAYERNORM,
            mlp="gelu_tanh",
            residual=PARALLEL_SHARED,
            bias={"qkv": True, "attention_output": True, "mlp": True, "lm_head": True},
            tied_embeddings=False,
        ),
    ),
    "starcoder2": Family(
        _config(
            "Starcoder2Config",
            **_hf(
                num_key_value_heads=2,
                sliding_window=8,
                hidden_act="gelu_pytorch_tanh",
                norm_epsilon=1e-5,
                use_bias=True,
                tie_word_embeddings=True,
            ),
        ),
        _arch(
            "StarCoder2",
            "starcoder2",
            kv_heads=2,
            positions=_rotary(),
            norm=LAYERNORM,
            mlp="gelu_tanh",
            residual=SEQUENTIAL,
            sliding_window=8,
            bias={"qkv": True, "attention_output": True, "mlp": True, "lm_head": False},
            tied_embeddings=True,
        ),
    ),
}
"""name -> Family(transformers config factory, card architecture dict)."""


def card_data(name: str) -> dict[str, Any]:
    """A whole card for family `name`, as a plain dict (fresh on each call: mutate freely)."""
    import copy

    return {
        "schema_version": 1,
        "id": f"tiny-{name}",
        "name": f"Tiny {FAMILIES[name].architecture['family']} ({name})",
        "publisher": "modeldeck tests",
        "license": "Apache-2.0",
        "description": "A tiny random checkpoint written by transformers' save_pretrained, for parity tests.",
        "source": {"repo": f"modeldeck-tests/tiny-{name}", "format": "safetensors"},
        "architecture": copy.deepcopy(FAMILIES[name].architecture),
        "tokenizer": {
            "kind": "tokenizers",
            "files": ["tokenizer.json"],
            "bos": {"text": "<s>", "id": BOS},
            "eos": {"text": "</s>", "id": EOS},
            "pad": {"text": "<pad>", "id": PAD},
        },
        "prompt_format": "plain",
        "generation": {"max_new_tokens": 24},
        "dtype": "float32",
    }


def build_checkpoint(name: str, directory: Path) -> Any:
    """Family `name` with seeded random weights, saved to `directory` (safetensors); the transformers model, fp32,
    eval mode, eager attention. Every 1-D parameter (norm weights and biases, which transformers initialises to
    ones and zeros) gets noise too, so a misplaced bias or norm weight shows in the logits."""
    import torch
    import transformers

    torch.manual_seed(sorted(FAMILIES).index(name))
    model = transformers.AutoModelForCausalLM.from_config(
        FAMILIES[name].config(), attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return model
