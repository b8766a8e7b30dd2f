"""The GPU check: one prepared job for a lent CUDA machine, every result in one JSON file and one Markdown report.

Why one script: a GPU is lent rarely and for minutes, with no model hub to download from. So everything that needs
one is prepared here to run unattended within a time budget, on random checkpoints built locally in the exact
Hugging Face layout, and each section runs in its own subprocess: a crash, a CUDA error or a hang in one is recorded
(status and error text) and the others still run. The report is rewritten after every section, so whatever
finished survives the machine being taken back.

Sections (`--sections`, run in this order; `--budget-s` is checked between them and bounds each one):

    pytest    `pytest -m gpu -q`: pass / fail / skip counts and the output's tail (full log beside the report)
    roofline  HBM bandwidth measured in this run: a device-to-device copy (read + write), a sum and a GEMV over
              large buffers, GB/s, median of trials; the roofline is the best of the three
    decode    greedy decode tok/s at batch 1 and 32 on a pythia-1.4b-shaped random checkpoint in bfloat16:
              modeldeck (runtime.load + generate_tokens; attention sdpa, and xformers when it can run) against
              transformers (sdpa; and a static cache, which transformers' generate compiles with torch.compile);
              tok/s = (N - 1) x batch / (time of N new tokens - time of 1 new token), so prefill is excluded,
              medians of --trials, torch.cuda.synchronize around every timing; the batch-1 rate as a fraction
              of the roofline (bandwidth / bytes batch-1 decode reads per token)
    prefill   GPT-JX-3B (= BTLM-3B-8K: ALiBi, SwiGLU, muP) random checkpoint, stored in bfloat16 as published and
              loaded in the card's float16: torch.cuda.max_memory_allocated of one 8192-token prefill (chunked as
              generate does it), per attention backend
    planner   registry/memory.py `estimate` (what `modeldeck memory` prints) for that model on CUDA, term by
              term, against what the allocator measured for the same load and generation (a prompt of 8191
              tokens + 1 new token: the 8192-token context, the planner's largest)

Each section ends with a status: ok; partial (some of its rows failed, each row says why); failed (tests failed);
error (it raised or crashed: the error text and the output's tail are kept); timeout (killed at its share of the
budget, what it finished is kept); skipped (not selected, or no time left). The exit status is 0 when every
selected section is ok.

Each section but pytest runs in a worker process of its own (`gpu.py --worker NAME`): roofline is in
benchmarks/gpu_sections.py with the plumbing the workers share, decode in benchmarks/gpu_decode.py, prefill and
planner in benchmarks/gpu_memory.py. This file runs them: the arguments, the order, the budget, the report.

`--dry-run` runs the same plumbing on the CPU with tiny shapes in seconds (CI runs it: tests/test_gpu_benchmark.py);
what needs CUDA (the allocator's peaks, xformers, torch.compile) is skipped there with the reason recorded.

    python benchmarks/gpu.py [--out gpu-results] [--sections decode,planner] [--budget-s 300] [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the section modules beside this file, in every worker

import gpu_decode
import gpu_memory
import gpu_sections
from gpu_sections import REPO, Plan, Result, device_name, failure, make_plan, number, short, table, tail

SECTIONS = ("pytest", "roofline", "decode", "prefill", "planner")
RESERVE_S = {"pytest": 60, "roofline": 10, "decode": 100, "prefill": 40, "planner": 40}  # kept back for later ones
WORKERS: dict[str, Callable[[Plan, Path, Result], None]] = {
    "roofline": gpu_sections.roofline_worker,
    "decode": gpu_decode.decode_worker,
    "prefill": gpu_memory.prefill_worker,
    "planner": gpu_memory.planner_worker,
}


# --- running things under a time limit -----------------------------------------------------------------


@dataclass
class Child:
    returncode: int | None  # None: killed at its time limit
    output: str  # stdout and stderr together


def child_env(plan: Plan) -> dict[str, str]:
    """The sections' environment; a dry run's tiny ops run on one thread (two threads on a busy 2-core machine
    spin against each other and take several times longer)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if plan.dry_run else dict(os.environ)


def run_child(cmd: list[str], timeout: float, env: dict[str, str]) -> Child:
    """Run `cmd` in its own process group; past `timeout` the whole group is killed (torch.compile's workers too)."""
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=max(timeout, 0.01))
            return Child(proc.returncode, output)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                output, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
                output = ""
            return Child(None, output)


