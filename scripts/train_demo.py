"""Train tiny-neox, modeldeck's bundled demo model, and write it to cards/tiny-neox/.

tiny-neox is a very small GPT-NeoX (Pythia-style) causal language model trained from scratch on English text
that ships with every Python installation: the documentation topics in `pydoc_data.topics` (the text behind
`help("for")`, about 0.45 MB). It exists so that `modeldeck generate tiny-neox "The for statement"` works on a
fresh machine with no network. It is a demo, not a useful model: it continues text in the style of the Python
reference manual and knows nothing else.

What it does, deterministically (seeded; same output for the same torch/tokenizers versions and thread count):

1. joins the documentation topics (sorted by name) into one corpus;
2. trains a byte-level BPE tokenizer with `tokenizers` (GPT-NeoX style: ByteLevel pre-tokenizer, post-processor
   and decoder; `<|endoftext|>` is the only special token, id 0);
3. trains a GPTNeoXForCausalLM (rotary on 25% of each head, parallel residual, untied embeddings) on random
   windows of the corpus with AdamW and a warm-up + cosine learning-rate schedule, on the CPU with 2 threads;
4. saves config.json + model.safetensors (save_pretrained, float32) and tokenizer.json to cards/tiny-neox/
   (the generation_config.json save_pretrained also writes is removed: the card holds the generation defaults);
5. prints a greedy sample continuing "The for statement".

It takes about 6 minutes on 2 CPU cores (about 5 of them training). Run from the repository root:

    .venv/bin/python scripts/train_demo.py            # or --steps N / --out DIR to experiment
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.utils import logging as transformers_logging

EOS = "<|endoftext|>"
SEED = 1234
VOCAB_SIZE = 2048
CONTEXT = 256
SHAPE = {"hidden_size": 160, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 640}
BATCH = 16
LEARNING_RATE = 3e-3
WARMUP = 100
SAMPLE_PROMPT = "The for statement"


def corpus() -> str:
    """Python's documentation topics, sorted by name so the text never depends on dict order."""
    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


def train_tokenizer(text: str) -> Tokenizer:
    """A GPT-NeoX-style byte-level BPE: any byte sequence encodes, and decoding gives the text back."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS],  # first, so its id is 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Feed the corpus paragraph by paragraph: the trainer counts words per sequence.
    tokenizer.train_from_iterator(text.split("\n\n"), trainer=trainer)
    assert tokenizer.token_to_id(EOS) == 0, "the end-of-text token must have id 0"
    return tokenizer


def build_model() -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=CONTEXT,
        **SHAPE,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoXForCausalLM(config)


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < WARMUP:
        return LEARNING_RATE * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LEARNING_RATE * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch(ids: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """BATCH random windows of CONTEXT tokens (inputs and labels are the same; the model shifts them)."""
    starts = [rng.randrange(len(ids) - CONTEXT) for _ in range(BATCH)]
    return torch.stack([ids[s : s + CONTEXT] for s in starts])


def train(model: GPTNeoXForCausalLM, ids: torch.Tensor, steps: int) -> float:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.95),
    )
    rng = random.Random(SEED)
    model.train()
    start, running = time.perf_counter(), None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        windows = batch(ids, rng)
        loss = model(input_ids=windows, labels=windows).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}/{steps}  loss {loss.item():.3f}  (smoothed {running:.3f})  {elapsed:6.0f} s")
    model.eval()
    return running


def sample(model: GPTNeoXForCausalLM, tokenizer: Tokenizer, prompt: str) -> str:
    inputs = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.no_grad():
        output = model.generate(
            inputs, max_new_tokens=64, do_sample=False, repetition_penalty=1.2, pad_token_id=0, eos_token_id=0
        )
    return tokenizer.decode(output[0].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450, help="optimizer steps (default 450, ~5 min on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "cards" / "tiny-neox")
    args = parser.parse_args()

    torch.set_num_threads(2)
    transformers_logging.disable_progress_bar()
    torch.manual_seed(SEED)
    random.seed(SEED)

    text = corpus()
    tokenizer = train_tokenizer(text)
    ids = torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)
    print(f"corpus: {len(topics)} topics, {len(text):,} characters, {len(ids):,} tokens (vocabulary {VOCAB_SIZE})")

    model = build_model()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters:,} parameters, {SHAPE}, context {CONTEXT}")
    start = time.perf_counter()
    loss = train(model, ids, args.steps)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s, final smoothed loss {loss:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    (args.out / "generation_config.json").unlink(missing_ok=True)  # the card holds the generation defaults
    tokenizer.save(str(args.out / "tokenizer.json"))
    for path in sorted(args.out.iterdir()):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")

    print(f"\nsample (greedy, repetition_penalty 1.2):\n{sample(model, tokenizer, SAMPLE_PROMPT)}")


if __name__ == "__main__":
    main()
