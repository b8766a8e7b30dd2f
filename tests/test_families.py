"""Ten-plus decoder families against transformers' own model classes (fp32, CPU).

Each family (tests/families.py) is a tiny random checkpoint written by transformers' `save_pretrained` and a card
that a test plugin registers: a distribution with a `modeldeck` entry point on a fake site, discovered by a fresh
`Registry.from_entry_points()` (no first-party code knows these cards). Each is loaded through the real path,
`runtime.loading.load_decoder` with the layout that registry holds for the card's `checkpoint_layout`, and checked:

    (a) logits of a right-padded batch of 3 prompts within 1e-4 of transformers, eager and sdpa attention
    (b) greedy decoding (24 new tokens) token-identical to transformers' generate()
    (c) KV-cache decoding equal to recomputing the whole sequence

Sliding-window families (Mistral, StarCoder2) use a 20-token prompt (window 8), and are also prefilled in chunks of 4
queries. Dynamic NTK rope grows the base with the length each forward pass reaches, so cached keys keep the rotation
of the pass that wrote them (in transformers too): there (c) is checked below the original context, where cached
and recomputed decoding must agree, and past it against transformers' own cached decoding, step by step.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from modeldeck.registry import CardNotFoundError, Registry  # noqa: E402
from modeldeck.registry.schema import Architecture  # noqa: E402
from modeldeck.runtime import generate as generation  # noqa: E402
from modeldeck.runtime.attention import get_backend  # noqa: E402
from modeldeck.runtime.generate import generate_tokens, prefill, resolve_options  # noqa: E402
from modeldeck.runtime.loading import load_decoder  # noqa: E402
from modeldeck.runtime.model import KVCache  # noqa: E402

from .conftest import FakeSite  # noqa: E402
from .families import EOS, FAMILIES, PAD, build_checkpoint, card_data  # noqa: E402
from .test_runtime_parity import batch_logits  # noqa: E402

DYNAMIC = "llama-rope-dynamic"  # (b) single prompts, and (c) as the module docstring says
BATCHED = [name for name in FAMILIES if name != DYNAMIC]
WINDOWED = [name for name, family in FAMILIES.items() if family.architecture.get("sliding_window")]
NEW_TOKENS = 24
TOLERANCE = 1e-4


def lengths_of(name: str) -> tuple[int, ...]:
    """Prompt lengths: a 20-token prompt where a sliding window (8) must cut in, else 5, 11, 3."""
    if name == DYNAMIC:
        return (10, 20)  # 20 + 24 new tokens: well past the original context of 16
    return (20, 11, 3) if name in WINDOWED else (5, 11, 3)


def prompts(name: str, seed: int) -> list[list[int]]:
    vocab = FAMILIES[name].architecture["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(20, vocab, (n,), generator=g).tolist() for n in lengths_of(name)]


def dist_of(name: str) -> str:
    return f"modeldeck-test-family-{name}"


def module_of(name: str) -> str:
    return f"modeldeck_test_family_{name.replace('-', '_')}"


# --- the test plugins, their registry, the checkpoints ------------------------------------------------


@pytest.fixture(scope="session")
def family_registry(tmp_path_factory):
    """A fresh registry of every installed plugin plus one test distribution per family, each registering its card
    through a `modeldeck` entry point."""
    site = FakeSite(tmp_path_factory.mktemp("family-site"))
    for name in FAMILIES:
        site.card_plugin(dist_of(name), module_of(name), card_data(name))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site.root))
        mp.delenv("MODELDECK_PLUGINS", raising=False)
        importlib.invalidate_caches()
        reg = Registry.from_entry_points()
    yield reg
    for name in FAMILIES:
        sys.modules.pop(module_of(name), None)


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """family_checkpoint(name) -> (directory, transformers model): built once per session."""
    built: dict[str, tuple] = {}

    def build(name: str) -> tuple:
        if name not in built:
            directory = tmp_path_factory.mktemp(f"family-{name}")
            built[name] = (directory, build_checkpoint(name, directory))
        return built[name]

    return build


@pytest.fixture(scope="session")
def family(family_registry, family_checkpoint):
    """family(name) -> namespace(card, decoder, reference, directory): the card as the test plugin registered it,
    loaded through runtime.loading with the registry's layout."""
    loaded: dict[str, types.SimpleNamespace] = {}

    def load(name: str) -> types.SimpleNamespace:
        if name in loaded:
            return loaded[name]
        directory, reference = family_checkpoint(name)
        card_id = f"tiny-{name}"
        try:
            card = family_registry.get(card_id)
        except CardNotFoundError:
            said = [d.message for d in family_registry.diagnostics if dist_of(name) in str(d)]
            pytest.fail(f"the registry dropped card {card_id!r} of the test plugin: {said or 'no diagnostic'}")
        layout_name = card.architecture.checkpoint_layout
        layouts = family_registry.checkpoint_layouts()
        if layout_name not in layouts:
            pytest.fail(f"no checkpoint layout {layout_name!r} registered (have {sorted(layouts)})")
        decoder = load_decoder(card, layouts[layout_name], directory, torch.float32, torch.device("cpu"))
        loaded[name] = types.SimpleNamespace(card=card, decoder=decoder, reference=reference, directory=directory)
        return loaded[name]

    return load


