"""A card exported for other engines, without torch: what transformers, vLLM and TGI read from a model folder
(`hf`) and an Ollama Modelfile (`ollama`), generated from the card's declarative data.

    plan = export.plan(card, ["hf", "ollama"], weights=None)    # the files, what each format drops
    export.write(plan, Path("out"))                              # into out/, all or nothing

Where the checkpoint is on this machine (`weights=DIR`, the bundled folder, or the Hugging Face cache), its other
files (config.json, the weights, the tokenizer) are hard-linked beside the exported ones, so the folder is a
complete model that `transformers`, `vllm serve` and `ollama create` take as it is; `weights_mode="copy"` copies
them instead (another file system), `"symlink"` links to them (a folder for this machine only: runtime/vllm.py's),
`"none"` leaves them out. Export writes into a staging folder next to the
target and moves it in whole: an error never leaves half an export, and existing files are replaced only with
`force`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modeldeck.registry.diagnostics import ModeldeckError, spell
from modeldeck.registry.export import hf, ollama
from modeldeck.registry.export.chat_template import chat_template
from modeldeck.registry.schema import Card

__all__ = ["FORMATS", "ExportError", "ExportPlan", "WeightsMode", "check_target", "plan", "write"]

FORMATS = ("hf", "ollama")
WeightsMode = Literal["link", "copy", "symlink", "none"]


_WHOLE_PROMPT_TOKENIZED = (
    "user text that spells a special token: transformers and vLLM tokenize the rendered prompt whole, so it becomes "
    "that token; modeldeck (and modeldeck serve on any engine) keeps user text as plain text"
)


class ExportError(ModeldeckError):
    """An export that cannot be written as asked (the target, the weights)."""


@dataclass
class ExportPlan:
    """What an export writes: `files` (name -> text), `checkpoint` files to link or copy in from `source`, and per
    format what of the card the target cannot express (`dropped`)."""

    card: Card
    files: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    checkpoint: list[str] = field(default_factory=list)
    weights_mode: WeightsMode = "link"
    dropped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def plan(
    card: Card,
    formats: list[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    weights_mode: WeightsMode = "link",
) -> ExportPlan:
    """The export of `card` in `formats` (of FORMATS), reading the checkpoint folder where it is on this machine."""
    from modeldeck.registry import weights as weight_files

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}")
    result = ExportPlan(card, weights_mode=weights_mode)
    try:
        result.source = weight_files.local_weights(card, weights, revision)
    except weight_files.WeightsNotFoundError as error:
        if weights is not None:
            raise
        result.notes.append(f"the checkpoint is not on this machine ({error}): only the card's own files are written")
    existing = None
    if result.source is not None and (result.source / "tokenizer_config.json").is_file():
        try:
            existing = json.loads((result.source / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ExportError(f"{result.source / 'tokenizer_config.json'} cannot be read as JSON: {error}") from None
        if not isinstance(existing, dict):
            raise ExportError(f"{result.source / 'tokenizer_config.json'} is not a JSON object")
    if "hf" in formats:
        generation, dropped = hf.generation_config(card)
        result.files["chat_template.jinja"] = chat_template(card.format, card.id)
        result.files["tokenizer_config.json"] = _json(hf.tokenizer_config(card, existing))
        result.files["special_tokens_map.json"] = _json(hf.special_tokens_map(card))
        result.files["generation_config.json"] = _json(generation)
        result.files["README.md"] = hf.readme(card)
        result.dropped["hf"] = [*dropped, _WHOLE_PROMPT_TOKENIZED]
    if "ollama" in formats:
        linked = result.source is not None and weights_mode != "none"
        source = "." if linked or result.source is None else str(result.source)
        if result.source is None:
            result.notes.append("the Modelfile's FROM is '.': put the checkpoint's files beside it, or edit FROM")
        result.files["Modelfile"], result.dropped["ollama"] = ollama.modelfile(card, source)
    if result.source is not None and weights_mode != "none":
        result.checkpoint = sorted(
            p.name for p in result.source.iterdir() if p.name not in result.files and not p.name.startswith(".")
        )
    return result


def write(export: ExportPlan, to: Path, *, force: bool = False) -> list[str]:
    """Write `export` into folder `to`; the names written, in order. Without `force`, a file that is already there
    is an error before anything is written."""
    names = [*export.files, *export.checkpoint]
    to = check_target(to, names, force)
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{to.name}.export-", dir=to.parent))
    try:
        for name, text in export.files.items():
            (staging / name).write_text(text, encoding="utf-8")
        for name in export.checkpoint:
            assert export.source is not None
            _bring(export.source / name, staging / name, export.weights_mode)
        to.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, to / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def check_target(to: Path, names: list[str], force: bool) -> Path:
    """`to` as an absolute path, checked before anything is written: a folder (or nothing yet) that holds none of
    `names`, unless `force`."""
    to = to.expanduser().absolute()
    if to.exists() and not to.is_dir():
        raise ExportError(f"{to} exists and is not a folder; give {spell('to', 'DIR')} a folder (new or empty)")
    clashes = [n for n in names if (to / n).exists() or (to / n).is_symlink()]
    if clashes and not force:
        raise ExportError(
            f"{to} already holds {', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}; pass {spell('force')} "
            "to replace them (other files there are left alone), or export to another folder"
        )
    return to


def _bring(source: Path, target: Path, mode: WeightsMode) -> None:
    real = source.resolve()  # the Hugging Face cache holds symlinks to blobs; Ollama refuses links out of a folder
    if real.is_dir():
        shutil.copytree(real, target) if mode == "copy" else _link_tree(real, target, mode)
        return
    if mode == "copy":
        shutil.copyfile(real, target)
        return
    if mode == "symlink":
        target.symlink_to(real)
        return
    try:
        os.link(real, target)
    except OSError as error:
        raise ExportError(
            f"cannot hard-link the checkpoint file {source} into the export ({error.strerror}: another file system?); "
            f"pass {spell('weights_mode', 'copy')} to copy it ({real.stat().st_size / 2**20:,.1f} MiB), or "
            f"{spell('weights_mode', 'none')} to export the card's files only"
        ) from None


def _link_tree(source: Path, target: Path, mode: WeightsMode) -> None:
    target.mkdir()
    for child in source.iterdir():
        _bring(child, target / child.name, mode)
