"""Checks beyond the schema: is the card telling one consistent story?

- the parameter count computed from the architecture equals the stated one, or a note explains why not;
- every marker declared special is one of the tokenizer's declared special tokens, and is used;
- generation defaults do not set options that the chosen decoding mode ignores;
- optionally, against a tokenizer.json: ids, markers and stop strings tokenize as the card says.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modeldeck.registry.diagnostics import Diagnostic
from modeldeck.registry.params import count_parameters
from modeldeck.registry.schema import Card

if TYPE_CHECKING:  # the registry imports no tokenizers at run time; check_tokenizer imports it when it runs
    from tokenizers import Tokenizer

__all__ = ["check_card", "check_loaded_tokenizer", "check_tokenizer"]


def check_card(card: Card, where: str) -> list[Diagnostic]:
    """Consistency checks of a resolved card (its prompt format filled in)."""
    return [*_check_parameters(card, where), *_check_markers(card, where), *_check_generation(card, where)]


def _check_parameters(card: Card, where: str) -> list[Diagnostic]:
    counted = count_parameters(card.architecture)
    stated = card.parameters
    found: list[Diagnostic] = []

    def compare(field: str, what: str, claimed: int | None, computed: int, extra: int = 0) -> None:
        if claimed is None:
            return
        if claimed == computed + extra:
            if extra:
                found.append(
                    Diagnostic(
                        "info",
                        f"{what} {claimed:,} = {computed:,} from the architecture + {extra:,} stored extra: {stated.note}",
                        where,
                        field=field,
                    )
                )
            return
        diff = claimed - computed
        numbers = f"stated {claimed:,}, computed from the architecture {computed:,}, difference {diff:+,}"
        if extra:
            numbers += f" ({extra:,} explained as stored extra, {diff - extra:+,} not)"
        if stated.note:
            found.append(Diagnostic("warning", f"{what} differs: {numbers}. Note: {stated.note}", where, field=field))
        else:
            found.append(
                Diagnostic(
                    "error",
                    f"{what} differs: {numbers}",
                    where,
                    field=field,
                    hint="fix the architecture, or add parameters.note explaining the difference "
                    "(and parameters.stored_extra for parameters the checkpoint stores beyond the architecture)",
                )
            )

    compare("parameters.stated", "parameter count", stated.stated, counted.total, stated.stored_extra)
    compare(
        "parameters.stated_non_embedding",
        "non-embedding parameter count",
        stated.stated_non_embedding,
        counted.non_embedding,
    )
    return found


def _check_markers(card: Card, where: str) -> list[Diagnostic]:
    tok, fmt = card.tokenizer, card.format
    declared = tok.declared_special()
    texts = [fmt.begin, fmt.system.turn.prefix, fmt.system.turn.suffix, fmt.user.prefix, fmt.user.suffix]
    texts += [fmt.assistant.prefix, fmt.assistant.suffix, fmt.answer_prefix, *fmt.stop]
    found = []
    for i, marker in enumerate(tok.markers):
        field = f"tokenizer.markers[{i}]"
        if marker.special and marker.text not in declared:
            found.append(
                Diagnostic(
                    "error",
                    f"marker {marker.text!r} is declared special, but the tokenizer declares no such special token",
                    where,
                    field=field,
                    hint=f"declared special tokens: {', '.join(declared)}; add it to tokenizer.special_tokens "
                    "with its id, or set special: false if the tokenizer reads it as plain text",
                )
            )
        if not marker.special and marker.text in declared:
            found.append(
                Diagnostic(
                    "error",
                    f"marker {marker.text!r} is declared plain text, but it is also declared a special token",
                    where,
                    field=field,
                    hint="set special: true, or remove it from the special tokens",
                )
            )
        if not any(marker.text in text for text in texts):
            found.append(
                Diagnostic(
                    "warning",
                    f"marker {marker.text!r} does not occur in prompt format {fmt.name!r}",
                    where,
                    field=field,
                    hint="remove it, or use it in the format",
                )
            )
    return found


def _check_generation(card: Card, where: str) -> list[Diagnostic]:
    gen = card.generation
    found = []
    if not gen.do_sample:
        ignored = [
            f"{name}={value}"
            for name, value, default in [
                ("temperature", gen.temperature, 1.0),
                ("top_k", gen.top_k, None),
                ("top_p", gen.top_p, None),
            ]
            if value != default
        ]
        if ignored:
            found.append(
                Diagnostic(
                    "warning",
                    f"{', '.join(ignored)} set with do_sample false: greedy decoding ignores them",
                    where,
                    field="generation",
                    hint="set do_sample: true to sample, or remove them",
                )
            )
    if gen.num_beams == 1:
        ignored = [
            f"{name}={value}"
            for name, value in [("length_penalty", gen.length_penalty), ("early_stopping", gen.early_stopping)]
            if value is not None
        ]
        if ignored:
            found.append(
                Diagnostic(
                    "warning",
                    f"{', '.join(ignored)} set with num_beams 1: they only affect beam search",
                    where,
                    field="generation",
                    hint="set num_beams > 1 for beam search, or remove them",
                )
            )
    return found


def check_tokenizer(card: Card, directory: Path, where: str) -> list[Diagnostic]:
    """Check the card against a tokenizer.json: special ids, markers, stop strings, vocabulary size."""
    path = directory / "tokenizer.json" if directory.is_dir() else directory
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return [
            Diagnostic(
                "error",
                "checking a tokenizer needs the tokenizers package",
                str(path),
                hint="pip install 'modeldeck[runtime]'",
            )
        ]
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions for missing or bad files
        return [
            Diagnostic(
                "error", f"cannot load the tokenizer: {exc}", str(path), hint="give a folder with a tokenizer.json"
            )
        ]
    return check_loaded_tokenizer(card, tokenizer, path, where)


def check_loaded_tokenizer(card: Card, tokenizer: Tokenizer, path: Path, where: str) -> list[Diagnostic]:
    """`check_tokenizer` of a tokenizer already loaded from `path` (the runtime's, so it is not read twice)."""
    found: list[Diagnostic] = []
    special_ids = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    def problem(message: str, field: str, hint: str | None = None) -> None:
        found.append(Diagnostic("error", f"{message} (tokenizer {path})", where, field=field, hint=hint))

    fields = _special_token_fields(card)
    for text, token_id in card.tokenizer.declared_special().items():
        actual = tokenizer.token_to_id(text)
        if actual is None:
            problem(
                f"special token {text!r} ({fields[text]}, id {token_id}) is not in the tokenizer's vocabulary",
                "tokenizer",
                hint="check the token's text in the card, or give the tokenizer this card is for",
            )
        elif actual != token_id:
            problem(
                f"special token {text!r} is id {actual} in the tokenizer, the card says {token_id}",
                "tokenizer",
                hint=f"set the id of {fields[text]} to {actual}, or give the tokenizer this card is for",
            )
        elif token_id not in special_ids:
            problem(f"{text!r} (id {token_id}) is not a special token in the tokenizer", "tokenizer")
    for i, marker in enumerate(card.tokenizer.markers):
        ids = tokenizer.encode(marker.text, add_special_tokens=False).ids
        is_one_special = len(ids) == 1 and ids[0] in special_ids
        if marker.special and not is_one_special:
            problem(
                f"special marker {marker.text!r} encodes to {ids}, not to one special token", f"tokenizer.markers[{i}]"
            )
        if not marker.special and is_one_special:
            problem(
                f"marker {marker.text!r} is a special token (id {ids[0]}) in the tokenizer, the card says plain text",
                f"tokenizer.markers[{i}]",
                hint="set special: true",
            )
    for i, stop in enumerate(card.format.stop):
        ids = tokenizer.encode(stop, add_special_tokens=False).ids
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if not ids or back != stop:
            problem(
                f"stop string {stop!r} is not reachable: it encodes to {ids}, which decode to {back!r}",
                f"prompt_format.stop[{i}]",
            )
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if max(size, largest + 1) > card.architecture.vocab_size:
        problem(
            f"the tokenizer has {size} tokens (ids up to {largest}), more than the embedding's "
            f"{card.architecture.vocab_size} rows",
            "architecture.vocab_size",
        )
    return found


def _special_token_fields(card: Card) -> dict[str, str]:
    """Each special token's text -> the card field that first declares it (tokenizer.eos, tokenizer.special_tokens[2])."""
    tok = card.tokenizer
    named = [
        (f"tokenizer.{role}", t) for role, t in (("bos", tok.bos), ("eos", tok.eos), ("pad", tok.pad), ("unk", tok.unk))
    ]
    listed = [(f"tokenizer.special_tokens[{i}]", t) for i, t in enumerate(tok.special_tokens)]
    fields: dict[str, str] = {}
    for field, token in [*named, *listed]:
        if token is not None:
            fields.setdefault(token.text, field)
    return fields
