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
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from modeldeck.registry.cardfile import card_from_data, read_yaml
from modeldeck.registry.catalog import Registry
from modeldeck.registry.checkpoint import Checkpoint, check_checkpoint, implied_tensors, read_checkpoint
from modeldeck.registry.checks import check_card, check_tokenizer
from modeldeck.registry.diagnostics import CardError, ModeldeckError
from modeldeck.registry.layouts import CheckpointLayout
from modeldeck.registry.params import count_parameters
from modeldeck.registry.schema import (
    AlibiPositions,
    Architecture,
    Bias,
    Card,
    DynamicRopeScaling,
    GenerationDefaults,
    LearnedPositions,
    LinearRopeScaling,
    Llama3RopeScaling,
    Multipliers,
    Norm,
    Residual,
    RotaryPositions,
    Source,
    Tokenizer,
    TokenSpec,
)

__all__ = ["FAMILY_NAMES", "NewCard", "card_id_from", "new_card"]

FAMILY_NAMES = {
    "gpt_neox": "GPT-NeoX",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "stablelm": "StableLM",
    "falcon": "Falcon",
    "RefinedWeb": "Falcon",
    "RefinedWebModel": "Falcon",
    "gpt2": "GPT-2",
    "gptj": "GPT-J",
    "opt": "OPT",
    "bloom": "BLOOM",
    "phi": "Phi",
    "starcoder2": "StarCoder2",
    "btlm": "BTLM",
    "gpt_jx": "BTLM",
}
"""architecture.family for a config.json model_type (any other model_type is written as it is)."""

