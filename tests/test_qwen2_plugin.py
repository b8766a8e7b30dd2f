"""The plugin author's Qwen2 scenario, end to end: a separate distribution that contributes a Qwen2-0.5B card
(and a tiny Qwen2 of the same architecture) with no engine code, installed into a fresh virtual environment, is
listed, validates, checks a real Hugging Face checkpoint, and generates transformers' greedy tokens through the
first-party `llama` layout (q/k/v biases, tied embeddings)."""

from __future__ import annotations

import json
import shutil
import sysconfig
import textwrap
from pathlib import Path

import pytest

from .conftest import CARDS
from .test_packaging import _run, install_in_a_fresh_venv

QWEN2_0_5B = """\
schema_version: 1
id: qwen2-0.5b
name: Qwen2-0.5B
publisher: Qwen
license: Apache-2.0
source: {repo: Qwen/Qwen2-0.5B, format: safetensors}
parameters: {stated: 494032768}
architecture:
  family: Qwen2
  checkpoint_layout: llama
  layers: 24
  hidden_size: 896
  heads: 14
  kv_heads: 2
  ffn_size: 4864
  vocab_size: 151936
  context_length: 32768
  positions: {kind: rotary, base: 1000000.0}
  norm: {kind: rmsnorm, eps: 1.0e-6}
  mlp: swiglu
  residual: {kind: sequential}
  bias: {qkv: true}
  tied_embeddings: true
tokenizer:
  kind: tokenizers
  files: [tokenizer.json]
  eos: {text: "<|endoftext|>", id: 151643}
  special_tokens: [{text: "<|im_start|>", id: 151644}, {text: "<|im_end|>", id: 151645}]
  markers: [{text: "<|im_start|>", special: true}, {text: "<|im_end|>", special: true}]
prompt_format:
  name: chatml
  system: {supported: true, turn: {prefix: "<|im_start|>system\\n", suffix: "<|im_end|>\\n"}}
  user: {prefix: "<|im_start|>user\\n", suffix: "<|im_end|>\\n"}
  assistant: {prefix: "<|im_start|>assistant\\n", suffix: "<|im_end|>\\n"}
  answer_prefix: "<|im_start|>assistant\\n"
  stop: ["<|im_end|>"]
"""

# The same architecture, shrunk, with the bundled demo model's tokenizer (2,048 tokens, <|endoftext|> = 0).
TINY = """\
schema_version: 1
id: tiny-qwen2
name: tiny Qwen2 (random weights)
publisher: a plugin author
license: Apache-2.0
source: {repo: example/tiny-qwen2, format: safetensors}
architecture:
  family: Qwen2
  checkpoint_layout: llama
  layers: 2
  hidden_size: 64
  heads: 8
  kv_heads: 2
  ffn_size: 128
  vocab_size: 2048
  context_length: 512
  positions: {kind: rotary, base: 1000000.0}
  norm: {kind: rmsnorm, eps: 1.0e-6}
  mlp: swiglu
  residual: {kind: sequential}
  bias: {qkv: true}
  tied_embeddings: true
tokenizer:
  kind: tokenizers
  files: [tokenizer.json]
  eos: {text: "<|endoftext|>", id: 0}
prompt_format: plain
"""

PLUGIN = '''\
"""Qwen2 cards: data only, through modeldeck's hooks."""
from pathlib import Path

from modeldeck.registry import hookimpl


@hookimpl
def register_cards(register):
    for name in ("qwen2-0.5b.yaml", "tiny-qwen2.yaml"):
        register(Path(__file__).with_name(name))
'''


def _plugin_source(root: Path) -> Path:
    package = root / "modeldeck_qwen2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    (package / "qwen2-0.5b.yaml").write_text(QWEN2_0_5B)
    (package / "tiny-qwen2.yaml").write_text(TINY)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=77"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "modeldeck-qwen2"
            version = "0.1.0"
            dependencies = ["modeldeck"]

            [project.entry-points.modeldeck]
            qwen2 = "modeldeck_qwen2"

            [tool.setuptools.package-data]
            modeldeck_qwen2 = ["*.yaml"]
            """
        )
    )
    return root


def _tiny_qwen2_checkpoint(directory: Path) -> list[int]:
    """A random Qwen2 written by transformers, and its greedy continuation of a prompt (the reference)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    config = transformers.Qwen2Config(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.save_pretrained(directory)
    shutil.copy(CARDS / "tiny-neox" / "tokenizer.json", directory)
    ids = Tokenizer.from_file(str(directory / "tokenizer.json")).encode("The for statement").ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)
    return out[0, len(ids) :].tolist()


@pytest.mark.slow
def test_a_qwen2_plugin_installs_lists_validates_and_generates_in_a_fresh_venv(tmp_path):
    venv = install_in_a_fresh_venv(tmp_path, _plugin_source(tmp_path / "plugin"), "modeldeck-qwen2")
    python, modeldeck = venv / "bin" / "python", venv / "bin" / "modeldeck"
    # The runtime's heavy dependencies (torch, safetensors, tokenizers) come from this environment, after the fresh
    # one's own packages: modeldeck and the plugin are the fresh venv's.
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    (fresh_site / "zz-borrowed-runtime.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = _run(python, "-c", "import modeldeck.registry as r; print(r.__file__)").stdout
    assert str(fresh_site) in where

    listed = {c["id"]: c for c in json.loads(_run(modeldeck, "list", "--json").stdout)}
    assert listed["qwen2-0.5b"]["distribution"] == "modeldeck-qwen2"
    assert listed["qwen2-0.5b"]["parameters"] == 494_032_768
    _run(modeldeck, "validate")

    weights = tmp_path / "tiny-qwen2"
    expected = _tiny_qwen2_checkpoint(weights)
    _run(modeldeck, "validate", "tiny-qwen2", "--weights", weights)
    command = ["generate", "tiny-qwen2", "The for statement", "--weights", weights, "--max-new-tokens", "12"]
    result = _run(modeldeck, *command, "--dtype", "float32", "--json")
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(weights / "tokenizer.json")).decode(expected)
    assert json.loads(result.stdout)["completions"][0]["text"] == text
