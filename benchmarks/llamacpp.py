"""llama.cpp as a third engine beside modeldeck and transformers: GGUF conversion and batch-1 greedy decode timing.

llama.cpp is the usual yardstick for CPU decoding, so benchmarks/decode.py can put it in the same table. It lives in
its own benchmark-only environment, .venv-llamacpp (scripts/llama-cpp-env: llama-cpp-python compiled for this CPU,
plus the Hugging Face -> GGUF converter from the same llama.cpp). This module runs on either interpreter: the
functions below are called from the project's .venv and run everything llama.cpp in a subprocess under
.venv-llamacpp/bin/python (the measuring one is this file, with --worker).

    convert(hf_dir, out, outtype)   config.json + model.safetensors + tokenizer.json -> GGUF (f32, f16 or q8_0),
                                    with llama.cpp's convert_hf_to_gguf.py; skipped when `out` exists
    measure(gguf, prompt_ids, ...)  load with llama_cpp.Llama, evaluate the prompt, then greedy-decode exactly N
                                    tokens one at a time (argmax of the last logits, eos never stops it); prefill
                                    seconds (prompt through the first token) and tok/s = (N - 1) / time after the
                                    first token, best of --repeats; the greedy tokens of the first repeat
    available()                     None when .venv-llamacpp works, else the line to print instead of numbers

    .venv/bin/python benchmarks/llamacpp.py --checkpoint DIR [--outtype q8_0] [--new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV = REPO / ".venv-llamacpp"
PYTHON = ENV / "bin" / "python"
CONVERTER = ENV / "convert" / "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "q8_0")
SETUP = "scripts/llama-cpp-env"
# The converter finds the model class by config.json's `architectures`, which a config saved on its own (not by
# save_pretrained of a model) lacks.
ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM"}


def available() -> str | None:
    """None when .venv-llamacpp can convert and run models, else why not (a line to print in place of numbers)."""
    if not PYTHON.exists():
        return f"skipped: run {SETUP} ({ENV.name} is absent)"
    if not CONVERTER.exists():
        return f"skipped: run {SETUP} ({CONVERTER.relative_to(REPO)} is absent)"
    probe = subprocess.run(
        [str(PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"skipped: run {SETUP} (llama_cpp does not import: {last})"
    return None


# --- conversion -------------------------------------------------------------------------------------


def gguf_path(hf_dir: Path, outtype: str) -> Path:
    """Where the CLI keeps a checkpoint's GGUF: beside the checkpoint directory, so the directory stays as written."""
    return hf_dir.parent / f"{hf_dir.name}-{outtype}.gguf"


def converter_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as the converter reads it.

    transformers 5 writes GPT-NeoX's rotary settings as rope_parameters, while the converter (and the transformers
    4.57 it runs on) reads rotary_pct and rotary_emb_base; without them 4.57 falls back to its defaults silently.
    """
    config = dict(config)
    if not config.get("architectures"):
        model_type = config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"config.json has no `architectures`; model_type {model_type!r} is not in {sorted(ARCHITECTURES)}"
            )
        config["architectures"] = [ARCHITECTURES[model_type]]
    rope = config.get("rope_parameters") or {}
    if "partial_rotary_factor" in rope:
        config.setdefault("rotary_pct", rope["partial_rotary_factor"])
    if "rope_theta" in rope:
        config.setdefault("rotary_emb_base", rope["rope_theta"])
    return config


def convert(hf_dir: Path, out: Path, outtype: str) -> Path:
    """Convert a Hugging Face checkpoint to GGUF with llama.cpp's converter; a no-op when `out` already exists.

    The converter reads a staged copy of the checkpoint (links to its files and a config.json it understands, see
    converter_config) and writes `out` under a temporary name first, so an interrupted run leaves nothing to reuse.
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: choose from {', '.join(OUTTYPES)}")
    if out.exists():
        return out
    if reason := available():
        raise RuntimeError(reason)
    hf_dir = hf_dir.resolve()
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with tempfile.TemporaryDirectory(prefix="llamacpp-stage-") as tmp:
        stage = Path(tmp) / hf_dir.name  # the converter names the model (general.name) after its directory
        stage.mkdir()
        for item in hf_dir.iterdir():
            if item.name != "config.json":
                (stage / item.name).symlink_to(item)
        (stage / "config.json").write_text(json.dumps(converter_config(config), indent=2), encoding="utf-8")
        cmd = [str(PYTHON), str(CONVERTER), str(stage), "--outfile", str(partial), "--outtype", outtype]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} ({outtype}):\n{done.stderr[-3000:]}")
    partial.replace(out)
    return out


