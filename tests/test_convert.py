"""Pickle checkpoints: refused by default with the reason, converted to safetensors bit for bit on request.

The pickles are written as transformers 4.x wrote them (`save_pretrained(safe_serialization=False)`: torch.save of
the state dict, which keeps a tied lm_head and embedding as one storage; sharded as pytorch_model-0000i-of-0000n.bin
with pytorch_model.bin.index.json). transformers 5 no longer writes pickles, so the tests do it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from modeldeck import runtime  # noqa: E402
from modeldeck.registry.weights import PickleRefusedError  # noqa: E402
from modeldeck.runtime.convert import ConvertError, convert_checkpoint, same_bits  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

TOKENS = ((25, 300, 7, 4096, 11), (9, 8, 7, 6, 5))


def logits(model: Any) -> Any:
    batch = torch.tensor(TOKENS)
    cache = KVCache(model.card.architecture, batch.shape[0], batch.shape[1], model.dtype, "cpu")
    with torch.inference_mode():
        return model.decoder(batch, cache, model.backend, start=torch.zeros(batch.shape[0], dtype=torch.long))


def pickle_checkpoint(ckpt: Any, folder: Path, shards: int = 1) -> Path:
    """The tiny checkpoint as transformers 4.x saved pickles: its state dict (a tied head sharing the embedding's
    storage), the config and tokenizer files; `shards` > 1 splits it into pytorch_model-0000i-of-0000n.bin and an
    index. (The tiny checkpoints are falcon (tied) and gpt-neox (untied).)"""
    folder.mkdir(parents=True)
    for path in ckpt.directory.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, folder)
    state = load_file(ckpt.directory / "model.safetensors")  # the tensor names transformers publishes
    if ckpt.card.architecture.tied_embeddings:  # a 4.x state dict also held the tied head, as the same storage
        state["lm_head.weight"] = state["transformer.word_embeddings.weight"]
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names = list(state)
    weight_map = {}
    for i in range(shards):
        part = names[i * len(names) // shards : (i + 1) * len(names) // shards]
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: state[n] for n in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def falcon(tiny_checkpoint: Any) -> Any:
    ckpt = tiny_checkpoint("falcon")
    assert ckpt.card.architecture.tied_embeddings  # the case that matters: lm_head is the embedding
    return ckpt


def test_a_pickle_only_checkpoint_is_refused_with_the_reason_and_the_command(falcon: Any, tmp_path: Path) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    with pytest.raises(PickleRefusedError) as info:
        runtime.load(falcon.card, weights=folder, device="cpu")
    message = str(info.value)
    assert f"weights folder {folder} holds only pickle checkpoints (pytorch_model.bin)" in message
    assert "loading a pickle can execute arbitrary code" in message
    assert f"`modeldeck convert {folder} --allow-pickle --out OUT`" in message


def test_convert_without_allow_pickle_refuses_and_writes_nothing(falcon: Any, tmp_path: Path) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    before = sorted(os.listdir(folder))
    with pytest.raises(PickleRefusedError) as info:
        convert_checkpoint(folder, tmp_path / "out")
    message = str(info.value)
    assert f"{folder} holds pickle checkpoints (pytorch_model.bin)" in message
    assert "loading a pickle can execute arbitrary code" in message and "--allow-pickle" in message
    assert sorted(os.listdir(folder)) == before and not (tmp_path / "out").exists()


def test_convert_is_bit_exact_and_stores_tied_weights_once(falcon: Any, tmp_path: Path) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    pickled = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert pickled["lm_head.weight"].data_ptr() == pickled["transformer.word_embeddings.weight"].data_ptr()

    lines: list[str] = []
    result = convert_checkpoint(folder, tmp_path / "out", allow_pickle=True, report=lines.append)
    out = tmp_path / "out"
    assert result.out == out and result.files == {"pytorch_model.bin": "model.safetensors"} and result.index is None
    assert result.tied == {"lm_head.weight": "transformer.word_embeddings.weight"}
    assert (
        "pytorch_model.bin: lm_head.weight shares storage with transformer.word_embeddings.weight: stored once, as "
        "transformer.word_embeddings.weight" in lines
    )

    converted = load_file(out / "model.safetensors")
    assert set(converted) == set(pickled) - {"lm_head.weight"}  # the tied head is written once, as the embedding
    for name, tensor in pickled.items():
        assert same_bits(converted[result.tied.get(name, name)], tensor), name
    stored = sum(t.numel() * t.element_size() for t in converted.values())
    assert result.bytes == stored and (out / "model.safetensors").stat().st_size < stored + 16_384  # no second copy
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}

    # config and tokenizer files came along; no pickle, no temporary file
    assert sorted(os.listdir(out)) == sorted(
        [p.name for p in falcon.directory.iterdir() if not p.name.endswith(".safetensors")] + ["model.safetensors"]
    )
    assert "pytorch_model.bin" not in os.listdir(out)


def test_the_converted_folder_loads_and_gives_the_same_logits(falcon: Any, tmp_path: Path) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    convert_checkpoint(folder, tmp_path / "out", allow_pickle=True)
    converted = runtime.load(falcon.card, weights=tmp_path / "out", device="cpu")
    original = runtime.load(falcon.card, weights=falcon.directory, device="cpu")  # transformers' own safetensors
    pickle = runtime.load(falcon.card, weights=folder, device="cpu", allow_pickle=True)
    assert torch.equal(logits(converted), logits(original))
    assert torch.equal(logits(converted), logits(pickle))
    assert converted.decoder.lm_head is None  # tied: the head is the embedding


def test_a_sharded_pickle_becomes_sharded_safetensors_with_an_index(tiny_checkpoint: Any, tmp_path: Path) -> None:
    neox = tiny_checkpoint("gpt-neox")
    folder = pickle_checkpoint(neox, tmp_path / "pickle", shards=3)
    result = convert_checkpoint(folder, tmp_path / "out", allow_pickle=True)
    out = tmp_path / "out"
    assert result.files == {
        f"pytorch_model-0000{i}-of-00003.bin": f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    }
    index = json.loads((out / "model.safetensors.index.json").read_text())
    pickled_index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    assert index["weight_map"] == {n: f.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                                   for n, f in pickled_index["weight_map"].items()}  # fmt: skip
    assert index["metadata"]["total_size"] == result.bytes == pickled_index["metadata"]["total_size"]
    assert not result.tied  # pythia's head is untied
    assert "pytorch_model.bin.index.json" not in os.listdir(out)

    converted = runtime.load(neox.card, weights=out, device="cpu")
    original = runtime.load(neox.card, weights=neox.directory, device="cpu")
    assert torch.equal(logits(converted), logits(original))


def test_in_place_conversion_keeps_the_pickles_and_loads_the_safetensors(falcon: Any, tmp_path: Path) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    result = convert_checkpoint(folder, allow_pickle=True)
    assert result.out == folder and result.copied == []
    assert {"pytorch_model.bin", "model.safetensors"} <= set(os.listdir(folder))
    model = runtime.load(falcon.card, weights=folder, device="cpu")  # no allow_pickle needed any more
    assert torch.equal(logits(model), logits(runtime.load(falcon.card, weights=falcon.directory, device="cpu")))

    with pytest.raises(ConvertError, match=r"already holds safetensors weights \(model\.safetensors\)"):
        convert_checkpoint(folder, allow_pickle=True)


def test_bits_are_compared_exactly_and_views_of_one_storage_are_copied_apart(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    base = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), 1.5, -2.0])
    state = {"whole": base, "same": base, "tail": base[2:], "empty": torch.empty(0), "half": base.half()}
    torch.save(state, folder / "pytorch_model.bin")
    result = convert_checkpoint(folder, tmp_path / "out", allow_pickle=True)
    assert result.tied == {"same": "whole"}
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert set(converted) == {"whole", "tail", "empty", "half"}
    assert same_bits(converted["whole"], base) and same_bits(converted["tail"], base[2:])
    assert not torch.equal(converted["whole"], base)  # NaN != NaN: why the comparison is on bytes
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not same_bits(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))


def test_the_output_head_is_the_name_dropped_even_when_it_comes_first(tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    embedding = torch.randn(8, 4)
    torch.save({"lm_head.weight": embedding, "model.embed_tokens.weight": embedding}, folder / "pytorch_model.bin")
    result = convert_checkpoint(folder, tmp_path / "out", allow_pickle=True)
    assert result.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert list(load_file(tmp_path / "out" / "model.safetensors")) == ["model.embed_tokens.weight"]


class Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch " + os.environ.get("MODELDECK_TEST_PWNED", "/nonexistent/pwned"),))


def test_a_pickle_that_would_run_code_is_not_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MODELDECK_TEST_PWNED", str(marker))
    folder = tmp_path / "hostile"
    folder.mkdir()
    torch.save({"weight": torch.zeros(2), "payload": Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(folder, tmp_path / "out", allow_pickle=True)
    assert "cannot be read with torch.load(weights_only=True)" in str(info.value)
    assert "not converted" in str(info.value)
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*safetensors*"))


def test_a_hub_cache_snapshot_is_not_converted_in_place(falcon: Any, tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / ("a" * 40)
    pickle_checkpoint(falcon, snapshot)
    with pytest.raises(ConvertError, match="is a snapshot in the Hugging Face cache"):
        convert_checkpoint(snapshot, allow_pickle=True)
    assert convert_checkpoint(snapshot, tmp_path / "out", allow_pickle=True).out == tmp_path / "out"


def test_no_pickle_to_convert(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConvertError, match=r"holds no pickle checkpoint .*it holds: config\.json"):
        convert_checkpoint(tmp_path, allow_pickle=True)


def test_convert_cli(falcon: Any, tmp_path: Path, run_cli: Any) -> None:
    folder = pickle_checkpoint(falcon, tmp_path / "pickle")
    refused = run_cli("convert", str(folder))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"error: {folder} holds pickle checkpoints (pytorch_model.bin)")
    assert "loading a pickle can execute arbitrary code" in refused.stderr and "Traceback" not in refused.stderr
    assert not (folder / "model.safetensors").exists()

    out = tmp_path / "out"
    converted = run_cli("convert", str(folder), "--allow-pickle", "--out", str(out))
    assert converted.returncode == 0, converted.stderr
    assert converted.stdout == f"{out}\n"
    assert "lm_head.weight shares storage with transformer.word_embeddings.weight: stored once" in converted.stderr
    assert "pytorch_model.bin -> model.safetensors: " in converted.stderr
    assert "identical bit for bit" in converted.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
