"""The Pythia suite: one plugin, 16 cards generated from one table and one template (cards/pythia.suite.yaml).

The expected numbers here are typed from the seed's tables (shared/seeds/pythia-1.4b.md), independently of the
suite file; where the seed is present it is parsed too, and every card is compared with it row by row.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from modeldeck import registry
from modeldeck.plugins import pythia
from modeldeck.registry import check_card, check_tokenizer, count_parameters

REPO = Path(__file__).resolve().parent.parent
SEED = REPO.parent / "shared" / "seeds" / "pythia-1.4b.md"

# The seed's "Naming convention and parameter count" table: size -> (old suffix, total, non-embedding), and the
# embedding rows that total - non-embedding implies (= 2 x vocab x d_model: untied input and output embeddings).
TABLE = {
    "70m": ("19m", 70_426_624, 18_915_328, 50304),
    "160m": ("125m", 162_322_944, 85_056_000, 50304),
    "410m": ("350m", 405_334_016, 302_311_424, 50304),
    "1b": ("800m", 1_011_781_632, 805_736_448, 50304),
    "1.4b": ("1.3b", 1_414_647_808, 1_208_602_624, 50304),
    "2.8b": ("2.7b", 2_775_208_960, 2_517_652_480, 50304),
    "6.9b": ("6.7b", 6_857_302_016, 6_444_163_072, 50432),
    "12b": ("13b", 11_846_072_320, 11_327_027_200, 50688),
}
VARIANTS = ("", "-deduped")
IDS = [f"pythia-{size}{variant}" for size in TABLE for variant in VARIANTS]
REVISIONS = ["step0", *(f"step{2**i}" for i in range(10)), *(f"step{k * 1000}" for k in range(1, 144))]
OTHERS = {"astrid-1b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"}

# The pythia-1.4b card's description before the suite existed, kept word for word.
DESCRIPTION_1_4B = (
    "Pythia-1.4B is a Transformer-based causal language model from EleutherAI's Pythia Scaling Suite, a set of "
    "8 model sizes, each trained on the Pile and on the deduplicated Pile, built to facilitate interpretability "
    "research. All Pythia models were trained on the exact same data in the exact same order: 299,892,736,000 "
    "tokens of the (not deduplicated) Pile, 143,000 steps at a batch size of 2M (2,097,152) tokens, learning rate "
    "2.0e-4, with the GPT-NeoX library, using the GPT-NeoX-20B tokenizer. It is a base model (English only), "
    "not fine-tuned for chat or instructions and not intended for deployment; 154 training checkpoints are "
    "published as branches (step143000 is main). Formerly named Pythia-1.3B; architecturally equivalent to "
    "GPT-Neo 1.3B and OPT-1.3B."
)


def size_of(card_id: str) -> str:
    return card_id.removeprefix("pythia-").removesuffix("-deduped")


# --- one plugin, 16 cards --------------------------------------------------------------------------


def test_one_plugin_registers_all_16_cards():
    reg = registry.default()
    assert reg.errors() == [] and reg.diagnostics == []
    [plugin] = [p for p in reg.plugins() if p.name == "pythia"]
    assert plugin.module == "modeldeck.plugins.pythia" and plugin.distribution == "modeldeck"
    assert sorted(plugin.cards) == sorted(IDS) and len(IDS) == 16
    assert {c.id for c in reg.cards()} == set(IDS) | OTHERS
    assert not any(p.name.startswith("pythia-") for p in reg.plugins())  # the old per-card plugin is gone


def test_cards_are_generated_not_copied():
    cards = sorted(p.name for p in (REPO / "cards").glob("pythia*"))
    assert cards == ["pythia.suite.yaml"]  # one table + template, no per-model card files
    assert [d["id"] for d in pythia.cards_data()] == IDS
    assert not (REPO / "plugins" / "pythia_1_4b.py").exists()


@pytest.mark.parametrize("card_id", IDS)
def test_identity_and_source(card_id):
    card = registry.get(card_id)
    size, deduped = size_of(card_id), card_id.endswith("-deduped")
    assert card.name == f"Pythia-{size.upper()}{'-deduped' if deduped else ''}"
    assert card.source.repo == f"EleutherAI/{card_id}"
    assert (card.publisher, card.license, card.languages) == ("EleutherAI", "Apache-2.0", ["en"])
    assert card.links.repository == "https://github.com/EleutherAI/pythia"
    assert card.links.paper == "https://arxiv.org/pdf/2304.01373.pdf"
    assert card.source.format == "safetensors" and card.source.revision == "main"


# --- parameter counts: exact, from the architecture ------------------------------------------------


@pytest.mark.parametrize("card_id", IDS)
def test_parameter_count_equals_the_seed_exactly(card_id):
    old, total, non_embedding, vocab = TABLE[size_of(card_id)]
    card = registry.get(card_id)
    counted = count_parameters(card.architecture)
    assert counted.total == total and counted.non_embedding == non_embedding
    assert card.architecture.vocab_size == vocab
    assert (card.parameters.stated, card.parameters.stated_non_embedding) == (total, non_embedding)
    assert card.parameters.quoted == f"| {size_of(card_id).upper()} | {old.upper()} | {total:,} | {non_embedding:,} |"
    assert card.parameters.note is None and card.parameters.stored_extra == 0
    assert [d for d in check_card(card, card_id) if d.field and d.field.startswith("parameters")] == []


@pytest.mark.parametrize("card_id", IDS)
def test_shared_architecture(card_id):
    arch = registry.get(card_id).architecture
    assert (arch.family, arch.checkpoint_layout) == ("GPT-NeoX", "gpt-neox")
    assert arch.ffn_size == 4 * arch.hidden_size and arch.kv_heads == arch.heads
    assert (arch.positions.kind, arch.positions.fraction, arch.positions.base) == ("rotary", 0.25, 10000)
    assert (arch.norm.kind, arch.norm.eps) == ("layernorm", 1e-5)
    assert (arch.mlp, arch.residual.kind, arch.residual.shared_norm) == ("gelu", "parallel", False)
    assert (arch.bias.qkv, arch.bias.attention_output, arch.bias.mlp, arch.bias.lm_head) == (True, True, True, False)
    assert arch.tied_embeddings is False and arch.context_length == 2048


def test_deduped_and_standard_share_the_architecture():
    for size in TABLE:
        standard, deduped = registry.get(f"pythia-{size}"), registry.get(f"pythia-{size}-deduped")
        assert standard.architecture == deduped.architecture and standard.parameters == deduped.parameters


def test_every_card_agrees_with_the_seed_tables():
    """Both tables of the seed, parsed from its text: every size's row against both of its cards."""
    if not SEED.is_file():
        pytest.skip(f"the seed is not at {SEED} (shared/ beside the clone)")
    text = SEED.read_text(encoding="utf-8")
    rows = [[c.strip() for c in line.split("|") if c.strip()] for line in text.splitlines() if "|" in line]
    rows = [r for r in rows if r]
    rows = [[{"1.0B": "1B"}.get(r[0], r[0]), *r[1:]] for r in rows]  # the engineering table says 1.0B
    engineering = {r[0].lower(): r for r in rows if r[0].lower() in TABLE and len(r) >= 8}
    naming = {r[0].lower(): r for r in rows if r[0].lower() in TABLE and len(r) < 8}
    assert set(engineering) == set(naming) == set(TABLE)
    for size in TABLE:
        _, non_emb, layers, dim, heads, batch, rate, equivalent = engineering[size][:8]
        current, old, total, non_emb_2 = naming[size][:4]
        mantissa, exponent = re.fullmatch(r"([\d.]+) x 10<sup>(-\d+)</sup>", rate).groups()  # type: ignore[union-attr]
        for card_id in (f"pythia-{size}", f"pythia-{size}-deduped"):
            card = registry.get(card_id)
            arch, counted = card.architecture, count_parameters(card.architecture)
            assert (arch.layers, arch.hidden_size, arch.heads) == (int(layers), int(dim), int(heads))
            assert counted.total == int(total.replace(",", "")), card_id
            assert counted.non_embedding == int(non_emb.replace(",", "")) == int(non_emb_2.replace(",", ""))
            assert card.parameters.quoted in text  # the table row, verbatim
            assert f"learning rate {mantissa}e{exponent}," in (card.description or "") and batch == "2M"
            suffix = "-deduped" if card_id.endswith("-deduped") else ""
            assert f"Formerly named Pythia-{old}{suffix}" in (card.description or "")
            if equivalent != "—":
                assert f"architecturally equivalent to {equivalent.replace(', ', ' and ')}." in (card.description or "")
            else:
                assert "equivalent" not in (card.description or "")
            assert card.name == f"Pythia-{current}{suffix}"


