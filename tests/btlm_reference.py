"""An independent float64 reference of Cerebras BTLM-3B-8K (= GPT-JX-3B), plus tiny random checkpoints in HF layout.

Written step by step from ../shared/reference/btlm-architecture.md; it deliberately imports nothing from modeldeck,
so the runtime can be compared against it. Plain and slow on purpose: one sequence, no batch, no padding, no cache.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

GPT2_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tokenizers" / "gpt2"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

INITIALIZER_RANGE = 0.073  # std of the random weights (the published config's initializer_range)
LN_WEIGHT_NOISE = 0.1  # layer norm weights ~ 1 + N(0, this)
LN_BIAS_NOISE = 0.05  # layer norm biases ~ N(0, this)
BIAS_NOISE = 0.02  # Conv1D biases ~ N(0, this)


def btlm_config(
    *, layers: int, hidden: int, heads: int, ffn: int, vocab: int, context: int, **overrides: object
) -> dict:
    """A config.json dict shaped like cerebras/btlm-3b-8k-base's, resized; `overrides` are applied last."""
    config: dict = {
        "_name_or_path": "cerebras/btlm-3b-8k-base",
        "activation_function": "swiglu",
        "architectures": ["BTLMLMHeadModel"],
        "attn_pdrop": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_btlm.BTLMConfig",
            "AutoModel": "modeling_btlm.BTLMModel",
            "AutoModelForCausalLM": "modeling_btlm.BTLMLMHeadModel",
            "AutoModelForQuestionAnswering": "modeling_btlm.BTLMForQuestionAnswering",
            "AutoModelForSequenceClassification": "modeling_btlm.BTLMForSequenceClassification",
            "AutoModelForTokenClassification": "modeling_btlm.BTLMForTokenClassification",
        },
        "bos_token_id": 50256,
        "embd_pdrop": 0.0,
        "mup_embeddings_scale": 14.6,
        "eos_token_id": 50256,
        "initializer_range": INITIALIZER_RANGE,
        "layer_norm_epsilon": 1e-05,
        "model_type": "btlm",
        "n_embd": hidden,
        "n_head": heads,
        "n_inner": ffn,
        "n_layer": layers,
        "n_positions": context,
        "mup_output_alpha": 2.2200000000000003,
        "position_embedding_type": "alibi",
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "mup_scale_qk_dot_by_d": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.30.0",
        "use_cache": True,
        "vocab_size": vocab,
        "mup_width_scale": 0.1,
    }
    config.update(overrides)
    return config


def alibi_slopes_reference(n: int) -> list[float]:
    """BTLM's `_get_alibi_slopes(n)`: geometric for a power of two, else interleaved from the next power of two."""
    if n < 1:
        raise ValueError(f"need at least one head, got {n}")
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return alibi_slopes_reference(closest) + alibi_slopes_reference(2 * closest)[0::2][: n - closest]


