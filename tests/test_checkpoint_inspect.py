"""`modeldeck inspect DIR` and `modeldeck validate CARD --weights DIR`: checkpoints checked from their safetensors
headers and config.json alone (registry/checkpoint.py, no torch), with the same words as `runtime.load`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from modeldeck import registry  # noqa: E402
from modeldeck.registry.checkpoint import (  # noqa: E402
    CheckpointError,
    implied_plan,
    implied_tensors,
    read_checkpoint,
    read_safetensors_header,
)
from modeldeck.registry.decoder import decoder_tensors  # noqa: E402
from modeldeck.registry.params import count_parameters  # noqa: E402
from modeldeck.runtime.loading import load_decoder  # noqa: E402
from modeldeck.runtime.model import Decoder  # noqa: E402

from .btlm_reference import btlm_config, btlm_parameter_shapes, write_btlm_checkpoint  # noqa: E402
from .conftest import (  # noqa: E402
    REFERENCE,
    TINY_FAMILIES,
    edit_config,
    edit_weights,
    load_model,
    run_python_without,
    tiny_card_data,
)

FAMILIES = ["gpt-neox", "falcon", "falcon-7b", "llama"]
JX_TINY = {"layers": 2, "hidden_size": 64, "heads": 8, "kv_heads": 8, "ffn_size": 170, "context_length": 512}


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def copy(directory: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(directory, tmp_path / name))


def card_file(tmp_path: Path, seed: str, changes: dict, name: str = "card.yaml") -> Path:
    """A tiny card as a card file (validate takes files as well as installed ids)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_card_data(seed, changes), sort_keys=False), encoding="utf-8")
    return path


def family_card_file(tmp_path: Path, family: str, **changes) -> Path:
    seed, base = TINY_FAMILIES[family]
    return card_file(tmp_path, seed, {**base, **changes}, f"{family}.yaml")


def resolved(path: Path):
    return registry.default().resolve_card(registry.load_card_file(path), str(path))


def runtime_problems(card, directory: Path) -> list[str]:
    """The problem lines of the runtime's refusal (runtime.load's checkpoint step, without a tokenizer)."""
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    with pytest.raises(CheckpointError) as caught:
        load_decoder(card, layout, directory, torch.float32, torch.device("cpu"))
    assert caught.value.problems
    return caught.value.problems


def safetensors_listing(directory: Path) -> dict[str, tuple[str, list[int]]]:
    """Names, dtypes and shapes as the safetensors library itself reads them (the independent answer)."""
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                piece = f.get_slice(name)
                found[name] = (piece.get_dtype(), list(piece.get_shape()))
    return found


