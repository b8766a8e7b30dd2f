"""Checkpoint layouts of the mainstream decoder families: Hugging Face tensor names per decoder tensor, and how
each config.json key relates to a card (registry/layouts.py explains the rules).

Facts from the public model definitions (transformers' modules for each model_type; Cerebras' BTLM). The runtime
maps only the tensors a card's architecture has (e.g. no biases for Falcon-40B), so one layout serves every
model_type that names its tensors alike (`LLAMA`: Llama, Mistral, Qwen2, Qwen3, Gemma, StableLM). The GPT-2
lineage (GPT-2, GPT-J, OPT, BLOOM, Phi, StarCoder2) is the gpt_style_layouts plugin.
"""

from collections.abc import Callable

from modeldeck.plugins._layout_parts import BOTH_ATTENTION_BIASES, COMMON_CONFIG, GATED, GELU, block, with_bias
from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.layouts import CheckpointLayout, ConfigRule, Unsupported

GPT_NEOX = CheckpointLayout(
    name="gpt-neox",
    description="GPT-NeoX (Pythia, Astrid): fused QKV laid out per head as [heads, 3, head_dim].",
    config_model_types=["gpt_neox"],
    qkv="per_head",
    tensors={
        "embed.weight": "gpt_neox.embed_in.weight",
        **block(
            "gpt_neox.layers",
            with_bias(
                {
                    "attn_norm": "input_layernorm",
                    "mlp_norm": "post_attention_layernorm",
                    "attn.qkv": "attention.query_key_value",
                    "attn.out": "attention.dense",
                    "mlp.up": "mlp.dense_h_to_4h",
                    "mlp.down": "mlp.dense_4h_to_h",
                }
            ),
        ),
        **with_bias({"final_norm": "gpt_neox.final_layer_norm"}),
        "lm_head.weight": "embed_out.weight",
    },
    config={
        **COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "intermediate_size": "ffn_size",
        "rotary_pct": "positions.fraction",
        "rotary_emb_base": "positions.base",
        "layer_norm_eps": "norm.eps",
        "use_parallel_residual": ConfigRule(
            fields=["residual.kind"], values={"true": "parallel", "false": "sequential"}
        ),
        "max_position_embeddings": "context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=GELU),
        "attention_bias": ConfigRule(fields=BOTH_ATTENTION_BIASES),
    },
    implied={"*": {"positions.kind": "rotary", "norm.kind": "layernorm", "bias.mlp": True}},
    ignored_config=["classifier_dropout"],
    ignored=[".attention.rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"],
)

_FALCON_SHARED = {
    "attn.qkv": "self_attention.query_key_value",
    "attn.out": "self_attention.dense",
    "mlp.up": "mlp.dense_h_to_4h",
    "mlp.down": "mlp.dense_4h_to_h",
}
_FALCON_CONFIG = {
    **COMMON_CONFIG,
    "num_hidden_layers": "layers",
    "n_layer": "layers",
    "num_attention_heads": "heads",
    "n_head": "heads",
    "layer_norm_epsilon": "norm.eps",
    "parallel_attn": ConfigRule(fields=["residual.kind"], values={"true": "parallel", "false": "sequential"}),
    "bias": ConfigRule(fields=["bias.qkv", "bias.attention_output", "bias.mlp"]),
    "alibi": ConfigRule(fields=["positions.kind"], values={"true": "alibi", "false": "rotary"}),
    "ffn_hidden_size": "ffn_size",
    "max_position_embeddings": "context_length",
    "activation": ConfigRule(fields=["mlp"], values=GELU),
}
_FALCON_IMPLIED = {"*": {"norm.kind": "layernorm", "multipliers.attention": "inverse_sqrt_head_dim"}}
_FALCON_IGNORED = ["num_ln_in_parallel_attn"]
_FALCON_UNSUPPORTED: dict[str, str | Unsupported] = {
    "apply_residual_connection_post_layernorm": "residuals taken after the LayerNorm"
}
# Falcon's older configs (RW, and the 40B in-library one) leave these out; transformers' defaults then apply.
_FALCON_DEFAULTS = {"ffn_size": "4 * hidden_size", "context_length": 2048, "mlp": "gelu"}
_FALCON_EDGES = {
    "embed.weight": "transformer.word_embeddings.weight",
    **with_bias({"final_norm": "transformer.ln_f"}),
    "lm_head.weight": "lm_head.weight",
}

