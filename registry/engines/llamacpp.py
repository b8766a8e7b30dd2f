"""llama.cpp as an engine for a card, without torch: which cards it runs, at which GGUF types, and the environment it
runs in (`modeldeck engine install llama.cpp`), where llamacpp_worker.py converts, reads and runs GGUF files.

    check_card(card, outtype)     a layout llama.cpp has a graph for; an outtype its converter writes; q8_0 widths
    run_worker(python, op, spec)  llamacpp_worker.py OP in that environment: JSON in, JSON out, errors as EngineError
    find_python() / install(...)  the environment: $MODELDECK_LLAMACPP_PYTHON, else the one `install` made

The environment holds llama-cpp-python (llama.cpp compiled for this CPU: -march=native) and llama.cpp's own
Hugging Face -> GGUF converter with its gguf-py, both from the same pinned source distribution, so the GGUF it
writes is one that llama.cpp reads. Compiling takes ~25 minutes on two cores; the built wheel is kept in the user
cache folder under a key of the CPU's feature flags, so a rebuild of the environment on the same machine takes
minutes, and a wheel built for another CPU is never installed.

Pins:
    llama-cpp-python 0.3.36   its vendored llama.cpp has the gpt_neox, falcon and llama graphs and the converter
                              used here; the converter and the C API change between releases, so this one is kept
    transformers 4.57.6       what that converter pins (requirements-convert_hf_to_gguf.txt)
    numpy 2.2.6               the same file's numpy~=2.2.6 (gguf-py needs >= 2.2.6)
    torch 2.13.0              the CPU build on the package index these machines use (the converter's own
                              torch==2.11.0 is on an index they cannot reach; a bare `torch` pulls a CUDA build)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modeldeck.registry.architecture import RotaryPositions
from modeldeck.registry.engines import environment
from modeldeck.registry.engines.environment import EngineError, Environment, python_of
from modeldeck.registry.schema import Card

__all__ = [
    "ARCHITECTURES",
    "ENVIRONMENT",
    "OUTTYPES",
    "WORKER",
    "check_card",
    "find_python",
    "install",
    "install_steps",
    "outtype_for",
    "run_worker",
    "wheel_cache",
]

LLAMA_CPP_PYTHON = "0.3.36"
TRANSFORMERS = "4.57.6"
NUMPY = "2.2.6"
TORCH = "2.13.0"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32  # ggml's Q8_0 quantizes rows in blocks of 32 values

# checkpoint layout -> (llama.cpp's GGUF architecture, the transformers class the converter picks its model by)
ARCHITECTURES = {
    "gpt-neox": ("gptneox", "GPTNeoXForCausalLM"),
    "falcon": ("falcon", "FalconForCausalLM"),
    "falcon-7b": ("falcon", "FalconForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
}
UNSUPPORTED_LAYOUTS = {
    "btlm": "llama.cpp has no BTLM (GPT-JX) graph (ALiBi attention with muP scaling): there is no GGUF "
    "architecture to convert it to",
}
WORKER = Path(__file__).with_name("llamacpp_worker.py")
"""The program run by the environment's python (it imports llama_cpp, gguf and the converter; never modeldeck)."""

ENVIRONMENT = Environment(
    title="llama.cpp",
    command="llama.cpp",
    python_var="MODELDECK_LLAMACPP_PYTHON",
    home_var="MODELDECK_LLAMACPP_ENV",
    folder="llamacpp-env",
    probe=(
        "import sys, pathlib, gguf, llama_cpp, transformers; "
        "assert (pathlib.Path(sys.prefix) / 'convert' / 'convert_hf_to_gguf.py').is_file(), 'no converter'; "
        "print(llama_cpp.__version__)"
    ),
)


# --- which cards, which types ----------------------------------------------------------------------


def check_card(card: Card, outtype: str = "f32") -> tuple[str, str]:
    """Refuse, with the reason and what to do, a card llama.cpp cannot run as asked; (GGUF architecture, the
    transformers class the converter reads the checkpoint as)."""
    layout = card.architecture.checkpoint_layout
    if why := UNSUPPORTED_LAYOUTS.get(layout):
        raise EngineError(f"card {card.id!r} cannot run on llama.cpp: {why}; run it on modeldeck's runtime")
    if layout not in ARCHITECTURES:
        raise EngineError(
            f"card {card.id!r} has checkpoint layout {layout!r}, which modeldeck does not know how to hand to "
            f"llama.cpp (it exports {', '.join(sorted(ARCHITECTURES))}); run it on modeldeck's runtime"
        )
    positions = card.architecture.positions
    if not isinstance(positions, RotaryPositions) or positions.rotation != "half_split":
        raise EngineError(
            f"card {card.id!r} has {positions.kind} positions"
            + (f" ({positions.rotation} rotation)" if isinstance(positions, RotaryPositions) else "")
            + "; modeldeck hands llama.cpp half-split rotary positions only; run it on modeldeck's runtime"
        )
    if positions.scaling is not None and positions.scaling.kind != "linear":
        raise EngineError(
            f"card {card.id!r} scales its rotary frequencies ({positions.scaling.kind}), which modeldeck's GGUF "
            "export does not carry (linear scaling only); run it on modeldeck's runtime"
        )
    if outtype not in OUTTYPES:
        raise EngineError(
            f"GGUF type {outtype!r} is not one llama.cpp's converter writes for {layout}; choose one of "
            f"{', '.join(OUTTYPES)} (other quantizations: llama.cpp's llama-quantize on the f16 file)"
        )
    if outtype == "q8_0":
        arch = card.architecture
        widths = {"hidden_size": arch.hidden_size, "ffn_size": arch.ffn_size}
        odd = [f"{name} {width}" for name, width in widths.items() if width % Q8_BLOCK]
        if odd:
            raise EngineError(
                f"card {card.id!r} cannot be q8_0: {', '.join(odd)} is not a multiple of {Q8_BLOCK}, the block "
                "llama.cpp quantizes rows in (its converter would silently keep those tensors in f16); use f16"
            )
    return ARCHITECTURES[layout]


