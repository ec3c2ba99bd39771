"""One CUDA-graph capture, shared by the GPT decode loop and the CFM loop."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["capture"]


def capture(fn: Callable[[], object], device) -> tuple[torch.cuda.CUDAGraph, object, float]:
    """``(graph, fn()'s result in the graph's private pool, host seconds)``: ``fn`` captured once after the device
    is idle. The capture executes nothing: ``graph.replay()`` runs it (and rewrites that result in place). The
    caller runs ``fn`` eagerly once before, so every kernel is compiled and nothing is built lazily inside."""
    t0 = time.perf_counter()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out, time.perf_counter() - t0
