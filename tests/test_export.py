"""`modeldeck export`: every card's prompt format as a Jinja chat template (rendered by transformers) and as an
Ollama Go template (rendered by Go's text/template), byte for byte what `modeldeck prompt` renders; the generation
config through transformers' GenerationConfig; the hub metadata through huggingface_hub; writing all or nothing."""

from __future__ import annotations

import json
import logging
import os
import random
import warnings

import jinja2
import pytest

from modeldeck import registry
from modeldeck.registry import export
from modeldeck.registry.export.chat_template import chat_template
from modeldeck.registry.export.ollama import go_template, modelfile_value
from modeldeck.registry.prompting import PromptError, render_prompt
from modeldeck.registry.schema import Card

transformers = pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

CARDS = registry.cards()

# User text that looks like what a template or a format would act on: markers, special tokens, Jinja and Go
# template syntax, quotes, backslashes, line breaks, non-ASCII, an empty message.
TEXTS = [
    "What is a language model?",
    "<|endoftext|> and <|prompt|> are just text here",
    "<human>: fake turn\n<bot>: fake answer",
    "<|startofinstruction|>nested<|endofinstruction|>",
    "{{ messages }} {% raw %} {{- .System }} {{ end }}",
    'quotes " \'\'\' """ and a backslash \\ and \\n',
    "line\nbreaks\r\n\ttabs  ",
    "Grüße, 你好, 😀",
    "",
]


def conversations(seed: int) -> list[list[dict[str, str]]]:
    """1-4 turns with and without a system prompt, and conversations modeldeck refuses."""
    rng = random.Random(seed)
    result = []
    for turns in range(1, 5):
        for system in (None, "You are terse.", ""):
            for _ in range(3):
                messages = [
                    {"role": "user" if i % 2 == 0 else "assistant", "content": rng.choice(TEXTS)}
                    for i in range(2 * turns - 1)
                ]
                result.append(messages if system is None else [{"role": "system", "content": system}, *messages])
    result += [
        [],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "assistant", "content": "an answer first"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "ends with the answer"}],
        [{"role": "tool", "content": "x"}],
    ]
    return result


def modeldeck_prompt(card: Card, messages: list[dict[str, str]]) -> str | PromptError:
    try:
        return render_prompt(card.format, messages)
    except PromptError as error:
        return error


@pytest.mark.parametrize("card", CARDS, ids=[c.id for c in CARDS])
def test_transformers_renders_the_exported_template_as_modeldeck_prompt(card):
    template = chat_template(card.format, card.id)
    checked = 0
    for messages in conversations(seed=len(card.id)):
        expected = modeldeck_prompt(card, messages)
        try:
            rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=True)
        except jinja2.TemplateError as error:  # what raise_exception raises
            assert isinstance(expected, PromptError), f"{messages}: the template refused: {error}"
            assert str(error) == str(expected)
            continue
        assert not isinstance(expected, PromptError), f"{messages}: modeldeck refuses ({expected}), the template not"
        assert rendered[0] == expected
        checked += 1
    assert checked >= 3  # a single-turn format without a system prompt accepts only one-message conversations


def test_without_a_generation_prompt_the_template_renders_whole_conversations():
    """The Hugging Face convention for training data: no answer prefix; a final assistant turn rendered whole."""
    card = registry.get("astrid-1b")
    template = chat_template(card.format, card.id)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    [rendered], _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=False)
    assert rendered == "<|prompt|>Hi<|endoftext|><|answer|>Hello<|endoftext|>"
    [rendered], _ = render_jinja_template([messages[:1]], chat_template=template, add_generation_prompt=False)
    assert rendered == "<|prompt|>Hi<|endoftext|>"


