"""Checkpoint layouts of the GPT-2 lineage and its neighbours: GPT-2, GPT-J, OPT, BLOOM, Phi, StarCoder2.

Facts from transformers' modules for each model_type (registry/layouts.py explains the rule tables).
"""

from collections.abc import Callable

from modeldeck.plugins._layout_parts import (
    ALL_BIASES,
    COMMON_CONFIG,
    GELU,
    block,
    with_bias,
)
from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.layouts import CheckpointLayout, ConfigRule, Unsupported

_GPT2_LINEAR = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
_GPT_CONFIG: dict[str, str | ConfigRule] = {
    "vocab_size": "vocab_size",
    "n_embd": "hidden_size",
    "n_layer": "layers",
    "n_head": ConfigRule(fields=["heads", "kv_heads"]),
    "n_inner": ConfigRule(fields=["ffn_size"], null="4 * hidden_size"),
    "n_positions": "context_length",
    "layer_norm_epsilon": "norm.eps",
    "activation_function": ConfigRule(fields=["mlp"], values=GELU),
    "tie_word_embeddings": "tied_embeddings",
}

GPT2 = CheckpointLayout(
    name="gpt2",
    description="GPT-2: learned positions, Conv1D weights stored [in, out], fused QKV as [q | k | v], LM head tied.",
    config_model_types=["gpt2"],
    qkv="concatenated",
    tensors={
        "embed.weight": "transformer.wte.weight",
        "pos_embed.weight": "transformer.wpe.weight",
        **block("transformer.h", with_bias({"attn_norm": "ln_1", "mlp_norm": "ln_2", **_GPT2_LINEAR})),
        **with_bias({"final_norm": "transformer.ln_f"}),
        "lm_head.weight": "lm_head.weight",
    },
    transposed=[f"blocks.{{i}}.{name}.weight" for name in _GPT2_LINEAR],
    config=_GPT_CONFIG,
    implied={
        "*": {
            "positions.kind": "learned",
            "positions.offset": 0,
            "norm.kind": "layernorm",
            "residual.kind": "sequential",
            **ALL_BIASES,
        }
    },
    unsupported={
        "scale_attn_weights": Unsupported(
            feature="attention scores without the 1/sqrt(head_dim) scale", allowed=[True]
        ),
        "scale_attn_by_inverse_layer_idx": "attention scores scaled by 1 / layer index",
    },
    ignored_config=[
        "n_ctx",
        "reorder_and_upcast_attn",  # fp32 attention scores: modeldeck's eager backend computes them so anyway
        *("summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout"),
    ],
    ignored=[".attn.bias", ".attn.masked_bias"],
)

GPTJ = CheckpointLayout(
    name="gptj",
    description="GPT-J: separate q/k/v without biases, interleaved rotary on rotary_dim dims, attention and MLP "
    "in parallel from one LayerNorm, LM head with a bias.",
    config_model_types=["gptj"],
    qkv="separate",
    tensors={
        "embed.weight": "transformer.wte.weight",
        **block(
            "transformer.h",
            {
                **with_bias({"attn_norm": "ln_1", "mlp.up": "mlp.fc_in", "mlp.down": "mlp.fc_out"}),
                "attn.q.weight": "attn.q_proj.weight",
                "attn.k.weight": "attn.k_proj.weight",
                "attn.v.weight": "attn.v_proj.weight",
                "attn.out.weight": "attn.out_proj.weight",
            },
        ),
        **with_bias({"final_norm": "transformer.ln_f", "lm_head": "lm_head"}),
    },
    config={**_GPT_CONFIG, "rotary_dim": ConfigRule(fields=["rotary_dims"], null="head_dim")},
    implied={
        "*": {
            "positions.kind": "rotary",
            "positions.rotation": "interleaved",
            "positions.base": 10000.0,
            "norm.kind": "layernorm",
            "residual.kind": "parallel",
            "residual.shared_norm": True,
            "bias.qkv": False,
            "bias.attention_output": False,
            "bias.mlp": True,
            "bias.lm_head": True,
        }
    },
    ignored=[".attn.bias", ".attn.masked_bias"],
)

OPT = CheckpointLayout(
    name="opt",
    description="OPT: learned positions with two leading unused rows (offset 2), separate q/k/v with biases, ReLU "
    "MLP fc1/fc2, pre-LayerNorm blocks, LM head tied.",
    config_model_types=["opt"],
    qkv="separate",
    tensors={
        "embed.weight": "model.decoder.embed_tokens.weight",
        "pos_embed.weight": "model.decoder.embed_positions.weight",
        **block(
            "model.decoder.layers",
            with_bias(
                {
                    "attn_norm": "self_attn_layer_norm",
                    "mlp_norm": "final_layer_norm",
                    "attn.q": "self_attn.q_proj",
                    "attn.k": "self_attn.k_proj",
                    "attn.v": "self_attn.v_proj",
                    "attn.out": "self_attn.out_proj",
                    "mlp.up": "fc1",
                    "mlp.down": "fc2",
                }
            ),
        ),
        **with_bias({"final_norm": "model.decoder.final_layer_norm"}),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        "vocab_size": "vocab_size",
        "hidden_size": "hidden_size",
        "word_embed_proj_dim": "hidden_size",  # a different width means project_in/out layers (OPT-350m)
        "num_hidden_layers": "layers",
        "num_attention_heads": ConfigRule(fields=["heads", "kv_heads"]),
        "ffn_dim": "ffn_size",
        "max_position_embeddings": "context_length",
        "activation_function": ConfigRule(fields=["mlp"], values=GELU),
        "enable_bias": ConfigRule(fields=["bias.qkv", "bias.attention_output", "bias.mlp"]),
        "tie_word_embeddings": "tied_embeddings",
    },
    implied={
        "*": {
            "positions.kind": "learned",
            "positions.offset": 2,
            "norm.kind": "layernorm",
            "norm.eps": 1e-5,
            "residual.kind": "sequential",
        }
    },
    unsupported={
        "do_layer_norm_before": Unsupported(feature="post-LayerNorm blocks (OPT-350m)", allowed=[True]),
        "_remove_final_layer_norm": "a model without its final LayerNorm",
        "layer_norm_elementwise_affine": Unsupported(feature="LayerNorms without weights", allowed=[True]),
    },
)