def killed(timeout: float) -> str:
    return f"killed after {timeout:.0f} s, its share of --budget-s"


# --- section: pytest -m gpu ------------------------------------------------------------------------------

COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)\b")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's final summary line ("4 passed, 2 skipped, 300 deselected in 12.3s")."""
    for line in reversed(output.splitlines()):
        found = COUNT.findall(line)
        if found and re.search(r"\bin [\d.]+s", line):
            return {kind.rstrip("s") if kind.startswith(("error", "warning")) else kind: int(n) for n, kind in found}
    return {}


def pytest_section(plan: Plan, timeout: float, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider", *plan.pytest_args]
    child = run_child(cmd, timeout, child_env(plan))
    (out / "pytest-gpu.log").write_text(child.output, encoding="utf-8")
    counts = pytest_counts(child.output)
    section: dict[str, Any] = {
        "command": "pytest " + " ".join(cmd[3:]),
        "returncode": child.returncode,
        "counts": counts,
        "summary": ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no summary line",
        "tail": tail(child.output),
    }
    if child.returncode is None:
        section.update(status="timeout", error=killed(timeout))
    elif child.returncode == 0:
        section["status"] = "ok"
    elif child.returncode == 1:
        section.update(status="failed", error=f"tests failed: {section['summary']}")
    else:
        section.update(status="error", error=f"pytest exited {child.returncode}: {tail(child.output, 1)}")
    return section


# --- the workers: one section each, in a process of its own ---------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """One section in this process (started by the parent with --worker): its result goes to WORK/NAME.json."""
    plan = make_plan(args)
    result = Result(Path(args.work) / f"{args.worker}.json")
    try:
        result["device"] = device_name(plan.device)
        WORKERS[args.worker](plan, Path(args.work), result)
        if result["status"] == "running":
            result["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded for the report; the other sections still run
        result.update(status="error", **failure(exc))
    result.save()
    return 0 if result["status"] == "ok" else 1


def worker_section(name: str, plan: Plan, args: argparse.Namespace, work: Path, timeout: float) -> dict[str, Any]:
    path = work / f"{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(work)]
    cmd += ["--trials", str(args.trials or 0), "--new-tokens", str(args.new_tokens or 0)]
    if args.dry_run:
        cmd.append("--dry-run")
    child = run_child(cmd, timeout, child_env(plan))
    (args.out / f"{name}.log").write_text(child.output, encoding="utf-8")
    section: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if child.returncode is None:
        section.update(status="timeout", error=killed(timeout))
        for row in section.get("rows", []):
            if not any(key in row for key in ("tok_s", "seconds", "skipped", "error")):
                row["error"] = "not finished: the section was killed at its time limit"
    elif section.get("status", "running") == "running":
        how = f"was killed by signal {-child.returncode}" if child.returncode < 0 else f"exited {child.returncode}"
        section.update(status="error", error=f"the worker {how} without a result: {tail(child.output, 1)}")
    if section["status"] != "ok":
        section["tail"] = tail(child.output)
    return section


# --- the run: sections within the budget, then the report -----------------------------------------------


def section_timeout(name: str, remaining: float, later: list[str]) -> float:
    """What is left minus what the later sections are expected to need, but at least this section's own share."""
    return max(remaining - sum(RESERVE_S[s] for s in later), min(remaining, RESERVE_S[name]))


def environment() -> dict[str, Any]:
    versions = {}
    for package in ("modeldeck", "torch", "transformers", "xformers", "safetensors", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(), **versions}


def run_sections(args: argparse.Namespace, plan: Plan, work: Path) -> dict[str, Any]:
    began = time.monotonic()
    report: dict[str, Any] = {
        "script": "benchmarks/gpu.py",
        "argv": sys.argv[1:],
        "dry_run": plan.dry_run,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
        "environment": environment(),
        "sections": {name: {"status": "skipped", "reason": "not selected (--sections)"} for name in SECTIONS},
    }
    selected = [name for name in SECTIONS if name in args.sections]
    for i, name in enumerate(selected):
        used = time.monotonic() - began
        if used >= args.budget_s:
            reason = f"over the time budget: {used:.1f} s of --budget-s {args.budget_s:g} used"
            report["sections"][name] = {"status": "skipped", "reason": reason}
            continue
        timeout = section_timeout(name, args.budget_s - used, selected[i + 1 :])
        start = time.monotonic()
        if name == "pytest":
            section = pytest_section(plan, timeout, args.out)
        else:
            section = worker_section(name, plan, args, work, timeout)
        section["seconds"] = time.monotonic() - start
        report["sections"][name] = section
        report["seconds"] = time.monotonic() - began
        write_report(report, args.out)  # after every section: what finished survives what comes next
    report["seconds"] = time.monotonic() - began
    return report


def write_report(report: dict[str, Any], out: Path) -> str:
    markdown = render(report)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "gpu.md").write_text(markdown, encoding="utf-8")
    return markdown


# --- the Markdown report ----------------------------------------------------------------------------------


def outcome(name: str, section: dict[str, Any]) -> str:
    """One line for the sections table: the headline of a section that ran, or why it did not."""
    if section["status"] == "skipped":
        return str(section.get("reason", ""))
    if section["status"] not in ("ok", "partial"):
        return short(section.get("error", ""))
    found = HEADLINES[name](section)
    return short(f"{found}; {section['error']}" if section.get("error") else found)


def pytest_headline(section: dict[str, Any]) -> str:
    return str(section["summary"])


HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "pytest": pytest_headline,
    "roofline": gpu_sections.roofline_headline,
    "decode": gpu_decode.decode_headline,
    "prefill": gpu_memory.prefill_headline,
    "planner": gpu_memory.planner_headline,
}