@pytest.mark.parametrize(("config", "sizes"), [("pythia-1b", ["1b"]), ("pythia-1.4b", ["1.4b"])])
def test_cards_agree_with_the_reference_configs(reference, config, sizes):
    published = json.loads((reference / "configs" / f"{config}.config.json").read_text(encoding="utf-8"))
    for card_id in (f"pythia-{s}{v}" for s in sizes for v in VARIANTS):
        card = registry.get(card_id)
        a = card.architecture
        ours = {
            "vocab_size": a.vocab_size,
            "hidden_size": a.hidden_size,
            "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads,
            "intermediate_size": a.ffn_size,
            "max_position_embeddings": a.context_length,
            "rotary_pct": a.positions.fraction,
            "rotary_emb_base": a.positions.base,
            "layer_norm_eps": a.norm.eps,
            "use_parallel_residual": a.residual.kind == "parallel",
            "tie_word_embeddings": a.tied_embeddings,
            "hidden_act": a.mlp,
            "torch_dtype": card.dtype,
            "eos_token_id": card.tokenizer.eos.id,
        }
        assert ours == {key: published[key] for key in ours}, card_id


def test_embedding_rows_agree_with_the_reference_notes(reference):
    notes = (reference / "prompt-formats-and-tokens.md").read_text(encoding="utf-8")
    assert "50304 for pythia-70m..2.8b, 50432 (neox-20b, 6.9b), 50688 (12b)" in notes
    vocab = {size: registry.get(f"pythia-{size}").architecture.vocab_size for size in TABLE}
    assert vocab == {**dict.fromkeys(["70m", "160m", "410m", "1b", "1.4b", "2.8b"], 50304), "6.9b": 50432, "12b": 50688}


