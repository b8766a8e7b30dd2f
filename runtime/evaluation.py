"""lm-evaluation-harness on modeldeck: the `modeldeck` model backend, and `evaluate` over a card's revisions.

    lm_eval task ─► ModeldeckLM (registered as "modeldeck")
                       loglikelihood          ─► Model.score           (pairs, batched; left truncation counted)
                       loglikelihood_rolling  ─► Model.loglikelihood_rolling (disjoint windows of the context)
                       generate_until         ─► runtime/generate.generate (token prompts cut from the left)
    evaluate(card, tasks, revisions) ─► one model at a time ─► lm_eval.simple_evaluate ─► EvalRun per revision

Importing this module registers the backend (lm-eval 0.4.13 finds models only by import, not by entry point):
`modeldeck eval` imports it, and `python -m modeldeck.runtime.evaluation ARGS` is lm-eval's own command line with
the backend registered (`--model modeldeck --model_args card=pythia-160m,revision=step1000`).

Requests are encoded as lm-eval's `hf` backend encodes them (plain text, no special tokens, the context's trailing
spaces moved to the continuation), so per-request log-likelihoods match it. Generation follows lm-eval's rule for
decoding (greedy unless the task samples: the convention every lm-eval backend keeps, so that scores are
reproducible); the card's other generation defaults (max_new_tokens, repetition_penalty, min_new_tokens, ...) apply
where the task sets none, and a warning names each one applied. `until` joins the card's stop strings.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
except ImportError as exc:  # lm-eval is the optional `eval` extra
    from modeldeck.registry.diagnostics import ModeldeckError

    raise ModeldeckError(
        f"evaluating needs lm-evaluation-harness ({exc}); install the eval extra: pip install 'modeldeck[eval]'"
    ) from None

import torch
from tqdm import tqdm

from modeldeck.registry.diagnostics import ModeldeckError, spell
from modeldeck.registry.schema import Card, GenerationDefaults
from modeldeck.runtime.engine import Model, load
from modeldeck.runtime.generate import GenerationError, generate
from modeldeck.runtime.scoring import Score

__all__ = ["EvalRun", "ModeldeckLM", "UnknownTaskError", "check_tasks", "evaluate"]

log = logging.getLogger("modeldeck.evaluation")

# lm-eval's generation keywords -> the runtime's options (after lm-eval's own normalize_gen_kwargs)
GEN_KWARGS = {"until": "stop", "max_gen_toks": "max_new_tokens", "min_gen_toks": "min_new_tokens"}
SAMPLING = ("temperature", "top_p", "top_k")
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


class UnknownTaskError(ModeldeckError, ValueError):
    """A task name lm-eval does not know (with the nearest names it does)."""


def _batch_size(value: int | str | None) -> int:
    if value in (None, "auto") or (isinstance(value, str) and value.startswith("auto")):
        return 16  # modeldeck's scoring passes bound their own memory (runtime/scoring.py)
    try:
        size = int(value)
    except ValueError:
        raise ModeldeckError(f"{spell('batch_size', repr(value))}: give a whole number >= 1 (or auto)") from None
    if size < 1:
        raise ModeldeckError(f"{spell('batch_size', repr(value))}: give a whole number >= 1 (or auto)")
    return size


@register_model("modeldeck")
class ModeldeckLM(TemplateLM):  # type: ignore[misc]  # lm-eval ships no type information
    """lm-eval's `TemplateLM` on a modeldeck Model: `--model modeldeck --model_args card=ID[,revision=R,weights=DIR,
    device=...,dtype=...,attention=...,quantize=...]`, or `ModeldeckLM(model=loaded_model)` in code."""

    def __init__(
        self,
        card: str | Card | None = None,
        *,
        model: Model | None = None,
        weights: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        attention: str | None = None,
        quantize: str | None = None,
        allow_pickle: bool = False,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            known = "card, weights, revision, device, dtype, attention, quantize, allow_pickle, batch_size"
            raise ModeldeckError(
                f"unknown model_args for --model modeldeck: {', '.join(sorted(unknown))}; known ones: {known}"
            )
        if model is None:
            if card is None:
                raise ModeldeckError("--model modeldeck needs a card: --model_args card=ID (or a card file)")
            if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's command line passes --device cuda:0 unless told otherwise; its hf backend falls back too
                log.warning("device %s is not available here (no CUDA): running on the default device", device)
                device = None
            model = load(
                card,
                weights=weights,
                revision=revision,
                device=device,
                dtype=dtype,
                attention=attention,
                quantize=quantize,
                allow_pickle=allow_pickle in (True, "True", "true", "1"),
            )
        self.model = model
        self.batch_size = min(_batch_size(batch_size), max_batch_size or sys.maxsize)
        self.truncated = 0  # context tokens cut from the left, over every request so far
        self._warned: set[str] = set()

    # --- what TemplateLM needs ----------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.model.card.tokenizer.eos.id

    @property
    def prefix_token_id(self) -> int:
        tok = self.model.card.tokenizer
        return (tok.bos or tok.eos).id  # as lm-eval's hf backend: bos when the tokenizer has one

    @property
    def max_length(self) -> int:
        return self.model.card.architecture.context_length

    @property
    def tokenizer_name(self) -> str:
        return self.model.card.id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.model.tokenizer.encode_text(string)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """`--apply_chat_template`: the card's own prompt format renders the conversation."""
        return self.model.render(chat_history)

    # --- scoring --------------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        # Longest first over all requests (not per batch), each distinct pair once: multiple-choice tasks repeat
        # contexts and often whole pairs, and sorting globally keeps padding to neighbours of equal length.
        pairs = list(dict.fromkeys((tuple(context), tuple(continuation)) for _, context, continuation in requests))
        pairs.sort(key=lambda pair: -(len(pair[0]) + len(pair[1])))
        found: dict[tuple[tuple[int, ...], tuple[int, ...]], Score] = {}
        for chunk in self._chunks(pairs, disable_tqdm, "modeldeck: loglikelihood"):
            scores = self.model.score([(list(c), list(n)) for c, n in chunk], batch_size=self.batch_size)
            found.update(zip(chunk, scores, strict=True))
        results = []
        for _, context, continuation in requests:
            score = found[(tuple(context), tuple(continuation))]
            self._count_truncation(score.truncated)
            results.append((score.logprob, score.greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [request.args[0] for request in requests]
        results: list[float] = []
        for chunk in self._chunks(texts, disable_tqdm, "modeldeck: loglikelihood_rolling"):
            results += [score.logprob for score in self.model.loglikelihood_rolling(chunk)]
        return results

    def _chunks(self, items: list[Any], disable_tqdm: bool, desc: str) -> Iterator[list[Any]]:
        with tqdm(total=len(items), desc=desc, disable=disable_tqdm) as bar:
            for first in range(0, len(items), self.batch_size):
                chunk = items[first : first + self.batch_size]
                yield chunk
                bar.update(len(chunk))

    def _count_truncation(self, tokens: int) -> None:
        if tokens and not self.truncated:
            log.warning(
                "a context is longer than card %s's %d-token window: it is cut from the left, as lm-eval's hf "
                "backend does (EvalRun.truncated counts the tokens cut)",
                self.model.card.id,
                self.max_length,
            )
        self.truncated += tokens

    # --- generation -----------------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (unless the task samples) generation of each request's continuation, stopped at `until`, the
        card's stop strings or eos, batched by identical generation keywords, longest prompt first."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        answers: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), desc="modeldeck: generate_until", disable=disable_tqdm) as bar:
            for members in groups.values():
                options = self.generation_options(requests[members[0]].args[1])
                prompts = {i: self._generation_prompt(requests[i].args[0], options["max_new_tokens"]) for i in members}
                order = sorted(members, key=lambda i: -len(prompts[i]))
                for first in range(0, len(order), self.batch_size):
                    batch = order[first : first + self.batch_size]
                    for i, text in zip(batch, self._generate([prompts[i] for i in batch], options), strict=True):
                        answers[i] = text
                    bar.update(len(batch))
        return answers

    def generation_options(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """A task's generation keywords as the runtime's options: lm-eval's normalization (normalize_gen_kwargs:
        do_sample from temperature, max_gen_toks from its aliases), then the card's defaults for what the task leaves
        unset, each one named in a warning (once per set of keywords)."""
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.model.card.generation.max_new_tokens))
        task_set_max = any(gen_kwargs.get(k) is not None for k in MAX_TOKEN_KEYS)
        options: dict[str, Any] = {}
        for key, value in kwargs.items():
            name = GEN_KWARGS.get(key, key)
            if name not in GenerationDefaults.model_fields and name not in ("stop", "seed"):
                raise GenerationError(
                    f"the task's generation_kwargs has {key!r}, which modeldeck's runtime does not know; known: "
                    f"{', '.join(sorted({*GEN_KWARGS, *GenerationDefaults.model_fields} - set(GEN_KWARGS.values())))}",
                    key,
                )
            options[name] = value
        if not options.get("do_sample"):  # greedy: the sampling knobs do not apply
            options = {k: v for k, v in options.items() if k not in SAMPLING} | {"do_sample": False}
        options["stop"] = [s for s in options.get("stop") or [] if s]
        options["num_return_sequences"] = 1  # one answer per request
        card = self.model.card.generation
        applied = [f"max_new_tokens={card.max_new_tokens}"] if not task_set_max else []
        neutral = GenerationDefaults()
        for name in ("repetition_penalty", "min_new_tokens", "renormalize_logits") + (
            SAMPLING if options["do_sample"] else ()
        ):
            if name not in options and getattr(card, name) != getattr(neutral, name):
                applied.append(f"{name}={getattr(card, name)}")
        if card.do_sample and "do_sample" not in gen_kwargs and "temperature" not in gen_kwargs:
            self._warn_once(
                f"card {self.model.card.id} samples by default (do_sample: true); lm-eval tasks decode greedily "
                "unless they set do_sample or temperature, and so does this backend"
            )
        if applied:
            self._warn_once(
                f"card {self.model.card.id}'s generation defaults applied where the task sets none: {', '.join(applied)}"
            )
        return options

    def _generation_prompt(self, context: str, max_new_tokens: int) -> list[int]:
        room = self.max_length - max_new_tokens
        if room < 1:
            raise GenerationError(
                f"the task asks for {max_new_tokens} new tokens, which leaves no room for a prompt in card "
                f"{self.model.card.id}'s {self.max_length}-token context; lower max_gen_toks",
                "max_new_tokens",
            )
        ids = self.tok_encode(context)
        self._count_truncation(max(0, len(ids) - room))
        return ids[-room:]

    def _generate(self, prompts: list[list[int]], options: dict[str, Any]) -> list[str]:
        model = self.model
        opts = model.options(**options)
        sequences = [model.sequence(ids, opts, strip=False) for ids in prompts]
        for _ in generate(model.decoder, sequences, model.backend, model.tokenizer.pad_id, model.cuda_graphs):
            pass
        return [s.completion().text for s in sequences]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)


# --- tasks and revisions ---------------------------------------------------------------------------


def task_manager(include_path: str | list[str] | None = None, include_defaults: bool = True) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def check_tasks(tasks: list[str], manager: Any) -> None:
    """Every task name is one lm-eval knows (a task, group or tag, after --include-path), or UnknownTaskError
    naming it and the nearest known names."""
    import difflib

    known = set(manager.all_tasks)
    for name in tasks:
        if name in known or manager.match_tasks([name]):
            continue
        near = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UnknownTaskError(
            f"lm-eval knows no task {name!r}{hint} (`lm_eval ls tasks` lists them; a task of your own: "
            "--include-path DIR with its YAML)"
        )


@dataclass
class EvalRun:
    """One revision's evaluation: lm-eval's results per task ({"acc,none": 0.25, "acc_stderr,none": ...}), its
    versions and n-shot, the samples when asked for, and how many context tokens were cut to fit the window."""

    revision: str | None
    results: dict[str, dict[str, Any]]
    versions: dict[str, Any] = field(default_factory=dict)
    n_shot: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    truncated: int = 0


def evaluate(
    card: str | Card,
    tasks: list[str],
    *,
    revisions: list[str | None] | None = None,
    weights: str | None = None,
    limit: int | float | None = None,
    include_path: str | list[str] | None = None,
    include_defaults: bool = True,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    log_samples: bool = False,
    on_revision: Callable[[int, str | None], None] | None = None,
    **load_options: Any,
) -> list[EvalRun]:
    """lm-eval's `simple_evaluate` with the modeldeck backend on each revision in turn (None: the card's own), one
    model in memory at a time. Tasks and revisions are checked before any model is loaded."""
    from lm_eval import simple_evaluate

    from modeldeck import registry
    from modeldeck.registry.weights import check_revision

    reg = registry.default()
    resolved = reg.resolve_card(card, f"card {card.id!r}") if isinstance(card, Card) else reg.card_or_file(card)[0]
    revisions = list(revisions or [None])
    if weights is not None and len(revisions) > 1:
        raise ModeldeckError(
            f"--weights is one checkpoint folder, and {len(revisions)} revisions were asked for; evaluate one "
            "revision per folder, or leave out --weights to read each revision from the hub cache"
        )
    for revision in revisions:
        if revision is not None:
            check_revision(resolved, revision)
    manager = task_manager(include_path, include_defaults)
    check_tasks(tasks, manager)
    runs = []
    for index, revision in enumerate(revisions):
        if on_revision:
            on_revision(index, revision)
        model = load(card, weights=weights, revision=revision, **load_options)
        lm = ModeldeckLM(model=model, batch_size=batch_size)
        out = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            limit=limit,
            num_fewshot=num_fewshot,
            task_manager=manager,
            log_samples=log_samples,
            bootstrap_iters=1000,
        )
        runs.append(
            EvalRun(
                revision,
                dict(out["results"]),
                dict(out.get("versions", {})),
                dict(out.get("n-shot", {})),
                dict(out.get("samples", {})) if log_samples else {},
                lm.truncated,
            )
        )
        del lm, model, out  # the next revision loads only after this one's weights are freed
        gc.collect()
    return runs


if __name__ == "__main__":  # python -m modeldeck.runtime.evaluation: lm-eval's CLI with the backend registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
