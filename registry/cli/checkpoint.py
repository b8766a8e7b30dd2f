"""Checkpoint inspection without loading: `modeldeck inspect DIR` (and the weights check of `validate --weights`).

Both read only the safetensors headers and config.json (registry/checkpoint.py): no torch, no weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from modeldeck.registry.catalog import Registry
from modeldeck.registry.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_checkpoint,
    mismatch_hint,
    read_checkpoint,
)
from modeldeck.registry.cli.common import json_text, out, report_errors
from modeldeck.registry.cli.display import human_bytes
from modeldeck.registry.diagnostics import Diagnostic
from modeldeck.registry.schema import Card

__all__ = ["COMMANDS", "inspect_json", "weights_diagnostics"]


def weights_diagnostics(reg: Registry, card: Card, directory: Path) -> list[Diagnostic]:
    """`modeldeck validate CARD --weights DIR`: check_checkpoint's problems as diagnostics (where: the weight file,
    config.json or the folder; field: the card field concerned). A checkpoint that cannot be read is an error."""
    layout = reg.checkpoint_layouts()[card.architecture.checkpoint_layout]
    try:
        checkpoint = read_checkpoint(directory)
    except CheckpointError as exc:
        return [Diagnostic("error", p, str(exc.directory), hint=exc.hint) for p in exc.problems]
    problems = check_checkpoint(card, layout, checkpoint)
    errors = [p for p in problems if p.severity == "error"]
    found = [
        Diagnostic(
            p.severity,
            p.message,
            str(p.file or directory),
            field=p.field,
            hint=mismatch_hint(card, layout) if errors and p is errors[-1] else None,
        )
        for p in problems
    ]
    if not errors:
        dtypes = ", ".join(sorted(checkpoint.dtypes()))
        found.append(
            Diagnostic(
                "info",
                f"matches card {card.id!r} (layout {layout.name!r}): {len(checkpoint.tensors)} tensors ({dtypes}) in "
                f"{len(checkpoint.files)} file(s), checked from the headers without reading weights",
                str(directory),
            )
        )
    return found


def inspect_json(checkpoint: Checkpoint) -> dict[str, Any]:
    files = [
        {
            "name": path.name,
            "bytes": path.stat().st_size,
            "tensors": sum(t.file == path for t in checkpoint.tensors.values()),
        }
        for path in checkpoint.files
    ]
    return {
        "directory": str(checkpoint.directory),
        "index": checkpoint.index.name if checkpoint.index else None,
        "files": files,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "parameters": t.numel,
                "bytes": t.nbytes,
                "file": t.file.name,
            }
            for t in checkpoint.tensors.values()
        ],
        "total_parameters": checkpoint.parameters,
        "total_bytes": checkpoint.nbytes,
        "dtypes": checkpoint.dtypes(),
        "config": checkpoint.config,
        "config_error": checkpoint.config_error,
    }


@click.command("inspect")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every tensor, totals, config.json) instead.")
@report_errors
def inspect_checkpoint(directory: Path, as_json: bool) -> None:
    """Show a checkpoint's tensors (names, dtypes, shapes), parameter count and size without loading it.

    Reads only the safetensors headers (sharded or not) and config.json; pickle checkpoints cannot be
    inspected without unpickling them: convert them first (`modeldeck convert DIR --allow-pickle`).
    """
    checkpoint = read_checkpoint(directory)
    if as_json:
        click.echo(json_text(inspect_json(checkpoint)))
        return
    sharded = len(checkpoint.files) > 1
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("tensor", "left"), ("dtype", "left"), ("shape", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("parameters", justify="right")
    table.add_column("bytes", justify="right")
    if sharded:
        table.add_column("file")
    for t in checkpoint.tensors.values():
        row = [t.name, t.dtype, str(list(t.shape)), f"{t.numel:,}", human_bytes(t.nbytes)]
        table.add_row(*row, *([t.file.name] if sharded else []))
    out.print(table)
    dtypes = ", ".join(f"{dtype} {count:,}" for dtype, count in sorted(checkpoint.dtypes().items()))
    where = f"{len(checkpoint.files)} file{'s' if sharded else ''}"
    where += f" ({checkpoint.index.name})" if checkpoint.index else ""
    out.print(
        f"{len(checkpoint.tensors)} tensors, {checkpoint.parameters:,} parameters ({dtypes}), "
        f"{human_bytes(checkpoint.nbytes)} in {where}",
        markup=False,
        soft_wrap=True,
    )
    config = checkpoint.config
    if checkpoint.config_error:
        out.print(checkpoint.config_error, markup=False, soft_wrap=True)
    elif config is None:
        out.print("no config.json", markup=False)
    else:
        out.print(f"config.json: model_type {config.get('model_type')!r}, {len(config)} keys", markup=False)


COMMANDS: list[click.Command] = [inspect_checkpoint]