@pytest.mark.parametrize("card_id", IDS)
def test_cards_match_the_gpt_neox_tokenizer(reference, card_id):
    card = registry.get(card_id)
    assert check_tokenizer(card, reference / "tokenizers" / "gpt-neox", card_id) == []


# --- revisions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("card_id", IDS)
def test_154_revisions_main_is_step143000(card_id):
    source = registry.get(card_id).source
    assert source.revisions == REVISIONS and len(source.revisions) == 154
    assert source.revision_aliases == {"main": "step143000"}
    assert {"step0", "step1", "step2", "step512", "step1000", "step3000", "step143000"} <= set(source.revisions)
    assert not {"step3", "step1024", "step3001", "step144000", "step500"} & set(source.revisions)


# --- names ------------------------------------------------------------------------------------------


def test_aliases_are_old_names_and_do_not_collide():
    aliases = {card_id: registry.get(card_id).aliases for card_id in IDS}
    for size, (old, *_) in TABLE.items():
        assert aliases[f"pythia-{size}"][0] == f"pythia-{old}"
        assert aliases[f"pythia-{size}-deduped"][0] == f"pythia-{old}-deduped"
    assert aliases["pythia-1.4b"] == ["pythia-1.3b", "pythia-1b4"]
    assert aliases["pythia-1.4b-deduped"] == ["pythia-1.3b-deduped", "pythia-1b4-deduped"]
    every = [a.lower() for names in aliases.values() for a in names] + [c.id for c in registry.cards()]
    assert len(every) == len(set(every))


@pytest.mark.parametrize(
    ("name", "card_id"),
    [
        ("pythia-1b4", "pythia-1.4b"),
        ("Pythia-1.3B", "pythia-1.4b"),
        ("pythia-19m-deduped", "pythia-70m-deduped"),
        ("pythia-13b", "pythia-12b"),
        ("EleutherAI/pythia-70m-deduped", "pythia-70m-deduped"),
        ("eleutherai/pythia-6.9b", "pythia-6.9b"),
    ],
)
def test_lookup(name, card_id):
    assert registry.get(name).id == card_id