def outtype_for(dtype: str | None, quantize: str | None, card: Card) -> str:
    """The GGUF type for runtime.load's dtype and quantize: int8 -> q8_0; a dtype -> its GGUF type; neither -> the
    card's dtype, else f32 (the checkpoint's dtype is read only by the converter)."""
    if quantize is not None:
        if quantize != "int8":
            raise EngineError(f"--quantize {quantize!r}: the llama.cpp engine quantizes to int8 (q8_0) only")
        return "q8_0"
    names = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
    chosen = dtype or (None if card.dtype == "auto" else card.dtype)
    if chosen is None:
        return "f32"
    if chosen not in names:
        raise EngineError(f"--dtype {chosen!r}: the llama.cpp engine takes {', '.join(names)}")
    return names[chosen]


# --- the worker ----------------------------------------------------------------------------------------


def run_worker(python: Path, op: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run llamacpp_worker.py OP with `spec` on stdin; its JSON answer. Its failure is an EngineError with the
    worker's message (the last line it printed), and its log tail when that was not a message of its own."""
    done = subprocess.run(
        [str(python), str(WORKER), op],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    lines = done.stdout.strip().splitlines()
    answer: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode == 0 and "error" not in answer:
        return answer
    tail = "\n".join(done.stderr.strip().splitlines()[-20:]) or "(no output)"
    if "error" in answer:
        raise EngineError(f"{answer['error']}; it printed:\n{tail}" if answer.get("log") else str(answer["error"]))
    raise EngineError(f"llama.cpp's {op} failed (exit {done.returncode}); it printed:\n{tail}")


# --- the environment -----------------------------------------------------------------------------------


def find_python() -> Path:
    """The python of the environment llama.cpp runs in: $MODELDECK_LLAMACPP_PYTHON, else the one `install` made."""
    return environment.find_python(ENVIRONMENT)


def cpu_key() -> str:
    """What a wheel compiled with -march=native depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1] for line in info if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()}-{hashlib.sha256(' '.join(sorted(flags.split())).encode()).hexdigest()[:12]}"


def wheel_cache() -> Path:
    """Where the llama-cpp-python wheel compiled for this CPU (and its source distribution) are kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "modeldeck" / "wheels" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-{cpu_key()}"


_EXTRACT = """\
import sys, tarfile
sdist, into, top = sys.argv[1], sys.argv[2], sys.argv[3]
wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
with tarfile.open(sdist) as archive:
    members = []
    for member in archive.getmembers():
        rest = member.name[len(top) + 1:] if member.name.startswith(top + "/") else ""
        if rest and (rest in wanted or rest.startswith(wanted[1:3])):
            member.name = rest
            members.append(member)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
    archive.extractall(into, members=members, **safe)
"""


def install_steps(env: Path, python: str = sys.executable, jobs: int = 2) -> list[list[str]]:
    """The commands that create llama.cpp's environment at `env`: torch first (the converter imports it; the CPU
    build), the sdist (downloaded once into the wheel cache), the converter and gguf-py out of it, their pins, then
    llama-cpp-python from the cached wheel, compiled for this CPU first when the cache has none."""
    py = str(python_of(env))
    pip = [py, "-m", "pip", "--disable-pip-version-check"]
    cache = wheel_cache()
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    convert = env / "convert"
    top = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp"
    steps = [
        [python, "-m", "venv", str(env)],
        [*pip, "install", "-q", "--upgrade", "pip"],
        [*pip, "install", "-q", f"torch=={TORCH}"],
    ]
    if not sdist.is_file():
        steps.append([*pip, "download", "-q", "--no-binary", ":all:", "--no-deps", "-d", str(cache),
                      f"llama-cpp-python=={LLAMA_CPP_PYTHON}"])  # fmt: skip
    steps += [
        [py, "-c", _EXTRACT, str(sdist), str(convert), top],
        [*pip, "install", "-q", f"torch=={TORCH}", str(convert / "gguf-py"), f"numpy=={NUMPY}",
         f"transformers=={TRANSFORMERS}", "safetensors", "sentencepiece", "jinja2", "diskcache",
         "typing-extensions"],
    ]  # fmt: skip
    if not any(cache.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl")):
        # GGML_NATIVE: every instruction set this CPU has; LLAVA_BUILD=OFF: no multimodal library (text only)
        steps.append(["env", f"CMAKE_BUILD_PARALLEL_LEVEL={jobs}", "CMAKE_ARGS=-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF",
                      *pip, "wheel", "--no-deps", "--no-cache-dir", "-w", str(cache), str(sdist)])  # fmt: skip
    steps += [
        [*pip, "install", "-q", "--no-deps", "--no-index", "--find-links", str(cache),
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
        [py, "-c", ENVIRONMENT.probe.replace("print(llama_cpp.__version__)", "print('llama.cpp', llama_cpp.__version__)")],
    ]  # fmt: skip
    return steps


def install(env: Path, say: Callable[[str], None] = print, force: bool = False, jobs: int = 2) -> Path:
    """Create llama.cpp's environment at `env` (registry/engines/environment.py: all or nothing); its python."""
    return environment.install(ENVIRONMENT, env, lambda: install_steps(env, jobs=jobs), say, force)
