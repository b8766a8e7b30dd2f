"""Weights from the hub and on disk: `modeldeck download`, `verify`, `convert`.

`download` and `verify` need no torch (registry/weights/); `verify` (and `--print-pins`) needs no huggingface_hub
either with --weights or a bundled card: a plugin author's CI can pin and check weights with the registry alone.
Only `convert` imports the runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from modeldeck.registry.cli.common import err, find_card, json_text, out, report_errors, styled
from modeldeck.registry.cli.display import human_bytes
from modeldeck.registry.weights import (
    FileCheck,
    check_files,
    check_revision,
    compute_pins,
    download_plan,
    hub_cache,
    local_weights,
    pins_yaml,
    require_pins,
    require_verified,
    resolve_weights,
    verification_failure,
    weights_folder,
)

__all__ = ["COMMANDS"]


@click.command()
@click.argument("name")
@click.option("--revision", help="A revision (branch, tag) the card lists; default: the card's.")
@click.option("--allow-pickle", is_flag=True, help="Also fetch pytorch_model*.bin (pickles: convert them before use).")
@click.option("--force-download", is_flag=True, help="Fetch every file again, replacing cached copies.")
@click.option("--verify", "verify_pins", is_flag=True, help="Then check the files against the card's pins.")
@report_errors
def download(name: str, revision: str | None, allow_pickle: bool, force_download: bool, verify_pins: bool) -> None:
    """Download the files card NAME needs from the Hugging Face hub and print the folder holding them.

    Only what the runtime reads is fetched: *.safetensors and their index, config.json, the generation and
    tokenizer configs and the card's tokenizer files; pytorch_model*.bin only with --allow-pickle. huggingface_hub
    does the work, with its progress bars and its cache. Resuming is huggingface_hub's too: a connection that drops
    in the middle of a file is resumed where it stopped (an HTTP Range request), and when the command is run again
    after an interruption the files already in the cache are kept, not fetched again (a file the interrupted process
    had only partly written starts over). HF_HOME / HF_HUB_CACHE choose the cache, HF_TOKEN (or `hf auth login`)
    authenticates for gated and private repositories, HF_HUB_OFFLINE=1 only looks in the cache, HF_ENDPOINT
    chooses the hub. The folder is printed on standard output, e.g. for --weights.
    """
    card, _ = find_card(name)
    if card.source.bundled:
        chosen = check_revision(card, revision or card.source.revision)
        err.print(f"card {card.id} ships its weights in {card.source.bundled}: nothing to download", markup=False)
    else:
        chosen, _ = download_plan(card, revision, allow_pickle)  # refusals before anything is printed
        cache, offline = hub_cache(card)
        err.print(
            f"{card.source.repo}@{chosen} (card {card.id}): the files it needs, into {cache}"
            + (" (offline: the cache only)" if offline else ""),
            markup=False,
            soft_wrap=True,
        )
    folder = resolve_weights(
        card, revision=revision, allow_pickle=allow_pickle, progress=True, force_download=force_download
    )
    files = sorted(p for p in folder.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    listing = ", ".join(f"{p.name} ({human_bytes(p.stat().st_size)})" for p in files)
    err.print(f"{len(files)} files, {human_bytes(total)}: {listing}", markup=False, soft_wrap=True)
    if verify_pins:
        checks = require_verified(card, folder, chosen)
        err.print(f"verified: {len(checks)} files match the card's pins", markup=False)
    elif card.source.files:
        err.print(
            f"the card pins {len(card.source.files)} files: `modeldeck verify {card.id}` checks them", markup=False
        )
    click.echo(str(folder))


def _check_table(checks: list[FileCheck]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("file", "status", "size", "sha256"):
        table.add_column(column, no_wrap=True)
    colours = {"ok": "green", "not pinned": "yellow"}
    for c in checks:
        size = "-" if c.size is None else f"{c.size:,}"
        if c.status in ("missing", "wrong size"):
            size += f" (expected {c.expected_size:,})"
        digest = "-" if c.sha256 is None else c.sha256[:16]
        if c.status == "wrong hash":
            digest += f" (expected {(c.expected_sha256 or '')[:16]})"
        elif c.status == "wrong size":
            digest = "not computed"
        status = styled((c.status, colours.get(c.status, "red")))
        table.add_row(c.path, status, size, digest)
    return table


@click.command()
@click.argument("name")
@click.option(
    "--weights",
    type=click.Path(file_okay=False, path_type=Path),
    help="The checkpoint folder to check (default: the bundled folder, or the card's snapshot in the HF cache).",
)
@click.option("--revision", help="The revision whose cached snapshot is checked (pins cover the card's own).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--print-pins",
    "pins_from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead: print the source.files block (sha256 and size) for the card's files in this folder.",
)
@report_errors
def verify(name: str, weights: Path | None, revision: str | None, as_json: bool, pins_from: Path | None) -> None:
    """Check card NAME's pinned files (source.files: sha256 and size) offline, file by file.

    Each file is reported ok, missing, wrong size or wrong hash; a weight file the pins do not cover is reported
    not pinned. Exit code 1 if any file is not ok, or the card pins nothing. NAME is an installed card or a card
    file (.yaml). Files are hashed in chunks; no torch and no network.

    --print-pins DIR prints the `files:` block for the card's source section, computed from DIR (a folder you
    trust): the weights, config and tokenizer files the card needs.
    """
    card, _ = find_card(name)
    if pins_from is not None:
        folder = weights_folder(card, pins_from)
        sys.stdout.write(pins_yaml(card, compute_pins(card, folder), folder))
        return
    chosen = check_revision(card, revision or card.source.revision)
    require_pins(card, chosen)
    folder = local_weights(card, weights, chosen)
    checks = check_files(card, folder)
    bad = [c for c in checks if not c.ok]
    if as_json:
        report = {
            "card": card.id,
            "revision": chosen,
            "folder": str(folder),
            "ok": not bad,
            "files": [c.to_json() for c in checks],
        }
        click.echo(json_text(report))
    else:
        out.print(f"card {card.id}: {len(card.source.files)} pinned files in {folder}", markup=False, soft_wrap=True)
        out.print(_check_table(checks))
        ok = len(checks) - len(bad)
        counts: dict[str, int] = {}
        for c in bad:
            counts[c.status] = counts.get(c.status, 0) + 1
        tally = "".join(f"; {n} {status}" for status, n in counts.items())
        out.print(f"{ok} of {len(checks)} files ok{tally}", markup=False)
    if bad:
        raise verification_failure(card, folder, checks, listed=False)  # the table above listed them


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the safetensors checkpoint (default: DIR); config and tokenizer files are copied there.",
)
@click.option("--allow-pickle", is_flag=True, help="Read the pickles (torch.load with weights_only=True); required.")
@click.option("--force", is_flag=True, help="Replace files already in the output folder that the conversion writes.")
@report_errors
def convert(directory: Path, out: Path | None, allow_pickle: bool, force: bool) -> None:
    """Convert the pickle checkpoint in DIRECTORY (pytorch_model*.bin, sharded too) to safetensors, verified.

    Pickles are read with torch.load(weights_only=True); tensors that share storage (a tied lm_head and embedding)
    are written once, under the embedding's name; every tensor written is read back and compared bit for bit with
    the pickle's before the file is kept. Refused without --allow-pickle: loading a pickle can execute code. Files
    already in the output folder are not overwritten without --force. The output folder is printed on standard
    output: load it with --weights.
    """
    from modeldeck.runtime.convert import convert_checkpoint  # torch: only for this command

    result = convert_checkpoint(
        directory,
        out,
        allow_pickle=allow_pickle,
        force=force,
        report=lambda line: err.print(line, markup=False, soft_wrap=True),
    )
    written = ", ".join(sorted(set(result.files.values()))) + (f", {result.index}" if result.index else "")
    err.print(
        f"converted: {result.tensors} tensors, {human_bytes(result.bytes)} in {written}"
        + (f"; the pickles in {directory} are left as they were" if result.out == directory.resolve() else ""),
        markup=False,
        soft_wrap=True,
    )
    click.echo(str(result.out))


COMMANDS: list[click.Command] = [download, verify, convert]
