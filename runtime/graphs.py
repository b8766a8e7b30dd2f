"""CUDA graphs for the decode step: one decoder forward per token, replayed instead of launched kernel by kernel.

A batch-1 decode step on a GPU is hundreds of small kernels; launching them from Python costs more than running
them for small and mid-sized models. A CUDA graph records the whole step once and replays it with one launch.
That needs fixed shapes and no host synchronisation, which the decoder's `static` forward provides: it reads every
cache position (masked by each sequence's length) instead of the positions in use, and never reads `start` on
the host.

    DecodeGraphs(decoder, cache, backend)    one graph per batch size (the cache's rows fix it), captured on the
                                             first step of that size after a warm-up run on a side stream
    graphs(tokens [B]) -> logits [B, V]      copies the tokens and the cache lengths into the graph's input
                                             buffers, replays, returns the graph's logits buffer (valid until the
                                             next replay)

Only sdpa and eager can be captured (xformers builds its mask from host-side lengths). The graph owns the cache's
memory as it was at capture: a new cache (a new `generate` call) captures again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeldeck.registry.diagnostics import ModeldeckError
from modeldeck.runtime.attention import Backend
from modeldeck.runtime.model import Decoder, KVCache

__all__ = ["DecodeGraphs", "check_graphs"]


def check_graphs(device: torch.device, backend: str | None) -> None:
    """Fail before loading or generating when CUDA graphs cannot run on `device` with attention `backend`."""
    if device.type != "cuda":
        raise ModeldeckError(f"cuda_graphs=True needs a CUDA device (the model is on {device}); leave it off")
    if backend == "xformers":
        raise ModeldeckError(
            "cuda_graphs=True cannot capture the xformers backend (its mask is built from host-side lengths); "
            "load with attention='sdpa'"
        )


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # [B, 1] input buffer
    start: torch.Tensor  # [B] input buffer
    logits: torch.Tensor  # [B, V] output buffer


class DecodeGraphs:
    def __init__(self, decoder: Decoder, cache: KVCache, backend: Backend) -> None:
        check_graphs(cache.k.device, backend.name)
        self.decoder, self.cache, self.backend = decoder, cache, backend
        self.captured: dict[int, _Graph] = {}

    def _forward(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.decoder(tokens, self.cache, self.backend, start=start, static=True)[:, 0]
        return logits

    def _capture(self, tokens: torch.Tensor) -> _Graph:
        buffers = tokens[:, None].clone(), self.cache.lengths.clone()  # [B, 1], [B]
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy initialisation must not happen inside the capture
            self._forward(*buffers)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._forward(*buffers)
        return _Graph(graph, buffers[0], buffers[1], logits)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] -> logits [B, V] of the next position; advances the cache's lengths as decode_one_token."""
        captured = self.captured.get(tokens.shape[0])
        if captured is None:
            captured = self.captured[tokens.shape[0]] = self._capture(tokens)
        captured.tokens.copy_(tokens[:, None])
        captured.start.copy_(self.cache.lengths)
        captured.graph.replay()
        self.cache.lengths = self.cache.lengths + 1
        return captured.logits