BLOOM = CheckpointLayout(
    name="bloom",
    description="BLOOM: ALiBi, a LayerNorm on the embeddings, fused QKV per head as [heads, 3, head_dim], biases "
    "everywhere, LM head tied.",
    config_model_types=["bloom"],
    qkv="per_head",
    tensors={
        "embed.weight": "transformer.word_embeddings.weight",
        **with_bias({"embed_norm": "transformer.word_embeddings_layernorm", "final_norm": "transformer.ln_f"}),
        **block(
            "transformer.h",
            with_bias(
                {
                    "attn_norm": "input_layernorm",
                    "mlp_norm": "post_attention_layernorm",
                    "attn.qkv": "self_attention.query_key_value",
                    "attn.out": "self_attention.dense",
                    "mlp.up": "mlp.dense_h_to_4h",
                    "mlp.down": "mlp.dense_4h_to_h",
                }
            ),
        ),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        "vocab_size": "vocab_size",
        "hidden_size": "hidden_size",
        "n_embed": "hidden_size",
        "n_layer": "layers",
        "n_head": ConfigRule(fields=["heads", "kv_heads"]),
        "layer_norm_epsilon": "norm.eps",
        "tie_word_embeddings": "tied_embeddings",
    },
    implied={
        "*": {
            "positions.kind": "alibi",
            "embedding_norm": True,
            "norm.kind": "layernorm",
            "mlp": "gelu_tanh",
            "ffn_size": "4 * hidden_size",
            "residual.kind": "sequential",
            **ALL_BIASES,
        }
    },
    unsupported={
        "apply_residual_connection_post_layernorm": "residuals taken after the LayerNorm",
    },
    defaults={"context_length": 2048},  # BLOOM's training length; its config does not state it (ALiBi)
    ignored_config=["pretraining_tp", "slow_but_exact", "masked_softmax_fusion", "seq_length"],
)

PHI = CheckpointLayout(
    name="phi",
    description="Phi-1/Phi-2: partial rotary, attention and MLP in parallel from one LayerNorm, biases everywhere "
    "(the LM head too), optional q/k LayerNorms.",
    config_model_types=["phi"],
    qkv="separate",
    tensors={
        "embed.weight": "model.embed_tokens.weight",
        **block(
            "model.layers",
            with_bias(
                {
                    "attn_norm": "input_layernorm",
                    "attn.q": "self_attn.q_proj",
                    "attn.k": "self_attn.k_proj",
                    "attn.v": "self_attn.v_proj",
                    "attn.q_norm": "self_attn.q_layernorm",
                    "attn.k_norm": "self_attn.k_layernorm",
                    "attn.out": "self_attn.dense",
                    "mlp.up": "mlp.fc1",
                    "mlp.down": "mlp.fc2",
                }
            ),
        ),
        **with_bias({"final_norm": "model.final_layernorm", "lm_head": "lm_head"}),
    },
    config={
        **COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "intermediate_size": "ffn_size",
        "layer_norm_eps": "norm.eps",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=GELU),
        "qk_layernorm": "qk_norm",
    },
    implied={
        "*": {
            "positions.kind": "rotary",
            "positions.rotation": "half_split",
            "norm.kind": "layernorm",
            "norm.bias": True,
            "residual.kind": "parallel",
            "residual.shared_norm": True,
            **ALL_BIASES,
            "bias.lm_head": True,
        }
    },
)

STARCODER2 = CheckpointLayout(
    name="starcoder2",
    description="StarCoder2: separate q/k/v, GELU MLP c_fc/c_proj, LayerNorm, biases (use_bias), sliding window.",
    config_model_types=["starcoder2"],
    qkv="separate",
    tensors={
        "embed.weight": "model.embed_tokens.weight",
        **block(
            "model.layers",
            with_bias(
                {
                    "attn_norm": "input_layernorm",
                    "mlp_norm": "post_attention_layernorm",
                    "attn.q": "self_attn.q_proj",
                    "attn.k": "self_attn.k_proj",
                    "attn.v": "self_attn.v_proj",
                    "attn.out": "self_attn.o_proj",
                    "mlp.up": "mlp.c_fc",
                    "mlp.down": "mlp.c_proj",
                }
            ),
        ),
        **with_bias({"final_norm": "model.norm"}),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        **COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "intermediate_size": "ffn_size",
        "norm_epsilon": "norm.eps",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=GELU),
        "use_bias": ConfigRule(fields=["bias.qkv", "bias.attention_output", "bias.mlp"]),
        "sliding_window": "sliding_window",
    },
    implied={
        "*": {
            "positions.kind": "rotary",
            "positions.rotation": "half_split",
            "norm.kind": "layernorm",
            "norm.bias": True,
            "residual.kind": "sequential",
        }
    },
)


LAYOUTS = (GPT2, GPTJ, OPT, BLOOM, PHI, STARCODER2)


@hookimpl
def register_checkpoint_layouts(register: Callable[[CheckpointLayout], None]) -> None:
    for layout in LAYOUTS:
        register(layout)
