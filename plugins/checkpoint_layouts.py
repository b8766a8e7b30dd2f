"""Checkpoint layouts of the mainstream decoder families: Hugging Face tensor names per decoder tensor, and how
each config.json key relates to a card (registry/layouts.py explains the rules).

Facts from the public model definitions (transformers' modules for each model_type; Cerebras' BTLM). The runtime
maps only the tensors a card's architecture has (e.g. no biases for Falcon-40B), so one layout serves every
model_type that names its tensors alike (`LLAMA`: Llama, Mistral, Qwen2, Qwen3, Gemma, StableLM).
"""

from collections.abc import Callable

from modeldeck.registry.hookspecs import hookimpl
from modeldeck.registry.layouts import CheckpointLayout, ConfigRule, Unsupported


def _block(prefix: str, names: dict[str, str]) -> dict[str, str]:
    """Per-block entries: decoder suffix -> checkpoint suffix, both under their block prefix."""
    return {f"blocks.{{i}}.{ours}": f"{prefix}.{{i}}.{theirs}" for ours, theirs in names.items()}


def _with_bias(names: dict[str, str]) -> dict[str, str]:
    return {f"{ours}.{param}": f"{theirs}.{param}" for ours, theirs in names.items() for param in ("weight", "bias")}


_SCALING_KINDS = {"default": None, "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}
_ROPE_KEYS: dict[str, str | ConfigRule] = {
    "rope_theta": "positions.base",
    "partial_rotary_factor": "positions.fraction",
    "rope_type": ConfigRule(fields=["positions.scaling.kind"], values=_SCALING_KINDS),
    "type": ConfigRule(fields=["positions.scaling.kind"], values=_SCALING_KINDS),
    "factor": "positions.scaling.factor",
    "low_freq_factor": "positions.scaling.low_freq_factor",
    "high_freq_factor": "positions.scaling.high_freq_factor",
    "original_max_position_embeddings": "positions.scaling.original_context_length",
}
_ROPE: dict[str, str | ConfigRule] = {
    # transformers v5 writes rope settings in rope_parameters; v4 configs use rope_theta and rope_scaling
    "rope_theta": "positions.base",
    "partial_rotary_factor": "positions.fraction",
    **{f"{section}.{key}": rule for section in ("rope_parameters", "rope_scaling") for key, rule in _ROPE_KEYS.items()},
}
_COMMON_CONFIG: dict[str, str | ConfigRule] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "tie_word_embeddings": "tied_embeddings",
    **_ROPE,
}
_GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
"""hidden_act / activation_function values of plain MLPs (transformers' ACT2FN names)."""
_GATED = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_new": "geglu_tanh",
    "gelu_pytorch_tanh": "geglu_tanh",
}
"""hidden_act values of gated MLPs: the gate's activation."""
_BOTH_ATTENTION_BIASES = ["bias.qkv", "bias.attention_output"]

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
        "use_parallel_residual": ConfigRule(
            fields=["residual.kind"], values={"true": "parallel", "false": "sequential"}
        ),
        "max_position_embeddings": "context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=_GELU),
        "attention_bias": ConfigRule(fields=_BOTH_ATTENTION_BIASES),
    },
    implied={"*": {"positions.kind": "rotary", "norm.kind": "layernorm", "bias.mlp": True}},
    ignored_config=["classifier_dropout", "use_cache", "rotary_emb_base"],
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
    "parallel_attn": ConfigRule(fields=["residual.kind"], values={"true": "parallel", "false": "sequential"}),
    "bias": ConfigRule(fields=["bias.qkv", "bias.attention_output", "bias.mlp"]),
    "alibi": ConfigRule(fields=["positions.kind"], values={"true": "alibi", "false": "rotary"}),
    "ffn_hidden_size": "ffn_size",
    "max_position_embeddings": "context_length",
    "activation": ConfigRule(fields=["mlp"], values=_GELU),
}
_FALCON_IMPLIED = {"*": {"norm.kind": "layernorm", "multipliers.attention": "inverse_sqrt_head_dim"}}
_FALCON_IGNORED = ["num_ln_in_parallel_attn", "ffn_hidden_size_none"]
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
    implied=_FALCON_IMPLIED,
    ignored_config=_FALCON_IGNORED,
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
    implied={"*": {**_FALCON_IMPLIED["*"], "residual.shared_norm": True}},
    ignored_config=_FALCON_IGNORED,
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
        **_block(
            "model.layers",
            {
                **_with_bias(
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
        **_with_bias({"final_norm": "model.norm"}),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        **_COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "head_dim": "head_dim",
        "intermediate_size": "ffn_size",
        "rms_norm_eps": "norm.eps",
        "layer_norm_eps": "norm.eps",  # StableLM
        "attention_bias": ConfigRule(fields=_BOTH_ATTENTION_BIASES),
        "use_qkv_bias": "bias.qkv",  # StableLM
        "mlp_bias": "bias.mlp",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=_GATED),
        "hidden_activation": ConfigRule(fields=["mlp"], values=_GATED),  # Gemma's older name
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


_GPT2_LINEAR = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
_GPT_CONFIG: dict[str, str | ConfigRule] = {
    "vocab_size": "vocab_size",
    "n_embd": "hidden_size",
    "n_layer": "layers",
    "n_head": ConfigRule(fields=["heads", "kv_heads"]),
    "n_inner": ConfigRule(fields=["ffn_size"], null="4 * hidden_size"),
    "n_positions": "context_length",
    "layer_norm_epsilon": "norm.eps",
    "activation_function": ConfigRule(fields=["mlp"], values=_GELU),
    "tie_word_embeddings": "tied_embeddings",
}
_ALL_BIASES = {"bias.qkv": True, "bias.attention_output": True, "bias.mlp": True}

GPT2 = CheckpointLayout(
    name="gpt2",
    description="GPT-2: learned positions, Conv1D weights stored [in, out], fused QKV as [q | k | v], LM head tied.",
    config_model_types=["gpt2"],
    qkv="concatenated",
    tensors={
        "embed.weight": "transformer.wte.weight",
        "pos_embed.weight": "transformer.wpe.weight",
        **_block("transformer.h", _with_bias({"attn_norm": "ln_1", "mlp_norm": "ln_2", **_GPT2_LINEAR})),
        **_with_bias({"final_norm": "transformer.ln_f"}),
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
            **_ALL_BIASES,
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
        **_block(
            "transformer.h",
            {
                **_with_bias({"attn_norm": "ln_1", "mlp.up": "mlp.fc_in", "mlp.down": "mlp.fc_out"}),
                "attn.q.weight": "attn.q_proj.weight",
                "attn.k.weight": "attn.k_proj.weight",
                "attn.v.weight": "attn.v_proj.weight",
                "attn.out.weight": "attn.out_proj.weight",
            },
        ),
        **_with_bias({"final_norm": "transformer.ln_f", "lm_head": "lm_head"}),
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
        **_block(
            "model.decoder.layers",
            _with_bias(
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
        **_with_bias({"final_norm": "model.decoder.final_layer_norm"}),
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
        "activation_function": ConfigRule(fields=["mlp"], values=_GELU),
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
        **_with_bias({"embed_norm": "transformer.word_embeddings_layernorm", "final_norm": "transformer.ln_f"}),
        **_block(
            "transformer.h",
            _with_bias(
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
            **_ALL_BIASES,
        }
    },
    unsupported={
        "apply_residual_connection_post_layernorm": "residuals taken after the LayerNorm",
    },
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
        **_block(
            "model.layers",
            _with_bias(
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
        **_with_bias({"final_norm": "model.final_layernorm", "lm_head": "lm_head"}),
    },
    config={
        **_COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "intermediate_size": "ffn_size",
        "layer_norm_eps": "norm.eps",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=_GELU),
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
            **_ALL_BIASES,
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
        **_block(
            "model.layers",
            _with_bias(
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
        **_with_bias({"final_norm": "model.norm"}),
        "lm_head.weight": "lm_head.weight",
    },
    config={
        **_COMMON_CONFIG,
        "num_hidden_layers": "layers",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv_heads",
        "intermediate_size": "ffn_size",
        "norm_epsilon": "norm.eps",
        "max_position_embeddings": "unscaled_context_length",
        "hidden_act": ConfigRule(fields=["mlp"], values=_GELU),
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

LAYOUTS = (GPT_NEOX, FALCON, FALCON_7B, LLAMA, BTLM, GPT2, GPTJ, OPT, BLOOM, PHI, STARCODER2)


@hookimpl
def register_checkpoint_layouts(register: Callable[[CheckpointLayout], None]) -> None:
    for layout in LAYOUTS:
        register(layout)
