"""The runtime's decoder as data, torch-free: its dtypes, attention backends, tensors and the prefill rule.

Every part of modeldeck that needs to know what the decoder is reads it here: the checkpoint layouts and the
checkpoint check (which tensors, which shapes), the memory planner, the loader, the runtime and the CLI.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BACKENDS", "DTYPES", "DTYPE_BYTES", "BackendName", "DtypeName"]

DtypeName = Literal["float32", "float16", "bfloat16"]
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}
"""The weight dtypes the runtime runs in, and bytes per element."""
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)

BackendName = Literal["eager", "sdpa", "xformers"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "sdpa", "xformers")
"""Attention backends a user may ask for (auto: the rule in `choose_backend`)."""
