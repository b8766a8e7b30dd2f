"""One sequence step: the sampling rule, per-sequence seeding, step() isolating failures, the device check."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from modeldeck import registry, runtime  # noqa: E402
from modeldeck.registry.diagnostics import ModeldeckError  # noqa: E402
from modeldeck.runtime import batching, generate  # noqa: E402
from modeldeck.runtime.generate import GenerationError, Sequence, resolve_options, step  # noqa: E402

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def resolve():
    card = registry.get("tiny-neox")  # greedy by default (do_sample false), temperature 1.0
    return lambda **overrides: resolve_options(card.generation, card.format.stop, overrides)


@pytest.mark.parametrize(
    ("overrides", "do_sample"),
    [
        ({}, False),  # the card's decoding
        ({"temperature": 0}, False),  # 0 is greedy, not an invalid temperature
        ({"temperature": 1e-9}, False),
        ({"temperature": 0.5}, True),  # a temperature asks for sampling
        ({"top_p": 0.9}, True),
        ({"top_k": 40}, True),
        ({"top_k": None}, False),  # turning the card's top_k off is not a request to sample
        ({"temperature": 0.5, "do_sample": False}, False),  # do_sample, when given, decides
        ({"do_sample": True}, True),
        ({"do_sample": None, "temperature": 0.7}, True),
    ],
)
def test_one_rule_decides_sampling(resolve, overrides, do_sample):
    opts = resolve(**overrides)
    assert opts.do_sample is do_sample
    if overrides.get("temperature", 0) >= 1e-5:
        assert opts.temperature == overrides["temperature"]


def test_temperature_zero_with_do_sample_is_a_contradiction_named(resolve):
    with pytest.raises(GenerationError) as exc:
        resolve(temperature=0, do_sample=True)
    assert exc.value.option == "temperature" and "temperature above 0" in str(exc.value)


def test_errors_carry_the_option_and_a_code(resolve):
    cases = [
        ({"temprature": 1}, "temprature", "unknown_option"),
        ({"top_p": 2}, "top_p", "invalid_option"),
        ({"num_beams": 2}, "num_beams", "unsupported_option"),
        ({"min_new_tokens": 9, "max_new_tokens": 3}, None, "invalid_option"),
        ({"stop": [""]}, "stop", "invalid_option"),
    ]
    for overrides, option, code in cases:
        with pytest.raises(GenerationError) as exc:
            resolve(**overrides)
        assert (exc.value.option, exc.value.code) == (option, code), overrides


@pytest.fixture(scope="module")
def model():
    return runtime.load("tiny-neox", device="cpu")


def test_a_seeded_sequence_samples_the_same_whatever_it_is_batched_with(model):
    options = {"do_sample": True, "temperature": 1.0, "max_new_tokens": 12, "seed": 5}
    prompts = [PROMPT, "A class definition", "1 2 3"]
    together = model.generate(prompts, **options)
    alone = [model.generate(p, **options) for p in prompts]
    assert [g.completions[0].token_ids for g in together] == [g.completions[0].token_ids for g in alone]
    three = model.generate(PROMPT, num_return_sequences=3, **options)
    # choice i is seeded seed + i: choice 1 of seed 5 is choice 0 of seed 6
    assert three.completions[1].token_ids == model.generate(PROMPT, **{**options, "seed": 6}).completions[0].token_ids


def test_step_ends_only_the_sequences_whose_processing_failed(model, monkeypatch):
    good = model.options(max_new_tokens=5, repetition_penalty=1.0)
    bad = model.options(max_new_tokens=5, repetition_penalty=1.3)  # the only group that asks for `seen`
    ids = model.encode(PROMPT)
    sequences = [model.sequence(ids, good), model.sequence(ids, bad), model.sequence(ids, good)]
    logits = torch.randn(3, model.card.architecture.vocab_size)
    real = generate.process_logits

    def flaky(logits, seen, *rest):
        if seen is not None:
            raise RuntimeError("injected")
        return real(logits, seen, *rest)

    monkeypatch.setattr(generate, "process_logits", flaky)
    failures: list[tuple[Sequence, Exception]] = []
    tokens = step(sequences, logits, on_error=lambda s, e: failures.append((s, e)))
    assert [s for s, _ in failures] == [sequences[1]] and str(failures[0][1]) == "injected"
    expected = logits.argmax(-1)  # greedy
    assert tokens[0] == expected[0] and tokens[2] == expected[2]
    assert sequences[0].generated == [int(expected[0])] and sequences[1].generated == []
    with pytest.raises(RuntimeError, match="injected"):  # without on_error the failure is raised
        step([model.sequence(ids, bad)], logits[:1])


def test_the_finish_rule_is_the_sequences(model):
    ids = model.encode(PROMPT)
    eos = model.tokenizer.eos_ids
    sequence = model.sequence(ids, model.options(max_new_tokens=3, min_new_tokens=0))
    token = next(iter(eos))
    sequence.push(5)
    assert sequence.finish is None
    sequence.push(token)
    assert sequence.finish == "eos" and sequence.completion().token_ids == [5, token]
    capped = model.sequence(ids, model.options(max_new_tokens=2))
    capped.push(5)
    capped.push(6)
    assert capped.finish == "length"
    assert capped.end("cancelled") == "" and capped.finish == "length"  # ends once


def test_the_batcher_has_no_sampling_or_stop_string_code():
    source = inspect.getsource(batching)
    for word in ("process_logits", "multinomial", "argmax", ".push(", ".stopped", "top_p", "eos_ids", "max_new_tokens"):
        assert word not in source, word


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_cuda_names_the_devices_available():
    with pytest.raises(ModeldeckError) as exc:
        runtime.load("tiny-neox", device="cuda")
    message = str(exc.value)
    assert message.startswith("device=cuda: ") and "devices available here: cpu" in message
    assert "AssertionError" not in message and "bug" not in message
    with pytest.raises(ModeldeckError, match=r"^device=nonsense: not a device"):
        runtime.load("tiny-neox", device="nonsense")
    cli = subprocess.run(
        [sys.executable, "-m", "modeldeck.registry.cli", "generate", "tiny-neox", "hi", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stderr
    assert "--device cuda: " in cli.stderr and "devices available here: cpu" in cli.stderr
    assert "internal error" not in cli.stderr and "Traceback" not in cli.stderr
