"""Hostile input, cause 1: text from users, cards, plugins and checkpoints is shown, never interpreted. No rich
markup is parsed out of it and its control characters (ESC, C1, bidirectional overrides) are escaped wherever the
command line prints it (registry/cli/common.py: the one output policy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

MARKUP = "[/red][bold]x[/bold]"
PATH_MARKUP = "[red]x[v2]"  # markup a file name can hold (no slash)
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\u202e"  # set the window title, clear the screen, reverse the text


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def shown_safely(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text and "\x9b" not in text


def test_markup_in_a_card_name_is_shown_as_typed(run_cli: Any) -> None:
    for command in (["show", MARKUP], ["serve", "[/x]"], ["prompt", MARKUP, "hi"]):
        result = run_cli(*command)
        assert result.returncode == 1, result.stderr
        assert f"No card named '{command[1]}'" in result.stderr
        no_traceback(result)


def test_a_plugin_card_with_markup_and_escapes_cannot_break_or_drive_the_terminal(
    run_cli: Any, fake_site: Any, card_data: Any
) -> None:
    card = card_data("astrid-1b")
    card["id"], card["aliases"] = "hostile-card", [f"alias-{ESCAPES}"]
    card["name"] = f"Hostile {MARKUP} {ESCAPES}"
    card["architecture"]["family"] = f"NeoX {MARKUP}{ESCAPES}"
    fake_site.card_plugin("modeldeck-hostile", "hostile_plugin", card)
    listed = run_cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "tiny-neox" in listed.stdout and "hostile-card" in listed.stdout  # every card still listed
    assert f"NeoX {MARKUP}" in listed.stdout and "\\x1b]0;pwned" in listed.stdout
    shown_safely(listed.stdout + listed.stderr)
    shown = run_cli("show", "hostile-card")
    assert shown.returncode == 0, shown.stderr
    assert MARKUP in shown.stdout and "\\u202e" in shown.stdout
    shown_safely(shown.stdout + shown.stderr)
    as_json = json.loads(run_cli("list", "--json").stdout)  # JSON carries the text itself, escaped by JSON
    assert any(c.get("family") == f"NeoX {MARKUP}{ESCAPES}" for c in as_json)
    no_traceback(listed)


def test_checkpoint_paths_and_tensor_names_are_shown_as_they_are(run_cli: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / f"ckpt {PATH_MARKUP}"
    folder.mkdir()
    save_file({f"{MARKUP}{ESCAPES}.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    result = run_cli("inspect", str(folder))
    assert result.returncode == 0, result.stderr
    assert f"{MARKUP}\\x1b]0;pwned" in result.stdout
    shown_safely(result.stdout + result.stderr)
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)  # a broken header: the error names the file
    broken = run_cli("inspect", str(folder))
    assert broken.returncode == 1 and f"checkpoint {folder} cannot be read" in broken.stderr
    no_traceback(broken)


def test_a_card_file_with_control_characters_or_markup_is_named_not_run(run_cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / f"card-{PATH_MARKUP}.yaml"
    bad.write_text(f"id: x{ESCAPES}\n", encoding="utf-8")
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:1: error: the file holds the control character U+001B at line 1" in result.stdout + result.stderr
    shown_safely(result.stdout + result.stderr)
    no_traceback(result)


def test_escape_controls_keeps_newlines_and_tabs() -> None:
    from modeldeck.registry.cli.common import escape_controls

    assert escape_controls("a\tb\nc\x1b[31m\x00\x7f\x85\u2066") == "a\tb\nc\\x1b[31m\\x00\\x7f\\x85\\u2066"


def strict_json(text: str) -> Any:
    """JSON as the standard has it: Python's NaN/Infinity/-Infinity refused (JavaScript and jq refuse them)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json(run_cli: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"w.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "x", "eps": NaN, "limit": Infinity, "floor": -Infinity}')
    result = run_cli("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    config = strict_json(result.stdout)["config"]
    assert config == {"model_type": "x", "eps": None, "limit": None, "floor": None}  # null: JSON has no such number
    for args in (("list", "--json"), ("show", "tiny-neox", "--json"), ("memory", "tiny-neox", "--json")):
        shown = run_cli(*args)
        assert shown.returncode == 0, shown.stderr
        strict_json(shown.stdout)


def test_json_text_maps_non_finite_numbers_to_null() -> None:
    from modeldeck.registry.cli.common import json_text

    data = {"a": [1.5, float("nan"), (float("inf"), -float("inf"))], "b": {"c": "π"}, "d": 3}
    assert strict_json(json_text(data)) == {"a": [1.5, None, [None, None]], "b": {"c": "π"}, "d": 3}
    assert "π" in json_text(data)  # non-ASCII text as it is, not \u escapes
