"""Lookup, conflicts and broken plugins, through real entry points on sys.path."""

from __future__ import annotations

import sys

import pytest

from modeldeck import registry
from modeldeck.registry import CardConflictError, CardNotFoundError, Registry

PYTHIA = {
    f"pythia-{size}{v}"
    for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for v in ("", "-deduped")
}
SEEDS = {"astrid-1b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"} | PYTHIA


@pytest.fixture
def site(fake_site, monkeypatch):
    """The fake site on sys.path, so importlib.metadata sees its distributions."""
    monkeypatch.syspath_prepend(str(fake_site.root))
    monkeypatch.delenv("MODELDECK_PLUGINS", raising=False)
    yield fake_site
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[name]


def test_first_party_cards_come_through_entry_points():
    reg = Registry.from_entry_points()
    assert {c.id for c in reg.cards()} == SEEDS
    assert reg.errors() == []
    by_plugin = {p.name: p for p in reg.plugins()}
    assert by_plugin["astrid-1b"].distribution == "modeldeck" and by_plugin["astrid-1b"].cards == ("astrid-1b",)
    assert by_plugin["prompt-formats"].prompt_formats == ("plain",)


@pytest.mark.parametrize(
    ("name", "card_id"),
    [
        ("aira-2", "aira-2-1b1"),
        ("AIRA-2-1B1", "aira-2-1b1"),
        ("EleutherAI/pythia-1.4b", "pythia-1.4b"),
        ("  Astrid-1B ", "astrid-1b"),
        ("btlm-3b-8k", "gpt-jx-3b"),
    ],
)
def test_lookup_by_id_alias_or_repo_is_case_insensitive(name, card_id):
    assert registry.get(name).id == card_id


def test_unknown_name_suggests():
    with pytest.raises(CardNotFoundError) as exc:
        registry.get("pythia-1.4")
    assert "pythia-1.4b" in exc.value.suggestions
    assert "Did you mean: pythia-1.4b" in str(exc.value) and "modeldeck list" in str(exc.value)
    with pytest.raises(CardNotFoundError, match="Did you mean: astrid-1b"):
        registry.get("astrid-1")
    with pytest.raises(CardNotFoundError) as exc:
        registry.get("zzzz")
    assert exc.value.suggestions == []


def test_a_third_party_card_with_a_first_party_id_is_left_out(site, card_data):
    site.card_plugin("modeldeck-copycat", "fake_copycat", card_data("astrid-1b"))
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.message == (
        "card 'astrid-1b' from plugin fake-copycat (modeldeck-copycat 1.0) claims the name 'astrid-1b' of "
        "modeldeck's own card 'astrid-1b'; the plugin's card is left out"
    )
    assert d.plugin == "fake-copycat (modeldeck-copycat 1.0)" and "uninstall modeldeck-copycat" in d.hint
    assert reg.entry("astrid-1b").plugin.first_party  # modeldeck's own card keeps its id
    assert {c.id for c in reg.cards()} == SEEDS


def test_duplicate_id_between_third_parties_names_both_plugins_and_distributions(site, card_data):
    data = {**card_data("astrid-1b"), "id": "copied", "aliases": []}
    site.card_plugin("modeldeck-copycat", "fake_copycat", data)
    site.card_plugin("modeldeck-copycat2", "fake_copycat2", data)
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.message.startswith("id 'copied' is claimed by card 'copied' from plugin fake-copycat (modeldeck-copycat")
    assert "uninstall one of the distributions (modeldeck-copycat or modeldeck-copycat2)" in d.hint
    with pytest.raises(CardConflictError, match="claimed by more than one card"):
        reg.get("copied")
    assert {c.id for c in reg.cards()} == SEEDS  # the others stay usable


def test_alias_colliding_with_another_cards_id(site, card_data):
    data = card_data("pythia-1.4b")
    data.update(id="pythia-copy", aliases=["Aira-2-1B1"], source={**data["source"], "repo": "someone/pythia-copy"})
    site.card_plugin("modeldeck-sloppy", "fake_sloppy", data)
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.field == "aliases" and d.plugin == "fake-sloppy (modeldeck-sloppy 1.0)"
    assert d.message == (
        "alias 'aira-2-1b1' of card 'pythia-copy' (plugin fake-sloppy (modeldeck-sloppy 1.0)) collides with the id "
        "of card 'aira-2-1b1' (plugin aira-2-1b1 (modeldeck 0.1.0)); the id keeps the name"
    )
    assert reg.get("aira-2-1b1").source.repo == "nicholasKluge/Aira-2-1B1"
    assert reg.get("pythia-copy").id == "pythia-copy"