# --- inspect ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_json_lists_what_the_safetensors_library_reads(run_cli, tiny_checkpoint, family):
    ckpt = tiny_checkpoint(family, tokenizer=False)
    result = run_cli("inspect", str(ckpt.directory), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = safetensors_listing(ckpt.directory)
    assert {t["name"]: (t["dtype"], t["shape"]) for t in report["tensors"]} == expected
    stored = load_file(ckpt.directory / "model.safetensors")
    assert report["total_parameters"] == sum(t.numel() for t in stored.values())
    assert report["total_bytes"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert report["dtypes"] == {"F32": report["total_parameters"]}
    assert [f["name"] for f in report["files"]] == ["model.safetensors"] and report["index"] is None
    assert report["config"] == json.loads((ckpt.directory / "config.json").read_text())


def test_inspect_table_shows_names_shapes_and_totals(run_cli, tiny_checkpoint):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    result = run_cli("inspect", str(ckpt.directory))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("gpt_neox.")}
    assert rows["gpt_neox.layers.1.attention.query_key_value.weight"][:3] == ["F32", "[192,", "64]"]
    assert rows["gpt_neox.layers.1.attention.query_key_value.weight"][3] == "12,288"  # parameters
    assert len(rows) == len(safetensors_listing(ckpt.directory)) - 1  # all but embed_out.weight
    total = sum(t.numel() for t in load_file(ckpt.directory / "model.safetensors").values())
    assert f"{len(rows) + 1} tensors, {total:,} parameters (F32 {total:,})" in result.stdout
    assert "in 1 file\n" in result.stdout and "config.json: model_type 'gpt_neox'" in result.stdout


def test_inspect_a_sharded_checkpoint(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    directory = tmp_path / "sharded"
    ckpt.reference.save_pretrained(directory, max_shard_size="200KB")
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    report = json.loads(run_cli("inspect", str(directory), "--json").stdout)
    whole = json.loads(run_cli("inspect", str(ckpt.directory), "--json").stdout)
    assert report["index"] == "model.safetensors.index.json"
    assert [f["name"] for f in report["files"]] == sorted(set(weight_map.values()))
    assert {t["name"]: t["file"] for t in report["tensors"]} == weight_map
    strip = [{k: v for k, v in t.items() if k != "file"} for t in report["tensors"]]
    assert strip == [{k: v for k, v in t.items() if k != "file"} for t in whole["tensors"]]
    text = run_cli("inspect", str(directory)).stdout
    assert f"in {len(report['files'])} files (model.safetensors.index.json)" in text

    (directory / report["files"][-1]["name"]).unlink()
    result = run_cli("inspect", str(directory))
    assert result.returncode == 1
    no_traceback(result)
    assert f"shard {report['files'][-1]['name']} listed in model.safetensors.index.json is missing" in result.stderr


def test_inspect_a_pickle_only_folder_says_it_cannot_and_what_to_do(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False).directory, tmp_path)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    for args in (("inspect", str(directory)), ("validate", "pythia-1.4b", "--weights", str(directory))):
        result = run_cli(*args)
        assert result.returncode == 1, args
        no_traceback(result)
        assert "only pickle checkpoints: pytorch_model.bin" in result.stderr
        assert "cannot be inspected or checked without unpickling it" in result.stderr
        assert f"modeldeck convert {directory} --allow-pickle" in result.stderr


def test_inspect_a_truncated_file(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False).directory, tmp_path)
    path = directory / "model.safetensors"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 1000)
    result = run_cli("inspect", str(directory))
    assert result.returncode == 1
    no_traceback(result)
    assert "model.safetensors is not a readable safetensors file: truncated: its header describes" in result.stderr
    assert f"the file holds {size - 1000 - 8 - int.from_bytes(path.read_bytes()[:8], 'little'):,}" in result.stderr
    assert "the file is truncated or corrupt: download it again" in result.stderr


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda raw, n: raw[:5], "5 bytes, shorter than the 8-byte header length"),
        (lambda raw, n: raw[: 8 + n // 2], "its header length says"),
        (lambda raw, n: raw + b"\0" * 16, "more than the"),  # the safetensors library refuses this too
        (lambda raw, n: raw[:8] + raw[8 : 8 + n].replace(b'"F32"', b'"F33"', 1) + raw[8 + n :], "unknown dtype 'F33'"),
        (lambda raw, n: raw[:8] + raw[8 : 8 + n].replace(b"[", b"(", 1) + raw[8 + n :], "its header is not JSON"),
    ],
)  # fmt: skip
def test_corrupt_headers_are_named(tiny_checkpoint, tmp_path, edit, reason):
    source = tiny_checkpoint("gpt-neox", tokenizer=False).directory / "model.safetensors"
    raw = source.read_bytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(edit(raw, int.from_bytes(raw[:8], "little")))
    with pytest.raises(CheckpointError) as caught:
        read_safetensors_header(path)
    assert "model.safetensors is not a readable safetensors file: " in str(caught.value)
    assert reason in str(caught.value)


