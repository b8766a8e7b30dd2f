"""A card as one GGUF file (llama.cpp, Ollama) with an Ollama Modelfile beside it, without torch in this process.

    export_gguf(card, to, outtype="f32", weights=None)   -> GGUFExport: what was written, what the GGUF lacks

The tensors are converted by llama.cpp's own convert_hf_to_gguf.py, in llama.cpp's environment (registry/engines/
llamacpp.py), not by a writer of ours: it keeps up with llama.cpp's tensor layouts (GPT-NeoX's and Falcon's QKV
order, Llama's rotary permutation), tokenizer encodings (BPE merges, SentencePiece scores, the pre-tokenizer
names llama.cpp splits text by) and quantization. What the converter guesses or hard-codes, the card states, and
modeldeck writes it over the converter's values (`card_keys`): Falcon's context length (the converter writes 2048)
and feed-forward width (4 x hidden), the rotary base and share, the norm epsilon, general.* (name, author,
license, languages, base model, source), the card's special token ids, the chat template (the Jinja template of
registry/export/chat_template.py), and the sampling defaults llama.cpp reads (general.sampling.*). The written file
is read back with gguf's reader and every one of those keys compared; a difference is an error, not a warning.

The converter reads a staged folder: links to the checkpoint's files, the card's Hugging Face export (tokenizer
and generation configs, README front matter), and a config.json with what the converter's transformers (4.57)
needs and a transformers-5 config spells differently (GPT-NeoX's rotary_pct / rotary_emb_base, `architectures`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeldeck.registry.architecture import RotaryPositions
from modeldeck.registry.diagnostics import spell
from modeldeck.registry.engines import llamacpp
from modeldeck.registry.engines.environment import EngineError
from modeldeck.registry.export import ExportError, check_target, ollama
from modeldeck.registry.export import plan as hf_plan
from modeldeck.registry.export import write as write_export
from modeldeck.registry.export.chat_template import chat_template
from modeldeck.registry.schema import Card

__all__ = ["GGUFExport", "cached_export", "card_keys", "converter_config", "export_gguf", "not_carried"]

GGUF_NAME = "model.gguf"
TypedValue = list[Any]  # [GGUF value type, value]: ["uint32", 2048], ["array:string", ["en"]]


@dataclass
class GGUFExport:
    """What `export_gguf` wrote into `folder`, the GGUF's keys as read back, and what of the card it cannot carry."""

    folder: Path
    written: list[str]
    outtype: str
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: int = 0
    dropped: list[str] = field(default_factory=list)


def card_keys(card: Card, arch_name: str) -> dict[str, TypedValue]:
    """The GGUF keys the card decides, typed as llama.cpp reads them."""
    a, tok, gen = card.architecture, card.tokenizer, card.generation
    keys: dict[str, TypedValue] = {
        "general.name": ["string", card.name],
        "general.author": ["string", card.publisher],
        "general.license": ["string", card.license],
        "general.tags": ["array:string", ["modeldeck", f"modeldeck-card:{card.id}"]],
        f"{arch_name}.context_length": ["uint32", a.context_length],
        f"{arch_name}.embedding_length": ["uint32", a.hidden_size],
        f"{arch_name}.block_count": ["uint32", a.layers],
        f"{arch_name}.feed_forward_length": ["uint32", a.ffn_size],
        f"{arch_name}.attention.head_count": ["uint32", a.heads],
        f"{arch_name}.attention.head_count_kv": ["uint32", a.kv_heads],
        f"{arch_name}.rope.dimension_count": ["uint32", a.rotary_dims],
        "tokenizer.ggml.eos_token_id": ["uint32", tok.eos.id],
        "tokenizer.ggml.add_bos_token": ["bool", False],  # the rendered prompt holds every special token it needs
        "tokenizer.ggml.add_eos_token": ["bool", False],
        "tokenizer.chat_template": ["string", chat_template(card.format, card.id)],
        "general.sampling.temp": ["float32", gen.temperature if gen.do_sample else 0.0],
        "general.sampling.penalty_repeat": ["float32", gen.repetition_penalty],
    }
    if isinstance(a.positions, RotaryPositions):  # llamacpp.check_card: the only positions it exports
        keys[f"{arch_name}.rope.freq_base"] = ["float32", a.positions.base]
        if a.positions.scaling is not None:
            keys[f"{arch_name}.rope.scaling.type"] = ["string", "linear"]
            keys[f"{arch_name}.rope.scaling.factor"] = ["float32", a.positions.scaling.factor]
    if arch_name == "gptneox":  # the converter reads use_parallel_residual from config.json, True when absent
        keys["gptneox.use_parallel_residual"] = ["bool", a.residual.kind == "parallel"]
    eps = "layer_norm_rms_epsilon" if a.norm.kind == "rmsnorm" else "layer_norm_epsilon"
    keys[f"{arch_name}.attention.{eps}"] = ["float32", a.norm.eps]
    for role, key in (("bos", "bos"), ("pad", "padding"), ("unk", "unknown")):
        spec = getattr(tok, role)
        if spec is not None:
            keys[f"tokenizer.ggml.{key}_token_id"] = ["uint32", spec.id]
    if gen.do_sample:
        keys["general.sampling.top_k"] = ["int32", gen.top_k or 0]
        keys["general.sampling.top_p"] = ["float32", gen.top_p if gen.top_p is not None else 1.0]
    if card.description:
        keys["general.description"] = ["string", card.description]
    if card.languages:
        keys["general.languages"] = ["array:string", list(card.languages)]
    if card.source.repo:
        keys["general.source.repo_url"] = ["string", f"https://huggingface.co/{card.source.repo}"]
        keys["general.version"] = ["string", card.source.revision]
    if card.base_model:
        keys["general.base_model.count"] = ["uint32", 1]
        keys["general.base_model.0.name"] = ["string", card.base_model]
        keys["general.base_model.0.repo_url"] = ["string", f"https://huggingface.co/{card.base_model}"]
    return keys