def read_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, value) of each Modelfile line, read by Ollama's rules (parser/parser.go): a value ends at the
    first line break after which it is a whole quoted string (\"\"\"...\"\"\" or "..."), or at the line's end
    when unquoted; quotes are removed and nothing is unescaped; non-printing characters other than spaces, tabs
    and line breaks are dropped."""
    commands, rest = [], text
    while rest:
        rest = rest.lstrip(" \t\r\n")
        if not rest:
            break
        if rest.startswith("#"):
            rest = rest.partition("\n")[2]
            continue
        name, _, rest = rest.partition(" ")
        if name.upper() == "PARAMETER":
            key, _, rest = rest.partition(" ")
            name = key
        value, end = "", 0
        while True:
            newline = rest.find("\n", end)
            value = rest if newline < 0 else rest[:newline]
            stripped = value.strip()
            if newline < 0 or not stripped.startswith('"'):
                break
            if stripped.startswith('"""') and len(stripped) >= 6 and stripped.endswith('"""'):
                break
            if not stripped.startswith('"""') and len(stripped) >= 2 and stripped.endswith('"'):
                break
            end = newline + 1
        rest = "" if newline < 0 else rest[newline + 1 :]
        stripped = value.strip()
        if stripped.startswith('"""'):
            stripped = stripped[3:-3]
        elif stripped.startswith('"'):
            stripped = stripped[1:-1]
        commands.append((name.lower(), "".join(c for c in stripped if c.isprintable() or c in " \t\n\r")))
    return commands


@pytest.mark.parametrize("card", CARDS, ids=[c.id for c in CARDS])
def test_ollama_renders_the_modelfile_template_as_modeldeck_prompt(card, go_render):
    text, dropped = export.ollama.modelfile(card, ".")
    commands = read_modelfile(text)
    [template] = [value for name, value in commands if name == "template"]
    assert template == go_template(card.format, card.id)
    accepted = [m for m in conversations(seed=len(card.id)) if isinstance(modeldeck_prompt(card, m), str)]
    assert len(accepted) >= 3
    assert go_render(template, accepted) == [render_prompt(card.format, m) for m in accepted]
    stops = [value for name, value in commands if name == "stop"]
    assert stops == [*card.format.stop, card.tokenizer.eos.text]
    params = dict(commands)
    assert params["num_ctx"] == str(card.architecture.context_length)
    assert params["num_predict"] == str(card.generation.max_new_tokens)
    if not card.generation.do_sample:
        assert params["temperature"] == "0"
    if card.generation.min_new_tokens:
        assert any(line.startswith("min_new_tokens") for line in dropped)


def test_modelfile_values_survive_ollamas_reader_or_are_refused():
    for value in ["<|prompt|>", "\n<human>:", 'say "hi"', "two\nlines", " spaced ", '"""inner"""', '"\n"']:
        quoted = modelfile_value(value)
        assert quoted is not None
        assert read_modelfile(f"PARAMETER stop {quoted}\nPARAMETER x 1") == [("stop", value), ("x", "1")]
    for value in ['a line ending in """\nand more', 'x"""  \ny', "bell \x07"]:
        assert modelfile_value(value) is None


@pytest.mark.parametrize("card", CARDS, ids=[c.id for c in CARDS])
def test_generation_config_loads_in_transformers_without_warnings_and_keeps_the_defaults(card, tmp_path, caplog):
    config, _ = export.hf.generation_config(card)
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        loaded = transformers.GenerationConfig.from_pretrained(tmp_path)
        loaded.validate(strict=True)
    assert not caught and not caplog.records, [str(w.message) for w in caught] + caplog.messages
    gen = card.generation
    assert (loaded.max_new_tokens, loaded.min_new_tokens or 0) == (gen.max_new_tokens, gen.min_new_tokens)
    assert loaded.do_sample == gen.do_sample
    assert (loaded.repetition_penalty or 1.0) == gen.repetition_penalty
    assert loaded.eos_token_id == card.tokenizer.eos.id
    assert (loaded.stop_strings or []) == card.format.stop
    if gen.do_sample:
        assert loaded.temperature == gen.temperature and loaded.top_k == (gen.top_k or 0)
        assert (loaded.top_p or 1.0) == (gen.top_p or 1.0)


def test_the_hf_export_of_tiny_neox_is_a_model_folder_transformers_reads(tmp_path):
    card = registry.get("tiny-neox")
    written = export.write(export.plan(card, ["hf"]), tmp_path / "out")
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(written)
    assert os.path.samefile(out / "model.safetensors", export.plan(card, ["hf"]).source / "model.safetensors")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "The if statement"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == render_prompt(
        card.format, messages
    )
    assert tokenizer.eos_token == card.tokenizer.eos.text
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (out / "chat_template.jinja").read_text()
    assert config["model_max_length"] == card.architecture.context_length


def test_the_readme_carries_the_cards_metadata_and_results():
    from huggingface_hub import ModelCard

    card = registry.get("h2ogpt-oig-oasst1-falcon-40b")
    data = ModelCard(export.hf.readme(card)).data
    assert card.license == "NOASSERTION" and data.license == "unknown"  # the hub's word for it
    assert data.language == card.languages
    assert data.base_model == card.base_model
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {(r.task, r.metric): r.value for r in card.evaluation}


def test_an_export_never_replaces_files_without_force_and_never_leaves_half(tmp_path, monkeypatch):
    card = registry.get("tiny-neox")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Modelfile").write_text("mine")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(export.ExportError, match=r"already holds Modelfile; pass force=True to replace them"):
        export.write(export.plan(card, ["ollama"], weights_mode="none"), out)
    assert (out / "Modelfile").read_text() == "mine"

    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(export.ExportError, match=r"cannot hard-link .* pass weights_mode=copy to copy it"):
        export.write(export.plan(card, ["hf"]), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    export.write(export.plan(card, ["hf", "ollama"], weights_mode="copy"), out, force=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "Modelfile").read_text() != "mine"
    assert (out / "model.safetensors").stat().st_nlink == 1  # a copy, not a link


def test_modeldeck_export_lists_what_each_format_drops(run_cli, tmp_path):
    done = run_cli("export", "astrid-1b", "--to", str(tmp_path / "astrid"))
    assert done.returncode == 0, done.stderr
    assert "not expressible in ollama:\n  - min_new_tokens 2: Ollama has no minimum length" in done.stdout
    assert "strip_response whitespace: transformers keeps the surrounding whitespace" in done.stdout
    assert "note: the checkpoint is not on this machine" in done.stdout
    assert sorted(p.name for p in (tmp_path / "astrid").iterdir()) == [
        "Modelfile",
        "README.md",
        "chat_template.jinja",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ]
    again = run_cli("export", "astrid-1b", "--to", str(tmp_path / "astrid"))
    assert again.returncode == 1 and "already holds" in again.stderr and "--force" in again.stderr
    missing = run_cli("export", "tiny-neox", "--to", str(tmp_path / "x"), "--weights", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
