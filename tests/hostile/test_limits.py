"""Hostile input, cause 2 (unbounded work from tiny inputs), the card-file part: YAML aliases are refused, so a
3 KB "billion laughs" card costs what reading 3 KB costs; control characters are named, not an internal error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)  # 9^10 strings once expanded


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias(run_cli: Any, tmp_path: Path) -> None:
    card = tmp_path / "laughs.yaml"
    card.write_text(LAUGHS, encoding="utf-8")
    assert len(LAUGHS) < 4000
    result = run_cli("validate", str(card))
    assert result.returncode == 1
    assert f"{card}:2: error: YAML syntax error: found the alias *a0: card files may not use YAML aliases" in (
        result.stdout + result.stderr
    )
    probe = (  # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's across exec)
        "import re, sys\n"
        "from modeldeck.registry.cardfile import load_card_file\n"
        "from modeldeck.registry.diagnostics import CardError\n"
        "try:\n    load_card_file(sys.argv[1])\nexcept CardError:\n    pass\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(card)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 300 * 1024  # KiB: the interpreter and pydantic, never the expansion


def test_anchors_without_aliases_still_read(tmp_path: Path, card_data: Any) -> None:
    import yaml

    from modeldeck.registry.cardfile import load_card_file

    text = yaml.safe_dump(card_data("tiny-neox")).replace("id: tiny-neox", "id: &name tiny-neox", 1)
    assert "&name" in text
    path = tmp_path / "card.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_card_file(path).id == "tiny-neox"
