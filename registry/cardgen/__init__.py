"""A starting card for a local Hugging Face checkpoint folder: what `modeldeck card new --from DIR` writes.

    config.json             the architecture, through the checkpoint layout's own config rules read in reverse
                            (`CheckpointLayout.architecture_from_config`); when several layouts read the model_type
                            (falcon, falcon-7b), the one whose rules and tensors fit the checkpoint
    *.safetensors headers   checked against that architecture as `modeldeck validate --weights` checks them
    tokenizer files         kind, files, bos/eos/pad/unk and the other special tokens with their ids, read as JSON
                            (tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json)
    generation_config.json  the generation defaults the card schema knows (Hugging Face's names)

The card is YAML text with a comment beside each field saying where it came from; the identity fields (id, name,
publisher, license, source.repo) are placeholders marked TODO. Before it is returned the text is read back as any
card file is, resolved, and checked against the checkpoint and its tokenizer: a card `new_card` returns validates
and loads the checkpoint as it is. Torch-free, like the whole registry (tokenizers only for the final check).

This module holds the flow: reading config.json, choosing the layout, the final check. architecture.py reads the
architecture from config.json, tokenizer.py the tokenizer files and generation_config.json, render.py writes the
commented YAML.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldeck.registry.cardfile import card_from_data, read_yaml
from modeldeck.registry.cardgen import architecture, render, tokenizer
from modeldeck.registry.cardgen.architecture import FAMILY_NAMES, Tried
from modeldeck.registry.cardgen.tokenizer import Tok
from modeldeck.registry.catalog import Registry
from modeldeck.registry.checkpoint import Checkpoint, check_checkpoint, implied_tensors, read_checkpoint
from modeldeck.registry.checks import check_card, check_tokenizer
from modeldeck.registry.diagnostics import CardError, ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.schema import Architecture, Card, GenerationDefaults, Source, Tokenizer, TokenSpec

__all__ = ["FAMILY_NAMES", "NewCard", "card_id_from", "new_card"]

_ID_CHARS = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class NewCard:
    """The card's YAML text (with comments), the card it loads as (resolved), its layout, and what to tell the
    user (config.json keys no rule reads, tokens left out, ...)."""

    text: str
    card: Card
    layout: str
    warnings: list[str]
    unread: list[str]


def card_id_from(name: str) -> str:
    """A card id (lowercase a-z, 0-9, '.', '_', '-', starting with a letter or digit) from a folder name."""
    text = _ID_CHARS.sub("-", name.lower()).strip("-._")
    return re.sub(r"-{2,}", "-", text) or "local-model"


def new_card(directory: Path, reg: Registry, *, layout: str | None = None, card_id: str | None = None) -> NewCard:
    """The starting card for the checkpoint folder `directory` (config.json, *.safetensors, tokenizer files).

    `layout` forces a checkpoint layout; otherwise the registered layouts that read config.json's model_type are
    tried and the one whose config rules and tensors fit is taken. Raises ModeldeckError naming every problem:
    no config.json, a model_type no layout reads, a config value modeldeck cannot express, tensors that fit no
    layout, no tokenizer (a card needs eos)."""
    directory = Path(directory)
    config = _config(directory)
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    candidates = _candidates(reg.checkpoint_layouts(), model_type, layout, directory)
    checkpoint = read_checkpoint(directory)
    tried = [_try_layout(candidate, config, model_type, checkpoint) for candidate in candidates]
    chosen = _choose(tried, model_type, directory, forced=layout is not None)
    others = [t.layout.name for t in tried if t is not chosen]
    chosen.arch_data.sources["checkpoint_layout"] = (
        "--layout"
        if layout is not None
        else f"reads model_type {model_type}"
        + (f"; its rules and tensors fit, {', '.join(others)}'s not" if others else "")
    )
    tok = tokenizer.read_tokenizer(directory, config)
    generation = tokenizer.generation(directory, chosen.arch.context_length, tok)
    card_id = card_id or card_id_from(directory.resolve().name)
    text = render.render(
        directory=directory,
        card_id=card_id,
        name=directory.resolve().name or card_id,
        chosen=chosen,
        others=others,
        model_type=model_type,
        checkpoint=checkpoint,
        tok=tok,
        generation=generation,
        formats=set(reg.prompt_formats()),
    )
    card, found = _check(text, reg, directory, chosen.layout, checkpoint, tok)
    warnings = [*chosen.warnings, *tok.warnings, *generation.warnings, *found]
    if chosen.unread:
        warnings.insert(
            0,
            f"config.json keys no rule of layout {chosen.layout.name!r} reads: {', '.join(chosen.unread)} (listed at "
            "the top of the card: check that they do not change the computation)",
        )
    return NewCard(text, card, chosen.layout.name, warnings, chosen.unread)


# --- config.json and the layout ---------------------------------------------------------------------


def _config(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        listing = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise ModeldeckError(
            f"{directory} has no config.json (it holds: {listing}); a card's architecture is read from the "
            "checkpoint's config.json: give the folder of a Hugging Face checkpoint"
        )
    return tokenizer.json_object(directory / "config.json")


def _candidates(
    layouts: dict[str, CheckpointLayout], model_type: str | None, forced: str | None, directory: Path
) -> list[CheckpointLayout]:
    if forced is not None:
        if forced not in layouts:
            raise ModeldeckError(
                f"unknown checkpoint layout {forced!r} (--layout); registered layouts: {', '.join(sorted(layouts))}"
            )
        return [layouts[forced]]
    read = sorted({t for layout in layouts.values() for t in layout.config_model_types})
    if model_type is None:
        raise ModeldeckError(
            f"{directory / 'config.json'} has no model_type, which says which checkpoint layout reads it; pass "
            f"--layout NAME (registered layouts: {', '.join(sorted(layouts))})"
        )
    found = [layout for layout in layouts.values() if model_type in layout.config_model_types]
    if not found:
        raise ModeldeckError(
            f"config.json model_type {model_type!r} is not one any registered checkpoint layout reads, so modeldeck "
            f"cannot write (or run) a card for {directory}; the layouts read the model_types {', '.join(read)} "
            "(a plugin adds layouts through the register_checkpoint_layouts hook)"
        )
    return found


def _provisional(arch: Architecture) -> Card:
    """A card around an architecture, for the checkpoint check (which reads only its architecture and parameters)."""
    return Card(
        schema_version=1,
        id="new-card",
        name="new card",
        publisher="modeldeck card new",
        license="NOASSERTION",
        source=Source(format="safetensors"),
        architecture=arch,
        tokenizer=Tokenizer(kind="tokenizers", files=["tokenizer.json"], eos=TokenSpec(text="eos", id=0)),
        prompt_format="plain",
        generation=GenerationDefaults(max_new_tokens=1),
    )


def _try_layout(
    layout: CheckpointLayout, config: dict[str, Any], model_type: str | None, checkpoint: Checkpoint
) -> Tried:
    found = architecture.architecture(layout, config, model_type)
    warnings = [f"not written: {d}, which positions of this kind do not have" for d in found.dropped]
    if found.problems:
        placeholder = Architecture.model_construct()
        return Tried(layout, found, placeholder, found.problems, {}, found.unread, warnings)
    arch = Architecture.model_validate(found.data)
    problems = [p.message for p in check_checkpoint(_provisional(arch), layout, checkpoint) if p.severity == "error"]
    extra = {
        name: checkpoint.tensors[name].numel
        for name, t in (implied_tensors(arch, layout).items() if not problems else ())
        if t.decoder == "alibi_slopes" and name in checkpoint.tensors
    }
    return Tried(layout, found, arch, problems, extra, found.unread, warnings)


def _choose(tried: list[Tried], model_type: str | None, directory: Path, forced: bool) -> Tried:
    fits = [t for t in tried if not t.problems]
    if fits:
        return min(fits, key=lambda t: len(t.unread))  # the first of those reading the most keys
    family = architecture.family(model_type, tried[0].layout)
    what = f"model_type {model_type}, family {family}" if model_type else f"family {family}"
    if len(tried) == 1:
        only = tried[0]
        lines = "\n".join(f"  - {p}" for p in only.problems)
        if only.arch_data.problems:
            hint = (
                "modeldeck's decoder cannot run this checkpoint as it is: its architecture vocabulary (or the "
                "layout's rules) would need the feature named above"
                if only.arch_data.inexpressible
                else "is config.json complete, and is it read by the right layout?"
            )
            if forced:
                hint += " (or pass another --layout)"
        else:
            hint = "the tensors do not fit what config.json says: is the checkpoint complete, and is the layout right?"
            hint += " (pass --layout NAME to try another)" if not forced else ""
        raise ModeldeckError(
            f"cannot write a card for {directory}: config.json ({what}) read with checkpoint layout "
            f"{only.layout.name!r} gives:\n{lines}\n{hint}"
        )
    parts = "\n".join(f"  layout {t.layout.name!r}:\n" + "\n".join(f"    - {p}" for p in t.problems) for t in tried)
    raise ModeldeckError(
        f"cannot write a card for {directory}: no checkpoint layout that reads {what} fits it:\n{parts}\n"
        "pass --layout NAME to see one layout's problems alone"
    )


# --- the final check ---------------------------------------------------------------------------------------


def _check(
    text: str, reg: Registry, directory: Path, layout: CheckpointLayout, checkpoint: Checkpoint, tok: Tok
) -> tuple[Card, list[str]]:
    """The card the text loads as, checked as `modeldeck validate CARD --weights DIR` checks it; ModeldeckError
    naming each error (the checkpoint's own inconsistency, e.g. a tokenizer larger than the embedding)."""
    where = "the new card"
    try:
        data, node = read_yaml(text, where)
        card = reg.resolve_card(card_from_data(data, where, node), where)
    except CardError as exc:
        raise ModeldeckError(
            f"the card written for {directory} does not load (a bug in modeldeck card new):\n{exc}"
        ) from None
    found = check_card(card, where)
    problems = check_checkpoint(card, layout, checkpoint)
    errors = [d.render() for d in found if d.severity == "error"]
    errors += [p.message for p in problems if p.severity == "error"]
    warnings = [d.message for d in found if d.severity == "warning"]
    warnings += [p.message for p in problems if p.severity == "warning"]
    if tok.has_json and importlib.util.find_spec("tokenizers") is not None:
        checked = check_tokenizer(card, directory, where)
        errors += [d.message for d in checked if d.severity == "error"]
        warnings += [d.message for d in checked if d.severity == "warning"]
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise ModeldeckError(f"the card for {directory} would not validate against its checkpoint:\n{lines}")
    return card, warnings
