"""What the checkpoint layout tables share: block-name templates, and config rules several families use
(rope settings as transformers v4 and v5 write them, activation names, bias switches)."""

from modeldeck.registry.layouts import ConfigRule


def block(prefix: str, names: dict[str, str]) -> dict[str, str]:
    """Per-block entries: decoder suffix -> checkpoint suffix, both under their block prefix."""
    return {f"blocks.{{i}}.{ours}": f"{prefix}.{{i}}.{theirs}" for ours, theirs in names.items()}


def with_bias(names: dict[str, str]) -> dict[str, str]:
    return {f"{ours}.{param}": f"{theirs}.{param}" for ours, theirs in names.items() for param in ("weight", "bias")}


SCALING_KINDS = {"default": None, "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}
ROPE_KEYS: dict[str, str | ConfigRule] = {
    "rope_theta": "positions.base",
    "partial_rotary_factor": "positions.fraction",
    "rope_type": ConfigRule(fields=["positions.scaling.kind"], values=SCALING_KINDS),
    "type": ConfigRule(fields=["positions.scaling.kind"], values=SCALING_KINDS),
    "factor": "positions.scaling.factor",
    "low_freq_factor": "positions.scaling.low_freq_factor",
    "high_freq_factor": "positions.scaling.high_freq_factor",
    "original_max_position_embeddings": "positions.scaling.original_context_length",
}
ROPE: dict[str, str | ConfigRule] = {
    # transformers v5 writes rope settings in rope_parameters; v4 configs use rope_theta and rope_scaling
    "rope_theta": "positions.base",
    "partial_rotary_factor": "positions.fraction",
    **{f"{section}.{key}": rule for section in ("rope_parameters", "rope_scaling") for key, rule in ROPE_KEYS.items()},
}
COMMON_CONFIG: dict[str, str | ConfigRule] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "tie_word_embeddings": "tied_embeddings",
    **ROPE,
}
GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
"""hidden_act / activation_function values of plain MLPs (transformers' ACT2FN names)."""
GATED = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_new": "geglu_tanh",
    "gelu_pytorch_tanh": "geglu_tanh",
}
"""hidden_act values of gated MLPs: the gate's activation."""
BOTH_ATTENTION_BIASES = ["bias.qkv", "bias.attention_output"]

ALL_BIASES = {"bias.qkv": True, "bias.attention_output": True, "bias.mlp": True}
