"""`modeldeck card new --from DIR`: a starting card from a local checkpoint folder, which validates against the
checkpoint and generates exactly transformers' greedy tokens, with no edits; and its errors, each named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import run_python_without
from .families import FAMILIES, build_checkpoint

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PROMPT = "w5 w17 w42 w8 w100 w3 w250 w9"  # 8 tokens: with 12 new ones past the dynamic-NTK family's 16
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|extra|>"]  # pad 0, bos 1, eos 2 as in tests/families.py
TOKENIZER_SIZE = 300  # smaller than the families' 320-row embedding


def _extra_config(name: str) -> Any:
    """Families tests/families.py does not have: GPT-NeoX, and the two Falcon layouts that read model_type falcon."""
    common = {
        "vocab_size": 320,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "initializer_range": 0.1,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if name == "gpt-neox":
        return transformers.GPTNeoXConfig(
            **common, intermediate_size=128, max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True
        )
    falcon = {"parallel_attn": True, "bias": False, "ffn_hidden_size": 128, "max_position_embeddings": 64}
    if name == "falcon":  # the new decoder architecture: ln_attn + ln_mlp, grouped kv heads
        return transformers.FalconConfig(**common, **falcon, num_kv_heads=2, new_decoder_architecture=True)
    return transformers.FalconConfig(**common, **falcon, multi_query=True, new_decoder_architecture=False)


EXTRA = {"gpt-neox": "gpt-neox", "falcon": "falcon", "falcon-7b": "falcon-7b"}  # family -> the layout it needs
ALL = sorted(FAMILIES) + sorted(EXTRA)


def write_tokenizer(directory: Path) -> None:
    """A WordLevel tokenizer (w0, w1, ... after the special tokens) with its tokenizer_config.json and
    special_tokens_map.json, as transformers' save_pretrained writes them."""
    vocab = {text: i for i, text in enumerate(SPECIALS)}
    vocab.update({f"w{i}": len(SPECIALS) + i for i in range(TOKENIZER_SIZE - len(SPECIALS))})
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer.save(str(directory / "tokenizer.json"))
    named = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(named))
    config = {**named, "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """checkpoint(family) -> (folder, transformers model): save_pretrained weights, a tokenizer, and a
    generation_config.json with a greedy default, built once per module."""
    import torch

    built: dict[str, tuple[Path, Any]] = {}

    def build(name: str) -> tuple[Path, Any]:
        if name not in built:
            directory = tmp_path_factory.mktemp("checkpoints") / f"tiny-{name}"
            directory.mkdir()
            if name in EXTRA:
                torch.manual_seed(ALL.index(name))
                model = transformers.AutoModelForCausalLM.from_config(
                    _extra_config(name), attn_implementation="eager", dtype=torch.float32
                ).eval()
                with torch.no_grad():
                    for parameter in model.parameters():
                        if parameter.dim() == 1:
                            parameter.add_(torch.randn_like(parameter) * 0.2)
                model.save_pretrained(directory)
            else:
                model = build_checkpoint(name, directory)
            write_tokenizer(directory)
            generation = json.loads((directory / "generation_config.json").read_text())
            generation.update({"do_sample": False, "max_new_tokens": 32, "max_length": 64})
            (directory / "generation_config.json").write_text(json.dumps(generation))
            built[name] = directory, model
        return built[name]

    return build


def transformers_greedy(directory: Path, model: Any, new_tokens: int) -> tuple[str, int]:
    """transformers' greedy completion of PROMPT, decoded with the checkpoint's tokenizer, and its token count."""
    import torch

    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
        )
    generated = out[0, len(ids) :].tolist()
    return tokenizer.decode(generated, skip_special_tokens=True), len(generated)


def modeldeck_greedy(card: Path, directory: Path, new_tokens: int, run_cli: Any = None) -> dict[str, Any]:
    """`modeldeck generate CARD --weights DIR --greedy --json`: in this process (torch is imported once, which keeps
    the module within its time), or through `run_cli` in a process of its own."""
    args = ["generate", str(card), PROMPT, "--weights", str(directory), "--device", "cpu", "--greedy"]
    args += ["--max-new-tokens", str(new_tokens), "--json"]
    if run_cli is not None:
        ran = run_cli(*args)
        assert ran.returncode == 0, ran.stderr
        output = ran.stdout
    else:
        from click.testing import CliRunner

        from modeldeck.registry.cli import main

        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        output = result.stdout
    completion: dict[str, Any] = json.loads(output)["completions"][0]
    return completion


@pytest.mark.parametrize("family", ALL)
def test_a_new_card_validates_and_generates_as_transformers(family, checkpoint, run_cli, tmp_path):
    directory, model = checkpoint(family)
    card = tmp_path / "card.yaml"
    made = run_cli("card", "new", "--from", str(directory), "--out", str(card))
    assert made.returncode == 0, made.stderr
    assert f"wrote {card}" in made.stdout
    text = card.read_text()
    data = yaml.safe_load(text)
    layout = EXTRA.get(family) or FAMILIES[family].architecture["checkpoint_layout"]
    assert data["architecture"]["checkpoint_layout"] == layout
    assert data["id"] == f"tiny-{family}" and data["license"] == "NOASSERTION" and data["dtype"] == "auto"
    assert data["prompt_format"] == "plain"
    assert data["tokenizer"]["eos"] == {"text": "</s>", "id": 2}
    assert data["tokenizer"]["special_tokens"] == [{"text": "<|extra|>", "id": 4}]
    assert data["generation"] == {"max_new_tokens": 32, "do_sample": False}  # generation_config.json's own
    assert re.search(r"^  stated: \d+ +# computed by modeldeck card new", text, re.M)
    assert re.search(r"^publisher: CHANGE-ME +# TODO", text, re.M)
    assert re.search(r"^  vocab_size: 320 +# config\.json vocab_size$", text, re.M)
    assert "generation_config.json also sets max_length 64" in text
    if family in FAMILIES:  # the architecture is the one tests/families.py says the checkpoint has
        from modeldeck.registry.schema import Architecture

        expected = Architecture.model_validate(FAMILIES[family].architecture)
        if family == "bloom":  # BLOOM's config.json states no context length: the layout's default
            expected = expected.model_copy(update={"context_length": 2048})
            assert re.search(r"^  context_length: 2048 +# layout bloom's default", text, re.M)
        if family == "llama-rope-dynamic":  # max_position_embeddings is the original context, stretched by factor
            expected = expected.model_copy(update={"context_length": 32})
            assert re.search(
                r"^  context_length: 32 +# config.json max_position_embeddings 16 x positions.scaling.factor 2.0",
                text,
                re.M,
            )
        assert Architecture.model_validate(data["architecture"]) == expected

    checked = run_cli("validate", str(card), "--weights", str(directory))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid (0 error(s), 0 warning(s))" in checked.stdout

    text, count = transformers_greedy(directory, model, 12)
    completion = modeldeck_greedy(card, directory, 12, run_cli if family == "llama3" else None)
    assert (completion["text"], completion["completion_tokens"]) == (text, count)


def test_the_card_goes_to_standard_output_without_out(checkpoint, run_cli):
    directory, _ = checkpoint("qwen2")
    made = run_cli("card", "new", "--from", str(directory), "--id", "my-qwen")
    assert made.returncode == 0, made.stderr
    data = yaml.safe_load(made.stdout)
    assert data["id"] == "my-qwen" and data["architecture"]["bias"]["qkv"] is True
    assert data["tokenizer"]["files"] == ["tokenizer.json"]
    bad = run_cli("card", "new", "--from", str(directory), "--id", "Not An Id")
    assert bad.returncode == 2 and "'Not An Id' is not a card id" in bad.stderr


def _copy(checkpoint: Any, family: str, tmp_path: Path, name: str = "copy") -> Path:
    directory = tmp_path / name
    shutil.copytree(checkpoint(family)[0], directory)
    return directory


def _edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_an_unknown_model_type_is_named_with_the_ones_layouts_read(checkpoint, run_cli, tmp_path):
    directory = _copy(checkpoint, "llama3", tmp_path)
    _edit_config(directory, model_type="mamba")
    made = run_cli("card", "new", "--from", str(directory), "--out", str(tmp_path / "card.yaml"))
    assert made.returncode == 1
    assert "config.json model_type 'mamba' is not one any registered checkpoint layout reads" in made.stderr
    assert re.search(r"the layouts read the model_types .*\bgpt_neox\b.*\bllama\b.*\bqwen2\b", made.stderr)
    assert not (tmp_path / "card.yaml").exists()


def test_a_value_the_vocabulary_cannot_express_is_named_with_the_family(checkpoint, run_cli, tmp_path):
    directory = _copy(checkpoint, "llama3", tmp_path)
    _edit_config(directory, hidden_act="gelu_fast")
    made = run_cli("card", "new", "--from", str(directory), "--out", str(tmp_path / "card.yaml"))
    assert made.returncode == 1
    assert "config.json (model_type llama, family Llama) read with checkpoint layout 'llama' gives:" in made.stderr
    problems = [line for line in made.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, made.stderr
    assert problems[0].startswith("  - config.json hidden_act='gelu_fast' (model_type llama): ")
    assert "modeldeck's architecture vocabulary cannot express" in problems[0] or "can express" in problems[0]
    assert "Traceback" not in made.stderr and not (tmp_path / "card.yaml").exists()


def test_a_key_no_rule_reads_is_warned_about_and_listed_in_the_card(checkpoint, run_cli, tmp_path):
    directory = _copy(checkpoint, "mistral", tmp_path)
    _edit_config(directory, odd_new_key=1)
    card = tmp_path / "card.yaml"
    made = run_cli("card", "new", "--from", str(directory), "--out", str(card))
    assert made.returncode == 0, made.stderr
    assert "warning: config.json keys no rule of layout 'llama' reads: odd_new_key" in made.stderr
    head = card.read_text().split("schema_version")[0]
    assert all(line.startswith("#") for line in head.splitlines() if line)  # the card's first comment
    comment = " ".join(line.removeprefix("#").strip() for line in head.splitlines())  # (wrapped at 116 columns)
    assert (
        "config.json keys no rule of layout 'llama' reads (check that they do not change the computation): " in comment
    )
    assert comment.rstrip().endswith("computation): odd_new_key")
    assert run_cli("validate", str(card), "--weights", str(directory)).returncode == 0


def test_an_existing_out_file_is_not_overwritten(checkpoint, run_cli, tmp_path):
    directory, _ = checkpoint("gpt2")
    (tmp_path / "out").mkdir()
    card = tmp_path / "out" / "card.yaml"
    card.write_text("mine: keep me\n")
    made = run_cli("card", "new", "--from", str(directory), "--out", str(card))
    assert made.returncode == 1
    assert f"{card} exists: not overwritten (pass --force to replace it)" in made.stderr
    assert card.read_text() == "mine: keep me\n"
    forced = run_cli("card", "new", "--from", str(directory), "--out", str(card), "--force")
    assert forced.returncode == 0, forced.stderr
    assert yaml.safe_load(card.read_text())["architecture"]["checkpoint_layout"] == "gpt2"
    assert [p.name for p in card.parent.iterdir()] == ["card.yaml"]  # no temporary file left behind


def test_a_forced_layout_that_does_not_fit_names_its_problems(checkpoint, run_cli, tmp_path):
    directory, _ = checkpoint("falcon")
    made = run_cli("card", "new", "--from", str(directory), "--layout", "falcon-7b")
    assert made.returncode == 1 and made.stdout == ""
    assert "read with checkpoint layout 'falcon-7b' gives:" in made.stderr
    assert "new_decoder_architecture=True disagrees with the card's architecture.residual.shared_norm" in made.stderr
    assert "missing tensors (4): transformer.h.0.input_layernorm.bias" in made.stderr
    unknown = run_cli("card", "new", "--from", str(directory), "--layout", "nope")
    assert unknown.returncode == 1 and "unknown checkpoint layout 'nope' (--layout)" in unknown.stderr


def test_a_folder_without_a_tokenizer_or_config_is_refused(checkpoint, run_cli, tmp_path):
    directory = _copy(checkpoint, "opt", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink()
    made = run_cli("card", "new", "--from", str(directory))
    assert made.returncode == 1
    assert f"no tokenizer in {directory}: a card needs the tokenizer's files and its eos token" in made.stderr
    (directory / "config.json").unlink()
    made = run_cli("card", "new", "--from", str(directory))
    assert made.returncode == 1 and f"{directory} has no config.json" in made.stderr


def test_card_new_imports_no_torch(checkpoint):
    directory, _ = checkpoint("gpt2")
    body = f"""
        from pathlib import Path
        from modeldeck import registry
        from modeldeck.registry.cardgen import new_card

        made = new_card(Path({str(directory)!r}), registry.default())
        assert made.layout == "gpt2" and made.card.architecture.positions.kind == "learned"
    """
    ran = run_python_without(("torch", "transformers"), body)
    assert ran.returncode == 0, ran.stderr
