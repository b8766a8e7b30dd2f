"""Every bad checkpoint gets a precise error, before any weight is read; good ones (sharded too) load exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from modeldeck import registry, runtime  # noqa: E402
from modeldeck.registry.diagnostics import ModeldeckError  # noqa: E402
from modeldeck.registry.weights import PickleRefusedError  # noqa: E402
from modeldeck.runtime.loading import CheckpointError, cast  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

from .conftest import TINY_FAMILIES, edit_config, edit_weights, run_python_without, tiny_card_data  # noqa: E402

HINT = "check that these weights belong to card"


def copy(ckpt, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt.directory, tmp_path / "ckpt"))


def card(family: str, **changes):
    seed, base = TINY_FAMILIES[family]
    data = tiny_card_data(seed, {**base, **changes})
    return registry.default().resolve_card(registry.card_from_data(data, family), family)


def load_error(card_or_id, directory: Path, error=CheckpointError, **options) -> str:
    with pytest.raises(error) as caught:
        runtime.load(card_or_id, weights=directory, device="cpu", **options)
    return str(caught.value)


def logits(model, tokens=((25, 300, 7, 4096, 11), (9, 8, 7, 6, 5))) -> torch.Tensor:
    batch = torch.tensor(tokens)
    cache = KVCache(model.card.architecture, batch.shape[0], batch.shape[1], model.dtype, "cpu")
    with torch.inference_mode():
        return model.decoder(batch, cache, model.backend, start=torch.zeros(batch.shape[0], dtype=torch.long))


@pytest.fixture
def neox(tiny_checkpoint):
    return tiny_checkpoint("gpt-neox")


def test_a_missing_tensor_is_named(neox, tmp_path):
    directory = copy(neox, tmp_path)
    edit_weights(directory, lambda t: t.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.weight"))
    message = load_error(neox.card, directory)
    assert f"checkpoint {directory} does not match the card:" in message
    assert "  - missing tensors (1): gpt_neox.layers.1.mlp.dense_4h_to_h.weight\n" in message
    assert "unexpected" not in message and HINT in message


def test_an_unexpected_tensor_is_named_with_the_bias_and_tying_hint(neox, tmp_path):
    directory = copy(neox, tmp_path)
    edit_weights(directory, lambda t: t.update({"embed_out.bias": torch.zeros(t["embed_out.weight"].shape[0])}))
    message = load_error(neox.card, directory)
    assert (
        "unexpected tensors (1): embed_out.bias "
        "(does the card's architecture.bias or tied_embeddings match the checkpoint?)" in message
    )
    assert "missing" not in message


def test_a_wrong_shape_names_tensor_shapes_and_the_card_field(neox, tmp_path):
    message = load_error(card("gpt-neox", ffn_size=256), neox.directory)
    assert (
        "tensor gpt_neox.layers.0.mlp.dense_h_to_4h.weight: expected shape [256, 64] "
        "(architecture.ffn_size by hidden_size), got [128, 64]" in message
    )
    assert (
        "tensor gpt_neox.layers.1.mlp.dense_4h_to_h.weight: expected shape [64, 256] "
        "(architecture.hidden_size by ffn_size), got [64, 128]" in message
    )
    assert "config.json intermediate_size=128 disagrees with the card's architecture.ffn_size (256;" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("layer_norm_eps", 1e-6, "config.json layer_norm_eps=1e-06 disagrees with the card's architecture.norm.eps "
         "(1e-05; rule: layer_norm_eps <-> norm.eps)"),
        # a conditional rule shows the card's own value of the field, not the rule's evaluated boolean
        ("use_parallel_residual", False, "config.json use_parallel_residual=False disagrees with the card's "
         "architecture.residual.kind ('parallel'; rule: use_parallel_residual <-> residual.kind (true -> parallel, "
         "false -> sequential))"),
        ("rope_parameters", {"partial_rotary_factor": 0.5, "rope_theta": 10000.0, "rope_type": "default"},
         "config.json rope_parameters.partial_rotary_factor=0.5 disagrees with the card's "
         "architecture.positions.fraction (0.25;"),
    ],
)  # fmt: skip
def test_config_json_that_disagrees_with_the_card_is_refused_even_when_shapes_agree(
    neox, tmp_path, key, value, expected
):
    directory = copy(neox, tmp_path)
    edit_config(directory, lambda c: c.update({key: value}))
    message = load_error(neox.card, directory)
    assert expected in message
    assert "expected shape" not in message and "missing" not in message


def test_config_json_of_another_family_is_refused(neox, tmp_path):
    directory = copy(neox, tmp_path)
    edit_config(directory, lambda c: c.update(model_type="llama"))
    message = load_error(neox.card, directory)
    assert "config.json model_type 'llama' is not one the 'gpt-neox' layout reads (gpt_neox)" in message


def test_a_truncated_safetensors_file_is_reported_as_corrupt(neox, tmp_path):
    directory = copy(neox, tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = load_error(neox.card, directory)
    assert "model.safetensors is not a readable safetensors file" in message
    assert "the file is truncated or corrupt: download it again" in message


@pytest.fixture
def pickle_only(neox, tmp_path) -> Path:
    directory = copy(neox, tmp_path)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


def test_a_pickle_only_folder_is_refused_with_the_reason(neox, pickle_only):
    message = load_error(neox.card, pickle_only, error=PickleRefusedError)
    assert f"weights folder {pickle_only} holds only pickle checkpoints (pytorch_model.bin)" in message
    assert "loading a pickle can execute arbitrary code" in message and "allow_pickle=True" in message


def test_allow_pickle_does_what_the_refusal_says(neox, pickle_only):
    """The refusal tells the user to pass allow_pickle=True if they trust the file; doing so must then load it."""
    model = runtime.load(neox.card, weights=pickle_only, device="cpu", allow_pickle=True)
    expected = runtime.load(neox.card, weights=neox.directory, device="cpu")
    assert torch.equal(logits(model), logits(expected))


def test_the_full_size_card_with_a_tiny_checkpoint_says_why(neox):
    message = load_error("pythia-1.4b", neox.directory)
    assert "expected shape [50304, 2048] (architecture.vocab_size x hidden_size), got [50304, 64]" in message
    # the root cause, not only its consequences, must be in what the user reads (not cut off by "... and N more")
    assert "config.json hidden_size=64 disagrees with the card's architecture.hidden_size (2048;" in message
    assert "config.json num_hidden_layers=2 disagrees with the card's architecture.layers (24;" in message


def test_a_sharded_checkpoint_loads_the_same_weights(neox, tmp_path):
    directory = tmp_path / "sharded"
    neox.reference.save_pretrained(directory, max_shard_size="200KB")
    shards = sorted(p.name for p in directory.glob("model-*.safetensors"))
    assert (directory / "model.safetensors.index.json").exists() and len(shards) > 1
    for tokenizer in neox.directory.glob("tokenizer*"):
        shutil.copy(tokenizer, directory)
    sharded = runtime.load(neox.card, weights=directory, device="cpu")
    assert torch.equal(logits(sharded), logits(runtime.load(neox.card, weights=neox.directory, device="cpu")))

    (directory / shards[-1]).unlink()
    message = load_error(neox.card, directory)
    assert f"shard {shards[-1]} listed in model.safetensors.index.json is missing" in message
    assert "re-download the checkpoint" in message


def test_a_falcon_7b_checkpoint_is_not_a_new_decoder_falcon(tiny_checkpoint):
    seven_b, forty_b = tiny_checkpoint("falcon-7b"), tiny_checkpoint("falcon")
    message = load_error(forty_b.card, seven_b.directory)
    assert (
        "missing tensors (8): transformer.h.0.ln_attn.bias, transformer.h.0.ln_attn.weight, "
        "transformer.h.0.ln_mlp.bias, transformer.h.0.ln_mlp.weight, transformer.h.1.ln_attn.bias" in message
    )
    assert (
        "unexpected tensors (4): transformer.h.0.input_layernorm.bias, transformer.h.0.input_layernorm.weight, "
        "transformer.h.1.input_layernorm.bias, transformer.h.1.input_layernorm.weight (does the card's" in message
    )
    assert "config.json num_kv_heads=1 disagrees with the card's architecture.kv_heads (2;" in message
    assert "config.json new_decoder_architecture=False disagrees with the card's architecture.residual." in message

    message = load_error(seven_b.card, forty_b.directory)
    assert (
        "missing tensors (4): transformer.h.0.input_layernorm.bias, transformer.h.0.input_layernorm.weight" in message
    )
    assert "unexpected tensors (8): transformer.h.0.ln_attn.bias, transformer.h.0.ln_attn.weight" in message
    assert "config.json new_decoder_architecture=True disagrees with the card's architecture.residual." in message


def test_dtype_bfloat16_gives_bfloat16_parameters(neox):
    model = runtime.load(neox.card, weights=neox.directory, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.decoder.parameters()} == {torch.bfloat16}
    exact = logits(runtime.load(neox.card, weights=neox.directory, device="cpu"))
    assert (logits(model).float() - exact).abs().max().item() <= 0.1 * max(1.0, exact.abs().max().item())


def test_an_unsupported_dtype_lists_the_supported_ones(neox):
    message = load_error(neox.card, neox.directory, error=ModeldeckError, dtype="float64")
    assert message == "dtype='float64' is not supported; choose one of float32, float16, bfloat16"


def test_an_unknown_attention_backend_lists_the_backends(neox):
    message = load_error(neox.card, neox.directory, error=ModeldeckError, attention="flash")
    assert message == "attention='flash' is not a backend; choose one of auto, eager, sdpa, xformers"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xformers_on_cpu_says_it_needs_cuda_and_half_precision(neox, dtype):
    message = load_error(neox.card, neox.directory, error=ModeldeckError, attention="xformers", dtype=dtype)
    assert f"attention='xformers' needs a CUDA device and float16/bfloat16 weights (got cpu, torch.{dtype})" in message


def test_loading_and_generating_never_import_transformers():
    """The load path is safetensors + tokenizers + torch: transformers (seconds to import) is not on it."""
    script = (
        "from modeldeck import runtime\n"
        "model = runtime.load('tiny-neox', device='cpu')\n"
        "assert model.generate('The for statement', max_new_tokens=4).completions[0].completion_tokens == 4\n"
    )
    result = run_python_without(("transformers",), script)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shape", [(7, 3), (2**17 + 3, 4), (5, 1, 9), (11,)])
@pytest.mark.parametrize("pair", [("float16", "bfloat16"), ("bfloat16", "float16")])
def test_the_blockwise_cast_between_half_types_rounds_as_torch_does(shape, pair):
    # cast() goes through fp32 in row blocks (many rows: several blocks, one shorter); it must match torch's own
    # direct cast bit for bit (a NaN's payload aside), including values that round, overflow to inf and underflow
    source, target = (getattr(torch, name) for name in pair)
    values = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 10 ** torch.randint(-9, 6, shape).float()
    values.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), 7e4, -3e-8])
    tensor = values.to(source)
    expected = tensor.to(target)

    def same(got: torch.Tensor) -> bool:
        nan = expected.isnan()
        return torch.equal(got.isnan(), nan) and torch.equal(
            got[~nan].view(torch.int16), expected[~nan].view(torch.int16)
        )

    assert same(cast(tensor, target))
    into = torch.full(shape, 5.0, dtype=target)
    assert cast(tensor, target, into) is into and same(into)
