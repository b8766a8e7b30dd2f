"""Writing cards: `modeldeck card new --from DIR` (registry/cardgen/). No torch, no weights read."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import click

from modeldeck.registry.cardgen import new_card
from modeldeck.registry.cli.common import err, load_registry, out, report_errors, styled
from modeldeck.registry.diagnostics import ModeldeckError

__all__ = ["COMMANDS"]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@click.group("card")
def card() -> None:
    """Write cards: `modeldeck card new --from DIR` starts one from a local checkpoint folder."""


def _check_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _ID.match(value):
        raise click.BadParameter(f"{value!r} is not a card id: lowercase a-z, 0-9, '.', '_', '-', starting a-z or 0-9")
    return value


@card.command("new")
@click.option(
    "--from",
    "directory",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A local Hugging Face checkpoint folder: config.json, *.safetensors and the tokenizer files.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the card to this file (default: standard output). An existing file is never replaced without --force.",
)
@click.option("--force", is_flag=True, help="Replace the --out file if it exists.")
@click.option("--layout", help="The checkpoint layout to read the checkpoint with (default: the one that fits).")
@click.option("--id", "card_id", callback=_check_id, help="The card's id (default: from the folder name).")
@report_errors
def new(directory: Path, out_path: Path | None, force: bool, layout: str | None, card_id: str | None) -> None:
    """Write a starting card for the checkpoint in a local folder (--from DIR).

    The architecture comes from config.json through the checkpoint layout's own rules (the layouts that read its
    model_type are tried; the one whose rules and tensors fit is taken, or --layout), each field with a comment
    saying where it came from; the tokenizer (kind, files, special tokens and ids) from the tokenizer files; the
    generation defaults from generation_config.json; the parameter count computed from the architecture. The
    identity fields (id, name, publisher, license, source.repo) are placeholders marked TODO, yet the card as written
    validates and runs: `modeldeck validate CARD.yaml --weights DIR`, `modeldeck generate CARD.yaml --weights DIR`.

    The card goes to standard output unless --out is given (warnings go to standard error). A config.json value
    modeldeck cannot express, a model_type no layout reads, tensors that fit no layout or a folder without a
    tokenizer are errors (exit code 1), each named; config.json keys no rule reads are warned about and listed in
    the card's first comment.
    """
    if out_path is not None and out_path.exists() and not force:
        raise ModeldeckError(f"{out_path} exists: not overwritten (pass --force to replace it)")
    made = new_card(directory, load_registry(), layout=layout, card_id=card_id)
    for warning in made.warnings:
        err.print(styled(("warning:", "yellow"), f" {warning}"), soft_wrap=True)
    if out_path is None:
        click.echo(made.text, nl=False)
        return
    _write(out_path, made.text, force)
    out.print(
        f"wrote {out_path}: card {made.card.id!r} (layout {made.layout!r}, "
        f"{made.card.parameters.stated or 0:,} parameters). Fill in its TODO fields; check it with "
        f"`modeldeck validate {out_path} --weights {directory}`",
        markup=False,
        soft_wrap=True,
    )


def _write(path: Path, text: str, force: bool) -> None:
    """Write the card; without `force` an existing file (even one created meanwhile) is left as it is."""
    try:
        if not force:
            with path.open("x", encoding="utf-8") as f:
                f.write(text)
            return
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise ModeldeckError(f"{path} exists: not overwritten (pass --force to replace it)") from None
    except OSError as exc:
        raise ModeldeckError(f"cannot write {path}: {exc.strerror or exc}") from None


COMMANDS: list[click.Command] = [card]