# --- measurement ------------------------------------------------------------------------------------


def measure(gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int, repeats: int) -> dict[str, Any]:
    """Batch-1 greedy decode with llama.cpp in a fresh .venv-llamacpp process; see the module docstring."""
    if new_tokens < 2 or repeats < 1 or not prompt_ids:
        raise ValueError("needs a prompt, new_tokens >= 2 (tok/s counts the tokens after the first) and repeats >= 1")
    if reason := available():
        raise RuntimeError(reason)
    spec = {
        "gguf": str(gguf.resolve()),
        "prompt_ids": prompt_ids,
        "new_tokens": new_tokens,
        "threads": threads,
        "repeats": repeats,
    }
    done = subprocess.run(
        [str(PYTHON), __file__, "--worker"], input=json.dumps(spec), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp on {gguf} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs under .venv-llamacpp/bin/python: load, then `repeats` timed greedy decodes."""
    start = time.perf_counter()
    import llama_cpp  # type: ignore[import-not-found]  # installed in .venv-llamacpp only
    import numpy as np

    prompt: list[int] = spec["prompt_ids"]
    new_tokens: int = spec["new_tokens"]
    imported = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        n_ctx=len(prompt) + new_tokens,
        n_batch=len(prompt),  # the whole prompt in one decode call
        verbose=False,
        logits_all=False,  # only the last position's logits: all greedy decoding needs
    )
    loaded = time.perf_counter()
    vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(logits.argmax())

    def generate() -> tuple[float, float, list[int]]:
        llm.reset()  # the next eval drops the KV cache from position 0
        began = time.perf_counter()
        llm.eval(prompt)
        tokens = [next_token()]
        first = time.perf_counter()
        while len(tokens) < new_tokens:
            llm.eval(tokens[-1:])
            tokens.append(next_token())
        return first - began, time.perf_counter() - first, tokens

    runs = [generate() for _ in range(spec["repeats"])]
    return {
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "gguf": spec["gguf"],
        "threads": spec["threads"],
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "import_s": imported - start,
        "load_s": loaded - imported,
        "prefill_b1_s": min(prefill for prefill, _, _ in runs),
        "tok_s_b1": max((new_tokens - 1) / decode for _, decode, _ in runs),
        "tokens_b1": runs[0][2],
        "repeats_agree": all(tokens == runs[0][2] for _, _, tokens in runs),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


# --- command line -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a Hugging Face checkpoint directory (config.json, ...)")
    parser.add_argument("--outtype", choices=OUTTYPES, default="q8_0")
    parser.add_argument("--gguf", type=Path, help="where the GGUF is (or goes); default: beside the checkpoint")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the timings")
    parser.add_argument("--prompt-ids", help="comma-separated token ids; default: 32 seeded random ids")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.load(sys.stdin))))
        return
    if reason := available():
        sys.exit(reason)
    if args.checkpoint is None and args.gguf is None:
        parser.error("give --checkpoint (converted on first use) or --gguf")
    if args.checkpoint is not None:
        gguf = convert(args.checkpoint, args.gguf or gguf_path(args.checkpoint, args.outtype), args.outtype)
    else:
        gguf = args.gguf
    if args.prompt_ids:
        prompt = [int(token) for token in args.prompt_ids.split(",")]
    else:
        rng = random.Random(0)
        prompt = [rng.randrange(2, 50000) for _ in range(32)]
    result = measure(gguf, prompt, args.new_tokens, args.threads, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
