"""modeldeck.runtime: turns a card into a running model (the only place torch is imported).

    from modeldeck import runtime
    model = runtime.load("aira-2-1b1", weights="path/to/checkpoint")   # or a card object
    model.generate("What is a language model?").text
    for piece in model.stream("Tell me about the for statement"): print(piece, end="")
    model.chat([{"role": "user", "content": "Hi"}])

Defaults come from the card; every keyword overrides them.
"""

from __future__ import annotations

import os

# Transparent huge pages for torch's large CPU allocations (weights, packed weights, the KV cache): loading writes
# gigabytes of fresh memory, and 2 MiB pages fault in several times faster than 4 KiB ones. torch reads this once,
# at its first allocation, so it applies when modeldeck's runtime is imported before torch (as the CLI and the
# server do); THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

try:
    import torch  # noqa: F401
except ImportError as exc:  # the registry works without torch; the runtime cannot
    raise ImportError(
        f"modeldeck.runtime needs torch ({exc}); install the runtime extra: pip install 'modeldeck[runtime]' "
        "(install the torch build for your hardware first)"
    ) from exc

from modeldeck.runtime.engine import Generation, Model, load
from modeldeck.runtime.generate import Completion, GenerationError

__all__ = ["Completion", "Generation", "GenerationError", "Model", "load"]