def test_inspect_and_validate_never_import_torch(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    card = family_card_file(tmp_path, "gpt-neox")
    script = f"""
        import sys
        from modeldeck.registry import cli
        for args in (["inspect", {str(ckpt.directory)!r}], ["validate", {str(card)!r}, "--weights", {str(ckpt.directory)!r}]):
            sys.argv = ["modeldeck", *args]
            try:
                cli.main()
            except SystemExit as exc:
                assert exc.code == 0, (args, exc.code)
        print("torch-free")
        """
    result = run_python_without(("torch", "transformers", "safetensors", "numpy"), script)
    assert result.returncode == 0, result.stderr
    assert "torch-free" in result.stdout and "matches card 'tiny-pythia-1.4b'" in result.stdout


# --- validate --weights --------------------------------------------------------------------------


def test_a_good_checkpoint_passes(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama", tokenizer=False)
    card = family_card_file(tmp_path, "llama")
    result = run_cli("validate", str(card), "--weights", str(ckpt.directory))
    assert result.returncode == 0, result.stdout + result.stderr
    total = count_parameters(resolved(card).architecture).total
    assert f"parameter count: the checkpoint holds {total:,} = {total:,} from the card's architecture" in result.stdout
    tensors = len(safetensors_listing(ckpt.directory))
    assert f"matches card 'tiny-aira-2-1b1' (layout 'llama'): {tensors} tensors (F32) in 1 file(s)" in result.stdout
    assert "1 card(s) checked: valid (0 error(s)" in result.stdout


def test_weights_needs_exactly_one_card(run_cli, tiny_checkpoint):
    result = run_cli("validate", "--weights", str(tiny_checkpoint("gpt-neox", tokenizer=False).directory))
    assert result.returncode == 2 and "--weights checks one card against one checkpoint" in result.stderr


def test_a_missing_tensor_is_named_as_runtime_load_names_it(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    directory = copy(ckpt.directory, tmp_path)
    edit_weights(directory, lambda t: t.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.weight"))
    card = family_card_file(tmp_path, "gpt-neox")
    result = run_cli("validate", str(card), "--weights", str(directory))
    assert result.returncode == 1
    no_traceback(result)
    assert f"{directory}: error: missing tensors (1): gpt_neox.layers.1.mlp.dense_4h_to_h.weight\n" in result.stderr
    assert "parameter count: the checkpoint holds" in result.stderr and "difference -8,192" in result.stderr
    assert "check that these weights belong to card 'tiny-pythia-1.4b' (layout 'gpt-neox')" in result.stderr
    assert "unexpected" not in result.stderr
    for problem in runtime_problems(resolved(card), directory):  # the same words, from the same code
        assert f"error: {problem}\n" in result.stderr


def test_an_extra_tensor_is_named(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("falcon", tokenizer=False)
    directory = copy(ckpt.directory, tmp_path)
    edit_weights(directory, lambda t: t.update({"transformer.h.0.mlp.dense_h_to_4h.bias": torch.zeros(128)}))
    card = family_card_file(tmp_path, "falcon")
    result = run_cli("validate", str(card), "--weights", str(directory))
    assert result.returncode == 1
    no_traceback(result)
    assert (
        "error: unexpected tensors (1): transformer.h.0.mlp.dense_h_to_4h.bias (does the card's "
        "architecture.bias or tied_embeddings match the checkpoint?)"
    ) in result.stderr
    assert "missing" not in result.stderr
    for problem in runtime_problems(resolved(card), directory):
        assert f"error: {problem}\n" in result.stderr


def test_a_wrong_shape_names_the_tensor_and_the_card_field(run_cli, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt-neox", tokenizer=False)
    card = family_card_file(tmp_path, "gpt-neox", ffn_size=256)
    result = run_cli("validate", str(card), "--weights", str(ckpt.directory))
    assert result.returncode == 1
    no_traceback(result)
    weights = ckpt.directory / "model.safetensors"
    assert (
        f"{weights}: architecture.ffn_size: error: tensor gpt_neox.layers.0.mlp.dense_h_to_4h.weight: expected "
        "shape [256, 64] (architecture.ffn_size by hidden_size), got [128, 64]\n"
    ) in result.stderr
    assert f"{ckpt.directory / 'config.json'}: architecture.ffn_size: error: config.json intermediate_size=128" in (
        result.stderr
    )
    assert "... and 2 more tensors of other shapes" in result.stderr  # 2 layers x (up weight, up bias, down weight)
    for problem in runtime_problems(resolved(card), ckpt.directory):
        assert f"error: {problem}\n" in result.stderr


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("layer_norm_eps", 1e-6, "architecture.norm.eps: error: config.json layer_norm_eps=1e-06 disagrees with the "
         "card's architecture.norm.eps (1e-05; rule: layer_norm_eps <-> norm.eps)"),
        ("model_type", "llama", "architecture.checkpoint_layout: error: config.json model_type 'llama' is not one the "
         "'gpt-neox' layout reads (gpt_neox)"),
    ],
)  # fmt: skip
def test_a_config_json_mismatch_is_named(run_cli, tiny_checkpoint, tmp_path, key, value, named):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False).directory, tmp_path)
    edit_config(directory, lambda c: c.update({key: value}))
    card = family_card_file(tmp_path, "gpt-neox")
    result = run_cli("validate", str(card), "--weights", str(directory), "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert len(errors) == 1 and errors[0]["where"] == str(directory / "config.json")
    text = run_cli("validate", str(card), "--weights", str(directory))
    assert f"{directory / 'config.json'}: {named}\n" in text.stderr
    assert "expected shape" not in text.stderr and "missing" not in text.stderr


def test_a_truncated_file_fails_validate(run_cli, tiny_checkpoint, tmp_path):
    directory = copy(tiny_checkpoint("gpt-neox", tokenizer=False).directory, tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_cli("validate", str(family_card_file(tmp_path, "gpt-neox")), "--weights", str(directory))
    assert result.returncode == 1
    no_traceback(result)
    assert f"{directory}: error: model.safetensors is not a readable safetensors file: truncated" in result.stderr
    assert "-> the file is truncated or corrupt: download it again" in result.stderr


def test_btlm_transposed_weights_slopes_and_stored_extra(run_cli, tmp_path):
    card = card_file(tmp_path, "gpt-jx-3b", JX_TINY)
    arch = resolved(card).architecture
    config = btlm_config(layers=2, hidden=64, heads=8, ffn=170, vocab=arch.vocab_size, context=512)
    good = tmp_path / "good"
    state = write_btlm_checkpoint(good, config, tokenizer=False)
    result = run_cli("validate", str(card), "--weights", str(good))
    assert result.returncode == 0, result.stderr
    total = count_parameters(arch).total
    assert (
        f"the checkpoint holds {total + 8:,} = {total:,} from the card's architecture + 8 stored extra "
        "(transformer.relative_pe.slopes [8, 1]: ALiBi slopes)"
    ) in result.stdout

    name = "transformer.h.1.attn.c_attn.weight"
    bad = tmp_path / "bad"
    write_btlm_checkpoint(bad, config, tensors={name: state[name].t()}, tokenizer=False)
    result = run_cli("validate", str(card), "--weights", str(bad))
    assert result.returncode == 1
    assert (
        f"tensor {name}: expected shape [64, 192] (architecture.hidden_size by (heads + 2 kv_heads) x head_dim), "
        "got [192, 64] - stored as [out, in]; layout 'btlm' stores this weight [in, out] (GPT-2 Conv1D)\n"
    ) in result.stderr
    for problem in runtime_problems(resolved(card), bad):
        assert f"error: {problem}\n" in result.stderr


# --- one implementation: what the registry implies is what the runtime loads -------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_implied_tensors_are_the_checkpoints_and_the_decoders(tiny_checkpoint, family):
    """The registry's implied tensors = the tensors transformers wrote (an independent implementation of each
    layout), and its decoder tensors = the runtime Decoder's state_dict; the runtime loads exactly that plan."""
    ckpt = tiny_checkpoint(family, tokenizer=False)
    arch = ckpt.card.architecture
    layout = registry.default().checkpoint_layouts()[arch.checkpoint_layout]
    headers = read_checkpoint(ckpt.directory).tensors
    implied = implied_tensors(arch, layout)
    assert {name: t.shape for name, t in implied.items()} == {name: t.shape for name, t in headers.items()}
    with torch.device("meta"):
        decoder = Decoder(arch)
    assert decoder_tensors(arch) == {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    assert sum(t.numel for t in headers.values()) == count_parameters(arch).total
    model = load_model(ckpt.card, ckpt.directory, with_tokenizer=(REFERENCE / "tokenizers").is_dir())
    assert set(implied_plan(arch, layout)) == set(model.decoder.state_dict())


def test_the_btlm_implied_tensors_are_the_reference_checkpoints(tmp_path):
    card = resolved(card_file(tmp_path, "gpt-jx-3b", JX_TINY))
    arch = card.architecture
    layout = registry.default().checkpoint_layouts()["btlm"]
    config = btlm_config(layers=2, hidden=64, heads=8, ffn=170, vocab=arch.vocab_size, context=512)
    write_btlm_checkpoint(tmp_path, config, tokenizer=False)
    implied = {name: t.shape for name, t in implied_tensors(arch, layout).items()}
    assert implied == btlm_parameter_shapes(config)  # Conv1D [in, out], slopes [heads, 1], no lm_head
    decoder = load_decoder(card, layout, tmp_path, torch.float32, torch.device("cpu"))
    assert set(implied_plan(arch, layout)) - {"alibi_slopes"} == set(decoder.state_dict())
    assert decoder_tensors(arch) == {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    assert decoder.alibi is not None and decoder.alibi.shape == (8,)  # read from the stored slopes


def test_every_installed_card_implies_its_parameter_count():
    """registry/params.py and the implied tensors agree for every card (so a matching checkpoint's count does)."""
    reg = registry.default()
    for card in reg.cards():
        arch = card.architecture
        layout = reg.checkpoint_layouts()[arch.checkpoint_layout]
        weights = {name: t for name, t in implied_tensors(arch, layout).items() if t.decoder != "alibi_slopes"}
        assert sum(torch.Size(t.shape).numel() for t in weights.values()) == count_parameters(arch).total, card.id
