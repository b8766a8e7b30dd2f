"""lm-evaluation-harness through modeldeck: the `modeldeck` backend against lm-eval's own `hf` backend on the same
checkpoint (GPT-NeoX, Llama, Falcon), on local JSON tasks written here (multiple choice, rolling perplexity,
generation); and the refusals of `evaluate` (unknown task, unlisted revision) before any model is loaded."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf backend
torch = pytest.importorskip("torch")

from modeldeck import registry, runtime  # noqa: E402
from modeldeck.registry.weights import UnknownRevisionError  # noqa: E402
from modeldeck.runtime import evaluation  # noqa: E402

from .conftest import CARDS  # noqa: E402

TOLERANCE = 1e-4
TASKS = ["md_choice", "md_rolling", "md_generate"]
TEXT = (
    "The for statement is used to iterate over the elements of a sequence (such as a string, tuple or list) or "
    "other iterable object. The while statement is used for repeated execution as long as an expression is true. "
)


def write_tasks(folder: Path, long: bool = True) -> Path:
    """Three lm-eval tasks over JSON files (dataset_path: json), one per request type; `long`: with a text and a
    prompt longer than tiny-neox's 256-token window."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "datasets-cache"
    choice = [
        {"question": f"Question {i}: which statement iterates over a sequence?", "choices": c, "answer": i % 3}
        for i, c in enumerate(
            [
                [" the for statement", " the while statement", " the pass statement"],
                [" a list", " a tuple of numbers", " nothing at all"],
                [" iterate", " repeat", " stop"],
                [" yes", " no", " the expression is true"],
            ]
        )
    ]
    repeats = 6 if long else 2  # 6: > 256 tokens
    rolling = [{"text": TEXT}, {"text": TEXT * repeats}, {"text": "The pass statement does nothing."}]
    generate = [
        {"prompt": "The for statement is used to", "answer": " iterate"},
        {"prompt": "The while statement is used for", "answer": " repeated execution"},
        {"prompt": TEXT * (8 if long else 2) + "The for statement", "answer": " is"},  # 8: cut to fit 256 - 12
    ]
    common = "dataset_path: json\ntest_split: test\n"
    for name, docs, body in [
        (
            "md_choice",
            choice,
            'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
        ),
        (
            "md_rolling",
            rolling,
            'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
            "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        ),
        (
            "md_generate",
            generate,
            'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
            'generation_kwargs:\n  until: [".", "\\n"]\n  max_gen_toks: 12\n  do_sample: false\n'
            "metric_list:\n  - metric: exact_match\n",
        ),
    ]:
        data = folder / f"{name}.jsonl"
        data.write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
        kwargs = f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {cache}\n"
        (folder / f"{name}.yaml").write_text(f"task: {name}\n{common}{kwargs}{body}", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = write_tasks(tmp_path_factory.mktemp("tasks"))
    return evaluation.task_manager(str(folder), include_defaults=False)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def hf_folder(tmp_path: Path, source: Path, card: Any) -> Path:
    """A copy of a checkpoint with what transformers reads beside the weights: the tokenizer's special tokens (the
    card's bos/eos) and a generation_config.json with the card's generation defaults, as a published checkpoint has
    them, so that lm-eval's hf backend sees the same tokens and defaults as the card."""
    import shutil

    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from modeldeck.runtime.tokenizer import load_tokenizer

    folder = tmp_path / "checkpoint"
    shutil.copytree(source, folder)
    tok, defaults = card.tokenizer, card.generation
    bos = (tok.bos or tok.eos).text
    special = {"bos_token": bos, "eos_token": tok.eos.text}
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        # SentencePiece (tokenizer.model): both backends get modeldeck's conversion, so that this test is about
        # scoring and generation; the conversion itself is compared with transformers' in tests/test_tokenizer.py
        # (with transformers 5.1's own conversion, scripts/test-lowest saw a request's log-likelihood differ by 0.24)
        tokenizer_file = folder / "converted-tokenizer.json"
        load_tokenizer(card, folder).backend.save(str(tokenizer_file))
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **special).save_pretrained(folder / "hf-tokenizer")
    GenerationConfig(
        repetition_penalty=defaults.repetition_penalty,
        min_new_tokens=defaults.min_new_tokens or None,
        eos_token_id=tok.eos.id,
        bos_token_id=(tok.bos or tok.eos).id,
    ).save_pretrained(folder)
    return folder


def run_both(model: Any, folder: Path, tasks: Any) -> tuple[dict, dict]:
    from lm_eval import simple_evaluate

    common = {"tasks": TASKS, "task_manager": tasks, "log_samples": True, "bootstrap_iters": 0}
    ours = simple_evaluate(model=evaluation.ModeldeckLM(model=model, batch_size=4), **common)
    args = f"pretrained={folder},tokenizer={folder / 'hf-tokenizer'},dtype=float32"
    reference = simple_evaluate(model="hf", model_args=args, device="cpu", **common)
    return ours, reference


def samples(out: dict, task: str) -> list[dict]:
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


@pytest.fixture(params=["tiny-neox", "llama", "falcon"])
def checkpoint(request: pytest.FixtureRequest, tiny_checkpoint: Any, tmp_path: Path) -> tuple[Any, Path]:
    if request.param == "tiny-neox":  # the bundled demo model: a real tokenizer and real (tiny) training
        card, source = registry.get("tiny-neox"), CARDS / "tiny-neox"
    else:
        ckpt = tiny_checkpoint(request.param)
        card, source = ckpt.card, ckpt.directory
    folder = hf_folder(tmp_path, source, card)
    return runtime.load(card, weights=folder, dtype="float32", device="cpu"), folder


def test_the_modeldeck_backend_equals_lm_evals_hf_backend(checkpoint: tuple[Any, Path], tasks: Any) -> None:
    model, folder = checkpoint
    ours, reference = run_both(model, folder, tasks)
    for task in ("md_choice", "md_rolling"):
        for a, b in zip(samples(ours, task), samples(reference, task), strict=True):
            for (ours_resp,), (ref_resp,) in zip(a["resps"], b["resps"], strict=True):
                if task == "md_choice":
                    assert abs(ours_resp[0] - ref_resp[0]) <= TOLERANCE and ours_resp[1] == ref_resp[1]
                else:  # a whole text's log-likelihood: a sum over up to ~300 tokens
                    assert abs(ours_resp - ref_resp) <= TOLERANCE * max(1.0, abs(ref_resp) / 100)
    for a, b in zip(samples(ours, "md_generate"), samples(reference, "md_generate"), strict=True):
        assert a["resps"] == b["resps"] and a["resps"][0][0] is not None
    for task in TASKS:
        for metric, value in reference["results"][task].items():
            if isinstance(value, float) and not math.isnan(value):
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, metric)