def not_carried(card: Card) -> list[str]:
    """What of the card a GGUF file has no place for (the Modelfile beside it carries some; modeldeck's
    `--engine llama.cpp` applies all of them itself)."""
    fmt, gen = card.format, card.generation
    dropped = [
        f"max_new_tokens {gen.max_new_tokens}: GGUF has no length default (the Modelfile's num_predict has it)",
        "user text that spells a special token: llama.cpp and Ollama tokenize the rendered prompt whole, so it "
        "becomes that token; modeldeck (and modeldeck serve on any engine) keeps user text as plain text",
    ]
    if fmt.stop:
        dropped.append(f"stop strings {list(fmt.stop)}: GGUF has no stop strings (the Modelfile's stop has them)")
    if gen.min_new_tokens:
        dropped.append(f"min_new_tokens {gen.min_new_tokens}: GGUF has no minimum length")
    if gen.renormalize_logits or gen.num_beams > 1 or gen.num_return_sequences > 1:
        dropped.append("renormalize_logits, num_beams, num_return_sequences: GGUF has no keys for them")
    if fmt.strip_response != "none":
        dropped.append(f"strip_response {fmt.strip_response}: llama.cpp returns the generated text as it is")
    return dropped


def converter_config(card: Card, config: dict[str, Any], hf_class: str) -> dict[str, Any]:
    """The checkpoint's config.json as the converter reads it: `architectures` (a config saved without a model
    lacks it; the converter picks its model class by it) and, for GPT-NeoX, rotary_pct and rotary_emb_base, which
    transformers 5 writes inside rope_parameters and the converter's transformers 4.57 does not find there."""
    config = {**config, "architectures": [hf_class]}
    positions = card.architecture.positions
    if card.architecture.checkpoint_layout == "gpt-neox" and isinstance(positions, RotaryPositions):
        config["rotary_pct"] = positions.fraction
        config["rotary_emb_base"] = positions.base
    return config


def _stage(card: Card, source: Path, hf_class: str, into: Path) -> Path:
    """The folder the converter reads (named after the card: the converter derives general.basename from it)."""
    folder = into / card.id
    write_export(hf_plan(card, ["hf"], weights=source, weights_mode="symlink"), folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"{source / 'config.json'} cannot be read as JSON: {error}") from None
    config_path.unlink()  # a link to the checkpoint's: replaced, never written through
    config_path.write_text(json.dumps(converter_config(card, config, hf_class), indent=2), encoding="utf-8")
    if card.tokenizer.kind == "sentencepiece":
        _declare_added_tokens(card, folder / "tokenizer_config.json")
    return folder