FALCON = CheckpointLayout(
    name="falcon",
    description="Falcon new decoder architecture (40B): ln_attn + ln_mlp, fused QKV grouped by kv head as "
    "[kv_heads, heads/kv_heads + 2, head_dim].",
    config_model_types=["falcon", "RefinedWeb"],
    qkv="grouped",
    tensors={
        **_FALCON_EDGES,
        **block("transformer.h", with_bias({"attn_norm": "ln_attn", "mlp_norm": "ln_mlp", **_FALCON_SHARED})),
    },
    config={
        **_FALCON_CONFIG,
        "num_kv_heads": "kv_heads",
        "n_head_kv": "kv_heads",
        "new_decoder_architecture": "residual.shared_norm == False",
    },
    implied=_FALCON_IMPLIED,
    unsupported=_FALCON_UNSUPPORTED,
    defaults=_FALCON_DEFAULTS,
    ignored_config=[*_FALCON_IGNORED, "multi_query"],  # the new decoder architecture reads num_kv_heads instead
    ignored=[".rotary_emb.inv_freq"],
)

FALCON_7B = CheckpointLayout(
    name="falcon-7b",
    description="Falcon-7B: one LayerNorm shared by attention and MLP, multi-query fused QKV [heads + 2, head_dim] "
    "(the grouped view with one kv head).",
    config_model_types=["falcon", "RefinedWebModel"],
    qkv="grouped",
    tensors={
        **_FALCON_EDGES,
        **block("transformer.h", with_bias({"attn_norm": "input_layernorm", **_FALCON_SHARED})),
    },
    config={
        **_FALCON_CONFIG,
        "multi_query": "kv_heads == 1",
        "new_decoder_architecture": "residual.shared_norm == False",
    },
    implied={"*": {**_FALCON_IMPLIED["*"], "residual.shared_norm": True}},
    unsupported=_FALCON_UNSUPPORTED,
    defaults=_FALCON_DEFAULTS,
    ignored_config=[*_FALCON_IGNORED, "num_kv_heads"],  # without the new decoder architecture: multi_query
    ignored=[".rotary_emb.inv_freq"],
)

_RMS_SEQUENTIAL = {"norm.kind": "rmsnorm", "residual.kind": "sequential"}
_NO_BIAS = {"bias.qkv": False, "bias.attention_output": False, "bias.mlp": False}

LLAMA = CheckpointLayout(
    name="llama",
    description="Llama and the families that name tensors alike (Mistral, Qwen2, Qwen3, Gemma, StableLM): separate "
    "q/k/v projections (biases where the family has them), gate/up/down MLP, RMSNorm or LayerNorm.",
    config_model_types=["llama", "mistral", "qwen2", "qwen3", "gemma", "stablelm"],
    qkv="separate",
    tensors={
        "embed.weight": "model.embed_tokens.weight",
        **block(
            "model.layers",
            {
                **with_bias(
                    {
                        "attn_norm": "input_layernorm",
                        "mlp_norm": "post_attention_layernorm",
                        "attn.q": "self_attn.q_proj",
                        "attn.k": "self_attn.k_proj",
                        "attn.v": "self_attn.v_proj",
                        "attn.out": "self_attn.o_proj",
                        "mlp.gate": "mlp.gate_proj",
                        "mlp.up": "mlp.up_proj",
                        "mlp.down": "mlp.down_proj",
                    }
                ),
                "attn.q_norm.weight": "self_attn.q_norm.weight",
                "attn.k_norm.weight": "self_attn.k_norm.weight",
            },
        ),
        **with_bias({"final_norm": "model.norm"}),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        **COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "head_dim": "head_dim",
        "intermediate_size": "ffn_size",
        "rms_norm_eps": "norm.eps",
        "layer_norm_eps": "norm.eps",  # StableLM
        "attention_bias": ConfigRule(fields=BOTH_ATTENTION_BIASES),
        "use_qkv_bias": "bias.qkv",  # StableLM
        "mlp_bias": "bias.mlp",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=GATED),
        "hidden_activation": ConfigRule(fields=["mlp"], values=GATED),  # Gemma's older name
        # Mistral: sliding_window (null: none); Qwen2/Qwen3: only counts with use_sliding_window
        "sliding_window": ConfigRule(fields=["sliding_window"], when="use_sliding_window"),
        "use_sliding_window": "sliding_window != None",
        "layer_types": ConfigRule(
            fields=["sliding_window != None"],
            values={"full_attention": False, "sliding_attention": True},
            each=True,
        ),
        "use_parallel_residual": ConfigRule(
            fields=["residual.kind", "residual.shared_norm"],
            values={"true": ["parallel", True], "false": ["sequential", False]},
        ),
    },
    implied={
        "*": {"positions.kind": "rotary", "positions.rotation": "half_split"},
        "llama": _RMS_SEQUENTIAL,
        "mistral": {**_RMS_SEQUENTIAL, **_NO_BIAS},
        "qwen2": {**_RMS_SEQUENTIAL, **_NO_BIAS, "bias.qkv": True},
        "qwen3": {**_RMS_SEQUENTIAL, "qk_norm": True, "bias.mlp": False},
        "gemma": {
            **_RMS_SEQUENTIAL,
            "norm.unit_offset": True,
            "multipliers.embedding": "sqrt(hidden_size)",
            "bias.mlp": False,
        },
        "stablelm": {"norm.kind": "layernorm", "norm.bias": True, "bias.attention_output": False, "bias.mlp": False},
    },
    unsupported={
        "qk_layernorm": "StableLM's per-head q/k LayerNorms (one weight per head)",
        "pretraining_tp": Unsupported(feature="tensor-parallel slicing of the linear layers", allowed=[None, 1]),
    },
    ignored_config=["max_window_layers", "use_bidirectional_attention"],
    ignored=[".self_attn.rotary_emb.inv_freq"],
)

