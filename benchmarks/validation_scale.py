"""How card validation and the catalog scale with the size of what they check: linear (issue 15, hostile input).

    validate, schema        Card.model_validate of a card with N revisions, N markers or N pinned files
    validate, card file     the card with N revisions as a YAML file, through load_card_file (PyYAML, then the schema)
    validate, CLI           `modeldeck validate FILE` in a fresh process (includes ~0.5 s of start-up)
    list, plugins+registry  N cards sharing one source.repo, registered by a plugin in-process: each card validated,
                            the registry's index and conflict check, and the rows `modeldeck list --json` prints
    list, registry          the registry alone (index, conflict check, entries) over the N loaded cards

For N = 10^3, 10^4, 10^5 (--sizes): seconds (best of --repeat), microseconds per item, and the ratio to the previous
N; then each case's time ratio per 10x N from its smallest to its largest N, called linear below 15 (quadratic
growth gives ~100). Nothing is asserted.

    .venv/bin/python benchmarks/validation_scale.py [--sizes 1000 10000 100000] [--repeat 1] [--no-cli]
"""

from __future__ import annotations

import argparse
import gc
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modeldeck.plugins import checkpoint_layouts, prompt_formats
from modeldeck.registry import Registry, hookimpl
from modeldeck.registry.cardfile import load_card_file
from modeldeck.registry.cli import display
from modeldeck.registry.manager import LoadResult, load_plugins
from modeldeck.registry.schema import Card

DEMO = Path(__file__).resolve().parent.parent / "cards" / "tiny-neox.yaml"
LINEAR = 15  # the largest time ratio per 10x N still called linear


def best_seconds(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def card(**source: Any) -> dict[str, Any]:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["source"] |= source
    return data


def with_markers(n: int) -> dict[str, Any]:
    data = card()
    data["tokenizer"]["markers"] = [{"text": f"m{i}", "special": False} for i in range(n)]
    return data


def card_file(folder: Path, n: int) -> Path:
    """The demo card with N revisions, written compactly (a flow list) so 10^5 stay under the 1 MiB file limit."""
    text = DEMO.read_text(encoding="utf-8").replace(
        "  format: safetensors\n",
        "  format: safetensors\n  revisions: [" + ", ".join(f"r{i}" for i in range(n)) + "]\n",
    )
    path = folder / f"revisions-{n}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def shared_repository(n: int) -> LoadResult:
    """N cards sharing source.repo org/shared, registered by one in-process plugin (as a third party would)."""
    base = card(repo="org/shared")

    class Cards:
        @hookimpl
        def register_cards(self, register: Callable[[dict[str, Any]], None]) -> None:
            for i in range(n):
                register({**base, "id": f"c{i}", "aliases": []})

    return load_plugins([("formats", prompt_formats), ("layouts", checkpoint_layouts), ("cards", Cards())])


def listed(loaded: LoadResult) -> list[dict[str, Any]]:
    reg = Registry(loaded)
    assert not reg.errors(), reg.errors()[:3]
    return [display.summary(e) for e in reg.entries()]


def cases(n: int, folder: Path, cli: bool) -> list[tuple[str, Callable[[], object]]]:
    """What each row times at size N (the inputs are built here, outside the timing)."""
    revisions = card(revisions=[f"r{i}" for i in range(n)])
    pins = card(files=[{"path": f"f{i}.bin", "size": i, "sha256": "0" * 64} for i in range(n)])
    markers = with_markers(n)
    path = card_file(folder, n)
    loaded = shared_repository(n)
    found: list[tuple[str, Callable[[], object]]] = [
        ("validate, schema: N revisions", lambda: Card.model_validate(revisions)),
        ("validate, schema: N markers", lambda: Card.model_validate(markers)),
        ("validate, schema: N pinned files", lambda: Card.model_validate(pins)),
        ("validate, card file: N revisions", lambda: load_card_file(path)),
    ]
    if cli:
        cmd = [str(Path(sys.executable).with_name("modeldeck")), "validate", str(path)]
        found.append(("validate, CLI: N revisions", lambda: subprocess.run(cmd, check=True, capture_output=True)))
    found.append(("list, plugins+registry: N cards, one repo", lambda: listed(shared_repository(n))))
    found.append(("list, registry: N cards, one repo", lambda: Registry(loaded).entries()))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs per row")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip `modeldeck validate` processes")
    args = parser.parse_args()
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for name, work in cases(n, Path(tmp), args.cli):
                seconds = best_seconds(work, args.repeat)
                rows.append((name, n, seconds))
                print(f"  {name}, N={n:,}: {seconds:.3f} s", file=sys.stderr, flush=True)
    print("| case | N | seconds | µs per item | ratio to previous N | growth |")
    print("|---|---:|---:|---:|---:|---|")
    order = list(dict.fromkeys(name for name, _, _ in rows))
    runs = {name: [(n, s) for case, n, s in sorted(rows, key=lambda r: r[1]) if case == name] for name in order}
    overall: dict[str, float] = {}
    for name, sizes in runs.items():
        for i, (n, seconds) in enumerate(sizes):
            ratio = growth = ""
            if i:
                (first_n, first_s), (last_n, last_s) = sizes[0], sizes[i - 1]
                ratio = f"{seconds / last_s:.1f}"
                growth = "linear" if per_10x(last_n, last_s, n, seconds) < LINEAR else "faster"
                overall[name] = per_10x(first_n, first_s, n, seconds)
            print(f"| {name} | {n:,} | {seconds:.3f} | {seconds / n * 1e6:.1f} | {ratio} | {growth} |")
    # One step's ratio carries the noise of two timings (and the garbage collector's share, which grows with the
    # objects alive); the verdict is each case's growth from its smallest N to its largest.
    print(f"\ngrowth per 10x N from the smallest to the largest N (linear: below {LINEAR}; quadratic: ~100):")
    for name, ratio in overall.items():
        print(f"  {name}: {ratio:.1f}x per 10x N, {'linear' if ratio < LINEAR else 'NOT linear'}")


def per_10x(n0: int, s0: float, n1: int, s1: float) -> float:
    """The time ratio per 10x N between two sizes."""
    return (s1 / s0) ** (1 / math.log10(n1 / n0))


if __name__ == "__main__":
    main()