def test_lm_evals_local_completions_backend_on_modeldeck_serve(tmp_path: Path) -> None:
    """lm-eval's stock OpenAI-compatible backend, pointed at the server on the loopback, gets what the native
    backend gets: the same per-request log-likelihoods, generations and metrics."""
    from lm_eval import simple_evaluate

    from .test_serve import serving

    model = runtime.load("tiny-neox", dtype="float32", device="cpu")
    tokenizer = hf_folder(tmp_path, CARDS / "tiny-neox", model.card) / "hf-tokenizer"
    manager = evaluation.task_manager(str(write_tasks(tmp_path / "tasks", long=False)), include_defaults=False)
    common = {"tasks": TASKS, "task_manager": manager, "log_samples": True, "bootstrap_iters": 0}
    native = simple_evaluate(model=evaluation.ModeldeckLM(model=model), **common)
    with serving(model, max_batch=4) as served:
        # max_length: lm-eval's API backend asks for one token after each scored prompt, which must fit the context
        args = (
            f"model=tiny-neox,base_url={served.url}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={tokenizer},max_length=255"
        )
        remote = simple_evaluate(model="local-completions", model_args=args, **common)
    for task in ("md_choice", "md_rolling"):
        for a, b in zip(samples(remote, task), samples(native, task), strict=True):
            for (ours,), (theirs,) in zip(a["resps"], b["resps"], strict=True):
                if task == "md_choice":
                    assert abs(ours[0] - theirs[0]) <= TOLERANCE and ours[1] == theirs[1]
                else:
                    assert abs(ours - theirs) <= TOLERANCE * max(1.0, abs(theirs) / 100)
    assert [s["resps"] for s in samples(remote, "md_generate")] == [s["resps"] for s in samples(native, "md_generate")]
    for task in TASKS:
        for metric, value in native["results"][task].items():
            if isinstance(value, float) and not math.isnan(value):
                assert remote["results"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, metric)


