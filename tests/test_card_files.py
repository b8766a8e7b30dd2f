"""A card file anywhere: `runtime.load(PATH)` and `modeldeck generate PATH.yaml` read a card file by the CLI's rule
(`Registry.card_or_file`), a local card may leave source.repo out when its weights are given, and a card whose
special token ids disagree with the checkpoint's tokenizer.json is refused by `validate --weights` and, before
any weight is read, by `runtime.load`. The bundled demo model (cards/tiny-neox) is the checkpoint throughout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import yaml

from modeldeck import registry
from modeldeck.registry import CardError, CardNotFoundError, Registry
from modeldeck.registry.schema import Card

from .conftest import CARDS, refuse_network

WEIGHTS = CARDS / "tiny-neox"
PROMPT = "The for statement"
NO_REPO = (
    "card tiny-neox has no source.repo, so its weights cannot come from the Hugging Face hub or its cache; "
    "pass {weights} (a folder with config.json, *.safetensors and the tokenizer files), or set source.repo in the card"
)


def _write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def demo_data(card_data) -> dict:
    """cards/tiny-neox.yaml as a dict (bundled weights, source.repo set)."""
    return card_data("tiny-neox")


@pytest.fixture
def local_card(tmp_path: Path, demo_data: dict) -> Path:
    """The demo card as a local card file: no source.repo and no bundled weights (they are given with weights=)."""
    source = {k: v for k, v in demo_data["source"].items() if k not in ("repo", "bundled")}
    return _write(tmp_path, "local.yaml", {**demo_data, "source": source})


@pytest.fixture
def wrong_eos(tmp_path: Path, demo_data: dict) -> Path:
    """The demo card with eos id 7 (the tokenizer's "'"); '<|endoftext|>' is id 0 in its tokenizer.json."""
    tokenizer = {k: v for k, v in demo_data["tokenizer"].items() if k != "bos"}
    tokenizer["eos"] = {"text": "<|endoftext|>", "id": 7}
    return _write(tmp_path, "wrong-eos.yaml", {**demo_data, "tokenizer": tokenizer})


# --- the rule: what is a card file -------------------------------------------------------------------


def test_card_or_file_tells_files_from_names(tmp_path: Path, demo_data: dict, monkeypatch: pytest.MonkeyPatch):
    reg = registry.default()
    installed, where = reg.card_or_file("tiny-neox")
    assert where.endswith("tiny-neox.yaml") and installed is reg.get("tiny-neox")

    copy = _write(tmp_path, "copy.yaml", demo_data)
    for name in (str(copy), copy):  # a str ending in .yaml, and any path object
        card, where = reg.card_or_file(name)
        assert (card, where) == (installed, str(copy))  # resolved: the named prompt format filled in

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-neox").write_text(copy.read_text(), encoding="utf-8")  # an existing file wins over the id
    assert reg.card_or_file("tiny-neox")[1] == "tiny-neox"

    with pytest.raises(CardError, match="cannot read the card"):
        reg.card_or_file("missing.yml")  # a .yml name is a file even when it does not exist
    with pytest.raises(CardError, match="cannot read the card"):
        reg.card_or_file(Path("missing"))
    with pytest.raises(CardNotFoundError):
        reg.card_or_file("missing")


# --- runtime.load and `modeldeck generate` of a card file ----------------------------------------------


def test_runtime_load_of_a_card_file_path(tmp_path: Path, demo_data: dict, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torch")
    from modeldeck import runtime

    refuse_network(monkeypatch)
    path = _write(tmp_path, "tiny.yaml", demo_data)
    expected = runtime.load("tiny-neox", device="cpu").generate(PROMPT, max_new_tokens=12).text
    for card in (str(path), path):
        model = runtime.load(card, device="cpu")  # bundled weights, named by the file's source section
        assert model.card == registry.get("tiny-neox")
        assert model.generate(PROMPT, max_new_tokens=12).text == expected


def test_generate_a_card_file_as_the_installed_id(run_cli, local_card: Path):
    args = (PROMPT, "--max-new-tokens", "12")
    installed = run_cli("generate", "tiny-neox", *args)
    assert installed.returncode == 0, installed.stderr
    from_file = run_cli("generate", str(local_card), *args, "--weights", str(WEIGHTS))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == installed.stdout and from_file.stdout.strip()


# --- a card without source.repo ------------------------------------------------------------------


def test_source_repo_is_optional(demo_data: dict):
    source = {k: v for k, v in demo_data["source"].items() if k != "repo"}
    assert Card.model_validate({**demo_data, "source": source}).source.repo is None
    with pytest.raises(ValueError, match="String should match pattern"):
        Card.model_validate({**demo_data, "source": {**source, "repo": "no-owner"}})


def test_registry_indexes_a_card_without_repo(demo_data: dict):
    from modeldeck.plugins import checkpoint_layouts, prompt_formats

    source = {k: v for k, v in demo_data["source"].items() if k != "repo"}

    class Plugin:
        @registry.hookimpl
        def register_cards(self, register):
            register({**demo_data, "id": "local-demo", "source": source})

    reg = Registry.from_plugins([("formats", prompt_formats), ("layouts", checkpoint_layouts), ("mine", Plugin())])
    assert reg.errors() == []
    assert reg.get("local-demo").source.repo is None


def test_runtime_load_without_repo_needs_weights(local_card: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torch")
    from modeldeck import runtime
    from modeldeck.registry.weights import NoRepositoryError

    refuse_network(monkeypatch)
    model = runtime.load(local_card, weights=WEIGHTS, device="cpu")
    assert model.card.source.repo is None and model.generate(PROMPT, max_new_tokens=3).text
    with pytest.raises(NoRepositoryError) as info:
        runtime.load(local_card, device="cpu")
    assert str(info.value) == NO_REPO.format(weights="weights=DIR")


def test_commands_without_repo_need_weights(run_cli, local_card: Path):
    for command in (["generate", str(local_card), PROMPT], ["download", str(local_card)], ["verify", str(local_card)]):
        result = run_cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr == f"error: {NO_REPO.format(weights='--weights DIR')}\n", command
        assert "Traceback" not in result.stderr


# --- special token ids against the checkpoint's tokenizer ------------------------------------------


def test_validate_weights_checks_the_tokenizer(run_cli, wrong_eos: Path):
    good = run_cli("validate", "tiny-neox", "--weights", str(WEIGHTS))
    assert good.returncode == 0, good.stdout + good.stderr

    bad = run_cli("validate", str(wrong_eos), "--weights", str(WEIGHTS))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert (
        f"{wrong_eos}: tokenizer: error: special token '<|endoftext|>' is id 0 in the tokenizer, the card says 7 "
        f"(tokenizer {WEIGHTS / 'tokenizer.json'})\n    -> set the id of tokenizer.eos to 0, or give the tokenizer "
        "this card is for"
    ) in bad.stderr
    assert "1 card(s) checked: invalid (1 error(s)" in bad.stdout


def test_runtime_load_refuses_a_wrong_eos_before_reading_weights(wrong_eos: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torch")
    from modeldeck import runtime
    from modeldeck.runtime import engine

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were read before the tokenizer was checked")

    monkeypatch.setattr(engine, "load_decoder", must_not_run)
    with pytest.raises(CardError) as info:
        runtime.load(wrong_eos, device="cpu")  # the bundled weights: the file keeps source.bundled
    bundled = Path(str(importlib.resources.files("modeldeck.cards") / "tiny-neox"))  # where it is installed
    assert str(info.value) == (
        f"{wrong_eos}: tokenizer: error: special token '<|endoftext|>' is id 0 in the tokenizer, the card says 7 "
        f"(tokenizer {bundled / 'tokenizer.json'})\n"
        "    -> set the id of tokenizer.eos to 0, or give the tokenizer this card is for"
    )
    [diagnostic] = info.value.diagnostics
    assert (diagnostic.severity, diagnostic.where) == ("error", str(wrong_eos))

    card = registry.default().card_or_file(wrong_eos)[0]  # a Card object is checked as well, named by its id
    with pytest.raises(
        CardError, match=r"^card 'tiny-neox': tokenizer: error: special token '<\|endoftext\|>' is id 0"
    ):
        runtime.load(card, weights=WEIGHTS, device="cpu")
