"""Hostile input, cause 2 (unbounded work from small inputs), the card part: validation is linear in a card's lists
and the catalog in its cards (operation counts, never seconds); architecture sizes are bounded before any per-layer
work; floats are finite; card files are bounded in size, nesting and integer digits; source.repo is a Hugging Face
id and source.bundled a folder inside its package. Each refusal is exit code 1 or a CardError naming the field or
the line and the limit; peak memory is VmHWM of a fresh subprocess (as in test_limits.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modeldeck.registry import Registry, hookimpl
from modeldeck.registry.cardfile import (
    MAX_CARD_BYTES,
    MAX_DEPTH,
    MAX_DIAGNOSTICS,
    MAX_INT_DIGITS,
    card_from_data,
    load_card_file,
)
from modeldeck.registry.catalog import CardConflictError
from modeldeck.registry.diagnostics import CardError, Diagnostic
from modeldeck.registry.manager import load_plugins

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "cards" / "tiny-neox.yaml"
DEMO_WEIGHTS = REPO / "cards" / "tiny-neox"
PEAK_KIB = 200 * 1024  # the interpreter, pydantic and the CLI take ~50 MiB; the unbounded cases took gigabytes

PROBE = (  # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's across exec)
    "import re, runpy, sys\n"
    "if sys.argv[1] == 'cli':\n"
    "    sys.argv = ['modeldeck', *sys.argv[2:]]\n"
    "    try:\n        runpy.run_module('modeldeck.registry.cli', run_name='__main__')\n"
    "    except SystemExit as exc:\n        print('exit', exc.code)\n"
    "else:\n"
    "    from modeldeck.registry.cardfile import load_card_file\n"
    "    from modeldeck.registry.diagnostics import CardError\n"
    "    try:\n        load_card_file(sys.argv[2])\n    except CardError as exc:\n        print(exc)\n"
    "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
)


def peak(*args: str) -> tuple[str, int]:
    """Run PROBE (`file CARD` loads a card file, `cli ARGS` runs modeldeck): its output and peak RSS in KiB."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *_, last = done.stdout.splitlines()
    return done.stdout + done.stderr, int(last.removeprefix("VmHWM "))


def demo_text(replace: dict[str, str]) -> str:
    """cards/tiny-neox.yaml with the one line that starts with each key replaced: {'  layers:': '  layers: 10'}."""
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    for start, new in replace.items():
        [at] = [i for i, line in enumerate(lines) if line.startswith(start)]
        lines[at] = new
    return "\n".join(lines) + "\n"


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def refusal(data: dict[str, Any]) -> list[Diagnostic]:
    with pytest.raises(CardError) as caught:
        card_from_data(data, "card")
    return caught.value.diagnostics


