"""The tokenizer section and generation defaults of a new card, read from the checkpoint's files as JSON
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json, generation_config.json; a
tokenizer.model through sentencepiece when it is installed): the tokenizer's kind and files, bos/eos/pad/unk and the
other special tokens with their ids, and the generation defaults the card schema knows. Reading them as JSON
needs no tokenizer library, so writing a card works where tokenizers (or torch) is not installed."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.registry.schema import GenerationDefaults

ROLES = ("bos", "eos", "pad", "unk")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
_GENERATION_SKIPPED = {
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "return_dict_in_generate",
    *("output_attentions", "output_hidden_states", "output_scores", "output_logits"),
}
"""generation_config.json keys about tooling or what generate returns, never about which tokens it picks."""


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModeldeckError(f"{path} is not valid JSON: {exc}") from None


def json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModeldeckError(f"{path} is not a JSON object")
    return data


@dataclass
class Tok:
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
            vocab = read_json(directory / "vocab.json")
            if isinstance(vocab, dict):
                self.ids.update({t: i for t, i in vocab.items() if isinstance(i, int)})
        if kind == "sentencepiece" and importlib.util.find_spec("sentencepiece") is not None:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            self.ids.update({sp.id_to_piece(i): i for i in range(sp.get_piece_size())})
        added = read_json(directory / "added_tokens.json")
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


def read_tokenizer(directory: Path, config: dict[str, Any]) -> Tok:
    present = [name for name in _TOKENIZER_FILES if (directory / name).is_file()]
    if "tokenizer.json" in present:
        tok = Tok("tokenizers", present, "tokenizer.json", has_json=True)
    elif "tokenizer.model" in present:
        tok = Tok("sentencepiece", present, "tokenizer.model (SentencePiece)")
    elif "vocab.json" in present and "merges.txt" in present:
        tok = Tok("gpt2-bpe", present, "vocab.json + merges.txt (GPT-2 BPE)")
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
    tok_json = read_json(directory / "tokenizer.json") if tok.has_json else None
    tok_config = json_object(directory / "tokenizer_config.json")
    special_map = json_object(directory / "special_tokens_map.json")
    generation = json_object(directory / "generation_config.json")
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
    for role in ROLES:
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
class Generation:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def generation(directory: Path, context_length: int, tok: Tok) -> Generation:
    found = Generation()
    data = json_object(directory / "generation_config.json")
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