def test_long_contexts_are_cut_from_the_left_and_reported(tasks: Any, caplog: pytest.LogCaptureFixture) -> None:
    from lm_eval import simple_evaluate

    lm = evaluation.ModeldeckLM(model=runtime.load("tiny-neox", dtype="float32", device="cpu"))
    simple_evaluate(model=lm, tasks=["md_generate"], task_manager=tasks, bootstrap_iters=0)
    assert lm.truncated > 0  # the third prompt is longer than 256 - 12 tokens
    assert "longer than card tiny-neox's 256-token window: it is cut from the left" in caplog.text
    context = lm.tok_encode(TEXT * 8)
    [score] = lm.model.score([(context, lm.tok_encode(" iterate"))])
    assert score.truncated == len(context) + score.tokens - 257


def test_generation_options_name_the_card_defaults_they_apply(caplog: pytest.LogCaptureFixture) -> None:
    model = runtime.load("tiny-neox", dtype="float32", device="cpu")
    card = model.card.model_copy(
        update={"generation": model.card.generation.model_copy(update={"repetition_penalty": 1.3, "do_sample": True})}
    )
    model.card = card
    lm = evaluation.ModeldeckLM(model=model)
    options = lm.generation_options({"until": ["\n"], "do_sample": False})
    assert options["do_sample"] is False and options["stop"] == ["\n"]
    assert "max_new_tokens" in options and "repetition_penalty" not in options  # the card's, resolved by the runtime
    assert "repetition_penalty=1.3" in caplog.text
    assert f"max_new_tokens={card.generation.max_new_tokens}" in caplog.text
    assert lm.generation_options({"until": ["\n"], "max_gen_toks": 5, "temperature": 0.7})["do_sample"] is True
    with pytest.raises(runtime.GenerationError, match="'typical_p', which modeldeck's runtime does not know"):
        lm.generation_options({"typical_p": 0.9})


def test_unknown_task_and_unlisted_revision_are_refused_before_loading(tasks: Any, monkeypatch: Any) -> None:
    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no model may be loaded")

    monkeypatch.setattr(evaluation, "load", no_load)
    with pytest.raises(evaluation.UnknownTaskError, match=r"no task 'md_choise'; did you mean md_choice\?"):
        evaluation.evaluate(
            "tiny-neox", ["md_choise"], include_path=str(Path(tasks.include_path)), include_defaults=False
        )
    with pytest.raises(UnknownRevisionError, match="step1001"):
        evaluation.evaluate("pythia-160m", ["md_choice"], revisions=["step1000", "step1001"], include_defaults=False)
    with pytest.raises(evaluation.ModeldeckError, match="unknown model_args for --model modeldeck: pretrained"):
        evaluation.ModeldeckLM(card="tiny-neox", pretrained="x")


# --- modeldeck eval over a card's revisions -------------------------------------------------------

