"""Scoring throughput: modeldeck's `Model.score` (lm-eval's loglikelihood) against lm-eval's own `hf` backend, on the
same checkpoint and the same requests, measured side by side in one run.

lm-eval's multiple-choice tasks are nothing but `loglikelihood` requests, so this is the speed of an evaluation. For
each model one run measures three ways of scoring the same fixed, seeded requests:

    hf            lm_eval.models.huggingface.HFLM(batch_size=16).loglikelihood(instances): lm-eval's reference
                  backend, transformers underneath (it sorts all requests longest first and runs one row for
                  requests that share context + continuation[:-1], its one-token-continuation cache)
    modeldeck lm  runtime.evaluation.ModeldeckLM(batch_size=16).loglikelihood(instances): what `modeldeck eval` and
                  `lm_eval --model modeldeck` run; both go through lm-eval's TemplateLM encoding, so the token work is
                  identical
    Model.score   Model.score(list of (context, continuation) strings): the runtime's API directly (encoded as
                  lm-eval encodes; all pairs sorted longest first, 16 rows per pass)

and reports requests/s and scored tokens/s (context + continuation tokens of every request, as lm-eval encodes them),
each the median over --repeats interleaved rounds (the three take turns within a round, the order rotating from round
to round, after one warm-up call each), the ratio to hf, the positions each runs (rows x padded length of its
forward passes: how the requests are batched, not how fast the model is), and the share of the machine's CPU that other processes took
during the trials (read from /proc/stat: a busy machine shows up there, not as a silent slowdown). It also checks that
the answers are the same: the largest |difference| of the log-likelihoods from hf's, and how many is_greedy flags
agree. A backend that computes wrong numbers fast is worthless: a difference above 1e-4 (the tolerance of
tests/test_eval.py) or a disagreeing greedy flag is marked in the table and makes the exit status 1.

The requests are shaped like a multiple-choice task: each question is a context of 15-150 words of English (contiguous
text from CPython's documentation topics, pydoc_data.topics, the text tiny-neox was trained on; about 20-200 tokens)
and four choices of 1-10 tokens (the text that really follows, and three from elsewhere). Models:

    tiny-neox   the bundled demo model (cards/tiny-neox), loaded by modeldeck as `runtime.load("tiny-neox")`
    160m        a random GPT-NeoX with pythia-160m's dimensions (hidden 768, 12 layers, 12 heads, ffn 3072, context
                2048) but tiny-neox's 2,048-token vocabulary and tokenizer, saved by transformers' save_pretrained,
                loaded by modeldeck through a card file (tiny-neox.yaml with the architecture changed)

Both run in float32 on the CPU with torch's default thread count; lm-eval's hf backend reads the same checkpoint
folder, with a transformers tokenizer folder written beside it from the same tokenizer.json (the card's bos/eos), as
tests/test_eval.py does. Everything is offline.

    .venv/bin/python benchmarks/scoring.py [--models tiny-neox,160m] [--requests 256] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "cards" / "tiny-neox"
TINY_CARD = REPO / "cards" / "tiny-neox.yaml"
MODELS = ("tiny-neox", "160m")
SHAPE_160M = {"layers": 12, "hidden_size": 768, "heads": 12, "kv_heads": 12, "ffn_size": 3072, "context_length": 2048}
BATCH = 16
CHOICES = 4
TOLERANCE = 1e-4  # tests/test_eval.py's, for a continuation's log-likelihood
WARMUP = 2 * BATCH  # requests in each backend's warm-up call


# --- the requests -----------------------------------------------------------------------------------


def make_requests(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (context, continuation) pairs, CHOICES per question: a context of 15-150 words and continuations of
    1-10 tokens (tiny-neox's tokenizer), the first the text that follows the context, the others from elsewhere."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    text = " ".join(topics[k] for k in sorted(topics)).split()
    words = [w for w in text if len(w) <= 20 and any(c.isalpha() for c in w)]  # prose, not the tables' rules
    rng = random.Random(seed)

    def continuation(start: int) -> str:
        target = rng.randint(1, 10)
        text = ""
        for word in words[start : start + 10]:
            longer = f"{text} {word}"
            if len(tokenizer.encode(longer).ids) > target and text:
                break
            text = longer
        return text

    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        n = rng.randint(15, 150)
        start = rng.randrange(0, len(words) - n - 20)
        context = " ".join(words[start : start + n])
        while len(tokenizer.encode(context).ids) > 200:  # keep context + continuation inside tiny-neox's 256
            context = context.rsplit(" ", 1)[0]
        choices = [continuation(start + n)]
        choices += [continuation(rng.randrange(0, len(words) - 20)) for _ in range(CHOICES - 1)]
        if any(not 1 <= len(tokenizer.encode(c).ids) <= 10 for c in choices):
            continue  # a single word longer than 10 tokens: draw the question again
        pairs += [(context, c) for c in choices]
    return pairs[:count]


def instances(pairs: list[tuple[str, str]]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i)
        for i, (ctx, cont) in enumerate(pairs)
    ]


# --- the checkpoints ------------------------------------------------------------------------------


def hf_tokenizer(folder: Path, card: Any) -> Path:
    """A transformers tokenizer folder beside the weights, from the same tokenizer.json with the card's special
    tokens (tests/test_eval.py `hf_folder`), so that lm-eval's hf backend encodes as modeldeck does."""
    from transformers import PreTrainedTokenizerFast

    tok = card.tokenizer
    special = {"bos_token": (tok.bos or tok.eos).text, "eos_token": tok.eos.text}
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)
    hf.save_pretrained(folder / "hf-tokenizer")
    return folder / "hf-tokenizer"


