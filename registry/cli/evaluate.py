"""`modeldeck eval`: lm-evaluation-harness tasks on a card, over one or several of its revisions, as one table.

Each revision is loaded in turn and freed before the next (runtime/evaluation.py), so a researcher can follow a
model through training (`modeldeck eval pythia-160m --tasks lambada_openai --revisions step1000,step143000`). Where
the card reports a result for the same task and metric (its `evaluation` section), the table shows it beside.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from modeldeck.registry.cli.common import err, find_card, json_text, out, report_errors
from modeldeck.registry.cli.options import load_options_except
from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import Card

__all__ = ["COMMANDS", "result_rows"]

SKIPPED = {"alias", "name", "sample_len", "samples", " "}


def _names(value: str, option: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter(f"give one name or several separated by commas, got {value!r}", param_hint=option)
    return names


@click.command("eval")
@click.argument("name")
@click.option("--tasks", required=True, help="lm-eval task names (groups and tags too), comma-separated.")
@click.option("--revisions", help="Revisions the card lists, comma-separated (default: the card's own).")
@load_options_except("revision")
@click.option("--limit", type=click.FloatRange(min=0, min_open=True), help="Documents per task (below 1: a fraction).")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples (default: the task's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Requests per pass.")
@click.option(
    "--include-path",
    type=click.Path(exists=True, file_okay=False),
    multiple=True,
    help="A folder of task YAML files of your own (repeatable).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@report_errors
def eval_command(name: str, tasks: str, revisions: str | None, **options: Any) -> None:
    """Evaluate card NAME (an id or a card file) with lm-evaluation-harness (the `eval` extra) on --tasks, for
    each of --revisions in turn, and print one table (value ± stderr per revision)."""
    card, _ = find_card(name)  # an unknown card fails here, before lm-eval and torch are imported
    output, force = options.pop("output"), options.pop("force")
    if output is not None and output.exists() and not force:
        raise ModeldeckError(f"--output {output} exists; choose another file, or add --force to overwrite it")
    task_names, wanted = _names(tasks, "--tasks"), _names(revisions, "--revisions") if revisions else [None]
    from modeldeck.runtime import evaluation  # lm-eval and torch are imported here

    def announce(index: int, revision: str | None) -> None:
        which = revision or card.source.revision
        err.print(f"[{index + 1}/{len(wanted)}] {card.id} @ {which}: loading, then evaluating", markup=False)

    runs = evaluation.evaluate(
        name,
        task_names,
        revisions=list(wanted),
        weights=options.pop("weights"),
        limit=options.pop("limit"),
        num_fewshot=options.pop("num_fewshot"),
        batch_size=options.pop("batch_size"),
        include_path=list(options.pop("include_path")) or None,
        on_revision=announce,
        **options,
    )
    labels = [run.revision or card.source.revision for run in runs]
    out.print(results_table(card, labels, [run.results for run in runs]))
    truncated = {label: run.truncated for label, run in zip(labels, runs, strict=True) if run.truncated}
    if truncated:
        err.print(
            f"note: contexts longer than the {card.architecture.context_length}-token window were cut from the left "
            f"(tokens cut: {', '.join(f'{k} {v:,}' for k, v in truncated.items())})",
            markup=False,
        )
    if output is not None:
        report = {
            "card": card.id,
            "tasks": task_names,
            "runs": [
                {"revision": label, "results": run.results, "versions": run.versions, "n-shot": run.n_shot}
                | {"truncated_tokens": run.truncated}
                for label, run in zip(labels, runs, strict=True)
            ],
        }
        output.write_text(json_text(report, default=str) + "\n", encoding="utf-8")
        err.print(f"wrote {output}", markup=False)


def result_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, float | None]]:
    """lm-eval's results ({task: {"acc,none": v, "acc_stderr,none": s, ...}}) as (task, metric, value, stderr);
    a filter other than lm-eval's "none" is part of the metric's name ("exact_match (strict-match)")."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filtered = key.partition(",")
            if key in SKIPPED or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filtered}")
            label = metric if filtered in ("none", "") else f"{metric} ({filtered})"
            rows.append((task, label, float(value), stderr if isinstance(stderr, (int, float)) else None))
    return rows


def _card_value(card: Card, task: str, metric: str) -> str:
    for result in card.evaluation:
        if result.task == task and result.metric == metric:
            scale = 100 if result.unit == "percent" else 1  # lm-eval reports fractions
            shown = f"{result.value / scale:.4f}"
            return shown + (f" ± {result.stderr / scale:.4f}" if result.stderr is not None else "")
    return ""


def results_table(card: Card, labels: list[str], results: list[dict[str, dict[str, Any]]]) -> Table:
    """One row per (task, metric), one column per revision, and the card's own number where it states one."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for heading in ("task", "metric", *labels):
        table.add_column(Text(heading))
    cells: dict[tuple[str, str], list[str]] = {}
    for column, each in enumerate(results):
        for task, metric, value, stderr in result_rows(each):
            row = cells.setdefault((task, metric), [""] * len(results))
            shown = "nan" if math.isnan(value) else f"{value:.4f}"
            row[column] = shown + (f" ± {stderr:.4f}" if stderr is not None and not math.isnan(stderr) else "")
    stated = {key: _card_value(card, *key) for key in cells}
    if any(stated.values()):
        table.add_column(Text(f"card ({card.id})"))
    for (task, metric), row in cells.items():
        extra = [stated[(task, metric)]] if any(stated.values()) else []
        table.add_row(*(Text(cell) for cell in (task, metric, *row, *extra)))
    return table


COMMANDS: list[click.Command] = [eval_command]
