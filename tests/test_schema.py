"""The card schema: every bad input names the file, line, field and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modeldeck.registry import CardError, card_from_data, load_card_file
from modeldeck.registry.schema import Card

REPO = Path(__file__).resolve().parent.parent


def write_card(tmp_path: Path, data: dict | str, name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def only_error(exc: pytest.ExceptionInfo[CardError]):
    assert len(exc.value.diagnostics) == 1, exc.value.diagnostics
    return exc.value.diagnostics[0]


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_every_first_party_card_validates():
    # *.suite.yaml is not a card but a table and a template (the Pythia plugin's 16 cards: tests/test_pythia_suite.py)
    files = [p for p in sorted((REPO / "cards").glob("*.yaml")) if not p.name.endswith(".suite.yaml")]
    ids = {load_card_file(p).id for p in files}
    assert ids == {"astrid-1b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"}
    assert [p.name for p in sorted((REPO / "cards").glob("*.suite.yaml"))] == ["pythia.suite.yaml"]


def test_pythia_lists_its_154_revisions(card_data):
    source = Card.model_validate(card_data("pythia-1.4b")).source
    expected = ["step0", *(f"step{2**i}" for i in range(10)), *(f"step{k * 1000}" for k in range(1, 144))]
    assert source.revisions == expected and len(expected) == 154
    assert source.revision_aliases == {"main": "step143000"}


def test_unknown_field_names_file_line_field_and_suggests(tmp_path, card_data):
    data = card_data("astrid-1b")
    data["architecture"]["hiden_size"] = 2048
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert (d.where, d.line, d.field) == (str(path), line_of(path, "hiden_size"), "architecture.hiden_size")
    assert d.message == "unknown field 'hiden_size'"
    assert "did you mean 'hidden_size'?" in d.hint and "ffn_size" in d.hint
    assert d.render().startswith(f"{path}:{d.line}: architecture.hiden_size: error: unknown field")


def test_wrong_type_shows_the_value(tmp_path, card_data):
    data = card_data("pythia-1.4b")
    data["architecture"]["layers"] = "twenty-four"
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert d.field == "architecture.layers" and d.line == line_of(path, "layers: twenty-four")
    assert "valid integer" in d.message and d.hint == "got 'twenty-four'"


def test_hidden_not_divisible_by_heads(tmp_path, card_data):
    data = card_data("astrid-1b")
    data["architecture"]["hidden_size"] = 2050
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert d.field == "architecture"
    assert d.message.startswith("hidden_size 2050 is not divisible by heads 8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kv_heads": 3}, "heads 8 is not divisible by kv_heads 3"),
        ({"positions": {"kind": "rotary", "fraction": 1.5}}, "rotary fraction must be in (0, 1], got 1.5"),
        ({"positions": {"kind": "rotary", "fraction": 0.3}}, "gives 76.8 dimensions"),
        (
            {"residual": {"kind": "sequential", "shared_norm": True}},
            "shared_norm is only possible with a parallel residual",
        ),
        (
            {"positions": {"kind": "sinusoidal"}},
            "does not match any of the expected tags: 'rotary', 'alibi', 'learned'",
        ),
    ],
)
def test_cross_field_rules(card_data, change, message):
    data = card_data("astrid-1b")
    data["architecture"].update(change)
    with pytest.raises(CardError) as exc:
        card_from_data(data, "plugin-dict")
    d = only_error(exc)
    assert message in d.message
    assert d.where == "plugin-dict" and d.line is None
    assert d.field.startswith("architecture")
    assert "rotary." not in d.field  # union tags are not fields


def test_missing_required_field(tmp_path, card_data):
    data = card_data("gpt-jx-3b")
    del data["tokenizer"]["eos"]
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert (d.field, d.message, d.hint) == ("tokenizer.eos", "required field is missing", "add `eos`")
    assert d.line == line_of(path, "tokenizer:")


def test_generation_and_token_rules(card_data):
    data = card_data("pythia-1.4b")
    data["generation"] = {"max_new_tokens": 4096}
    with pytest.raises(CardError, match=r"max_new_tokens 4096 exceeds architecture\.context_length 2048"):
        card_from_data(data, "x")
    data = card_data("pythia-1.4b")
    data["tokenizer"]["pad"]["id"] = 60000
    with pytest.raises(
        CardError, match=r"tokenizer.pad id 60000 is outside the embedding \(architecture.vocab_size 50304\)"
    ):
        card_from_data(data, "x")
    data = card_data("astrid-1b")
    data["aliases"] = ["Astrid-1B"]
    with pytest.raises(CardError, match="alias 'Astrid-1B' repeats a name"):
        card_from_data(data, "x")


def test_inline_prompt_format_errors_are_not_doubled_by_the_union(card_data):
    data = card_data("astrid-1b")
    data["prompt_format"]["user"]["prefx"] = "x"
    with pytest.raises(CardError) as exc:
        card_from_data(data, "x")
    d = only_error(exc)
    assert d.field == "prompt_format.user.prefx" and "prefix" in d.hint


def test_yaml_syntax_error_has_file_and_line(tmp_path):
    path = write_card(tmp_path, "id: broken\nname: Broken\narchitecture:\n  layers: [1, 2\n  heads: 4\n")
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert d.where == str(path) and d.line == 5
    assert d.message.startswith("YAML syntax error:")
    assert d.hint.startswith("fix the YAML at line 5")


def test_duplicate_yaml_key_is_an_error_not_a_silent_overwrite(tmp_path):
    path = write_card(tmp_path, "id: a\nname: A\nid: b\n")
    with pytest.raises(CardError) as exc:
        load_card_file(path)
    d = only_error(exc)
    assert d.line == 3 and "found the key 'id' a second time (first at line 1)" in d.message


def test_not_a_mapping(tmp_path):
    with pytest.raises(CardError, match="a card must be a mapping of fields, got list"):
        load_card_file(write_card(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(CardError, match="cannot read the card"):
        load_card_file(tmp_path / "missing.yaml")


def test_cards_are_frozen(card_data):
    card = card_from_data(card_data("astrid-1b"), "x")
    with pytest.raises(ValueError, match="frozen"):
        card.id = "other"  # type: ignore[misc]


def test_checked_in_json_schema_is_current():
    checked_in = json.loads((REPO / "registry" / "card.schema.json").read_text(encoding="utf-8"))
    assert checked_in == Card.model_json_schema(), (
        "registry/card.schema.json is stale: regenerate it with `modeldeck schema > registry/card.schema.json`"
    )
