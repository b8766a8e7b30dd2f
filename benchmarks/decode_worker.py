"""One measurement of benchmarks/decode.py, in a fresh interpreter: an engine at one precision, or a floor.

    engine   modeldeck, transformers or modeldeck's llama.cpp engine (md-llama.cpp) at one precision:
             load-to-first-token (from the launch of this process),
             a long-prompt prefill, greedy decode at batch 1 and batch 8 (exactly N new tokens: eos is forbidden)
    floor    what the hardware and torch allow at batch 1 for a shape and dtype: one pass over every weight of
             the decoder's linear layers (and the LM head) with F.linear, and with the kernel modeldeck uses
             (runtime/kernels.py), and the machine's streaming-read bandwidth
    mmap     the load floor: this interpreter's start, `import torch`, mapping the checkpoint file and touching
             every page of it

Run by decode.py as `python benchmarks/decode_worker.py JSON`; prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

LAUNCHED = time.time()
SHAPES = {  # Pythia's: vocab 50304, rotary 0.25, parallel residual, untied embeddings
    "160m": {"layers": 12, "hidden_size": 768, "heads": 12, "ffn_size": 3072},
    "410m": {"layers": 24, "hidden_size": 1024, "heads": 16, "ffn_size": 4096},
    "1.4b": {"layers": 24, "hidden_size": 2048, "heads": 16, "ffn_size": 8192},
}
VOCAB, PROMPT_TOKENS, PAD = 50304, 32, 1


def prompts(batch: int, length: int = PROMPT_TOKENS) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(batch * 1000 + length)
    return torch.randint(2, 50000, (batch, length), generator=generator).tolist()


def pythia_config(shape: dict):
    """The transformers config of a Pythia-shaped random checkpoint (parallel residual, untied head, rotary on 1/4,
    stored in float16), for every benchmark that builds one."""
    import transformers

    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=shape["hidden_size"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], intermediate_size=shape["ffn_size"], rotary_pct=0.25,
        rotary_emb_base=10000, max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False,
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, torch_dtype="float16",
    )  # fmt: skip


def modeldeck_card(shape: dict):
    from modeldeck import registry
    from modeldeck.plugins import pythia

    data = pythia.card_data("pythia-1.4b")
    data["id"], data["aliases"], data["parameters"] = "bench", [], {}
    data["architecture"] = {**data["architecture"], **shape, "kv_heads": shape["heads"]}
    return registry.default().resolve_card(registry.card_from_data(data, "bench"), "bench")


# --- engines ----------------------------------------------------------------------------------------


def modeldeck_engine(spec: dict):
    from modeldeck import runtime
    from modeldeck.runtime.generate import generate_tokens, resolve_options

    precision = spec["precision"]
    options = {"quantize": "int8"} if precision == "int8" else {"dtype": None if precision == "default" else precision}
    model = runtime.load(modeldeck_card(SHAPES[spec["shape"]]), weights=spec["checkpoint"], device="cpu", **options)

    def generate(ids: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
        opts = resolve_options(model.card.generation, [], {"max_new_tokens": n, "min_new_tokens": n})
        out: list[list[int]] = [[] for _ in ids]
        began, first = time.perf_counter(), None
        for events in generate_tokens(model.decoder, ids, opts, model.backend, [], PAD):
            first = first or time.perf_counter()
            for index, token in events:
                out[index].append(token)
        return first - began, time.perf_counter() - first, out

    described = {"dtype": str(model.dtype).removeprefix("torch."), "why": model.precision}
    return generate, described


def llamacpp_engine(spec: dict):
    """modeldeck's `--engine llama.cpp`: the card's GGUF at one type behind modeldeck's front end (batch 1 only:
    that engine decodes one sequence at a time)."""
    from modeldeck import runtime

    precision = spec["precision"]
    options = (
        {"quantize": "int8"} if precision == "q8_0" else {"dtype": {"f32": "float32", "f16": "float16"}[precision]}
    )
    model = runtime.load(modeldeck_card(SHAPES[spec["shape"]]), weights=spec["checkpoint"], engine="llama.cpp",
                         **options)  # fmt: skip

    def generate(ids: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
        assert len(ids) == 1, "the llama.cpp engine decodes one sequence at a time"
        opts = model.options(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        began = time.perf_counter()
        ticket = model._submitter().submit(ids[0], opts)
        tokens, first = [], None
        for event in ticket.events():
            first = first or time.perf_counter()
            if event.token_id is not None:
                tokens.append(event.token_id)
        return first - began, time.perf_counter() - first, [tokens]

    return generate, {"dtype": precision, "why": model.precision, "close": model.close}


def transformers_engine(spec: dict):
    import torch
    import transformers
    from transformers.generation.streamers import BaseStreamer

    dtype = getattr(torch, spec["precision"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=dtype).eval()

    class Clock(BaseStreamer):  # put(): the prompt, then every new token as it is chosen
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def generate(ids: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
        tokens, clock = torch.tensor(ids), Clock()
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                tokens, attention_mask=torch.ones_like(tokens), do_sample=False, min_new_tokens=n,
                max_new_tokens=n, pad_token_id=PAD, streamer=clock,
            )  # fmt: skip
        return clock.times[1] - began, time.perf_counter() - clock.times[1], out[:, tokens.shape[1] :].tolist()

    return generate, {"dtype": spec["precision"], "why": "asked for"}


def engine(spec: dict) -> dict:
    imported_at = time.perf_counter()
    if spec["engine"] != "transformers":
        import modeldeck.runtime  # noqa: F401 - before torch, as modeldeck's CLI and server import it (its settings)
    import torch

    torch.set_num_threads(spec["threads"])
    build = {"modeldeck": modeldeck_engine, "transformers": transformers_engine, "md-llama.cpp": llamacpp_engine}[
        spec["engine"]
    ]
    generate, described = build(spec)
    close = described.pop("close", None)  # md-llama.cpp: its worker process, whose memory counts too
    _, _, first = generate(prompts(1), 1)
    result = {
        **described,
        "first_token_s": time.time() - LAUNCHED,
        "import_and_load_s": time.perf_counter() - imported_at,
    }
    result["first_token"] = first[0][0]
    n = spec["new_tokens"]
    prefill, _, _ = generate(prompts(1, spec["prefill_tokens"]), 1)
    result["prefill_tok_s"] = spec["prefill_tokens"] / prefill
    for batch in spec["batches"]:
        _, decode, tokens = generate(prompts(batch), n)
        result[f"tok_s_b{batch}"] = (n - 1) * batch / decode
        result[f"tokens_b{batch}"] = tokens[0]
    if close is not None:
        close()  # the worker is waited for: its peak is RUSAGE_CHILDREN's
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if close is not None else 0
    result["peak_rss_gb"] = peak / 2**20  # md-llama.cpp: both processes' peaks (an upper bound of their sum)
    return result


# --- floors -----------------------------------------------------------------------------------------


def linear_shapes(shape: dict) -> list[tuple[int, int]]:
    """[out, in] of every weight batch-1 decode multiplies by: per block QKV, output, MLP up and down; the LM head."""
    d, f = shape["hidden_size"], shape["ffn_size"]
    return [(3 * d, d), (d, d), (f, d), (d, f)] * shape["layers"] + [(VOCAB, d)]


def median_time(fn, trials: int = 5) -> float:
    fn()
    times = []
    for _ in range(trials):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def floor(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from modeldeck.runtime.kernels import OneDNNLinear, _kernel, _onednn_runs

    torch.set_num_threads(spec["threads"])
    precision, shapes = spec["precision"], linear_shapes(spec["shape"])
    dtype = torch.bfloat16 if precision == "int8" else getattr(torch, precision)
    generator = torch.Generator().manual_seed(0)
    x = {i: torch.randn(1, i, generator=generator).to(dtype) for _, i in shapes}
    result: dict[str, float] = {}
    layers = [torch.randn(o, i, generator=generator).mul_(0.02).to(dtype) for o, i in shapes]
    if precision != "int8":
        result["f_linear_pass_s"] = median_time(lambda: [F.linear(x[w.shape[1]], w) for w in layers])
    if precision == "int8":
        layers = [_kernel(w, None, "int8", dtype) for w in layers]  # the kernel loading picks for int8 here
    elif precision != "float16" and _onednn_runs(layers[0]):  # fp16 (and bf16 where oneDNN lacks it): F.linear
        layers = [OneDNNLinear(w, None) for w in layers]
    if precision != "int8" and not isinstance(layers[0], OneDNNLinear):
        result["kernel_pass_s"] = result["f_linear_pass_s"]
    else:
        result["kernel_pass_s"] = median_time(lambda: [k(x[k.in_features]) for k in layers])
    bytes_per = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}[precision]
    result["weight_bytes"] = bytes_per * sum(o * i for o, i in shapes)
    layers.clear()
    buffer = torch.ones(256 * 2**20)  # 1 GiB of fp32, far beyond any cache
    result["sum_gb_s"] = buffer.numel() * 4 / median_time(buffer.sum) / 1e9
    return result


def mmap_floor(spec: dict) -> dict:
    import mmap

    import torch  # noqa: F401 - part of the floor: every engine imports it

    path = Path(spec["checkpoint"]) / "model.safetensors"
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        touched = sum(view[:: mmap.PAGESIZE])  # reads one byte of every page
        view.release()
    return {"touched": touched, "done_s": time.time() - LAUNCHED}


def main() -> None:
    global LAUNCHED
    spec = json.loads(sys.argv[1])
    LAUNCHED = spec.get("launched", LAUNCHED)  # the parent's clock just before it started this interpreter
    if isinstance(spec.get("shape"), str):
        spec["shape"] = SHAPES[spec["shape"]] if spec["kind"] == "floor" else spec["shape"]
    kind = spec["kind"]
    result = engine(spec) if kind == "engine" else floor(spec) if kind == "floor" else mmap_floor(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
