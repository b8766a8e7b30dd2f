"""Shared fixtures: installed-looking plugin distributions on disk, and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO / "cards"
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture
def reference() -> Path:
    """../shared/reference (real tokenizers and configs); tests that need it skip without it."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (it lives beside the clone in shared/)")
    return REFERENCE


@pytest.fixture
def card_data() -> Callable[[str], dict]:
    """Loads a first-party card as a plain dict, to mutate in tests."""

    def load(card_id: str) -> dict:
        return yaml.safe_load((CARDS / f"{card_id}.yaml").read_text(encoding="utf-8"))

    return load


class FakeSite:
    """A folder on sys.path holding distributions with `modeldeck` entry points, as pip would install them."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0") -> None:
        for name, source in modules.items():
            (self.root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[modeldeck]\n{lines}\n", encoding="utf-8")

    def card_plugin(self, dist: str, module: str, card: dict) -> None:
        """A distribution whose plugin registers one card given as a dict."""
        self.add(
            dist,
            {
                module: f"""
                from modeldeck.registry import hookimpl
                CARD = {card!r}

                @hookimpl
                def register_cards(register):
                    register(CARD)
                """
            },
            {module.replace("_", "-"): module},
        )


@pytest.fixture
def h2ogpt_chat() -> tuple[list[dict[str, str]], str]:
    """h2oGPT's own multi-turn example (h2oGPT tests/test_prompter.py) and the prompt it renders to."""
    messages = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "I'm good"},
        {"role": "user", "content": "Go to the market?"},
    ]
    return (
        messages,
        "<human>: Hello!\n<bot>: Hi!\n<human>: How are you?\n<bot>: I'm good\n<human>: Go to the market?\n<bot>:",
    )


@pytest.fixture
def fake_site(tmp_path: Path) -> FakeSite:
    return FakeSite(tmp_path / "site")


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(fake_site: FakeSite) -> CliRunner:
    """Run `modeldeck ARGS` in a subprocess that also sees the fake site's distributions."""

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(fake_site.root), **(env or {})}
        full_env.pop("MODELDECK_DEBUG", None)
        return subprocess.run(
            [sys.executable, "-m", "modeldeck.registry.cli", *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=stdin,
            timeout=60,
        )

    return run
