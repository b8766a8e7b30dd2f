"""What benchmarks/gpu.py's section workers share: what one run measures (the Plan), the plumbing every worker
uses (its Result file, timing, checkpoints built once, rows that fail one by one), the Markdown helpers the
sections render with, and the smallest section, roofline.

A worker runs in a process of its own (`gpu.py --worker NAME`) and writes its Result after every step. The decode
section is in benchmarks/gpu_decode.py, prefill and planner (GPT-JX-3B) in benchmarks/gpu_memory.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decode_worker import SHAPES

REPO = Path(__file__).resolve().parent.parent
TOKENIZERS = REPO.parent / "shared" / "reference" / "tokenizers"
GB = 10**9
TINY_PYTHIA = {"layers": 2, "hidden_size": 64, "heads": 4, "ffn_size": 256}
TINY_JX = {"layers": 2, "hidden_size": 64, "heads": 8, "kv_heads": 8, "ffn_size": 170, "context_length": 512}


@dataclass(frozen=True)
class Plan:
    """What one run measures: full sizes on CUDA, or tiny ones on the CPU (--dry-run)."""

    dry_run: bool
    device: str
    decode_dtype: str
    pythia: dict[str, int]
    batches: tuple[int, ...]
    new_tokens: int
    trials: int
    jx: dict[str, int] | None  # architecture changes to the gpt-jx-3b card (None: the card as it is)
    jx_dtype: str
    bandwidth_mib: int
    pytest_args: tuple[str, ...]


def make_plan(args: argparse.Namespace) -> Plan:
    if args.dry_run:
        return Plan(
            dry_run=True,
            device="cpu",
            decode_dtype="float32",
            pythia=TINY_PYTHIA,
            batches=(1, 32),
            new_tokens=args.new_tokens or 8,
            trials=args.trials or 1,
            jx=TINY_JX,
            jx_dtype="float32",
            bandwidth_mib=64,
            pytest_args=("tests/test_attention.py",),  # its gpu tests, skipped here: pytest's plumbing only
        )
    return Plan(
        dry_run=False,
        device="cuda",
        decode_dtype="bfloat16",
        pythia=SHAPES["1.4b"],
        batches=(1, 32),
        new_tokens=args.new_tokens or 64,
        trials=args.trials or 3,
        jx=None,
        jx_dtype="float16",  # the card's dtype (the published checkpoint is bfloat16)
        bandwidth_mib=4096,
        pytest_args=(),
    )


def tail(text: str, lines: int = 30, chars: int = 4000) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def failure(exc: BaseException) -> dict[str, str]:
    """What a result or row keeps of the exception being handled: its text and its traceback's tail."""
    return {"error": describe(exc), "traceback": tail(traceback.format_exc())}


# --- what every worker uses -------------------------------------------------------------------------------


class Result(dict[str, Any]):
    """A worker's result, rewritten to its file after every step (a worker killed at its time limit leaves the
    steps it finished for the report)."""

    def __init__(self, path: Path) -> None:
        super().__init__(status="running")
        self.path = path

    def save(self) -> None:
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self, indent=2, default=str), encoding="utf-8")
        partial.replace(self.path)


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else lambda: None


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
        )
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''}), torch {torch.__version__}"


def free_memory(device: str) -> None:
    """Give what the last engine held back to the device (on the CPU, nothing to gain: a full gc costs seconds)."""
    if device == "cuda":
        import torch

        gc.collect()
        torch.cuda.empty_cache()


def timed(sync: Callable[[], None], fn: Callable[..., Any], *args: Any) -> float:
    sync()
    start = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - start


def measure_row(
    plan: Plan,
    result: Result,
    row: dict[str, Any],
    measure: Callable[..., dict[str, Any]],
    *args: Any,
    keep_traceback: bool = False,
) -> None:
    """row.update(measure(*args)), or the error it raised (the next row still runs); then the memory it held is
    given back and the result saved."""
    try:
        row.update(measure(*args))
    except Exception as exc:  # noqa: BLE001 - recorded; the next row still runs
        row.update(failure(exc) if keep_traceback else {"error": describe(exc)})
    free_memory(plan.device)
    result.save()


def settle(result: Result, errors: list[str], measured: bool) -> None:
    """The section's status when some of its rows failed: partial when others measured something, else error."""
    if errors:
        result.update(status="partial" if measured else "error", error="; ".join(errors))


def build_once(directory: Path, write: Callable[[Path], None]) -> None:
    """Write a checkpoint folder unless it is there; built under another name and renamed, so a folder that
    exists is complete (a worker killed mid-write leaves only the partial one, rebuilt next time)."""
    if directory.is_dir():
        return
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    partial.rename(directory)


def write_tokenizer(directory: Path, card: Any, reference: str) -> str:
    """tokenizer.json: the real one when ../shared/reference is beside the clone, else a stand-in holding only the
    card's special tokens (runtime.load reads a tokenizer; these benchmarks use token ids, never text)."""
    source = TOKENIZERS / reference / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, directory / "tokenizer.json")
        return f"{reference} (from {TOKENIZERS})"
    from tokenizers import Tokenizer, models

    special = card.tokenizer.declared_special()
    Tokenizer(models.WordLevel(special, unk_token=card.tokenizer.eos.text)).save(str(directory / "tokenizer.json"))
    return f"stand-in with the card's {len(special)} special tokens ({TOKENIZERS} is absent)"


def random_tensor(shape: tuple[int, ...], std: float, dtype: Any, device: str, generator: Any) -> Any:
    """N(0, std) drawn on the device (fast on a GPU), stored on the host in `dtype`."""
    import torch

    return torch.empty(shape, device=device).normal_(0.0, std, generator=generator).to(dtype).cpu()


def xformers_unavailable(plan: Plan, dtype: str) -> str | None:
    """Why the xformers backend cannot run here (None: it can), in the runtime's own words."""
    import torch

    from modeldeck.runtime.attention import choose_backend

    try:
        choose_backend("xformers", torch.device(plan.device), getattr(torch, dtype))
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        return str(exc)
    return None


# --- section: roofline -----------------------------------------------------------------------------------


def roofline_worker(plan: Plan, work: Path, result: Result) -> None:
    import torch

    sync = synchronizer(plan.device)
    size = plan.bandwidth_mib * 2**20
    x = torch.ones(size // 4, device=plan.device)
    y = torch.empty_like(x)
    half = torch.bfloat16 if plan.device == "cuda" else torch.float32
    w = torch.ones(size // (8192 * half.itemsize), 8192, dtype=half, device=plan.device)
    v = torch.ones(8192, dtype=half, device=plan.device)
    cases = {"copy": (lambda: y.copy_(x), 2 * size), "sum": (lambda: x.sum(), size), "gemv": (lambda: w @ v, size)}
    trials = 3 if plan.dry_run else 10
    result.update(buffer_bytes=size, trials=trials, gb_s={}, best_gb_s={})
    for name, (fn, moved) in cases.items():
        timed(sync, fn)  # warm-up
        times = [timed(sync, fn) for _ in range(trials)]
        result["gb_s"][name] = moved / statistics.median(times) / GB
        result["best_gb_s"][name] = moved / min(times) / GB
        result.save()
    result["roofline_gb_s"] = max(result["gb_s"].values())


# --- the Markdown helpers -------------------------------------------------------------------------------------


def cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(header: list[str], rows: list[list[Any]], align: str) -> list[str]:
    """A Markdown table; `align` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / GB:.2f}"


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def roofline_headline(section: dict[str, Any]) -> str:
    return ", ".join(f"{kind} {rate:,.0f} GB/s" for kind, rate in section.get("gb_s", {}).items())