def _declare_added_tokens(card: Card, path: Path) -> None:
    """A SentencePiece checkpoint's special tokens beyond tokenizer.model (Aira's <|startofinstruction|> ...) live
    in files the converter may not get (added_tokens.json); the card declares them, so tokenizer_config.json's
    added_tokens_decoder names them for the converter, which makes them llama.cpp control tokens. The unknown token
    keeps its own type."""
    config = json.loads(path.read_text(encoding="utf-8"))
    decoder = config.setdefault("added_tokens_decoder", {})
    tok = card.tokenizer
    unk = tok.unk.id if tok.unk is not None else None
    for text, token_id in tok.declared_special().items():
        if token_id != unk:
            decoder.setdefault(str(token_id), {"content": text, "special": True})
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _differences(expected: dict[str, TypedValue], fields: dict[str, Any]) -> list[str]:
    wrong = []
    for key, (kind, value) in expected.items():
        got = fields.get(key)
        same = got == value if kind != "float32" else isinstance(got, float) and abs(got - value) <= 1e-6 * abs(value)
        if not same:
            wrong.append(f"{key}: the card says {value!r}, the file has {got!r}")
    return wrong


def export_gguf(
    card: Card,
    to: Path,
    *,
    outtype: str = "f32",
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    force: bool = False,
) -> GGUFExport:
    """Write `to`/model.gguf (llama.cpp's converter, the card's keys over its own, read back and compared) and
    `to`/Modelfile (FROM ./model.gguf); all or nothing, existing files replaced only with `force`."""
    from modeldeck.registry import weights as weight_files

    arch_name, hf_class = llamacpp.check_card(card, outtype)
    python = llamacpp.find_python()
    try:
        source = weight_files.local_weights(card, weights, revision)
    except weight_files.WeightsNotFoundError as error:
        raise ExportError(
            f"a GGUF export needs the checkpoint on this machine ({error}); pass {spell('weights', 'DIR')}, or "
            f"fetch it first (`modeldeck download {card.id}`)"
        ) from None
    if not any(source.glob("*.safetensors")):
        raise ExportError(
            f"{source} has no *.safetensors files; convert the checkpoint first (`modeldeck convert {source} OUT`) "
            "and export from OUT"
        )
    names = [GGUF_NAME, "Modelfile"]
    to = check_target(to, names, force)
    expected = card_keys(card, arch_name)
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{to.name}.gguf-", dir=to.parent))
    try:
        folder = _stage(card, source, hf_class, staging)
        partial = staging / GGUF_NAME
        spec = {"model": str(folder), "outfile": str(partial), "outtype": outtype, "overrides": expected}
        llamacpp.run_worker(python, "convert", spec)
        read = llamacpp.run_worker(python, "read", {"path": str(partial)})
        wrong = _differences({"general.architecture": ["string", arch_name], **expected}, read["fields"])
        if wrong:
            raise EngineError("the GGUF llama.cpp's converter wrote does not carry the card:\n  " + "\n  ".join(wrong))
        modelfile, dropped = ollama.modelfile(card, f"./{GGUF_NAME}")
        (staging / "Modelfile").write_text(modelfile, encoding="utf-8")
        to.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, to / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = GGUFExport(to, names, outtype, read["fields"], len(read["tensors"]))
    report.dropped = not_carried(card) + [f"Modelfile: {line}" for line in dropped]
    return report


def cached_export(card: Card, source: Path, outtype: str) -> Path:
    """The GGUF of `card` with the checkpoint in `source` at `outtype`, exported once into the user cache folder and
    reused: keyed by the card's data, the checkpoint's files (names, sizes, modification times), the outtype and
    llama-cpp-python's version, so a changed card or checkpoint is exported again."""
    key = hashlib.sha256()
    key.update(card.model_dump_json().encode())
    key.update(f"{outtype}\0{llamacpp.LLAMA_CPP_PYTHON}\0{source.resolve()}".encode())
    for path in sorted(source.iterdir()):
        info = path.stat()
        key.update(f"\0{path.name}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modeldeck" / "gguf"
    folder = cache / f"{card.id}-{outtype}-{key.hexdigest()[:16]}"
    if not (folder / GGUF_NAME).is_file():
        export_gguf(card, folder, outtype=outtype, weights=source, force=True)
        _prune(cache, f"{card.id}-{outtype}-", keep=CACHED_PER_CARD)
    return folder / GGUF_NAME


CACHED_PER_CARD = 2
"""Exports kept per card and type: a changed card or checkpoint makes a new one, and older ones go, so the cache
holds at most this many files of one model (the newest first)."""


def _prune(cache: Path, prefix: str, keep: int) -> None:
    folders = [f for f in cache.iterdir() if f.name.startswith(prefix) and len(f.name) == len(prefix) + 16]
    folders.sort(key=lambda f: f.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)
