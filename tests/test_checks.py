"""Consistency checks beyond the schema: markers, generation defaults, and cards against real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modeldeck import registry
from modeldeck.registry import check_card, check_tokenizer

SEEDS = ["astrid-1b", "pythia-1.4b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"]


def _card(data: dict, where: str = "x"):
    return registry.default().resolve_card(registry.card_from_data(data, where), where)


def _only(diagnostics, field_prefix: str):
    return [d for d in diagnostics if d.field and d.field.startswith(field_prefix)]


# --- markers --------------------------------------------------------------------------------------


def test_marker_declared_special_but_not_a_special_token(card_data):
    data = card_data("astrid-1b")
    data["tokenizer"]["markers"][0] = {"text": "<|prompt|>", "special": True}
    [d] = _only(check_card(_card(data), "x"), "tokenizer.markers")
    assert (d.severity, d.field, d.where) == ("error", "tokenizer.markers[0]", "x")
    assert d.message == "marker '<|prompt|>' is declared special, but the tokenizer declares no such special token"
    assert d.hint.startswith("declared special tokens: <|endoftext|>; add it to tokenizer.special_tokens")


def test_marker_declared_plain_but_is_a_special_token(card_data):
    data = card_data("astrid-1b")
    data["tokenizer"]["markers"][2] = {"text": "<|endoftext|>", "special": False}
    [d] = _only(check_card(_card(data), "x"), "tokenizer.markers")
    assert (d.severity, d.field) == ("error", "tokenizer.markers[2]")
    assert d.message == "marker '<|endoftext|>' is declared plain text, but it is also declared a special token"
    assert d.hint == "set special: true, or remove it from the special tokens"


def test_marker_missing_from_the_format_is_a_warning(card_data):
    data = card_data("astrid-1b")
    data["tokenizer"]["markers"].append({"text": "<|system|>", "special": False})
    [d] = _only(check_card(_card(data), "x"), "tokenizer.markers")
    assert (d.severity, d.field) == ("warning", "tokenizer.markers[3]")
    assert d.message == "marker '<|system|>' does not occur in prompt format 'h2o-llmstudio'"


def test_marker_used_only_as_a_stop_string_counts_as_used(card_data):
    data = card_data("h2ogpt-oig-oasst1-falcon-40b")
    data["tokenizer"]["markers"].append({"text": "\n<human>:", "special": False})
    assert _only(check_card(_card(data), "x"), "tokenizer.markers") == []


@pytest.mark.parametrize("card_id", SEEDS)
def test_first_party_cards_have_no_marker_diagnostics(card_id):
    assert _only(check_card(registry.get(card_id), card_id), "tokenizer.markers") == []


# --- generation coherence ------------------------------------------------------------------------


def test_astrid_temperature_without_sampling_is_one_warning():
    [d] = [d for d in check_card(registry.get("astrid-1b"), "astrid") if d.field == "generation"]
    assert d.severity == "warning"
    assert d.message == "temperature=0.3 set with do_sample false: greedy decoding ignores them"
    assert d.hint == "set do_sample: true to sample, or remove them"


def test_aira_beam_options_without_beams_is_one_warning():
    [d] = [d for d in check_card(registry.get("aira-2-1b1"), "aira") if d.field == "generation"]
    assert d.severity == "warning"
    assert d.message == "length_penalty=0.3, early_stopping=True set with num_beams 1: they only affect beam search"


def test_greedy_lists_every_ignored_sampling_option(card_data):
    data = card_data("pythia-1.4b")
    data["generation"] = {"top_k": 40, "top_p": 0.9}
    [d] = [d for d in check_card(_card(data), "x") if d.field == "generation"]
    assert d.message == "top_k=40, top_p=0.9 set with do_sample false: greedy decoding ignores them"


@pytest.mark.parametrize(
    "generation",
    [
        {"do_sample": True, "temperature": 0.3, "top_k": 40, "top_p": 0.9},
        {"num_beams": 4, "length_penalty": 0.3, "early_stopping": True},
        {},
    ],
)
def test_coherent_generation_defaults_are_silent(card_data, generation):
    data = card_data("astrid-1b")
    data["generation"] = generation
    assert [d for d in check_card(_card(data), "x") if d.field == "generation"] == []


# --- against real tokenizers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card_id", "folder"),
    [
        ("pythia-1.4b", "gpt-neox"),
        ("astrid-1b", "gpt-neox"),
        ("h2ogpt-oig-oasst1-falcon-40b", "falcon"),
        ("gpt-jx-3b", "gpt2"),
    ],
)
def test_first_party_cards_match_their_tokenizers(reference, card_id, folder):
    assert check_tokenizer(registry.get(card_id), reference / "tokenizers" / folder, card_id) == []


def test_tokenizer_json_path_works_as_well_as_its_folder(reference):
    assert check_tokenizer(registry.get("pythia-1.4b"), reference / "tokenizers/gpt-neox/tokenizer.json", "p") == []


def test_marker_claimed_special_that_the_tokenizer_splits(reference, card_data):
    data = card_data("astrid-1b")
    data["tokenizer"]["special_tokens"] = [{"text": "<|prompt|>", "id": 50280}]
    data["tokenizer"]["markers"][0] = {"text": "<|prompt|>", "special": True}
    card = _card(data)
    assert _only(check_card(card, "x"), "tokenizer.markers") == []  # consistent on paper
    folder = reference / "tokenizers/gpt-neox"
    found = check_tokenizer(card, folder, "x")
    assert [(d.severity, d.field) for d in found] == [("error", "tokenizer"), ("error", "tokenizer.markers[0]")]
    assert found[0].message == (
        "special token '<|prompt|>' (tokenizer.special_tokens[0], id 50280) is not in the tokenizer's vocabulary "
        f"(tokenizer {folder / 'tokenizer.json'})"
    )
    assert found[0].hint == "check the token's text in the card, or give the tokenizer this card is for"
    assert found[1].message.startswith(
        "special marker '<|prompt|>' encodes to [29, 93, 43274, 49651], not to one special token"
    )


def test_wrong_special_token_id(reference, card_data):
    data = card_data("pythia-1.4b")
    data["tokenizer"]["pad"]["id"] = 2
    [d] = check_tokenizer(_card(data), reference / "tokenizers/gpt-neox", "x")
    assert (d.severity, d.field, d.where) == ("error", "tokenizer", "x")
    assert "special token '<|padding|>' is id 1 in the tokenizer, the card says 2" in d.message


def test_declared_special_token_that_is_plain_in_the_tokenizer(reference, card_data):
    data = card_data("pythia-1.4b")
    data["tokenizer"]["special_tokens"] = [{"text": "Hello", "id": 12092}]
    [d] = check_tokenizer(_card(data), reference / "tokenizers/gpt-neox", "x")
    assert d.message.startswith("'Hello' (id 12092) is not a special token in the tokenizer")


def test_marker_claimed_plain_that_the_tokenizer_has_special(reference, card_data):
    data = card_data("astrid-1b")
    data["tokenizer"]["markers"][2] = {"text": "<|endoftext|>", "special": False}
    [d] = check_tokenizer(_card(data), reference / "tokenizers/gpt-neox", "x")
    assert (d.severity, d.field) == ("error", "tokenizer.markers[2]")
    assert d.message.startswith(
        "marker '<|endoftext|>' is a special token (id 0) in the tokenizer, the card says plain text"
    )
    assert d.hint == "set special: true"


def _tiny_tokenizer(folder: Path, **extra: int) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "[UNK]": 2, "stop": 3, "here": 4, **extra}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|padding|>"])
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_unreachable_stop_string(tmp_path, card_data):
    pytest.importorskip("tokenizers")
    data = card_data("pythia-1.4b")
    data["prompt_format"] = {"name": "tiny", "stop": ["stop", "ÿÿ"]}
    [d] = check_tokenizer(_card(data), _tiny_tokenizer(tmp_path / "tiny"), "x")
    assert (d.severity, d.field) == ("error", "prompt_format.stop[1]")
    assert d.message.startswith("stop string 'ÿÿ' is not reachable: it encodes to [2], which decode to '[UNK]'")


def test_tokenizer_larger_than_the_embedding(reference, card_data):
    data = card_data("pythia-1.4b")
    data["architecture"]["vocab_size"] = 50_000
    [d] = check_tokenizer(_card(data), reference / "tokenizers/gpt-neox", "x")
    assert (d.severity, d.field) == ("error", "architecture.vocab_size")
    assert "50277 tokens" in d.message and "the embedding's 50000 rows" in d.message


def test_embedding_exactly_the_tokenizer_size_is_fine(reference, card_data):
    data = card_data("pythia-1.4b")
    data["architecture"]["vocab_size"] = 50_277
    assert check_tokenizer(_card(data), reference / "tokenizers/gpt-neox", "x") == []


def test_token_id_beyond_the_embedding_with_a_sparse_vocabulary(tmp_path, card_data):
    # Only 6 tokens, but "far" is id 60000: the model would index row 60000 of a 50304-row embedding.
    # The check compares the token count, not the largest id, so this passes today (bug, see report).
    pytest.importorskip("tokenizers")
    card = _card(card_data("pythia-1.4b"))
    found = check_tokenizer(card, _tiny_tokenizer(tmp_path / "sparse", far=60_000), "x")
    assert [(d.severity, d.field) for d in found] == [("error", "architecture.vocab_size")]
    assert "60000" in found[0].message and "50304" in found[0].message


def test_missing_tokenizer_folder(tmp_path):
    pytest.importorskip("tokenizers")
    [d] = check_tokenizer(registry.get("pythia-1.4b"), tmp_path / "nowhere", "x")
    assert d.severity == "error"
    assert d.message.startswith("cannot load the tokenizer")
    assert d.where == str(tmp_path / "nowhere")
    assert d.hint == "give a folder with a tokenizer.json"


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_validate_with_a_tokenizer(run_cli, reference):
    result = run_cli("validate", "astrid-1b", "--tokenizer", str(reference / "tokenizers/gpt-neox"))
    assert result.returncode == 0, result.stderr
    assert "1 card(s) checked: valid (0 error(s), 1 warning(s))" in result.stdout
    assert "temperature=0.3" in result.stdout


def test_cli_validate_reports_a_wrong_marker(run_cli, reference, card_data, tmp_path):
    data = card_data("astrid-1b")
    data["tokenizer"]["markers"][0] = {"text": "<|prompt|>", "special": True}
    path = tmp_path / "astrid-bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = run_cli("validate", str(path), "--tokenizer", str(reference / "tokenizers/gpt-neox"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert (
        f"{path}: tokenizer.markers[0]: error: marker '<|prompt|>' is declared special, "
        "but the tokenizer declares no such special token" in result.stderr
    )
    assert "special marker '<|prompt|>' encodes to [29, 93, 43274, 49651]" in result.stderr
    assert "1 card(s) checked: invalid (2 error(s), 1 warning(s))" in result.stdout