def test_plugin_that_raises_on_import(site):
    site.add(
        "modeldeck-broken", {"fake_broken": "raise RuntimeError('missing dependency foo')\n"}, {"broken": "fake_broken"}
    )
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.where == "plugin broken (modeldeck-broken 1.0)"
    assert d.message == "plugin failed to import fake_broken: RuntimeError: missing dependency foo"
    assert "pip uninstall modeldeck-broken" in d.hint and "MODELDECK_PLUGINS" in d.hint
    assert {c.id for c in reg.cards()} == SEEDS
    [broken] = [p for p in reg.plugins() if p.name == "broken"]
    assert broken.error and broken.cards == ()


def test_plugin_whose_hook_raises_keeps_nothing(site, card_data):
    site.add(
        "modeldeck-halfway",
        {
            "fake_halfway": f"""
            from modeldeck.registry import hookimpl

            @hookimpl
            def register_cards(register):
                register({dict(card_data("pythia-1.4b"), id="halfway-card", aliases=[])!r})
                raise KeyError("oops")
            """
        },
        {"halfway": "fake_halfway"},
    )
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.message == "plugin raised in its register_cards hook: KeyError: 'oops'"
    assert "halfway-card" not in {c.id for c in reg.cards()}
    assert {c.id for c in reg.cards()} == SEEDS


def test_invalid_card_from_a_plugin_is_reported_with_the_plugin(site, card_data):
    data = dict(card_data("astrid-1b"), id="bad-card", aliases=[])
    data["architecture"] = {**data["architecture"], "heads": 7}
    site.card_plugin("modeldeck-bad", "fake_bad", data)
    reg = Registry.from_entry_points()
    [d] = reg.errors()
    assert d.plugin == "fake-bad (modeldeck-bad 1.0)" and d.field == "architecture"
    assert "hidden_size 2048 is not divisible by heads 7" in d.message
    assert {c.id for c in reg.cards()} == SEEDS


def test_unknown_layout_or_format_name(site, card_data):
    data = dict(card_data("pythia-1.4b"), id="odd", aliases=[], prompt_format="chatml")
    data["source"] = {**data["source"], "repo": "x/odd"}
    data["architecture"] = {**data["architecture"], "checkpoint_layout": "mamba"}
    site.card_plugin("modeldeck-odd", "fake_odd", data)
    reg = Registry.from_entry_points()
    fields = {d.field: d for d in reg.errors()}
    assert set(fields) == {"architecture.checkpoint_layout", "prompt_format"}
    assert (
        "registered layouts: bloom, btlm, falcon, falcon-7b, gpt-neox, gpt2, gptj, llama, opt, phi, starcoder2"
        in fields["architecture.checkpoint_layout"].hint
    )
    assert "registered formats: plain" in fields["prompt_format"].hint


def test_environment_selects_plugins(site, monkeypatch, card_data):
    site.add("modeldeck-broken", {"fake_broken": "raise ImportError('nope')\n"}, {"broken": "fake_broken"})
    monkeypatch.setenv("MODELDECK_PLUGINS", "none")
    assert Registry.from_entry_points().plugins() == []
    monkeypatch.setenv("MODELDECK_PLUGINS", "prompt-formats,checkpoint-layouts,pythia")
    reg = Registry.from_entry_points()
    assert {c.id for c in reg.cards()} == PYTHIA and reg.diagnostics == []
    monkeypatch.setenv("MODELDECK_PLUGINS", "modeldeck")  # a distribution name selects all its plugins
    assert {c.id for c in Registry.from_entry_points().cards()} == SEEDS
    monkeypatch.setenv("MODELDECK_PLUGINS", "modeldeck,no-such-plugin")
    [d] = Registry.from_entry_points().diagnostics
    assert d.severity == "warning" and "'no-such-plugin'" in d.message and "broken" in d.hint


def test_in_process_plugins_without_entry_points(card_data):
    from modeldeck.plugins import checkpoint_layouts, prompt_formats

    class Plugin:
        @registry.hookimpl
        def register_cards(self, register):
            register(dict(card_data("gpt-jx-3b"), id="embedded", aliases=[]))

    reg = Registry.from_plugins([("formats", prompt_formats), ("layouts", checkpoint_layouts), ("mine", Plugin())])
    assert [c.id for c in reg.cards()] == ["embedded"]
    assert reg.get("embedded").format.name == "plain"