TODO = "TODO"
_ID_CHARS = re.compile(r"[^a-z0-9._-]+")
_POSITIONS: dict[str, type[BaseModel]] = {
    "rotary": RotaryPositions,
    "alibi": AlibiPositions,
    "learned": LearnedPositions,
}
_SCALING: dict[str, type[BaseModel]] = {
    "linear": LinearRopeScaling,
    "dynamic": DynamicRopeScaling,
    "llama3": Llama3RopeScaling,
}
_SECTIONS: dict[str, type[BaseModel]] = {"norm": Norm, "residual": Residual, "bias": Bias, "multipliers": Multipliers}
_REQUIRED = ("positions.kind", "norm.kind", "residual.kind")
_ROLES = ("bos", "eos", "pad", "unk")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
_GENERATION_SKIPPED = {
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "return_dict_in_generate",
    *("output_attentions", "output_hidden_states", "output_scores", "output_logits"),
}
"""generation_config.json keys about tooling or what generate returns, never about which tokens it picks."""


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
    tok = _read_tokenizer(directory, config)
    generation = _generation(directory, chosen.arch.context_length, tok)
    card_id = card_id or card_id_from(directory.resolve().name)
    text = _render(
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


def _json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModeldeckError(f"{path} is not valid JSON: {exc}") from None


def _json_object(path: Path) -> dict[str, Any]:
    data = _json(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModeldeckError(f"{path} is not a JSON object")
    return data


def _config(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        listing = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise ModeldeckError(
            f"{directory} has no config.json (it holds: {listing}); a card's architecture is read from the "
            "checkpoint's config.json: give the folder of a Hugging Face checkpoint"
        )
    return _json_object(directory / "config.json")


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


class _Arch(NamedTuple):
    data: dict[str, Any]  # the nested architecture, in the schema's order
    sources: dict[str, str]  # dotted path -> where it came from
    problems: list[str]  # config values modeldeck cannot express or run, fields config.json does not state
    unread: list[str]
    dropped: list[str]  # fields the layout read that the chosen union member does not have
    inexpressible: bool  # some problem is a config value modeldeck cannot express or run


def _family(model_type: str | None, layout: CheckpointLayout) -> str:
    return FAMILY_NAMES.get(model_type or "", model_type or layout.name)


def _keys_for(layout: CheckpointLayout, path: str) -> list[str]:
    """The config.json keys whose rules set architecture field `path`."""
    return [
        key
        for key, rule in layout.rules().items()
        if any(re.split(r"==|!=", text)[0].strip() == path for text in rule.fields)
    ]


def _architecture(layout: CheckpointLayout, config: dict[str, Any], model_type: str | None) -> _Arch:
    found = layout.architecture_from_config(config)
    fields, sources = dict(found.fields), dict(found.sources)
    problems = [m.describe() for m in found.problems]
    fields["family"] = _family(model_type, layout)
    sources["family"] = f"model_type {model_type}" if model_type else f"layout {layout.name}"
    fields["checkpoint_layout"] = layout.name
    heads, hidden = fields.get("heads"), fields.get("hidden_size")
    head_dim = fields.get("head_dim")
    if head_dim is None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and not hidden % heads:
        head_dim = hidden // heads
    if "rotary_dims" in fields:  # GPT-J's rotary_dim: a derived property, as a share of head_dim
        dims, source = fields.pop("rotary_dims"), sources.pop("rotary_dims")
        if isinstance(dims, int) and isinstance(head_dim, int) and "positions.fraction" not in fields:
            fields["positions.fraction"] = dims / head_dim
            sources["positions.fraction"] = f"{source} {dims} / head_dim {head_dim}"
    if "unscaled_context_length" in fields:  # max_position_embeddings: the original context under dynamic NTK
        length, source = fields.pop("unscaled_context_length"), sources.pop("unscaled_context_length")
        factor = fields.get("positions.scaling.factor")
        if fields.get("positions.scaling.kind") == "dynamic" and isinstance(length, int):
            fields["positions.scaling.original_context_length"] = length
            sources["positions.scaling.original_context_length"] = source
            if isinstance(factor, (int, float)) and "context_length" not in fields:
                fields["context_length"] = int(length * factor)
                sources["context_length"] = f"{source} {length} x positions.scaling.factor {factor} (dynamic NTK)"
        elif "context_length" not in fields:
            fields["context_length"], sources["context_length"] = length, source
    if "kv_heads" not in fields and isinstance(heads, int):
        fields["kv_heads"] = heads
        sources["kv_heads"] = "= heads: config.json states no key/value heads (multi-head attention)"
    if "tied_embeddings" not in fields:
        fields["tied_embeddings"] = True
        sources["tied_embeddings"] = "transformers' default: config.json has no tie_word_embeddings"
    required = [
        n for n, info in Architecture.model_fields.items() if info.is_required() and f"{n}.kind" not in _REQUIRED
    ]
    refused = {m.key for m in found.problems}
    for path in [*required, *_REQUIRED]:
        stated = fields.get(path) is not None or any(f.startswith(f"{path}.") for f in fields)
        keys = _keys_for(layout, path)
        if not stated and not refused.intersection(keys):  # (a key that states it in a way modeldeck cannot read)
            reads = (
                f"layout {layout.name!r} reads it from {', '.join(keys)}"
                if keys
                else f"no rule of layout {layout.name!r} reads it and the layout implies no value for it: the layout "
                "needs an `implied` entry"
            )
            problems.append(f"config.json does not state architecture.{path} ({reads})")
    data, dropped = _nest(fields, sources, problems, layout)
    if not problems:
        try:
            Architecture.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"the architecture config.json gives is refused: {where}: {error['msg']}".rstrip())
    return _Arch(data, sources, problems, found.unread, dropped, bool(found.problems))


def _nest(
    fields: dict[str, Any], sources: dict[str, str], problems: list[str], layout: CheckpointLayout
) -> tuple[dict[str, Any], list[str]]:
    """The dotted fields as the nested architecture, in the schema's order; sub-fields the chosen union member
    does not have (positions.base of ALiBi, a scaling of kind None) are dropped."""
    nested: dict[str, Any] = {}
    for path, value in fields.items():
        *parents, last = path.split(".")
        if (parents[0] if parents else last) not in Architecture.model_fields:
            problems.append(f"layout {layout.name!r} sets architecture.{path}, which the card schema does not have")
            continue
        place = nested
        for part in parents:
            place = place.setdefault(part, {})
        place[last] = value
    dropped: list[str] = []

    def drop(prefix: str, values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
        kept = {}
        for key, value in values.items():
            if key in model.model_fields:
                kept[key] = value
            elif value is not None and not isinstance(value, dict):
                dropped.append(f"{prefix}.{key} ({sources.get(f'{prefix}.{key}', 'the layout')})")
        return {key: kept[key] for key in model.model_fields if key in kept}

    positions = nested.get("positions")
    if isinstance(positions, dict):
        scaling = positions.get("scaling")
        if isinstance(scaling, dict):
            member = _SCALING.get(str(scaling.get("kind")))
            if member is None:  # kind None: no scaling
                positions.pop("scaling")
                dropped += [
                    f"positions.scaling.{k} ({sources.get(f'positions.scaling.{k}', 'the layout')})"
                    for k, v in scaling.items()
                    if k != "kind" and v is not None
                ]
            else:
                positions["scaling"] = drop("positions.scaling", scaling, member)
        member = _POSITIONS.get(str(positions.get("kind")))
        if member is not None:
            nested["positions"] = drop("positions", positions, member)
    for name, model in _SECTIONS.items():
        if isinstance(nested.get(name), dict):
            nested[name] = drop(name, nested[name], model)
    return {key: nested[key] for key in Architecture.model_fields if key in nested}, dropped


class _Tried(NamedTuple):
    layout: CheckpointLayout
    arch_data: _Arch
    arch: Architecture  # the provisional architecture (meaningless when there are problems)
    problems: list[str]
    extra: dict[str, int]  # tensors the checkpoint stores beyond the architecture (ALiBi slopes): name -> numel
    unread: list[str]
    warnings: list[str]


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
) -> _Tried:
    found = _architecture(layout, config, model_type)
    warnings = [f"not written: {d}, which positions of this kind do not have" for d in found.dropped]
    if found.problems:
        placeholder = Architecture.model_construct()
        return _Tried(layout, found, placeholder, found.problems, {}, found.unread, warnings)
    arch = Architecture.model_validate(found.data)
    problems = [p.message for p in check_checkpoint(_provisional(arch), layout, checkpoint) if p.severity == "error"]
    extra = {
        name: checkpoint.tensors[name].numel
        for name, t in (implied_tensors(arch, layout).items() if not problems else ())
        if t.decoder == "alibi_slopes" and name in checkpoint.tensors
    }
    return _Tried(layout, found, arch, problems, extra, found.unread, warnings)


def _choose(tried: list[_Tried], model_type: str | None, directory: Path, forced: bool) -> _Tried:
    fits = [t for t in tried if not t.problems]
    if fits:
        return min(fits, key=lambda t: len(t.unread))  # the first of those reading the most keys
    family = _family(model_type, tried[0].layout)
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


# --- the tokenizer ------------------------------------------------------------------------------------


@dataclass
class _Tok:
    kind: str
    files: list[str]
    kind_source: str
    add_bos: bool | None = None
    add_bos_source: str = ""
    named: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # role -> text, id, where from
    special: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comments for the tokenizer section
    warnings: list[str] = field(default_factory=list)
    chat_template: str | None = None  # where a chat template was found
    has_json: bool = False


def _token_text(value: Any) -> str | None:
    """A token as tokenizer_config.json / special_tokens_map.json write it: text, or {"content": text, ...}."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"] or None
    return None


class _Vocab:
    """Token text <-> id, and which ids are special, from the tokenizer files (JSON; sentencepiece if installed)."""

    def __init__(self, directory: Path, kind: str, tok_json: Any, tok_config: dict[str, Any]):
        self.ids: dict[str, int] = {}
        self.special: set[int] | None = None  # None: not known
        self.special_order: list[tuple[str, int]] = []
        decoder = tok_config.get("added_tokens_decoder")
        decoder = decoder if isinstance(decoder, dict) else {}
        if kind == "tokenizers" and isinstance(tok_json, dict):
            model = tok_json.get("model")
            vocab = model.get("vocab") if isinstance(model, dict) else None
            if isinstance(vocab, dict):
                self.ids.update({t: i for t, i in vocab.items() if isinstance(t, str) and isinstance(i, int)})
            elif isinstance(vocab, list):  # Unigram: [piece, score] by id
                self.ids.update({e[0]: i for i, e in enumerate(vocab) if isinstance(e, list) and e})
            self.special = set()
            for token in tok_json.get("added_tokens") or []:
                if (
                    isinstance(token, dict)
                    and isinstance(token.get("content"), str)
                    and isinstance(token.get("id"), int)
                ):
                    self.ids[token["content"]] = token["id"]
                    if token.get("special"):
                        self.special.add(token["id"])
                        self.special_order.append((token["content"], token["id"]))
            return
        if kind == "gpt2-bpe":
            vocab = _json(directory / "vocab.json")
            if isinstance(vocab, dict):
                self.ids.update({t: i for t, i in vocab.items() if isinstance(i, int)})
        if kind == "sentencepiece" and importlib.util.find_spec("sentencepiece") is not None:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            self.ids.update({sp.id_to_piece(i): i for i in range(sp.get_piece_size())})
        added = _json(directory / "added_tokens.json")
        if isinstance(added, dict):
            self.ids.update({t: i for t, i in added.items() if isinstance(i, int)})
        for key, token in decoder.items():
            text = _token_text(token)
            if text is not None and str(key).isdigit():
                self.ids[text] = int(key)
                if isinstance(token, dict) and token.get("special"):
                    self.special_order.append((text, int(key)))

    def text_of(self, token_id: int) -> str | None:
        return next((t for t, i in self.ids.items() if i == token_id), None)


def _read_tokenizer(directory: Path, config: dict[str, Any]) -> _Tok:
    present = [name for name in _TOKENIZER_FILES if (directory / name).is_file()]
    if "tokenizer.json" in present:
        tok = _Tok("tokenizers", present, "tokenizer.json", has_json=True)
    elif "tokenizer.model" in present:
        tok = _Tok("sentencepiece", present, "tokenizer.model (SentencePiece)")
    elif "vocab.json" in present and "merges.txt" in present:
        tok = _Tok("gpt2-bpe", present, "vocab.json + merges.txt (GPT-2 BPE)")
        tok.warnings.append(
            "the checkpoint has no tokenizer.json: modeldeck's runtime reads tokenizer.json (or tokenizer.model); "
            "save the tokenizer with transformers' tokenizer.save_pretrained to add one"
        )
    else:
        raise ModeldeckError(
            f"no tokenizer in {directory}: a card needs the tokenizer's files and its eos token, and modeldeck "
            "reads tokenizer.json (or tokenizer.model, or vocab.json + merges.txt); copy the tokenizer files of the "
            "model into the folder and run card new again"
        )
    tok_json = _json(directory / "tokenizer.json") if tok.has_json else None
    tok_config = _json_object(directory / "tokenizer_config.json")
    special_map = _json_object(directory / "special_tokens_map.json")
    generation = _json_object(directory / "generation_config.json")
    vocab = _Vocab(directory, tok.kind, tok_json, tok_config)

    def text_for(role: str) -> tuple[str | None, str, bool]:
        """The role's token text, where it came from, and whether that was an id (config.json bos_token_id)."""
        for data, name in ((tok_config, "tokenizer_config.json"), (special_map, "special_tokens_map.json")):
            if f"{role}_token" in data:
                return _token_text(data[f"{role}_token"]), f"{name} {role}_token", False
        for data, name in ((generation, "generation_config.json"), (config, "config.json")):
            token_id = data.get(f"{role}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
            if isinstance(token_id, int) and not isinstance(token_id, bool):
                text = vocab.text_of(token_id)
                if text is not None:
                    return text, f"{name} {role}_token_id", True
        return None, "", False

    files = "tokenizer.json" if tok.has_json else "the tokenizer files"
    for role in _ROLES:
        text, source, by_id = text_for(role)
        if text is None:
            continue
        token_id = vocab.ids.get(text)
        id_source = "" if by_id else f"; id from {files}"
        if token_id is None:
            stated = config.get(f"{role}_token_id")
            if isinstance(stated, int) and not isinstance(stated, bool):
                token_id, id_source = stated, f"; id from config.json {role}_token_id"
        if token_id is None:
            tok.notes.append(f"{role} {text!r} ({source}) is left out: the tokenizer files give it no id")
            continue
        if vocab.special is not None and token_id not in vocab.special:
            if role == "eos":
                raise ModeldeckError(
                    f"the tokenizer's eos {text!r} ({source}, id {token_id}) is not a special token in "
                    f"{directory / 'tokenizer.json'}, so generation could not stop on it; fix the tokenizer files"
                )
            tok.notes.append(
                f"{role} {text!r} (id {token_id}, {source}) is left out: not a special token in tokenizer.json"
            )
            continue
        tok.named[role] = (text, token_id, f"{source}{id_source}")
    if "eos" not in tok.named:
        raise ModeldeckError(
            f"the tokenizer in {directory} names no eos token (tokenizer_config.json eos_token, "
            "special_tokens_map.json, or an eos_token_id in config.json / generation_config.json that the tokenizer "
            "has); a card needs eos to stop generating: add it to tokenizer_config.json"
        )
    named_texts = {text for text, _, _ in tok.named.values()}
    seen: set[str] = set()
    for text, token_id in sorted(vocab.special_order, key=lambda item: item[1]):
        if text not in named_texts and text not in seen:
            seen.add(text)
            tok.special.append((text, token_id))
    if isinstance(tok_config.get("add_bos_token"), bool):
        tok.add_bos, tok.add_bos_source = tok_config["add_bos_token"], "tokenizer_config.json add_bos_token"
    elif isinstance(tok_json, dict) and "bos" in tok.named:
        tok.add_bos = _post_processor_adds(tok_json.get("post_processor"), tok.named["bos"][0])
        tok.add_bos_source = "tokenizer.json post_processor"
    if isinstance(tok_config.get("chat_template"), (str, list)) and tok_config["chat_template"]:
        tok.chat_template = "tokenizer_config.json chat_template"
    elif (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        tok.chat_template = (
            "chat_template.jinja" if (directory / "chat_template.jinja").is_file() else "chat_template.json"
        )
    return tok


def _post_processor_adds(processor: Any, bos: str) -> bool:
    """Whether a tokenizer.json post_processor starts a single text with `bos` (TemplateProcessing)."""
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "Sequence":
        return any(_post_processor_adds(p, bos) for p in processor.get("processors") or [])
    single = processor.get("single") if processor.get("type") == "TemplateProcessing" else None
    first = single[0] if isinstance(single, list) and single else None
    return isinstance(first, dict) and (first.get("SpecialToken") or {}).get("id") == bos


# --- generation defaults --------------------------------------------------------------------------------


@dataclass
class _Generation:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _generation(directory: Path, context_length: int, tok: _Tok) -> _Generation:
    found = _Generation()
    data = _json_object(directory / "generation_config.json")
    others = []
    for key, value in data.items():
        if key in _GENERATION_SKIPPED:
            continue
        if key.endswith("_token_id"):
            role = key.removesuffix("_token_id")
            ours = tok.named.get(role)
            if ours is not None and value != ours[1] and not (isinstance(value, list) and value == [ours[1]]):
                found.notes.append(
                    f"generation_config.json {key} is {json.dumps(value)}; the card's tokenizer.{role} is id "
                    f"{ours[1]} ({ours[0]!r})" + (": a card stops on one eos" if role == "eos" else "")
                )
            continue
        if key not in GenerationDefaults.model_fields:
            others.append(f"{key} {json.dumps(value)}")
            continue
        if key == "top_k" and value == 0:  # Hugging Face's "no top-k filtering": the card's default (null)
            continue
        try:
            GenerationDefaults.model_validate({key: value})
        except ValidationError as exc:
            found.notes.append(
                f"generation_config.json {key} {json.dumps(value)} is left out: {exc.errors()[0]['msg']}"
            )
            continue
        if key == "max_new_tokens" and isinstance(value, int) and value > context_length:
            found.notes.append(
                f"generation_config.json max_new_tokens {value} is left out: beyond context_length {context_length}"
            )
            continue
        found.values[key], found.sources[key] = value, f"generation_config.json {key}"
    if others:
        found.notes.append(f"generation_config.json also sets {', '.join(others)}: not generation defaults a card has")
    default = GenerationDefaults.model_fields["max_new_tokens"].default
    if "max_new_tokens" not in found.values and context_length < default:
        found.values["max_new_tokens"] = context_length
        found.sources["max_new_tokens"] = f"= context_length (the default {default} exceeds it)"
    try:
        GenerationDefaults.model_validate(found.values)
    except ValidationError as exc:  # e.g. min_new_tokens above max_new_tokens
        found.warnings.append(f"generation_config.json's defaults are left out: {exc.errors()[0]['msg']}")
        found.notes.append("generation_config.json's defaults are inconsistent for the card schema: left out")
        found.values = {k: v for k, v in found.values.items() if k == "max_new_tokens" and k not in data}
    order = list(GenerationDefaults.model_fields)
    found.values = {k: found.values[k] for k in order if k in found.values}
    return found


# --- the YAML text ---------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    """A value as one line of YAML (scalars, flow mappings and lists), quoted where YAML needs it; floats to 15
    significant digits (a product of two config values reads 0.222, not 0.22200000000000003)."""
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.15g}")
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=2**31 - 1)
    return text.strip().removesuffix("\n...").strip()


class _Lines:
    """YAML lines, each with an optional comment; comments are aligned when written."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def comment(self, text: str, indent: int = 0) -> None:
        """A comment line, wrapped at 116 columns."""
        prefix = " " * indent + "# "
        wrapped = textwrap.wrap(" ".join(text.split()), 116 - len(prefix), break_on_hyphens=False) or [""]
        self.lines += [((prefix + line).rstrip(), "") for line in wrapped]

    def blank(self) -> None:
        self.lines.append(("", ""))

    def field(self, indent: int, key: str, value: Any = None, comment: str = "", section: bool = False) -> None:
        text = f"{' ' * indent}{key}:" if section else f"{' ' * indent}{key}: {_flow(value)}"
        self.lines.append((text, " ".join(comment.split())))

    def item(self, indent: int, value: Any, comment: str = "") -> None:
        self.lines.append((f"{' ' * indent}- {_flow(value)}", " ".join(comment.split())))

    def text(self) -> str:
        widths = [len(text) for text, comment in self.lines if comment and len(text) <= 44]
        column = max(widths, default=0) + 2
        written = []
        for text, comment in self.lines:
            if comment:
                text = f"{text.ljust(column) if len(text) < column else text + '  '}# {comment}"
            written.append(text.rstrip())
        return "\n".join(written) + "\n"


def _mapping(lines: _Lines, data: dict[str, Any], sources: dict[str, str], indent: int, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            lines.field(indent, key, comment=sources.get(path, ""), section=True)
            _mapping(lines, value, sources, indent + 2, f"{path}.")
        else:
            lines.field(indent, key, value, sources.get(path, ""))


def _render(
    *,
    directory: Path,
    card_id: str,
    name: str,
    chosen: _Tried,
    others: list[str],
    model_type: str | None,
    checkpoint: Checkpoint,
    tok: _Tok,
    generation: _Generation,
    formats: set[str],
) -> str:
    lines = _Lines()
    layout = chosen.layout
    lines.comment(
        f"A starting card written by `modeldeck card new` from the checkpoint in {directory} (config.json "
        f"model_type {model_type}, checkpoint layout {layout.name}"
        + (f"; layout(s) {', '.join(others)} did not fit)" if others else ")")
        + ". Each field says where it came from; fields not written take the schema's defaults."
    )
    lines.comment("Before sharing it, fill in the fields marked TODO (id, name, publisher, license, source.repo).")
    if chosen.unread:
        lines.comment("")
        lines.comment(
            f"config.json keys no rule of layout {layout.name!r} reads (check that they do not change the "
            f"computation): {', '.join(chosen.unread)}"
        )
    lines.blank()
    lines.field(0, "schema_version", 1)
    lines.field(0, "id", card_id, f"{TODO}: a unique lowercase id (from the folder name)")
    lines.field(0, "name", name, f"{TODO}: the display name")
    lines.field(0, "publisher", "CHANGE-ME", f"{TODO}: who publishes the model")
    lines.field(0, "license", "NOASSERTION", f"{TODO}: the weights' SPDX license (NOASSERTION: not stated)")
    lines.blank()
    lines.field(0, "source", section=True)
    lines.comment(f"repo: OWNER/NAME  # {TODO}: the Hugging Face repository, once the weights are published", 2)
    lines.field(2, "format", "safetensors", f"{len(checkpoint.files)} *.safetensors file(s) in {directory}")
    lines.blank()
    counted = count_parameters(chosen.arch).total
    extra = sum(chosen.extra.values())
    lines.field(0, "parameters", section=True)
    lines.field(
        2,
        "stated",
        counted + extra,
        "computed by modeldeck card new from the architecture"
        + (" plus the stored extra" if extra else "")
        + f"; {TODO}: the upstream card's figure",
    )
    if extra:
        names = ", ".join(chosen.extra)
        lines.field(2, "stored_extra", extra, f"{names} in the checkpoint")
        lines.field(2, "note", f"the checkpoint stores its ALiBi slopes ({names}), which are not weights")
    lines.blank()
    lines.field(0, "architecture", section=True)
    for dropped in chosen.arch_data.dropped:
        lines.comment(f"not written: {dropped}, which positions of this kind do not have", 2)
    _mapping(lines, chosen.arch_data.data, chosen.arch_data.sources, 2)
    lines.blank()
    lines.field(0, "tokenizer", section=True)
    lines.field(2, "kind", tok.kind, tok.kind_source)
    lines.field(2, "files", tok.files)
    if tok.add_bos is not None:
        lines.field(2, "add_bos", tok.add_bos, tok.add_bos_source)
    for role in _ROLES:
        if role in tok.named:
            text, token_id, source = tok.named[role]
            lines.field(2, role, {"text": text, "id": token_id}, source)
    for note in tok.notes:
        lines.comment(note, 2)
    if tok.special:
        lines.field(2, "special_tokens", section=True, comment="the tokenizer's other special tokens")
        for text, token_id in tok.special:
            lines.item(4, {"text": text, "id": token_id})
    lines.blank()
    if tok.chat_template:
        lines.comment(
            f"The checkpoint has a chat template ({tok.chat_template}: Jinja), which a card does not run: plain "
            "completion until an inline prompt_format (begin, system, user and assistant turns) is written for it."
        )
    if tok.add_bos and "bos" in tok.named:
        lines.comment(
            f"The tokenizer prepends bos {tok.named['bos'][0]!r}; plain does not: a model trained with it may need an "
            f"inline format with begin: {tok.named['bos'][0]!r}."
        )
    if "plain" in formats:
        lines.field(0, "prompt_format", "plain", "base-model completion: the prompt is the text as given")
    else:
        lines.field(0, "prompt_format", {"name": "plain", "multi_turn": False}, "base-model completion")
    lines.blank()
    if generation.values:
        lines.field(0, "generation", section=True)
    for note in generation.notes:
        lines.comment(note, 2 if generation.values else 0)
    for key, value in generation.values.items():
        lines.field(2, key, value, generation.sources[key])
    if generation.values or generation.notes:
        lines.blank()
    lines.field(0, "dtype", "auto", f"the checkpoint's own ({checkpoint.stored_dtype or 'unknown'})")
    return lines.text()


# --- the final check ---------------------------------------------------------------------------------------


def _check(
    text: str, reg: Registry, directory: Path, layout: CheckpointLayout, checkpoint: Checkpoint, tok: _Tok
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
