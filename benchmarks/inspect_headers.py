"""How long `modeldeck inspect` and `modeldeck validate CARD --weights` take on a multi-GB checkpoint.

Builds a pythia-2.8b-shaped checkpoint (32 layers, d 2560, 32 heads, ffn 10240, vocab 50304, fp16, GPT-NeoX
tensor names: 2,775,208,960 parameters, 5.55 GB) as a SPARSE safetensors file: the header is written, then the
file is extended with truncate(), so it costs no disk and no 5.5 GB of writes; only the headers are ever read.
Times, median of N:

    in-process   read_checkpoint (what inspect reads) + the JSON report; checkpoint_diagnostics (validate's check)
    processes    `modeldeck inspect DIR`, `inspect DIR --json`, `validate CARD --weights DIR`, and for scale
                 `validate CARD` without weights and `python -c pass`

    .venv/bin/python benchmarks/inspect_headers.py [--repeats 7] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from modeldeck import registry
from modeldeck.registry.checkpoint import read_checkpoint
from modeldeck.registry.cli.checkpoint import inspect_json, weights_diagnostics

SHAPE = {"layers": 32, "hidden": 2560, "heads": 32, "ffn": 10240, "vocab": 50304, "context": 2048}
CARD = "pythia-2.8b"


def neox_shapes(layers: int, hidden: int, ffn: int, vocab: int, **_: int) -> dict[str, tuple[int, ...]]:
    """GPT-NeoX tensor names and shapes (Hugging Face's GPTNeoXForCausalLM, untied head)."""
    shapes: dict[str, tuple[int, ...]] = {"gpt_neox.embed_in.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes |= {p + norm + ".weight": (hidden,), p + norm + ".bias": (hidden,)}
        for name, out, inp in (
            ("attention.query_key_value", 3 * hidden, hidden),
            ("attention.dense", hidden, hidden),
            ("mlp.dense_h_to_4h", ffn, hidden),
            ("mlp.dense_4h_to_h", hidden, ffn),
        ):
            shapes |= {p + name + ".weight": (out, inp), p + name + ".bias": (out,)}
    shapes |= {"gpt_neox.final_layer_norm.weight": (hidden,), "gpt_neox.final_layer_norm.bias": (hidden,)}
    shapes["embed_out.weight"] = (vocab, hidden)
    return shapes


def neox_config(layers: int, hidden: int, heads: int, ffn: int, vocab: int, context: int) -> dict[str, object]:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": context,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }


def write_sparse_checkpoint(directory: Path) -> int:
    """config.json + model.safetensors (F16, every tensor a hole of zeros); returns the file's logical size."""
    directory.mkdir(parents=True, exist_ok=True)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in neox_shapes(**SHAPE).items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = directory / "model.safetensors"
    with path.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        f.truncate(8 + len(encoded) + offset)
    (directory / "config.json").write_text(json.dumps(neox_config(**SHAPE), indent=2) + "\n", encoding="utf-8")
    return path.stat().st_size


def median(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def process(cmd: list[str], expect: int = 0) -> Callable[[], object]:
    def run() -> None:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != expect:
            raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="where to build the checkpoint (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.dir or Path(scratch) / "pythia-2.8b-sparse"
        size = write_sparse_checkpoint(directory)
        allocated = (directory / "model.safetensors").stat().st_blocks * 512
        reg = registry.default()
        card = reg.get(CARD)
        checkpoint = read_checkpoint(directory)
        found = weights_diagnostics(reg, card, directory)
        assert not [d for d in found if d.severity == "error"], [d.render() for d in found]
        print(
            f"checkpoint: {len(checkpoint.tensors)} tensors, {checkpoint.parameters:,} parameters (F16), "
            f"{size / 1e9:.2f} GB logical, {allocated / 1e6:.2f} MB allocated (sparse); card {CARD}"
        )
        py, cli = sys.executable, [sys.executable, "-m", "modeldeck.registry.cli"]
        rows = [
            ("read_checkpoint + inspect JSON (in-process)", lambda: inspect_json(read_checkpoint(directory))),
            ("weights_diagnostics: validate's check (in-process)", lambda: weights_diagnostics(reg, card, directory)),
            ("modeldeck inspect DIR", process([*cli, "inspect", str(directory)])),
            ("modeldeck inspect DIR --json", process([*cli, "inspect", str(directory), "--json"])),
            (
                f"modeldeck validate {CARD} --weights DIR",
                process([*cli, "validate", CARD, "--weights", str(directory)]),
            ),
            (f"modeldeck validate {CARD} (no weights, for scale)", process([*cli, "validate", CARD])),
            ("python -c pass (floor)", process([py, "-c", "pass"])),
        ]
        print(f"\n| what (median of {args.repeats}) | seconds |\n|---|---:|")
        for name, run in rows:
            run()  # warm the page cache and imports' .pyc files
            print(f"| {name} | {median(run, args.repeats):.4f} |")


if __name__ == "__main__":
    main()