# --- the pythia-1.4b card is unchanged; the others get the same treatment ---------------------------


def test_pythia_1_4b_keeps_its_facts():
    card = registry.get("pythia-1.4b")
    assert card.name == "Pythia-1.4B" and card.description == DESCRIPTION_1_4B
    assert "pythia-1b4" in card.aliases
    assert card.tokenizer.model_dump(exclude_defaults=True) == {
        "kind": "tokenizers",
        "files": ["tokenizer.json"],
        "bos": {"text": "<|endoftext|>", "id": 0},
        "eos": {"text": "<|endoftext|>", "id": 0},
        "unk": {"text": "<|endoftext|>", "id": 0},
        "pad": {"text": "<|padding|>", "id": 1},
    }
    assert card.format.name == "plain" and card.generation == type(card.generation)()
    assert card.dtype == "float16" and card.evaluation == []


@pytest.mark.parametrize("card_id", IDS)
def test_same_treatment_for_every_card(card_id):
    card, reference_card = registry.get(card_id), registry.get("pythia-1.4b")
    for field in ("tokenizer", "prompt_format", "generation", "dtype", "links", "evaluation"):
        assert getattr(card, field) == getattr(reference_card, field), field
    description = card.description or ""
    assert description.startswith(f"{card.name} is a Transformer-based causal language model")
    if card_id.endswith("-deduped"):
        assert "tokens of the globally deduplicated Pile (about 1.5 epochs of it)" in description
        assert "not deduplicated" not in description
    else:
        assert "tokens of the (not deduplicated) Pile" in description
    assert "$" not in description and "{" not in description


# --- the command line and the runtime ----------------------------------------------------------------


def test_cli_lists_and_validates_the_suite(run_cli):
    listed = {c["id"]: c for c in json.loads(run_cli("list", "--json").stdout)}
    assert set(listed) == set(IDS) | OTHERS
    for card_id in IDS:
        assert listed[card_id]["plugin"] == "pythia"
        assert listed[card_id]["parameters"] == TABLE[size_of(card_id)][1]
    report = json.loads(run_cli("validate", "--format", "json").stdout)
    assert report["ok"] is True and set(report["cards"]) == set(IDS) | OTHERS
    assert not [d for d in report["diagnostics"] if "pythia" in d["where"]]
    one = run_cli("validate", "pythia-12b-deduped")
    assert one.returncode == 0 and "1 card(s) checked: valid (0 error(s), 0 warning(s))" in one.stdout


def test_runtime_resolves_listed_revisions_only(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from modeldeck.registry.weights import UnknownRevisionError, resolve_weights

    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        folder = tmp_path / str(kwargs["revision"])
        folder.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text("{}")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    card = registry.get("pythia-70m-deduped")
    assert resolve_weights(card, revision="step3000", progress=False) == tmp_path / "step3000"
    assert (calls[0]["repo_id"], calls[0]["revision"]) == ("EleutherAI/pythia-70m-deduped", "step3000")
    with pytest.raises(UnknownRevisionError) as info:
        resolve_weights(card, revision="step3001")
    message = str(info.value)
    assert message.startswith("card pythia-70m-deduped lists no revision 'step3001' of EleutherAI/pythia-70m-deduped")
    assert "nearest listed: step3000, step4000, step2000" in message and "154 revisions" in message
    assert len(calls) == 1  # the refused revision never reached the hub


# --- the template -------------------------------------------------------------------------------------


def test_template_placeholders():
    variables = {"n": 3, "xs": ["a"], "s": "text"}
    filled = pythia._fill({"a": "${n}", "b": ["${xs}", "x ${s} ${n}"], "c": 1.5, "d": "$$5"}, variables)
    assert filled == {"a": 3, "b": [["a"], "x text 3"], "c": 1.5, "d": "$5"}
    with pytest.raises(KeyError, match="missing"):
        pythia._fill({"a": "${missing}"}, variables)


def test_card_data_is_a_fresh_copy():
    first = pythia.card_data("pythia-70m")
    first["source"]["revisions"].clear()
    assert len(pythia.card_data("pythia-70m")["source"]["revisions"]) == 154
    with pytest.raises(KeyError, match="no card 'pythia-71m'"):
        pythia.card_data("pythia-71m")