REVISIONS = ["step1000", "step8000", "step143000"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Pythia-layout card file (the demo's tokenizer, a larger random GPT-NeoX: 160 MB of float32 weights) whose
    repository has three revisions laid out in an offline Hugging Face cache, each with its own weights."""
    import shutil

    import transformers
    import yaml

    from .test_hub import add_to_cache

    root = tmp_path_factory.mktemp("suite")
    data = yaml.safe_load((CARDS / "tiny-neox.yaml").read_text(encoding="utf-8"))
    data["id"], data["name"], data["parameters"], data["evaluation"] = "neox-suite", "neox suite", {}, []
    data["source"] = {"repo": "test/neox-suite", "format": "safetensors", "revisions": REVISIONS}
    arch = {"layers": 12, "hidden_size": 512, "heads": 8, "kv_heads": 8, "ffn_size": 2048}
    data["architecture"] |= arch
    card_file = root / "neox-suite.yaml"
    card_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = transformers.GPTNeoXConfig(
        vocab_size=2048,
        hidden_size=512,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=256,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    home, folders = root / "hf", {}
    (home / "hub").mkdir(parents=True)
    for i, revision in enumerate(REVISIONS):
        torch.manual_seed(i)
        folder = root / revision
        transformers.GPTNeoXForCausalLM(config).save_pretrained(folder)
        shutil.copy(CARDS / "tiny-neox" / "tokenizer.json", folder)
        add_to_cache(home, "test/neox-suite", revision, f"{i + 1:x}" * 40, source=folder)
        folders[revision] = folder
    size = sum(f.stat().st_size for f in folders[REVISIONS[0]].glob("*.safetensors"))
    return {"card": card_file, "home": home, "folders": folders, "bytes": size, "tasks": write_tasks(root / "tasks")}


def run_eval(suite: dict[str, Any], *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`modeldeck eval` in a subprocess, offline; returns it and its peak resident memory in bytes."""
    env = {**os.environ, "HF_HOME": str(suite["home"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'modeldeck.registry.cli', *sys.argv[1:]], capture_output=True, "
        "text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    cmd = [sys.executable, "-c", wrapper, "eval", str(suite["card"]), "--include-path", str(suite["tasks"]), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return done, int(done.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_modeldeck_eval_over_three_revisions_holds_one_model_at_a_time(suite: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    tasks = "md_choice,md_rolling"
    one, one_peak = run_eval(suite, "--tasks", tasks, "--revisions", REVISIONS[0], "--device", "cpu")
    assert one.returncode == 0, one.stderr
    three, three_peak = run_eval(
        suite, "--tasks", tasks, "--revisions", ",".join(REVISIONS), "--device", "cpu", "--output", str(output)
    )
    assert three.returncode == 0, three.stderr
    # Two models at once would add a whole model's weights to the peak; one at a time adds only noise.
    print(
        f"peak RSS: one revision {one_peak / 2**20:.0f} MiB, three {three_peak / 2**20:.0f} MiB, model {suite['bytes'] / 2**20:.0f} MiB"
    )
    assert three_peak - one_peak < suite["bytes"] / 2
    header, *rows = [line.split() for line in three.stdout.strip().splitlines()]
    assert header == ["task", "metric", *REVISIONS]
    assert [r[:2] for r in rows] == [["md_choice", "acc"], ["md_choice", "acc_norm"]] + [
        ["md_rolling", m] for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")
    ]
    for i, revision in enumerate(REVISIONS):
        assert f"[{i + 1}/3] neox-suite @ {revision}: loading, then evaluating" in three.stderr
    report = json.loads(output.read_text())
    assert [run["revision"] for run in report["runs"]] == REVISIONS
    perplexities = [run["results"]["md_rolling"]["word_perplexity,none"] for run in report["runs"]]
    assert len(set(perplexities)) == 3  # three different checkpoints were read
    # each revision's numbers are those of its own checkpoint, evaluated directly from its folder
    [direct] = evaluation.evaluate(
        str(suite["card"]),
        ["md_rolling"],
        weights=str(suite["folders"]["step8000"]),
        include_path=str(suite["tasks"]),
        include_defaults=False,
        device="cpu",
    )
    assert direct.results["md_rolling"]["word_perplexity,none"] == pytest.approx(perplexities[1], rel=1e-6)
    kept = output.read_bytes()
    exists, _ = run_eval(suite, "--tasks", tasks, "--output", str(output))
    assert exists.returncode == 1 and f"--output {output} exists" in exists.stderr and output.read_bytes() == kept
    unlisted, _ = run_eval(suite, "--tasks", tasks, "--revisions", "step1000,step1001")
    assert unlisted.returncode == 1 and "step1001" in unlisted.stderr and "Traceback" not in unlisted.stderr
    assert "loading" not in unlisted.stderr  # refused before the first revision is loaded


@pytest.mark.slow
def test_lm_evals_own_command_line_with_the_backend_registered(tmp_path: Path, tasks: Any) -> None:
    """`python -m modeldeck.runtime.evaluation` is lm-eval's CLI with `--model modeldeck` known; lm-eval's default
    --device (cuda:0) falls back to the CPU here, as its hf backend does."""
    from lm_eval import simple_evaluate

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "modeldeck.runtime.evaluation", "--model", "modeldeck", "--model_args"]
    command += ["card=tiny-neox,dtype=float32", "--tasks", "md_choice", "--include_path", str(tasks.include_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = runtime.load("tiny-neox", dtype="float32", device="cpu")
    native = simple_evaluate(model=evaluation.ModeldeckLM(model=model), tasks=["md_choice"], task_manager=tasks)
    acc = native["results"]["md_choice"]["acc,none"]
    assert re.search(rf"\|md_choice\|.*\|acc\s*\|.*\|\s*{acc:g}\|", done.stdout), done.stdout
