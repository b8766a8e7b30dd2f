"""The memory planner: `modeldeck memory`."""

from __future__ import annotations

from typing import Any

import click

from modeldeck.registry import memory
from modeldeck.registry.cli.common import json_text, load_registry, out, report_errors
from modeldeck.registry.cli.display import human_bytes
from modeldeck.registry.decoder import BACKENDS, DTYPES
from modeldeck.registry.schema import Card

MAX_DEVICE_GB = 1_000_000  # a petabyte per device: beyond any accelerator, and finite for the planner's arithmetic

__all__ = ["COMMANDS"]

_DTYPES = click.Choice(DTYPES)


@click.command("memory")
@click.argument("name")
@click.option("--dtype", type=_DTYPES, help="Compute dtype (default: the runtime's; see `modeldeck generate -v`).")
@click.option("--context", type=int, help="Tokens per sequence, prompt + new tokens (default: the card's context).")
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences generated together.")
@click.option("--new-tokens", type=int, help="New tokens per sequence (default: the card's max_new_tokens).")
@click.option("--device-memory", type=float, help="Memory of one device in GB (10^9 bytes): what fits, or a split.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="Where the model runs (default: cuda with --device-memory, else cpu).",
)
@click.option(
    "--attention",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Attention backend (auto: xformers for float16/bfloat16 on cuda, else sdpa).",
)
@click.option(
    "--checkpoint-dtype",
    type=_DTYPES,
    help="Dtype the weights are stored in (default: the card's dtype; auto: --dtype).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@report_errors
def memory_command(
    name: str,
    dtype: str | None,
    context: int | None,
    batch: int,
    new_tokens: int | None,
    device_memory: float | None,
    device: str | None,
    attention: str,
    checkpoint_dtype: str | None,
    as_json: bool,
) -> None:
    """Plan the memory of one generation with card NAME (an id or a card file): weights, KV cache, activation
    peak and total.

    With --device-memory: the largest context and batch that fit, or for a model that fits no single device,
    the tensor-parallel plan that runs it over several with vLLM (`modeldeck serve NAME --engine vllm`). Estimates model modeldeck's runtime (see registry/memory.py); not included:
    the process itself (Python, torch, the CUDA context) and allocator fragmentation.
    """
    reg = load_registry(quiet_problems=True)
    card, _ = reg.card_or_file(name)
    if device_memory is not None and not 0 < device_memory <= MAX_DEVICE_GB:  # also refuses nan
        raise memory.MemoryPlanError(
            f"--device-memory must be a positive number of GB up to {MAX_DEVICE_GB:,}, got {device_memory:g}"
        )
    options: dict[str, Any] = {
        "dtype": dtype,
        "batch": batch,
        "context": context,
        "new_tokens": new_tokens,
        "device": device or ("cuda" if device_memory is not None else "cpu"),
        "attention": attention,
        "checkpoint_dtype": checkpoint_dtype,
        "layout": reg.checkpoint_layouts().get(card.architecture.checkpoint_layout),
    }
    plan = memory.estimate(card, **options)
    report: dict[str, Any] = plan.to_json()
    if device_memory is not None:
        limit = int(device_memory * memory.GB)
        report["device_memory"] = limit
        report["fits"] = plan.total <= limit
        report["largest_context"] = memory.largest_context(card, limit, **options)
        report["largest_batch"] = memory.largest_batch(card, limit, **options)
        gpu = plan.scenario.device == "cuda"
        split = memory.tensor_parallel_plan(card, plan, limit) if gpu and plan.total > limit else None
        report["tensor_parallel"] = split.to_json() if split else None
    if as_json:
        click.echo(json_text(report))
        return
    _print(card, plan, report)


def _print(card: Card, plan: memory.Estimate, report: dict[str, Any]) -> None:
    s = plan.scenario
    lines = [
        f"{plan.card}: {s.dtype} on {s.device}, attention {s.attention}; batch {s.batch}, context {s.context:,} "
        f"= prompt {s.prompt:,} + {s.new_tokens:,} new tokens",
    ]
    for term in (plan.weights, plan.mapped, plan.kv_cache, plan.activations):
        lines.append(f"{term.name:<12} {human_bytes(term.bytes):>12}  {term.formula}")
        lines.append(f"{'':<12} {'':>12}  ({term.source})")
    lines.append(
        f"{'total':<12} {human_bytes(plan.total):>12}  max(running {human_bytes(plan.running)}: weights + mapped file + KV cache + "
        f"activations; loading {human_bytes(plan.loading.bytes)}: {plan.loading.formula})"
    )
    if "device_memory" in report:
        limit = report["device_memory"]
        lines.append("")
        lines.append(f"device memory {human_bytes(limit)}: {'fits' if report['fits'] else 'does not fit'}")
        context, batch = report["largest_context"], report["largest_batch"]
        none = (
            f"none fits (the weights alone are {human_bytes(plan.weights.bytes)})"
            if plan.weights.bytes > limit
            else "none fits"
        )
        lines.append(f"largest context at batch {s.batch}: {f'{context:,}' if context else none}")
        lines.append(f"largest batch at context {s.context:,}: {f'{batch:,}' if batch else none}")
        split = report["tensor_parallel"]
        if not report["fits"] and split:
            lines.append(
                f"tensor parallel over {split['gpus']} GPUs of {human_bytes(limit)} (modeldeck serve {plan.card} "
                f"--engine vllm --tensor-parallel-size {split['gpus']}): per GPU {human_bytes(split['per_gpu'])} = "
                f"weights {human_bytes(split['weights'])} + KV cache {human_bytes(split['kv_cache'])} + activations "
                f"{human_bytes(split['activations'])}, within vLLM's {split['utilization']:.0%} of its memory"
            )
        elif not report["fits"] and s.device == "cuda":
            sizes = ", ".join(map(str, memory.tensor_parallel_sizes(card.architecture)))
            lines.append(f"no tensor-parallel size that splits this model evenly ({sizes}) fits GPUs of this size")
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


COMMANDS: list[click.Command] = [memory_command]
