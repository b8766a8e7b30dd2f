"""Scoring against transformers: per-token log-probabilities, lm-eval's loglikelihood (continuation log-probability
and is-greedy) and its rolling log-likelihood, on the bundled demo model (GPT-NeoX, real tokenizer)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from modeldeck import runtime  # noqa: E402
from modeldeck.runtime.generate import GenerationError  # noqa: E402
from modeldeck.runtime.scoring import rolling_windows, score_rows  # noqa: E402

from .conftest import CARDS  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models():
    ours = runtime.load("tiny-neox", dtype="float32", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(CARDS / "tiny-neox", dtype=torch.float32).eval()
    return ours, reference


def reference_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """transformers' log-probability of each token given those before it: [len(ids) - 1]."""
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0].float()
    return logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_logprobs_match_transformers_with_top_k(models):
    ours, reference = models
    result = ours.logprobs("The for statement is used to iterate over the elements of a sequence", top_k=5)
    assert result.logprobs[0] is None and len(result.logprobs) == len(result.ids) == len(result.tokens)
    expected = reference_logprobs(reference, result.ids)
    got = torch.tensor(result.logprobs[1:])
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert "".join(result.tokens) == ours.tokenizer.decode(result.ids)
    assert result.top is not None and result.top[0] == []
    for t, position in enumerate(result.top[1:]):
        values = [lp for _, lp in position]
        assert len(position) == 5 and values == sorted(values, reverse=True)
        assert torch.tensor(values).exp().sum().item() <= 1.0 + 1e-6
        assert values[0] >= result.logprobs[t + 1] - 1e-6  # the best is at least the actual token's


def test_score_is_lm_evals_loglikelihood(models):
    ours, reference = models
    context, continuation = "The while statement is used for", " repeated execution"
    score = ours.score(context, continuation)
    whole = ours.tokenizer.encode_text(context + continuation)
    n = len(whole) - len(ours.tokenizer.encode_text(context))
    expected = reference_logprobs(reference, whole)[-n:]
    assert score.tokens == n and score.truncated == 0
    assert abs(score.logprob - expected.sum().item()) <= TOLERANCE
    with torch.no_grad():
        logits = reference(torch.tensor([whole])).logits[0, -n - 1 : -1]
    assert score.greedy == bool((logits.argmax(-1) == torch.tensor(whole[-n:])).all())


def test_greedy_continuations_are_flagged_greedy(models):
    ours, reference = models
    ids = ours.tokenizer.encode_text("The for statement")
    greedy = []
    with torch.no_grad():
        for _ in range(4):  # transformers' own greedy continuation, token by token
            greedy.append(int(reference(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
    assert ours.score(ids, greedy).greedy
    changed = [*greedy[:-1], (greedy[-1] + 1) % ours.card.architecture.vocab_size]
    assert not ours.score(ids, changed).greedy


def test_a_batch_of_pairs_equals_one_at_a_time(models):
    ours, _ = models
    pairs = [("The if statement", " is used"), ("x", " = 1"), ("A class definition defines", " a class object")]
    for batch_size in (1, 2, 16):
        batched = ours.score(pairs, batch_size=batch_size)
        for pair, score in zip(pairs, batched, strict=True):
            alone = ours.score(*pair)
            assert abs(alone.logprob - score.logprob) <= TOLERANCE and alone.greedy == score.greedy


def test_a_context_longer_than_the_window_is_cut_from_the_left_and_says_so(models):
    ours, reference = models
    window = ours.card.architecture.context_length
    context = list(range(10, 10 + window + 30))
    continuation = [5, 6, 7]
    score = ours.score(context, continuation)
    assert score.truncated == len(context) + len(continuation) - (window + 1) == 32
    kept = (context + continuation)[-(window + 1) :]
    expected = reference_logprobs(reference, kept[:window] + kept[window:])
    assert abs(score.logprob - expected[-3:].sum().item()) <= TOLERANCE


def test_rolling_loglikelihood_sums_disjoint_windows(models):
    ours, reference = models
    window = ours.card.architecture.context_length
    ids = [(7 * i) % 2000 + 20 for i in range(2 * window + 17)]
    rolling = ours.loglikelihood_rolling(ids)
    assert rolling.tokens == len(ids) and rolling.windows == 3
    prefix = ours.card.tokenizer.eos.id  # tiny-neox: bos = eos = <|endoftext|>
    expected = reference_logprobs(reference, [prefix, *ids[:window]]).sum().item()
    for end in (2 * window, len(ids)):
        predicted = end - window if end == 2 * window else 2 * window
        row = ids[end - window - 1 : end]
        expected += reference_logprobs(reference, row)[-(end - predicted) :].sum().item()
    assert abs(rolling.logprob - expected) <= 1e-3  # a sum over ~530 tokens


def test_rolling_windows_predict_every_token_once():
    tokens = list(range(100, 125))
    windows = list(rolling_windows(tokens, prefix=0, context_length=10))
    assert [w[1] for w in windows] == [tokens[0:10], tokens[10:20], tokens[20:25]]
    assert windows[0][0] == [0]
    for context, target in windows[1:]:
        assert len(context) + len(target) == 11 and context[-1] + 1 == target[0]


def test_long_rows_are_scored_in_bounded_passes(models):
    ours, reference = models
    ids = [(3 * i) % 1900 + 40 for i in range(200)]
    tiny_budget = 4 * ours.card.architecture.vocab_size * 7  # 7 positions per pass
    [row] = score_rows(ours.decoder, ours.backend, [ids], budget=tiny_budget)
    assert (torch.tensor(row.logprobs) - reference_logprobs(reference, ids)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.score("context", ""), "the continuation is empty: there is nothing to score"),
        (lambda m: m.logprobs("x", top_k=-1), "top_k must be a whole number >= 0, got -1"),
        (lambda m: m.score([("a", " b")], batch_size=0), "batch_size must be a whole number >= 1, got 0"),
        (lambda m: m.logprobs([0, 99999]), "token id 99999 is outside the vocabulary (0 .. 2047)"),
        (
            lambda m: m.logprobs(list(range(300))),
            "the text is 300 tokens and card 'tiny-neox' has a 256-token context: score it with loglikelihood_rolling",
        ),
        (
            lambda m: m.score([1], list(range(300))),
            "the continuation is 300 tokens, more than card 'tiny-neox''s 256-token context",
        ),
    ],
)
def test_bad_scoring_requests_are_named(models, call, message):
    with pytest.raises(GenerationError) as exc:
        call(models[0])
    assert message in str(exc.value)