def btlm_parameter_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The HF BTLM checkpoint's tensor names and shapes (Conv1D weights are [in, out]; lm_head is tied, so absent)."""
    d, ffn, vocab, heads = config["n_embd"], config["n_inner"], config["vocab_size"], config["n_head"]
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (vocab, d),
        "transformer.relative_pe.slopes": (heads, 1),
    }
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d),
            p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d),
            p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, ffn),
            p + "mlp.c_fc.bias": (ffn,),
            p + "mlp.c_fc2.weight": (d, ffn),
            p + "mlp.c_fc2.bias": (ffn,),
            p + "mlp.c_proj.weight": (ffn, d),
            p + "mlp.c_proj.bias": (d,),
        }
    shapes |= {"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    return shapes


def write_btlm_checkpoint(
    directory: str | Path,
    config: dict,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    slopes: list[float] | tuple[float, ...] | torch.Tensor | None = None,
    tensors: dict[str, torch.Tensor | None] | None = None,
    tokenizer: bool = True,
) -> dict[str, torch.Tensor]:
    """Writes config.json + model.safetensors (+ the GPT-2 tokenizer files) of a random BTLM; returns what was saved.

    Random tensors are drawn in float32 from a generator seeded with `seed`, then cast to `dtype`; the slopes default to
    `alibi_slopes_reference(n_head)` and are cast too. `tensors` replaces or adds entries by name (saved as given, not
    cast), and a value of None deletes the entry.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    def noise(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std

    state: dict[str, torch.Tensor] = {}
    for name, shape in btlm_parameter_shapes(config).items():
        if name == "transformer.relative_pe.slopes":
            values = alibi_slopes_reference(config["n_head"]) if slopes is None else slopes
            tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1)  # [H, 1]
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensor = 1.0 + noise(shape, LN_WEIGHT_NOISE)
        elif name.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")):
            tensor = noise(shape, LN_BIAS_NOISE)
        elif name.endswith(".bias"):
            tensor = noise(shape, BIAS_NOISE)
        else:
            tensor = noise(shape, INITIALIZER_RANGE)
        state[name] = tensor.to(dtype).contiguous()

    for name, replacement in (tensors or {}).items():
        if replacement is None:
            state.pop(name, None)
        else:
            state[name] = replacement.contiguous()

    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        copy_gpt2_tokenizer(directory)
    return state


def copy_gpt2_tokenizer(directory: Path) -> None:
    """The real GPT-2 tokenizer files, when ../shared/reference is beside the clone."""
    if GPT2_TOKENIZER.is_dir():
        for file in TOKENIZER_FILES:
            if (GPT2_TOKENIZER / file).is_file():
                shutil.copyfile(GPT2_TOKENIZER / file, directory / file)


def write_sparse_btlm_checkpoint(directory: str | Path, config: dict, *, tokenizer: bool = True) -> int:
    """A full-size BTLM checkpoint that costs no disk: model.safetensors in bfloat16 (as published) written as a
    sparse file whose large tensors are holes (zeros); layer norms (weight 1) and the slopes are written for real.
    Returns the file's logical size in bytes. The safetensors layout (8-byte header length, JSON header, data in
    header order) is written here by hand because the library has no way to leave holes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dense: dict[str, torch.Tensor] = {}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in btlm_parameter_shapes(config).items():
        if name == "transformer.relative_pe.slopes":
            dense[name] = torch.tensor(alibi_slopes_reference(config["n_head"])).reshape(shape).to(torch.bfloat16)
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            dense[name] = torch.ones(shape, dtype=torch.bfloat16)
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = directory / "model.safetensors"
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        base = f.tell()
        for name, tensor in dense.items():
            f.seek(base + header[name]["data_offsets"][0])  # type: ignore[index]
            f.write(tensor.view(torch.uint8).numpy().tobytes())
        f.truncate(base + offset)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if tokenizer:
        copy_gpt2_tokenizer(directory)
    return base + offset


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """nn.LayerNorm over the last dimension, written out (biased variance)."""
    mean = x.mean(dim=-1, keepdim=True)  # [T, 1]
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # [T, 1]
    return (x - mean) / torch.sqrt(var + eps) * weight + bias  # [T, d]


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x)."""
    return x * (1.0 / (1.0 + torch.exp(-x)))


def reference_slopes(state: dict[str, torch.Tensor], config: dict) -> torch.Tensor:
    """The ALiBi slopes stored in the checkpoint, [H] float64 (a linear `alibi_scaling` factor divides them)."""
    slopes = state["transformer.relative_pe.slopes"].to("cpu", torch.float64)  # [H, 1]
    if tuple(slopes.shape) != (config["n_head"], 1):
        raise ValueError(f"transformer.relative_pe.slopes has shape {tuple(slopes.shape)}, not ({config['n_head']}, 1)")
    scaling = config.get("alibi_scaling")
    if scaling is not None:
        if scaling.get("type") != "linear" or "factor" not in scaling:
            raise NotImplementedError(
                f"the reference only knows alibi_scaling {{'type': 'linear', 'factor': F}}, not {scaling}"
            )
        slopes = slopes / float(scaling["factor"])  # [H, 1]
    return slopes[:, 0]  # [H]


def check_supported(config: dict) -> None:
    """Refuses config values the architecture notes do not describe, rather than silently computing something else."""
    expected = {
        "position_embedding_type": "alibi",
        "activation_function": "swiglu",
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": True,
    }
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise NotImplementedError(f"the BTLM reference only supports {key}={value!r}, got {config[key]!r}")
    if config["n_embd"] % config["n_head"]:
        raise ValueError(f"n_embd {config['n_embd']} is not a multiple of n_head {config['n_head']}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    first_query: int,
    scale: float,
    query_block: int,
) -> torch.Tensor:
    """Causal ALiBi attention of query rows at positions first_query.. over all keys, one (head, query block) at a time.

    q: [Tq, H, hd] for positions first_query..T-1; k, v: [T, H, hd]. Returns [Tq, H, hd].
    """
    n_query, heads, _ = q.shape
    out = torch.empty_like(q)  # [Tq, H, hd]
    for start in range(0, n_query, query_block):
        stop = min(start + query_block, n_query)
        query_pos = torch.arange(first_query + start, first_query + stop, dtype=torch.float64)  # [B]
        n_keys = first_query + stop  # later keys are all masked for this block
        key_pos = torch.arange(n_keys, dtype=torch.float64)  # [K]
        distance = (key_pos[None, :] - query_pos[:, None]).abs()  # [B, K]  |j - i|
        future = key_pos[None, :] > query_pos[:, None]  # [B, K]  causal mask
        for h in range(heads):
            scores = (q[start:stop, h] @ k[:n_keys, h].T) / scale  # [B, K]
            scores = scores + (-slopes[h]) * distance  # [B, K]  ALiBi bias, added after the scaling
            scores = scores.masked_fill(future, float("-inf"))  # [B, K]
            probs = torch.softmax(scores, dim=-1)  # [B, K]
            out[start:stop, h] = probs @ v[:n_keys, h]  # [B, hd]
    return out


def btlm_logits_fp64(
    state: dict[str, torch.Tensor],
    config: dict,
    ids: list[int],
    last: int | None = None,
    query_block: int = 512,
) -> torch.Tensor:
    """BTLM logits for one sequence in float64 on the CPU: [T, V], or [last, V] for the last `last` positions."""
    check_supported(config)
    n_tokens = len(ids)
    if n_tokens == 0:
        raise ValueError("need at least one token")
    if last is not None and not 1 <= last <= n_tokens:
        raise ValueError(f"last={last} is not in 1..{n_tokens}")
    if not all(0 <= t < config["vocab_size"] for t in ids):
        raise ValueError(f"token ids must be in 0..{config['vocab_size'] - 1}")
    if query_block < 1:
        raise ValueError(f"query_block must be positive, got {query_block}")

    def w(name: str) -> torch.Tensor:
        return state[name].to("cpu", torch.float64)

    d, heads, eps = config["n_embd"], config["n_head"], float(config["layer_norm_epsilon"])
    head_dim = d // heads
    scale = head_dim ** (1.0 if config["mup_scale_qk_dot_by_d"] else 0.5)  # 1/d, not 1/sqrt(d)
    slopes = reference_slopes(state, config)  # [H]

    # 1. token embeddings times the muP embeddings scale (no position embeddings with ALiBi)
    wte = w("transformer.wte.weight")  # [V, d]
    h = wte[torch.tensor(ids, dtype=torch.long)] * float(config["mup_embeddings_scale"])  # [T, d]

    # 2. pre-LN blocks; the last block only computes the rows that are returned (keys and values still use all rows)
    n_layer = config["n_layer"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        first = n_tokens - last if (last is not None and i == n_layer - 1) else 0
        a = layer_norm(h, w(p + "ln_1.weight"), w(p + "ln_1.bias"), eps)  # [T, d]
        qkv = a @ w(p + "attn.c_attn.weight") + w(p + "attn.c_attn.bias")  # [T, 3d]  Conv1D: x @ W + b
        q, k, v = qkv.split(d, dim=-1)  # 3 x [T, d]
        q = q[first:].reshape(-1, heads, head_dim)  # [Tq, H, hd]
        k = k.reshape(n_tokens, heads, head_dim)  # [T, H, hd]
        v = v.reshape(n_tokens, heads, head_dim)  # [T, H, hd]
        o = attention(q, k, v, slopes, first, scale, query_block).reshape(-1, d)  # [Tq, d]  merged heads
        h = h[first:] + o @ w(p + "attn.c_proj.weight") + w(p + "attn.c_proj.bias")  # [Tq, d]
        m = layer_norm(h, w(p + "ln_2.weight"), w(p + "ln_2.bias"), eps)  # [Tq, d]
        up = m @ w(p + "mlp.c_fc.weight") + w(p + "mlp.c_fc.bias")  # [Tq, ffn]
        gate = m @ w(p + "mlp.c_fc2.weight") + w(p + "mlp.c_fc2.bias")  # [Tq, ffn]  c_fc2 is the gate
        h = h + (up * silu(gate)) @ w(p + "mlp.c_proj.weight") + w(p + "mlp.c_proj.bias")  # [Tq, d]

    # 3. final layer norm
    h = layer_norm(h, w("transformer.ln_f.weight"), w("transformer.ln_f.bias"), eps)  # [Tq, d]
    if last is not None:
        h = h[-last:]  # [last, d]  (only differs from h when n_layer == 0)

    # 4. tied lm_head times the muP output scale
    output_scale = float(config["mup_output_alpha"]) * float(config["mup_width_scale"])
    return (h @ wte.T) * output_scale  # [T or last, V]