def reference_logits(reference, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0]  # [T, V]


def reset_rope(reference) -> None:
    """Put transformers' dynamic NTK state back to the original base: it keeps the longest length seen so far
    across calls, and only resets on a pass shorter than the original context. Some versions (5.1) never reset
    (their cached length is stored under another name): then there is no reference to compare with."""
    with torch.no_grad():
        reference(torch.tensor([[EOS]]))
    rotary = getattr(getattr(reference, "model", None), "rotary_emb", None)
    if getattr(rotary, "rope_type", None) != "dynamic":
        return
    if not torch.equal(rotary.inv_freq, rotary.original_inv_freq.to(rotary.inv_freq.device)):
        pytest.skip(f"transformers {transformers.__version__} does not reset its dynamic-NTK frequencies")


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- the cards come from test plugins ----------------------------------------------------------------


def test_there_are_ten_new_families():
    assert len({f.architecture["family"] for f in FAMILIES.values()}) >= 10


@pytest.mark.parametrize("name", list(FAMILIES))
def test_card_is_registered_by_a_test_plugin(family_registry, name):
    entry = family_registry.entry(f"tiny-{name}")
    assert entry.plugin.distribution == dist_of(name) and entry.plugin.name == module_of(name).replace("_", "-")
    assert entry.card.architecture == Architecture.model_validate(FAMILIES[name].architecture)


# --- (a) logits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("name", BATCHED)
def test_logits_match_transformers_for_a_padded_batch(family, name, backend):
    model = family(name)
    batch = prompts(name, seed=0)
    ours = batch_logits(model, batch, backend)
    for row, ids in enumerate(batch):
        diff = worst(ours[row, : len(ids)], reference_logits(model.reference, ids))
        assert diff <= TOLERANCE, f"{name}, {backend}: prompt {row} ({len(ids)} tokens) differs by {diff:.3g}"


# --- (b) greedy generation -----------------------------------------------------------------------------


def ours_greedy(model, ids: list[int]) -> list[int]:
    opts = resolve_options(
        model.card.generation,
        [],
        {
            "max_new_tokens": NEW_TOKENS,
            "min_new_tokens": NEW_TOKENS,
            "do_sample": False,
            "repetition_penalty": 1.2,
            "num_return_sequences": 1,
        },
    )
    events = generate_tokens(model.decoder, [ids], opts, get_backend("sdpa"), [EOS], PAD)
    return [t for step in events for _, t in step]


def transformers_greedy(reference, ids: list[int]) -> list[int]:
    reset_rope(reference)
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            repetition_penalty=1.2,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_generation_is_token_identical_to_transformers(family, name):
    model = family(name)
    for ids in prompts(name, seed=2):
        ours, theirs = ours_greedy(model, ids), transformers_greedy(model.reference, ids)
        assert len(ours) == NEW_TOKENS
        assert ours == theirs, f"{name}: {len(ids)}-token prompt, first differing step {_first_diff(ours, theirs)}"


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# --- (c) KV-cache decoding -----------------------------------------------------------------------------


def cached_steps(model, batch: list[list[int]], steps: int):
    """Prefill the padded batch, then decode greedily `steps` tokens one at a time from the cache, yielding
    (sequences so far, logits of each sequence's newest position [B, V]) after each decoded step."""
    attend = get_backend("sdpa")
    arch = model.card.architecture
    lengths = torch.tensor([len(p) for p in batch])
    longest = int(lengths.max())
    cache = KVCache(arch, len(batch), longest + steps, torch.float32, "cpu")
    tokens = torch.tensor([p + [PAD] * (longest - len(p)) for p in batch])
    sequences = [list(p) for p in batch]
    with torch.inference_mode():
        step = model.decoder(tokens, cache, attend, start=torch.zeros(len(batch), dtype=torch.long), last=lengths - 1)
        cache.lengths = lengths.clone()
        for _ in range(steps):
            nxt = step.argmax(-1)
            for seq, token in zip(sequences, nxt.tolist(), strict=True):
                seq.append(token)
            step = model.decoder(nxt[:, None], cache, attend)[:, 0]
            cache.lengths += 1
            yield sequences, step