_BTLM_LINEAR = {
    "attn.qkv": "attn.c_attn",
    "attn.out": "attn.c_proj",
    "mlp.up": "mlp.c_fc",
    "mlp.gate": "mlp.c_fc2",
    "mlp.down": "mlp.c_proj",
}

BTLM = CheckpointLayout(
    name="btlm",
    description="Cerebras BTLM (GPT-JX): GPT-2 names, Conv1D weights stored [in, out], fused QKV as [q | k | v], "
    "ALiBi slopes stored, LM head tied (absent).",
    config_model_types=["btlm", "gpt_jx"],
    qkv="concatenated",
    tensors={
        "embed.weight": "transformer.wte.weight",
        "alibi_slopes": "transformer.relative_pe.slopes",
        **block("transformer.h", with_bias({"attn_norm": "ln_1", "mlp_norm": "ln_2", **_BTLM_LINEAR})),
        **with_bias({"final_norm": "transformer.ln_f"}),
    },
    transposed=[f"blocks.{{i}}.{name}.weight" for name in _BTLM_LINEAR],
    config={
        "vocab_size": "vocab_size",
        "n_embd": "hidden_size",
        "n_layer": "layers",
        "n_head": "heads",
        "n_inner": "ffn_size",
        "n_positions": "context_length",
        "layer_norm_epsilon": "norm.eps",
        "position_embedding_type": "positions.kind",
        "activation_function": "mlp",
        "mup_embeddings_scale": "multipliers.embedding",
        "mup_scale_qk_dot_by_d": "multipliers.attention == inverse_head_dim",
        "mup_output_alpha * mup_width_scale": "multipliers.logits",
        # the names before Cerebras' "change mup param names" revision (19c3116)
        "embeddings_scale": "multipliers.embedding",
        "scale_qk_dot_by_d": "multipliers.attention == inverse_head_dim",
        "output_logits_scale": "multipliers.logits",
        "tie_word_embeddings": "tied_embeddings",
    },
    implied={
        "*": {
            "norm.kind": "layernorm",
            "residual.kind": "sequential",
            "bias.qkv": True,
            "bias.attention_output": True,
            "bias.mlp": True,
        }
    },
    unsupported={
        "alibi_scaling": "ALiBi slope scaling for contexts beyond the trained length",
        "scale_attn_weights": Unsupported(feature="attention scores without a scale", allowed=[True]),
        "scale_attn_by_inverse_layer_idx": "attention scores scaled by 1 / layer index",
    },
    ignored_config=["reorder_and_upcast_attn", "n_ctx"],
    ignored=[".attn.bias", ".attn.masked_bias"],
)

LAYOUTS = (GPT_NEOX, FALCON, FALCON_7B, LLAMA, BTLM)


@hookimpl
def register_checkpoint_layouts(register: Callable[[CheckpointLayout], None]) -> None:
    for layout in LAYOUTS:
        register(layout)
