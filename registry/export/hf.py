"""A card as the files Hugging Face readers take from a model folder: `chat_template.jinja`, `tokenizer_config.json`
(with the template too, for readers older than transformers 4.43's separate file), `special_tokens_map.json`,
`generation_config.json` and `README.md` with the hub's model-card metadata.

Only what transformers would act on is written to generation_config.json: sampling parameters of a greedy card and
beam parameters of a one-beam card are left out (transformers warns about them and ignores them), and an unset
top_k is written as 0, because transformers' own default when sampling is 50.
"""

from __future__ import annotations

from typing import Any

from modeldeck.registry.export.chat_template import chat_template
from modeldeck.registry.schema import Card

__all__ = ["generation_config", "readme", "special_tokens_map", "tokenizer_config"]


def generation_config(card: Card) -> tuple[dict[str, Any], list[str]]:
    """transformers' GenerationConfig of the card's defaults, and what of them it cannot carry."""
    gen, tok, fmt = card.generation, card.tokenizer, card.format
    config: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "do_sample": gen.do_sample}
    if gen.min_new_tokens:
        config["min_new_tokens"] = gen.min_new_tokens
    if gen.do_sample:
        config["temperature"] = gen.temperature
        config["top_k"] = gen.top_k or 0
        if gen.top_p is not None:
            config["top_p"] = gen.top_p
    if gen.repetition_penalty != 1.0:
        config["repetition_penalty"] = gen.repetition_penalty
    if gen.renormalize_logits:
        config["renormalize_logits"] = True
    if gen.num_beams > 1:
        config["num_beams"] = gen.num_beams
        if gen.length_penalty is not None:
            config["length_penalty"] = gen.length_penalty
        if gen.early_stopping is not None:
            config["early_stopping"] = gen.early_stopping
    if gen.num_return_sequences > 1:
        config["num_return_sequences"] = gen.num_return_sequences
    if tok.bos is not None:
        config["bos_token_id"] = tok.bos.id
    config["eos_token_id"] = tok.eos.id
    if tok.pad is not None:
        config["pad_token_id"] = tok.pad.id
    if fmt.stop:
        config["stop_strings"] = list(fmt.stop)  # transformers stops on them when generate() is given the tokenizer
    dropped = []
    if fmt.strip_response != "none":
        what = "one leading space" if fmt.strip_response == "leading_space" else "surrounding whitespace"
        dropped.append(f"strip_response {fmt.strip_response}: transformers keeps the {what} modeldeck removes")
    return config, dropped


def _token(card: Card, role: str) -> str | None:
    spec = getattr(card.tokenizer, role)
    return None if spec is None else str(spec.text)


def special_tokens_map(card: Card) -> dict[str, str]:
    return {f"{role}_token": text for role in ("bos", "eos", "pad", "unk") if (text := _token(card, role))}


def tokenizer_config(card: Card, existing: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's tokenizer_config.json (if any) with the card's chat template, special tokens and length."""
    config = dict(existing or {})
    if not existing and card.tokenizer.kind == "tokenizers":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.update(special_tokens_map(card))
    config["model_max_length"] = card.architecture.context_length
    config["chat_template"] = chat_template(card.format, card.id)
    return config


def _hub_license(spdx: str) -> str:
    """The hub's license id: SPDX lower-cased; NOASSERTION is the hub's 'unknown'."""
    return "unknown" if spdx == "NOASSERTION" else spdx.lower()


def readme(card: Card) -> str:
    """README.md: the hub's YAML front matter (huggingface_hub's ModelCardData) and the card's description."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=r.task,
            dataset_name=r.task,
            metric_type=r.metric,
            metric_value=r.value,
        )
        for r in card.evaluation
    ]
    data = ModelCardData(
        model_name=card.name,
        license=_hub_license(card.license),
        language=card.languages or None,
        base_model=card.base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["modeldeck"],
        eval_results=results or None,
    )
    body = [f"# {card.name}", "", card.description or "", ""]
    body += [f"Exported by modeldeck from card `{card.id}` (publisher: {card.publisher})."]
    if card.source.repo:
        body += ["", f"Weights: `{card.source.repo}` at revision `{card.source.revision}`."]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body).strip() + "\n"
