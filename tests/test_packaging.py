"""Packaging: the layout installs as modeldeck.*, the registry needs no torch, and a third-party plugin
installs into a fresh virtual environment (offline) and uninstalls cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from .conftest import run_python_without

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PYTHIA = {
    f"pythia-{size}{v}"
    for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for v in ("", "-deduped")
}
SEEDS = {"astrid-1b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"} | PYTHIA
SKIP_DIRS = {".venv", ".git", "build", "dist", "tests", "examples", ".wheelhouse", "__pycache__"}


def test_every_package_folder_is_listed_in_pyproject():
    folders = {
        p.parent.relative_to(REPO)
        for p in REPO.rglob("__init__.py")
        if not SKIP_DIRS & set(p.relative_to(REPO).parts) and not p.relative_to(REPO).parts[0].startswith(".")
    }
    expected = {"modeldeck." + ".".join(f.parts) for f in folders}
    assert expected == set(PYPROJECT["tool"]["setuptools"]["packages"])


def test_every_first_party_plugin_module_is_an_entry_point():
    # _private modules are parts that plugin modules share, not plugins
    modules = {f"modeldeck.plugins.{p.stem}" for p in (REPO / "plugins").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(PYPROJECT["project"]["entry-points"]["modeldeck"].values())


def test_registry_works_with_torch_unavailable():
    script = """
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not work")

        from modeldeck import registry
        from modeldeck.registry import cli, count_parameters, render_prompt
        try:
            import modeldeck.runtime
        except ImportError as exc:
            assert "install the runtime extra: pip install 'modeldeck[runtime]'" in str(exc), exc
        else:
            raise SystemExit("modeldeck.runtime imported without torch")

        cards = registry.cards()
        assert len(cards) == 21 and registry.default().errors() == [], registry.default().diagnostics
        assert render_prompt(registry.get("astrid-1b").format, "Hi") == "<|prompt|>Hi<|endoftext|><|answer|>"
        assert count_parameters(registry.get("pythia-1.4b").architecture).total == 1414647808
        sys.argv = ["modeldeck", "validate", "--format", "json"]
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("ok")
        """
    result = run_python_without(("torch", "transformers", "safetensors"), script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("ok")


# --- a third-party plugin, installed for real ------------------------------------------------------


def _wheelhouse() -> Path:
    """Wheels of modeldeck's core dependencies, so a fresh venv installs with no network (scripts/install)."""
    path = Path(os.environ.get("MODELDECK_WHEELHOUSE", REPO / ".wheelhouse"))
    if not any(path.glob("pydantic-*.whl")):
        pytest.skip(f"no dependency wheels in {path}: run `bash scripts/install` (it downloads them) first")
    return path


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODELDECK_PLUGINS", "VIRTUAL_ENV")}
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


def install_in_a_fresh_venv(tmp_path: Path, plugin: Path, distribution: str) -> Path:
    """Wheels of modeldeck (from a copy of this clone) and of the plugin project at `plugin` (a path inside the
    clone is taken from the copy), installed with no network into a new venv; returns the venv."""
    wheelhouse = _wheelhouse()
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", ".wheelhouse", "tests", "*.egg-info", "*cache*"
        ),
    )
    if plugin.is_relative_to(REPO):
        plugin = source / plugin.relative_to(REPO)
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip")
    for project in (source, plugin):
        _run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, project)
    venv = tmp_path / "fresh"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(
        *pip,
        "--python",
        venv / "bin" / "python",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        dist,
        "--find-links",
        wheelhouse,
        distribution,
    )
    return venv


@pytest.mark.slow
def test_example_plugin_installs_into_a_fresh_venv_and_uninstalls(tmp_path):
    example = REPO / "examples" / "modeldeck-plugin-example"
    venv = install_in_a_fresh_venv(tmp_path, example, "modeldeck-plugin-example")
    python, modeldeck = venv / "bin" / "python", venv / "bin" / "modeldeck"
    target = (sys.executable, "-m", "pip", "--python", python)

    listed = {c["id"]: c for c in json.loads(_run(modeldeck, "list", "--json").stdout)}
    assert set(listed) == SEEDS | {"smollm-135m"}
    assert listed["smollm-135m"]["distribution"] == "modeldeck-plugin-example"
    assert listed["smollm-135m"]["parameters"] == 134_515_008
    api = _run(python, "-c", "from modeldeck import registry; print(registry.get('SmolLM').name)")
    assert api.stdout.strip() == "SmolLM-135M"
    assert "smollm-135m" in _run(modeldeck, "list").stdout
    _run(modeldeck, "validate")

    _run(*target, "uninstall", "-y", "-q", "modeldeck-plugin-example")
    listed = json.loads(_run(modeldeck, "list", "--json").stdout)
    assert {c["id"] for c in listed} == SEEDS
    gone = subprocess.run(
        [python, "-c", "from modeldeck import registry; registry.get('smollm-135m')"], capture_output=True, text=True
    )
    assert gone.returncode == 1 and "No card named 'smollm-135m'" in gone.stderr
