"""The checkpoint layouts of the first-party cards: Hugging Face tensor names per decoder tensor.

Facts from the public model definitions (transformers' GPTNeoX, Falcon and Llama modules; Cerebras'
BTLM). The runtime maps only the tensors a card's architecture has (e.g. no biases for Falcon-40B).
"""

from collections.abc import Callable

from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.layouts import CheckpointLayout


def _block(prefix: str, names: dict[str, str]) -> dict[str, str]:
    """Per-block entries: decoder suffix -> checkpoint suffix, both under their block prefix."""
    return {f"blocks.{{i}}.{ours}": f"{prefix}.{{i}}.{theirs}" for ours, theirs in names.items()}


def _with_bias(names: dict[str, str]) -> dict[str, str]:
    return {f"{ours}.{param}": f"{theirs}.{param}" for ours, theirs in names.items() for param in ("weight", "bias")}


_COMMON_CONFIG = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "tie_word_embeddings": "tied_embeddings",
    # transformers v5 writes rope settings here (v4 configs use the family's own keys below)
    "rope_parameters.rope_theta": "positions.base",
    "rope_parameters.partial_rotary_factor": "positions.fraction",
}

GPT_NEOX = CheckpointLayout(
    name="gpt-neox",
    description="GPT-NeoX (Pythia, Astrid): fused QKV laid out per head as [heads, 3, head_dim].",
    config_model_types=["gpt_neox"],
    qkv="per_head",
    tensors={
        "embed.weight": "gpt_neox.embed_in.weight",
        **_block(
            "gpt_neox.layers",
            _with_bias(
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
        **_with_bias({"final_norm": "gpt_neox.final_layer_norm"}),
        "lm_head.weight": "embed_out.weight",
    },
    config={
        **_COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "intermediate_size": "ffn_size",
        "rotary_pct": "positions.fraction",
        "rotary_emb_base": "positions.base",
        "layer_norm_eps": "norm.eps",
        "use_parallel_residual": "residual.kind == parallel",
        "max_position_embeddings": "context_length",
        "hidden_act": "mlp",
    },
    ignored=[".attention.rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"],
)

_FALCON_SHARED = {
    "attn.qkv": "self_attention.query_key_value",
    "attn.out": "self_attention.dense",
    "mlp.up": "mlp.dense_h_to_4h",
    "mlp.down": "mlp.dense_4h_to_h",
}
_FALCON_CONFIG = {
    **_COMMON_CONFIG,
    "num_hidden_layers": "layers",
    "n_layer": "layers",
    "num_attention_heads": "heads",
    "n_head": "heads",
    "layer_norm_epsilon": "norm.eps",
    "parallel_attn": "residual.kind == parallel",
    "bias": "bias.qkv",
    "alibi": "positions.kind == alibi",
    "ffn_hidden_size": "ffn_size",
}
_FALCON_EDGES = {
    "embed.weight": "transformer.word_embeddings.weight",
    **_with_bias({"final_norm": "transformer.ln_f"}),
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
        **_block("transformer.h", _with_bias({"attn_norm": "ln_attn", "mlp_norm": "ln_mlp", **_FALCON_SHARED})),
    },
    config={
        **_FALCON_CONFIG,
        "num_kv_heads": "kv_heads",
        "n_head_kv": "kv_heads",
        "new_decoder_architecture": "residual.shared_norm == False",
    },
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
        **_block("transformer.h", _with_bias({"attn_norm": "input_layernorm", **_FALCON_SHARED})),
    },
    config={
        **_FALCON_CONFIG,
        "multi_query": "kv_heads == 1",
        "new_decoder_architecture": "residual.shared_norm == False",
    },
    ignored=[".rotary_emb.inv_freq"],
)

LLAMA = CheckpointLayout(
    name="llama",
    description="Llama (TinyLlama, Aira): separate q/k/v projections, RMSNorm, SwiGLU gate/up/down.",
    config_model_types=["llama"],
    qkv="separate",
    tensors={
        "embed.weight": "model.embed_tokens.weight",
        **_block(
            "model.layers",
            {
                "attn_norm.weight": "input_layernorm.weight",
                "mlp_norm.weight": "post_attention_layernorm.weight",
                "attn.q.weight": "self_attn.q_proj.weight",
                "attn.k.weight": "self_attn.k_proj.weight",
                "attn.v.weight": "self_attn.v_proj.weight",
                "attn.out.weight": "self_attn.o_proj.weight",
                "mlp.gate.weight": "mlp.gate_proj.weight",
                "mlp.up.weight": "mlp.up_proj.weight",
                "mlp.down.weight": "mlp.down_proj.weight",
            },
        ),
        "final_norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    },
    config={
        **_COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "intermediate_size": "ffn_size",
        "rms_norm_eps": "norm.eps",
        "rope_theta": "positions.base",
        "attention_bias": "bias.qkv",
        "mlp_bias": "bias.mlp",
        "max_position_embeddings": "context_length",
    },
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
        **_block("transformer.h", _with_bias({"attn_norm": "ln_1", "mlp_norm": "ln_2", **_BTLM_LINEAR})),
        **_with_bias({"final_norm": "transformer.ln_f"}),
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
    unsupported={"alibi_scaling": "ALiBi slope scaling for contexts beyond the trained length"},
    ignored=[".attn.bias", ".attn.masked_bias"],
)


@hookimpl
def register_checkpoint_layouts(register: Callable[[CheckpointLayout], None]) -> None:
    for layout in (GPT_NEOX, FALCON, FALCON_7B, LLAMA, BTLM):
        register(layout)
