"""How long the registry takes to be useful: import, plugin discovery, and whole CLI commands.

Compared with importing transformers (what a transformers-based tool pays before it can read a
model card) and with a bare `python -c pass` (the floor on this machine). Median of N runs, each a
fresh interpreter, so nothing is cached in-process.

    .venv/bin/python benchmarks/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    py = sys.executable
    modeldeck = str(Path(py).with_name("modeldeck"))  # the script beside this interpreter
    cases = [
        ("python -c pass (floor)", [py, "-c", "pass"]),
        ("import modeldeck.registry", [py, "-c", "import modeldeck.registry"]),
        ("load all plugins + their cards (21)", [py, "-c", "from modeldeck import registry; registry.cards()"]),
        ("modeldeck list", [modeldeck, "list"]),
        ("modeldeck validate", [modeldeck, "validate"]),
        ("import transformers", [py, "-c", "import transformers"]),
        ("transformers AutoConfig (offline)", [py, "-c", "from transformers import AutoConfig, GPTNeoXConfig"]),
    ]
    results = [(name, median_seconds(cmd, runs)) for name, cmd in cases]
    transformers = dict(results)["import transformers"]
    print(f"| what (median of {runs} fresh processes) | seconds | vs import transformers |")
    print("|---|---:|---:|")
    for name, seconds in results:
        print(f"| {name} | {seconds:.3f} | {seconds / transformers:.2f}x |")


if __name__ == "__main__":
    main()
