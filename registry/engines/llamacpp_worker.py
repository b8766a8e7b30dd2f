"""The program modeldeck runs in llama.cpp's environment (registry/engines/llamacpp.py), by path, never imported
by modeldeck: it imports llama_cpp, gguf and llama.cpp's converter, which only that environment has.

    python llamacpp_worker.py OP < spec.json      one JSON object in, one JSON line out ({"error": ...} on failure)

    convert   llama.cpp's convert_hf_to_gguf.py on a staged model folder, with the card's keys (`overrides`:
              key -> [GGUF type, value]) written over the converter's own just before the header is written
              (general.*, context length, widths, rotary base, special tokens, chat template)
    read      a GGUF file's metadata (arrays over 64 items as their length) and its tensors' names, types, shapes
    tokenize  llama.cpp's tokenization of texts with a GGUF's vocabulary (special: markers become special tokens)
    render    a chat through llama-cpp-python's Jinja2ChatFormatter with the GGUF's tokenizer.chat_template
    serve     load a GGUF once, print {"ready": ...}; then per line {"op": "eval", "keep": K, "tokens": [...]}:
              keep the first K cached positions, evaluate the tokens, and answer a line {"n": V} followed by the
              last position's V logits as float32 bytes; {"op": "quit"} (or the end of stdin) ends it

Sampling is not done here: modeldeck samples from these logits (runtime/generate.py), so the card's options mean
the same on both engines.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CONVERTER = Path(sys.prefix) / "convert"  # where `modeldeck engine install llama.cpp` put it


def _plain_byte_level(model_dir: Path) -> bool:
    """tokenizer.json pre-tokenizes exactly as GPT-2 does (byte-level, GPT-2's split regex, no normalizer): then
    llama.cpp's "gpt-2" pre-tokenizer is the same, whatever vocabulary the tokenizer has."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    return (
        data.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and not pre.get("add_prefix_space", False)
    )


def convert(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(CONVERTER))
    import convert_hf_to_gguf  # type: ignore[import-not-found]
    import gguf  # type: ignore[import-not-found]
    from conversion import base  # type: ignore[import-not-found]

    model_dir = Path(spec["model"])
    overrides: dict[str, list[Any]] = spec["overrides"]
    write_header = gguf.GGUFWriter.write_header_to_file

    def with_overrides(writer: Any, *args: Any, **kwargs: Any) -> Any:
        for key, (kind, value) in overrides.items():
            if kind.startswith("array:"):
                writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType[kind[6:].upper()])
            else:
                writer.add_key_value(key, value, gguf.GGUFValueType[kind.upper()])
        return write_header(writer, *args, **kwargs)

    gguf.GGUFWriter.write_header_to_file = with_overrides
    recognize = base.TextModel.get_vocab_base_pre

    def pre_tokenizer(model: Any, tokenizer: Any) -> str:
        try:
            return str(recognize(model, tokenizer))
        except NotImplementedError:
            if _plain_byte_level(model_dir):
                return "gpt-2"
            raise NotImplementedError(
                "llama.cpp's converter does not know this tokenizer's pre-tokenizer (its tokenization of a check "
                "text has no known hash) and it is not plain GPT-2 byte-level: llama.cpp could split text "
                "differently from the tokenizer"
            ) from None

    base.TextModel.get_vocab_base_pre = pre_tokenizer
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", spec["outfile"], "--outtype", spec["outtype"]]
    convert_hf_to_gguf.main()
    return {"outfile": spec["outfile"]}


def _value(field: Any) -> Any:
    contents = field.contents()
    if isinstance(contents, list) and len(contents) > 64:
        return {"array_length": len(contents)}
    return contents


def read(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(CONVERTER / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(spec["path"])
    fields = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(n) for n in t.shape]} for t in reader.tensors]
    return {"fields": fields, "tensors": tensors}


def _llama(path: str, **options: Any) -> Any:
    import llama_cpp  # type: ignore[import-not-found]

    return llama_cpp.Llama(model_path=path, verbose=False, **options)


def tokenize(spec: dict[str, Any]) -> dict[str, Any]:
    llm = _llama(spec["gguf"], vocab_only=True)
    special = bool(spec.get("special", True))
    return {"tokens": [llm.tokenize(t.encode("utf-8"), add_bos=False, special=special) for t in spec["texts"]]}


def render(spec: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # type: ignore[import-not-found]

    fields = read({"path": spec["gguf"]})["fields"]
    template = fields["tokenizer.chat_template"]
    llm = _llama(spec["gguf"], vocab_only=True)

    def text(key: str) -> str:
        token = fields.get(key)
        return "" if token is None else llm.detokenize([token], special=True).decode("utf-8", "replace")

    formatter = Jinja2ChatFormatter(
        template, eos_token=text("tokenizer.ggml.eos_token_id"), bos_token=text("tokenizer.ggml.bos_token_id")
    )
    return {"prompt": formatter(messages=spec["messages"]).prompt}


def serve(spec: dict[str, Any]) -> None:
    import llama_cpp
    import numpy as np

    threads = int(spec.get("threads") or os.cpu_count() or 1)
    llm = _llama(
        spec["gguf"],
        n_ctx=int(spec["n_ctx"]),
        n_batch=int(spec.get("n_batch", 512)),
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
    )
    vocab = llm.n_vocab()
    out = sys.stdout.buffer
    ready = {"ready": True, "n_vocab": vocab, "system_info": llama_cpp.llama_print_system_info().decode("utf-8")}
    out.write((json.dumps(ready) + "\n").encode())
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            return
        try:
            keep, tokens = int(request["keep"]), [int(t) for t in request["tokens"]]
            if not tokens or not 0 <= keep <= llm.n_tokens or keep + len(tokens) > llm.n_ctx():
                raise ValueError(f"eval of {len(tokens)} tokens after {keep} cached of {llm.n_tokens}")
            llm.n_tokens = keep  # eval drops the cache from here on
            llm.eval(tokens)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            out.write((json.dumps({"n": vocab}) + "\n").encode())
            out.write(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
        except Exception as error:  # noqa: BLE001 - this request fails; the loaded model stays
            out.write((json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n").encode())
        out.flush()


OPS = {"convert": convert, "read": read, "tokenize": tokenize, "render": render}


def main() -> None:
    op = sys.argv[1] if len(sys.argv) > 1 else ""
    if op == "serve":
        serve(json.loads(sys.stdin.readline()))
        return
    if op not in OPS:
        print(json.dumps({"error": f"unknown op {op!r}; one of serve, {', '.join(OPS)}"}))
        sys.exit(2)
    spec = json.loads(sys.stdin.read())
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # what the converter prints goes to the log, not into the answer
    try:
        answer = OPS[op](spec)
    except SystemExit as error:  # the converter's own refusals log their reason, then exit
        answer = {"error": f"llama.cpp's {op} stopped (exit {error.code})", "log": True}
    except Exception as error:  # noqa: BLE001 - any failure is the answer, with its traceback in the log
        answer = {"error": f"{type(error).__name__}: {error}"}
        import traceback

        traceback.print_exc()
    sys.stdout = real_stdout
    print(json.dumps(answer))
    sys.exit(1 if "error" in answer else 0)


if __name__ == "__main__":
    main()