@pytest.mark.parametrize("name", BATCHED)
def test_kv_cache_decoding_equals_recomputation(family, name):
    model = family(name)
    for sequences, step in cached_steps(model, prompts(name, seed=1), steps=6):
        full = batch_logits(model, sequences, "eager")
        expected = torch.stack([full[i, len(s) - 1] for i, s in enumerate(sequences)])
        diff = worst(step, expected)
        assert diff <= TOLERANCE, f"{name}: decoding at lengths {[len(s) for s in sequences]} differs by {diff:.3g}"


def test_dynamic_rope_kv_cache_decoding_equals_recomputation_within_the_original_context(family):
    """Below the original context (16) dynamic NTK changes nothing, so cached decoding must equal recomputation."""
    model = family(DYNAMIC)
    g = torch.Generator().manual_seed(5)
    batch = [torch.randint(20, 300, (n,), generator=g).tolist() for n in (5, 9, 3)]
    for sequences, step in cached_steps(model, batch, steps=6):  # longest reaches 15 positions
        full = batch_logits(model, sequences, "eager")
        expected = torch.stack([full[i, len(s) - 1] for i, s in enumerate(sequences)])
        assert worst(step, expected) <= TOLERANCE


def cache_of(output):
    """A transformers output's KV cache: `cache` from 5.2x, `past_key_values` before (the lowest allowed, 5.1)."""
    return getattr(output, "cache", None) or output.past_key_values


def test_dynamic_rope_kv_cache_decoding_follows_transformers_cache_past_the_original_context(family):
    """Past 16 positions each pass grows the base for its own length; cached keys keep theirs, in transformers too:
    our cached decoding must give transformers' cached decoding's logits, step by step."""
    model = family(DYNAMIC)
    reference = model.reference
    for ids in prompts(DYNAMIC, seed=6):  # 10 tokens (crosses 16 while decoding), 20 (already past it)
        reset_rope(reference)
        with torch.no_grad():
            out = reference(torch.tensor([ids]), use_cache=True)
        past, theirs = cache_of(out), out.logits[0, -1]
        for sequences, step in cached_steps(model, [ids], steps=10):
            token = sequences[0][-1]
            assert token == int(theirs.argmax()), f"greedy choice differs at length {len(sequences[0]) - 1}"
            with torch.no_grad():
                cache = {"cache" if hasattr(out, "cache") else "past_key_values": past}  # renamed in 5.2x
                out = reference(torch.tensor([[token]]), use_cache=True, **cache)
            past, theirs = cache_of(out), out.logits[0, -1]
            diff = worst(step[0], theirs)
            assert diff <= TOLERANCE, f"{len(ids)}-token prompt: cached step at length {len(sequences[0])}: {diff:.3g}"


# --- sliding windows, prefilled in chunks -------------------------------------------------------------


@pytest.fixture
def chunk_of_4(monkeypatch):
    """Prefill in chunks of 4 queries (the budget rule would give one pass for these prompts); records its calls."""
    calls = []

    def chunk(*args, **kwargs):
        calls.append(args)
        return 4

    monkeypatch.setattr(generation, "prefill_chunk", chunk)
    return calls


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("name", WINDOWED)
def test_chunked_prefill_of_a_prompt_longer_than_the_window_matches_transformers(family, name, backend, chunk_of_4):
    model = family(name)
    window = model.card.architecture.sliding_window
    batch = prompts(name, seed=3)
    assert max(map(len, batch)) > 2 * window
    cache = KVCache(model.card.architecture, len(batch), max(map(len, batch)), torch.float32, "cpu")
    last = prefill(model.decoder, batch, cache, get_backend(backend), PAD)  # [B, V], 5 passes of 4 queries
    assert chunk_of_4, "prefill did not ask prefill_chunk for its chunk size"
    for row, ids in enumerate(batch):
        diff = worst(last[row], reference_logits(model.reference, ids)[-1])
        assert diff <= TOLERANCE, f"{name}, {backend}: chunked prefill of {len(ids)} tokens differs by {diff:.3g}"


@pytest.mark.parametrize("name", WINDOWED)
def test_chunked_prefill_then_greedy_generation_matches_transformers(family, name, chunk_of_4):
    model = family(name)
    ids = prompts(name, seed=4)[0]  # 20 tokens, window 8
    assert ours_greedy(model, ids) == transformers_greedy(model.reference, ids)
    assert chunk_of_4