def python_calls(work: Callable[[], object]) -> int:
    """Python function calls (and generator resumptions) while `work` runs: an operation count, not a clock."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


# --- 1. linear validation ------------------------------------------------------------------------------


def test_100k_revisions_validate_and_duplicates_are_named(card_data: Any) -> None:
    data = card_data("tiny-neox")
    revisions = [f"r{i}" for i in range(100_000)]
    data["source"] |= {"revisions": revisions, "revision_aliases": {f"a{i}": f"r{i}" for i in range(100_000)}}
    assert len(card_from_data(data, "card").source.revisions) == 100_000  # aliases checked against a set
    data["source"] |= {"revisions": [*revisions, "r7", "r42"], "revision_aliases": {}}
    [d] = refusal(data)
    assert (d.field, d.message) == ("source", "revisions lists r42, r7 more than once; list each revision once")


def test_100k_markers_and_pinned_files_validate_and_duplicates_are_named(card_data: Any) -> None:
    data = card_data("tiny-neox")
    data["tokenizer"]["markers"] = [{"text": f"m{i}", "special": False} for i in range(100_000)] + [
        {"text": "m3", "special": False}
    ]
    [d] = refusal(data)
    assert (d.field, d.message) == ("tokenizer", "markers lists 'm3' more than once; list each marker once")
    data = card_data("tiny-neox")
    pins = [{"path": f"f{i}.bin", "size": i, "sha256": "0" * 64} for i in range(100_000)]
    data["source"]["files"] = [*pins, *pins[:7]]
    [d] = refusal(data)
    assert d.message == (
        "files pins f0.bin, f1.bin, f2.bin, f3.bin, f4.bin and 2 more more than once; pin each file once"
    )


def _shared_registry(card: dict[str, Any], n: int, **changes: Any) -> Any:
    from modeldeck.plugins import checkpoint_layouts, prompt_formats

    class Cards:
        @hookimpl
        def register_cards(self, register: Callable[[dict[str, Any]], None]) -> None:
            for i in range(n):
                register({**card, "id": f"c{i}", **changes})

    return load_plugins([("formats", prompt_formats), ("layouts", checkpoint_layouts), ("cards", Cards())])


def test_the_catalog_of_cards_sharing_one_repository_is_linear(card_data: Any) -> None:
    card = card_data("tiny-neox")
    card |= {"aliases": [], "source": {**card["source"], "repo": "org/shared"}}
    calls = {}
    for n in (200, 400):
        loaded = _shared_registry(card, n)
        calls[n] = python_calls(lambda loaded=loaded: Registry(loaded).entries())  # what `modeldeck list` builds
    assert calls[400] < 2.3 * calls[200], calls  # quadratic would be ~4x
    reg = Registry(_shared_registry(card, 3))
    assert reg.diagnostics == [] and [c.id for c in reg.cards()] == ["c0", "c1", "c2"]
    with pytest.raises(CardConflictError, match="claimed by more than one card"):
        reg.get("org/shared")


def test_cards_sharing_an_alias_are_one_diagnostic_each_not_one_per_pair(card_data: Any) -> None:
    card = card_data("tiny-neox")
    calls, counts = {}, {}
    for n in (100, 200):
        loaded = _shared_registry(card, n, aliases=["same"])
        reg = Registry(loaded)
        counts[n] = len(reg.diagnostics)
        calls[n] = python_calls(lambda loaded=loaded: Registry(loaded))
    assert counts == {100: 99, 200: 199}  # each card against the first, not n(n-1)/2 pairs
    assert calls[200] < 2.3 * calls[100], calls
    first = Registry(_shared_registry(card, 2, aliases=["same"])).diagnostics[0]
    assert first.message.startswith("alias 'same' is claimed by card 'c0' from plugin cards (not installed")


# --- 2. architecture bounds -----------------------------------------------------------------------------

BOUNDS = [
    ("layers", 1024),
    ("hidden_size", 2**20),
    ("heads", 1024),
    ("kv_heads", 1024),
    ("head_dim", 2**16),
    ("ffn_size", 2**20),
    ("vocab_size", 2**22),
    ("context_length", 2**24),
    ("sliding_window", 2**24),
]


@pytest.mark.parametrize(("field", "bound"), BOUNDS)
def test_each_architecture_size_is_bounded(card_data: Any, field: str, bound: int) -> None:
    data = card_data("tiny-neox")
    data["architecture"][field] = bound + 1
    diagnostics = refusal(data)
    assert [(d.field, d.message, d.hint) for d in diagnostics] == [
        (
            f"architecture.{field}",
            f"Input should be less than or equal to {bound}",
            f"got {bound + 1}; make it at most {bound}",
        )
    ]


def test_rope_and_position_sizes_are_bounded(card_data: Any) -> None:
    data = card_data("tiny-neox")
    scaling = {"kind": "dynamic", "factor": 2.0, "original_context_length": 2**24 + 1}
    data["architecture"]["positions"] |= {"scaling": scaling}
    [d] = refusal(data)
    assert (d.field, d.hint) == (
        "architecture.positions.scaling.original_context_length",
        "got 16777217; make it at most 16777216",
    )
    data = card_data("tiny-neox")
    data["architecture"]["positions"] = {"kind": "learned", "offset": 1025}
    [d] = refusal(data)
    assert (d.field, d.hint) == ("architecture.positions.offset", "got 1025; make it at most 1024")


def test_an_architecture_at_every_bound_validates(card_data: Any) -> None:
    data = card_data("tiny-neox")
    data["architecture"] |= {
        "layers": 1024,
        "hidden_size": 2**20,
        "heads": 1024,
        "kv_heads": 1024,
        "ffn_size": 2**20,
        "vocab_size": 2**22,
        "context_length": 2**24,
        "sliding_window": 2**24,
    }
    data["parameters"] = {}
    arch = card_from_data(data, "card").architecture
    assert (arch.layers, arch.head_dim, arch.context_length) == (1024, 1024, 2**24)


def test_layers_1e8_is_refused_by_validate_weights_before_any_per_layer_work(run_cli: Any, tmp_path: Path) -> None:
    text = demo_text({"  layers:": "  layers: 100000000"})
    card = tmp_path / "layers.yaml"
    card.write_text(text, encoding="utf-8")
    result = run_cli("validate", str(card), "--weights", str(DEMO_WEIGHTS))
    assert result.returncode == 1
    assert (
        f"{card}:{line_of(text, '  layers:')}: architecture.layers: error: Input should be less than or equal to 1024\n"
        "    -> got 100000000; make it at most 1024\n"
    ) in result.stderr
    output, kib = peak("cli", "validate", str(card), "--weights", str(DEMO_WEIGHTS))
    assert "exit 1" in output and kib < PEAK_KIB  # 3.3 GB of tensor names before the bound
    at_bound = tmp_path / "at-bound.yaml"  # at the bound the per-layer work is done, and bounded
    at_bound.write_text(demo_text({"  layers:": "  layers: 1024"}), encoding="utf-8")
    output, kib = peak("cli", "validate", str(at_bound), "--weights", str(DEMO_WEIGHTS))
    assert "config.json num_hidden_layers=4 disagrees with the card's architecture.layers (1024" in output
    assert "exit 1" in output and kib < PEAK_KIB


# --- 3. finite floats -----------------------------------------------------------------------------------

FLOATS = [
    ("architecture", "norm", "eps"),
    ("architecture", "positions", "base"),
    ("architecture", "positions", "fraction"),
    ("architecture", "multipliers", "embedding"),
    ("architecture", "multipliers", "logits"),
    ("generation", "temperature"),
    ("generation", "repetition_penalty"),
    ("generation", "top_p"),
    ("generation", "length_penalty"),
    ("evaluation", 0, "value"),
    ("evaluation", 0, "stderr"),
]


@pytest.mark.parametrize("where", FLOATS, ids=lambda w: ".".join(map(str, w)))
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_every_float_is_finite(card_data: Any, where: tuple[Any, ...], value: float) -> None:
    data = card_data("tiny-neox")
    data["architecture"].setdefault("multipliers", {})
    data["evaluation"] = [{"task": "t", "metric": "acc", "value": 0.5}]
    parent = data
    for part in where[:-1]:
        parent = parent[part]
    parent[where[-1]] = value
    [d] = refusal(data)
    path = ".".join(str(p) for p in where).replace(".0.", "[0].")
    assert (d.field, d.message) == (path, "Input should be a finite number")
    assert d.hint == f"got {value}; write a finite number (.inf and .nan are not allowed)"


def test_an_infinite_penalty_in_a_card_file_is_exit_1(run_cli: Any, tmp_path: Path) -> None:
    text = demo_text({"  repetition_penalty:": "  repetition_penalty: .inf"})
    card = tmp_path / "inf.yaml"
    card.write_text(text, encoding="utf-8")
    result = run_cli("validate", str(card))
    assert result.returncode == 1
    assert (
        f"{card}:{line_of(text, '  repetition_penalty')}: generation.repetition_penalty: error: Input should be a "
        "finite number\n    -> got inf; write a finite number (.inf and .nan are not allowed)\n"
    ) in result.stderr


# --- 4. card-file limits --------------------------------------------------------------------------------


def test_a_card_file_over_1_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    card = tmp_path / "big.yaml"
    text = DEMO.read_text(encoding="utf-8")
    card.write_text(text + "#" * (MAX_CARD_BYTES - len(text.encode())), encoding="utf-8")
    assert load_card_file(card).id == "tiny-neox"  # exactly the limit
    card.write_text(text + "#" * (MAX_CARD_BYTES + 1 - len(text.encode())), encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card_file(card)
    [d] = caught.value.diagnostics
    assert (d.where, d.message) == (
        str(card),
        "the card file is 1,048,577 bytes, over the 1,048,576-byte limit for this file (1 MiB)",
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_folder_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "card.yaml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(CardError, match=r"cannot read the card: it is a FIFO \(named pipe\), not a regular file"):
        load_card_file(fifo)
    with pytest.raises(CardError, match="cannot read the card: it is a folder"):
        load_card_file(tmp_path)


def test_deep_nesting_is_refused_at_its_line(run_cli: Any, tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8")
    card = tmp_path / "deep.yaml"
    card.write_text(text + "extra: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    result = run_cli("validate", str(card))
    assert result.returncode == 1
    assert f"{card}:{len(text.splitlines()) + 1}: error: values nest deeper than {MAX_DEPTH} levels\n" in result.stderr
    output, kib = peak("file", str(card))
    assert "values nest deeper than 32 levels" in output and kib < PEAK_KIB  # was a RecursionError
    for brackets, problem in ((MAX_DEPTH - 1, "unknown field 'extra'"), (MAX_DEPTH, "nest deeper than 32")):
        card.write_text(text + "extra: " + "[" * brackets + "]" * brackets + "\n", encoding="utf-8")
        with pytest.raises(CardError, match=problem):  # the root mapping is level 1, `extra`'s list level 2
            load_card_file(card)


def test_a_nul_byte_is_named_with_its_line(tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8").replace("name: tiny-neox", "name: tiny\0neox")
    card = tmp_path / "nul.yaml"
    card.write_text(text, encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card_file(card)
    [d] = caught.value.diagnostics
    assert (d.line, d.message, d.hint) == (
        line_of(text, "name:"),
        f"the file holds a NUL byte (U+0000) at line {line_of(text, 'name:')}, which YAML does not allow",
        "remove the NUL byte: a card file is plain text",
    )


@pytest.mark.parametrize(
    ("number", "size"),
    [
        ("9" * 100_000, "of 100,000 digits"),  # Python refuses to convert over 4,300 digits
        ("0x" + "f" * 100_000, "100,002 characters long"),
        ("1" + ":59" * 20_000, "60,001 characters long"),  # YAML 1.1 base 60: quadratic big-integer arithmetic
        ("1" + "0" * MAX_INT_DIGITS, "of 21 digits"),
        ("0x" + "f" * 20, "of 25 digits"),
    ],
    ids=["decimal", "hex", "base60", "21-digits", "short-hex"],
)
def test_huge_integers_are_refused_at_their_line(tmp_path: Path, number: str, size: str) -> None:
    text = demo_text({"  stated:": f"  stated: {number}"})
    card = tmp_path / "int.yaml"
    card.write_text(text, encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card_file(card)
    [d] = caught.value.diagnostics
    assert (d.line, d.message) == (
        line_of(text, "  stated:"),
        f"found an integer {size}; card integers have at most 20 digits",
    )
    if len(number) > 1000:
        output, kib = peak("file", str(card))
        assert f"found an integer {size}" in output and kib < PEAK_KIB


def test_a_20_digit_integer_still_reads(tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8").replace("size: 778,", "size: 18446744073709551615,")
    card = tmp_path / "u64.yaml"
    card.write_text(text, encoding="utf-8")
    assert load_card_file(card).source.files[0].size == 2**64 - 1


def test_errors_are_capped_per_card(card_data: Any) -> None:
    data = card_data("tiny-neox")
    data["source"]["revisions"] = list(range(1000))  # 1,000 errors: each an int, not a string
    diagnostics = refusal(data)
    assert len(diagnostics) == MAX_DIAGNOSTICS + 1
    assert diagnostics[-1].message == f"and {1000 - MAX_DIAGNOSTICS:,} more errors (the first 50 are shown)"


# --- 5. source.repo -------------------------------------------------------------------------------------

BAD_REPOS = [
    "a/..",
    "..",
    ".",
    "/abs/x",
    "a\\b",
    "a/b/c",
    "a/.b",
    "a/b-",
    "-a/b",
    "a--b/c",
    "a/b..c",
    "a/b.git",
    "a/" + "x" * 97,
    "a/",
    "/a",
    "no-owner",
    "é/x",
    "a/b c",
]


@pytest.mark.parametrize("repo", BAD_REPOS)
def test_source_repo_must_be_a_hub_id(card_data: Any, repo: str) -> None:
    data = card_data("tiny-neox")
    data["source"]["repo"] = repo
    [d] = refusal(data)
    assert d.field == "source.repo"
    assert d.message.startswith(repr(repo)[:40])  # quoted (cut at 80 characters)
    assert " is not a Hugging Face repository id: owner/name (e.g. EleutherAI/pythia-1b), each part 1-96" in d.message


@pytest.mark.parametrize("repo", ["EleutherAI/pythia-1.4b-deduped", "a/b", "user_1/model.v2", "x/" + "y" * 96])
def test_hub_ids_are_accepted(card_data: Any, repo: str) -> None:
    data = card_data("tiny-neox")
    data["source"]["repo"] = repo
    assert card_from_data(data, "card").source.repo == repo


def test_a_path_like_repo_is_exit_1_not_an_internal_error(run_cli: Any, tmp_path: Path) -> None:
    text = demo_text({"  repo:": "  repo: a/.."})
    card = tmp_path / "repo.yaml"
    card.write_text(text, encoding="utf-8")
    for command in (("validate", str(card)), ("verify", str(card))):
        result = run_cli(*command)
        assert result.returncode == 1, result
        assert f"{card}:{line_of(text, '  repo:')}: source.repo: error: 'a/..' is not a Hugging Face repository id" in (
            result.stderr
        )
        assert "internal error" not in result.stderr


# --- 6. source.bundled ----------------------------------------------------------------------------------

BAD_BUNDLED = [
    "modeldeck.cards:../../../../etc",
    "modeldeck.cards:/etc",
    "modeldeck.cards:tiny-neox/../..",
    "modeldeck.cards:./tiny-neox",
    "modeldeck.cards:a//b",
    "modeldeck.cards:a/",
    "modeldeck.cards:",
    ":x",
    "..:x",
    "modeldeck..cards:x",
    ".modeldeck:x",
    "modeldeck.cards:a\\b",
    "/etc:x",
    "tiny-neox",
]


@pytest.mark.parametrize("bundled", BAD_BUNDLED)
def test_source_bundled_stays_inside_its_package(card_data: Any, bundled: str) -> None:
    data = card_data("tiny-neox")
    data["source"]["bundled"] = bundled
    [d] = refusal(data)
    assert d.field == "source.bundled"
    assert d.message.startswith(f"{bundled!r} is not 'package:folder' with a folder inside the package")


def test_verify_refuses_a_bundled_escape_and_reads_nothing(run_cli: Any, tmp_path: Path) -> None:
    text = demo_text({"  bundled:": '  bundled: "modeldeck.cards:../../../../etc"', "id:": "id: escape"})
    card = tmp_path / "escape.yaml"
    card.write_text(text, encoding="utf-8")
    result = run_cli("verify", str(card))
    assert result.returncode == 1
    assert (
        f"{card}:{line_of(text, '  bundled:')}: source.bundled: error: 'modeldeck.cards:../../../../etc' is not "
        "'package:folder' with a folder inside the package"
    ) in result.stderr
    assert "passwd" not in result.stdout + result.stderr and result.stdout == ""


def test_a_bundled_folder_linking_out_of_its_package_is_refused(
    card_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modeldeck.registry.weights import WeightsNotFoundError, bundled_folder

    name = "mdk_linking_" + tmp_path.name.replace("-", "_")
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "outside").mkdir()
    (package / "weights").symlink_to(tmp_path / "outside", target_is_directory=True)
    (package / "inside").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    data = card_data("tiny-neox")
    try:
        data["source"]["bundled"] = f"{name}:inside"
        assert bundled_folder(card_from_data(data, "card")) == (package / "inside").resolve()
        data["source"]["bundled"] = f"{name}:weights"
        outside = re.escape(f"leads to {(tmp_path / 'outside').resolve()}, outside the package")
        with pytest.raises(WeightsNotFoundError, match=outside):
            bundled_folder(card_from_data(data, "card"))
    finally:
        sys.modules.pop(name, None)  # imported by the lookup


def test_every_first_party_card_file_reads_within_the_limits() -> None:
    files = sorted(p for p in (REPO / "cards").glob("*.yaml") if not p.name.endswith(".suite.yaml"))
    assert len(files) == 5
    for path in files:
        assert path.stat().st_size < MAX_CARD_BYTES // 64  # a few KB: the limit is far away
        assert load_card_file(path).id == path.stem