def header_lines(report: dict[str, Any]) -> list[str]:
    env, sections = report["environment"], report["sections"]
    device = next((s["device"] for s in sections.values() if "device" in s), "device not reached")
    versions = ", ".join(f"{p} {env[p]}" for p in ("transformers", "xformers", "modeldeck") if env.get(p))
    lines = [
        f"GPU check (`benchmarks/gpu.py`): {device}; Python {env['python']}, {versions}; started "
        f"{report['started']}, {report.get('seconds', 0):.0f} s of a {report['budget_s']:g} s budget."
    ]
    if report["dry_run"]:
        lines.append("**Dry run on the CPU with tiny shapes: it checks the plumbing; its numbers measure nothing.**")
    return lines


def render(report: dict[str, Any]) -> str:
    sections = report["sections"]
    rows = [[name, s["status"], number(s.get("seconds")), outcome(name, s)] for name, s in sections.items()]
    lines = [*header_lines(report), "", *table(["section", "status", "seconds", "result"], rows, "llrl")]
    for part in (gpu_decode.decode_lines, gpu_memory.prefill_lines, gpu_memory.planner_lines):
        if found := part(report):
            lines += ["", *found]
    return "\n".join(lines) + "\n"


# --- the command line -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "gpu-results", help="folder for gpu.json, gpu.md, logs")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=300.0, help="overall time budget, checked between sections")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: the plumbing, for CI")
    parser.add_argument("--trials", type=int, default=None, help="timed trials per measurement (median; default 3)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per decode (default 64)")
    parser.add_argument("--checkpoints", type=Path, help="keep (and reuse) the random checkpoints here")
    for hidden in ("--worker", "--work"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        if args.worker not in WORKERS:
            parser.error(f"--worker {args.worker!r}: not a worker section")
        args.trials, args.new_tokens = args.trials or None, args.new_tokens or None
        return args
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := [s for s in names if s not in SECTIONS]:
        parser.error(f"unknown section(s) {', '.join(unknown)} in --sections; choose from {', '.join(SECTIONS)}")
    if not names:
        parser.error(f"--sections names no section; choose from {', '.join(SECTIONS)}")
    args.sections = names
    if not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s:g}")
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    if args.new_tokens is not None and args.new_tokens < 2:
        parser.error(f"--new-tokens must be at least 2 (tok/s excludes the first), got {args.new_tokens}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    plan = make_plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.checkpoints or Path(tempfile.mkdtemp(prefix="modeldeck-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run_sections(args, plan, work)
    finally:
        if args.checkpoints is None:
            shutil.rmtree(work, ignore_errors=True)
    print(write_report(report, args.out), end="")
    selected = [report["sections"][name]["status"] for name in args.sections]
    return 0 if all(status == "ok" for status in selected) else 1


if __name__ == "__main__":
    sys.exit(main())