def prepare(name: str, root: Path) -> tuple[Any, Path, Path, str]:
    """modeldeck's Model, the checkpoint folder, its transformers tokenizer folder, and a description."""
    import torch
    import transformers
    import yaml

    from modeldeck import runtime

    if name == "tiny-neox":
        folder = root / "tiny-neox"
        shutil.copytree(TINY, folder)
        model = runtime.load("tiny-neox", dtype="float32", device="cpu")
        return model, folder, hf_tokenizer(folder, model.card), "bundled tiny-neox"
    folder = root / "pythia-160m-shape"
    data = yaml.safe_load(TINY_CARD.read_text(encoding="utf-8"))
    data["id"], data["name"], data["parameters"], data["evaluation"] = "bench-160m", "pythia-160m shape", {}, []
    data["source"] = {"repo": "bench/pythia-160m-shape", "format": "safetensors"}
    data["architecture"] |= SHAPE_160M
    card_file = root / "bench-160m.yaml"
    card_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = transformers.GPTNeoXConfig(
        vocab_size=data["architecture"]["vocab_size"],
        hidden_size=SHAPE_160M["hidden_size"],
        num_hidden_layers=SHAPE_160M["layers"],
        num_attention_heads=SHAPE_160M["heads"],
        intermediate_size=SHAPE_160M["ffn_size"],
        max_position_embeddings=SHAPE_160M["context_length"],
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(folder)
    shutil.copy(TINY / "tokenizer.json", folder)
    model = runtime.load(card_file, weights=folder, dtype="float32", device="cpu")
    return model, folder, hf_tokenizer(folder, model.card), "random, pythia-160m dimensions, tiny-neox vocabulary"


# --- trials ---------------------------------------------------------------------------------------


def cpu_busy() -> float:
    """CPU-seconds all processes of the machine have spent busy so far (/proc/stat), or 0 where there is none."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    jiffies = [int(x) for x in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ours() -> float:
    t = os.times()
    return t.user + t.system


def timed(call: Callable[[], list[tuple[float, bool]]]) -> tuple[list[tuple[float, bool]], float, float]:
    """The call's answers, its seconds, and the share of the machine's CPU other processes took meanwhile."""
    gc.collect()
    busy, mine, began = cpu_busy(), ours(), time.perf_counter()
    answers = call()
    wall = time.perf_counter() - began
    others = max(0.0, (cpu_busy() - busy) - (ours() - mine)) / (wall * (os.cpu_count() or 1))
    return answers, wall, others


Run = Callable[[list[Any]], list[tuple[float, bool]]]


def backends(model: Any, folder: Path, tokenizer: Path) -> tuple[dict[str, Run], Any, Any]:
    """The three ways of scoring, and the hf and modeldeck lm-eval objects (for their encoding)."""
    from lm_eval.models.huggingface import HFLM

    from modeldeck.runtime.evaluation import ModeldeckLM

    hf = HFLM(pretrained=str(folder), tokenizer=str(tokenizer), dtype="float32", device="cpu", batch_size=BATCH)
    lm = ModeldeckLM(model=model, batch_size=BATCH)

    def score(requests: list[Any]) -> list[tuple[float, bool]]:
        return [(s.logprob, s.greedy) for s in model.score([tuple(r.args) for r in requests])]

    return (
        {
            "hf": lambda requests: hf.loglikelihood(requests, disable_tqdm=True),
            "modeldeck lm": lambda requests: lm.loglikelihood(requests, disable_tqdm=True),
            "Model.score": score,
        },
        hf,
        lm,
    )


def padded(lengths: list[int]) -> int:
    """Positions run when rows of these lengths go BATCH at a time in this order, each pass padded to its longest."""
    return sum(
        len(group) * (max(group) - 1) for group in (lengths[i : i + BATCH] for i in range(0, len(lengths), BATCH))
    )


def measure(name: str, args: argparse.Namespace, root: Path) -> tuple[list[str], bool]:
    """One model's table, and whether every backend's answers agree with hf's."""
    print(f"{name}: building", file=sys.stderr, flush=True)
    model, folder, tokenizer, what = prepare(name, root)
    runs, hf, lm = backends(model, folder, tokenizer)
    pairs = make_requests(args.requests, args.seed)
    requests = instances(pairs)
    encoded = [lm._encode_pair(ctx, cont) for ctx, cont in pairs]
    if encoded != [hf._encode_pair(ctx, cont) for ctx, cont in pairs]:
        raise SystemExit(f"{name}: lm-eval encodes the requests differently for hf and modeldeck")
    lengths = [len(c) + len(n) for c, n in encoded]
    tokens = sum(lengths)
    hf_rows = len({tuple(c + n[:-1]) for c, n in encoded})  # hf's one-token-continuation cache
    unique = sorted({tuple(c + n[:-1]): len(c) + len(n) for c, n in encoded}.values(), reverse=True)
    positions = {  # rows x padded length of every forward pass each backend runs (the inputs: all but the last token)
        "hf": padded(unique),
        "modeldeck lm": padded(
            sorted({(tuple(c), tuple(n)): len(c) + len(n) for c, n in encoded}.values(), reverse=True)
        ),
        "Model.score": padded(sorted(lengths, reverse=True)),
    }
    for key, run in runs.items():
        print(f"{name}: warm-up {key}", file=sys.stderr, flush=True)
        run(requests[:WARMUP])
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    others: dict[str, list[float]] = {k: [] for k in runs}
    answers: dict[str, list[tuple[float, bool]]] = {}
    order = list(runs)
    for round_ in range(args.repeats):
        turn = order[round_ % len(order) :] + order[: round_ % len(order)]
        for key in turn:
            print(f"{name}: round {round_ + 1}/{args.repeats}: {key}", file=sys.stderr, flush=True)
            got, wall, share = timed(lambda run=runs[key]: run(requests))
            answers.setdefault(key, got)
            seconds[key].append(wall)
            others[key].append(share)
    reference = answers["hf"]
    params = sum(p.numel() for p in model.decoder.parameters())
    lines = [
        f"**{name}** ({what}; {params / 1e6:,.1f}M parameters; {len(requests)} requests, {CHOICES} choices per "
        f"context, {tokens:,} scored tokens, {min(lengths)}-{max(lengths)} per request, median "
        f"{statistics.median(lengths):g}; hf runs {hf_rows} rows after its one-token cache)",
        "",
        "| backend | requests/s | scored tokens/s | / hf | seconds (median) | max abs diff vs hf | is_greedy = hf "
        "| positions run | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    hf_seconds = statistics.median(seconds["hf"])
    ok = True
    for key in runs:
        s = statistics.median(seconds[key])
        diff = max(abs(a[0] - b[0]) for a, b in zip(answers[key], reference, strict=True))
        same = sum(a[1] == b[1] for a, b in zip(answers[key], reference, strict=True))
        good = diff <= TOLERANCE and same == len(reference)
        ok &= good
        mark = "" if good else " **MISMATCH**"
        lines.append(
            f"| {key} | {len(requests) / s:,.1f} | {tokens / s:,.0f} | {hf_seconds / s:.2f} | {s:.2f} "
            f"| {diff:.1e}{mark} | {same}/{len(reference)} | {positions[key]:,} "
            f"| {statistics.median(others[key]):.0%} |"
        )
    del runs, hf, lm, model
    gc.collect()
    return lines, ok


def machine() -> str:
    import lm_eval
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return (
        f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"lm-eval {lm_eval.__version__}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--requests", type=int, default=256, help="loglikelihood requests (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the report gives medians")
    parser.add_argument("--seed", type=int, default=0, help="the requests' seed")
    parser.add_argument("--quick", action="store_true", help="tiny-neox only, 64 requests (unless given)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = "tiny-neox"
        if "--requests" not in (argv if argv is not None else sys.argv[1:]):
            args.requests = 64
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in args.models if m not in MODELS]:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be >= 1")
    return args


def main() -> None:
    args = parse()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    lines = [
        f"Machine: {machine()}.",
        f"lm-eval loglikelihood, batch size {BATCH}, float32, CPU; medians of {args.repeats} interleaved rounds after "
        f"a {WARMUP}-request warm-up per backend; / hf: hf's seconds over the backend's (> 1: faster than hf).",
        "",
    ]
    ok = True
    root = Path(tempfile.mkdtemp(prefix="modeldeck-scoring-"))
    try:
        for name in args.models:
            table, good = measure(name, args, root)
            lines += [*table, ""]
            ok &= good
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines), end="")
    if not ok:
        print(f"\nMISMATCH: a backend's log-likelihoods differ from hf's by more than {TOLERANCE} or its is_greedy")
        sys.exit(1)


if __name__ == "__main__":
    main()
