"""benchmarks/gpu.py, the prepared GPU check, through its --dry-run: on the CPU with tiny shapes, what CI can check
without a GPU (argument handling, every section's plumbing in its own process, the budget, the JSON and Markdown
report). Nothing here needs CUDA, so nothing is marked `gpu`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
SECTIONS = ["pytest", "roofline", "decode", "prefill", "planner"]
ENGINES = [
    ("modeldeck", "sdpa"),
    ("modeldeck", "xformers"),
    ("modeldeck", "sdpa, CUDA graphs"),
    ("transformers", "sdpa"),
    ("transformers", "sdpa, static cache + torch.compile"),
]


def run_gpu_py(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One whole dry run: (the finished process, gpu.json, gpu.md)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("gpu-results")
    done = run_gpu_py("--dry-run", "--out", str(out))
    assert (out / "gpu.json").is_file(), done.stdout + done.stderr
    return done, json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def table_rows(markdown: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows' cells) of the Markdown table whose header line begins with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    header = [c.strip() for c in lines[start].strip().strip("|").split(" | ")]
    assert set(lines[start + 1].strip("|").split("|")) <= {"---", "---:"}  # the alignment row
    return header, body


def test_the_dry_run_passes_and_prints_the_report_it_wrote(dry_run):
    done, report, markdown = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert markdown in done.stdout
    assert report["dry_run"] is True and report["budget_s"] == 300
    assert "Dry run on the CPU" in markdown


def test_every_section_ran_and_recorded_what_it_found(dry_run):
    _, report, _ = dry_run
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("tail"))
        assert section["seconds"] > 0

    pytest_run = sections["pytest"]
    assert pytest_run["returncode"] == 0 and pytest_run["counts"]["skipped"] >= 1  # the gpu tests skip on the CPU
    assert "skipped" in pytest_run["summary"]

    roofline = sections["roofline"]
    assert set(roofline["gb_s"]) == {"copy", "sum", "gemv"} and all(v > 0 for v in roofline["gb_s"].values())
    assert roofline["roofline_gb_s"] == max(roofline["gb_s"].values())

    decode = sections["decode"]
    assert decode["bytes_per_token"] > 0 and decode["batches"] == [1, 32]
    rows = {(r["engine"], r["attention"], r["static_compile"]): r for r in decode["rows"]}
    assert len(rows) == 5
    assert "CUDA" in rows["modeldeck", "xformers", False]["skipped"]  # skipped, saying why
    assert "CUDA" in rows["modeldeck", "sdpa", True]["skipped"]  # CUDA graphs
    for key in [("modeldeck", "sdpa", False), ("transformers", "sdpa", False), ("transformers", "sdpa", True)]:
        assert "error" not in rows[key], rows[key]["error"]
        assert len(rows[key]["tokens_b1"]) == decode["new_tokens"]
        assert set(rows[key]["tok_s"]) == {"b1", "b32"}
    assert rows["transformers", "sdpa", True]["compiled"] is False  # transformers compiles only on accelerators

    prefill = sections["prefill"]
    [row] = prefill["rows"]
    assert row["backend"] == "sdpa" and row["finite"] and row["seconds"] > 0
    assert "needs CUDA" in row["memory"] and "xformers not measured" in prefill["note"]

    planner = sections["planner"]
    [row] = planner["rows"]
    estimate = row["estimate"]
    assert estimate["total"] >= estimate["weights"] + estimate["kv_cache"] > 0
    assert row["measured"] is None and "needs CUDA" in row["reason"]
    assert planner["scenario"]["prompt"] + planner["scenario"]["new_tokens"] == planner["scenario"]["context"]


def test_the_markdown_report_has_the_tables_a_readme_takes(dry_run):
    _, report, markdown = dry_run
    header, rows = table_rows(markdown, "| section |")
    assert header == ["section", "status", "seconds", "result"]
    assert [r[:2] for r in rows] == [[name, "ok"] for name in SECTIONS]

    header, rows = table_rows(markdown, "| engine |")
    assert header[:6] == ["engine", "attention", "tok/s b1", "tok/s b32", "b1 / roofline", "b1 greedy = modeldeck sdpa"]
    assert [tuple(r[:2]) for r in rows] == ENGINES
    assert all(len(r) == len(header) for r in rows)
    assert rows[1][-1].startswith("skipped: ") and rows[2][-1].startswith("skipped: ")  # xformers, graphs: why
    if report["sections"]["decode"]["rows"][0]["tok_s"]["b1"]:  # None only when the decode time was within noise
        assert rows[0][4].endswith("%")  # batch 1 as a share of the roofline measured in the same run

    header, rows = table_rows(markdown, "| backend | peak GB |")
    assert header == ["backend", "peak GB", "working memory GB", "working / one bias", "time s"]
    assert rows[0][:2] == ["sdpa", "n/a"]  # no CUDA allocator on the CPU

    header, rows = table_rows(markdown, "| backend | weights |")
    assert header[-1] == "estimate / measured" and len(rows) == 1
    assert rows[0][1].endswith(" / n/a")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sections", "decode,warp"], "unknown section(s) warp in --sections; choose from pytest, roofline"),
        (["--sections", ","], "--sections names no section"),
        (["--budget-s", "-5"], "--budget-s must be a positive number of seconds, got -5"),
        (["--budget-s", "0"], "--budget-s must be a positive number of seconds, got 0"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_clear_message(tmp_path, args, message):
    done = run_gpu_py("--dry-run", "--out", str(tmp_path / "out"), *args, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_unselected_sections_and_an_exhausted_budget_are_recorded(tmp_path):
    done = run_gpu_py("--dry-run", "--out", str(tmp_path), "--sections", "roofline,planner", "--budget-s", "0.2")
    assert done.returncode == 1  # not every selected section is ok
    sections = json.loads((tmp_path / "gpu.json").read_text())["sections"]
    assert list(sections) == SECTIONS
    for name in ("pytest", "decode", "prefill"):
        assert sections[name] == {"status": "skipped", "reason": "not selected (--sections)"}
    assert sections["roofline"]["status"] == "timeout"  # killed at its share of the budget
    assert "its share of --budget-s" in sections["roofline"]["error"]
    assert sections["planner"]["status"] == "skipped" and "over the time budget" in sections["planner"]["reason"]
    markdown = (tmp_path / "gpu.md").read_text()
    assert "| roofline | timeout |" in markdown and "| planner | skipped |" in markdown


def test_a_failing_section_is_recorded_with_its_error_and_the_others_still_run(tmp_path):
    """A broken checkpoint where decode's tiny pythia is kept (--checkpoints): every engine fails to load it, each
    row says why, and the prefill section after it still runs."""
    broken = tmp_path / "checkpoints" / "pythia-tiny-random"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    out = tmp_path / "out"
    done = run_gpu_py(
        "--dry-run", "--out", str(out), "--sections", "decode,prefill", "--checkpoints", str(broken.parent)
    )
    assert done.returncode == 1
    sections = json.loads((out / "gpu.json").read_text())["sections"]
    decode = sections["decode"]
    assert decode["status"] == "error" and "modeldeck sdpa: " in decode["error"]
    rows = {(r["engine"], r["static_compile"]): r for r in decode["rows"] if r["attention"] == "sdpa"}
    assert "no weights file" in rows["modeldeck", False]["error"]  # the loader's own words
    assert rows["transformers", False]["error"] and rows["transformers", True]["error"]
    assert sections["prefill"]["status"] == "ok"
    markdown = (out / "gpu.md").read_text()
    assert "| decode | error |" in markdown and "| prefill | ok |" in markdown
