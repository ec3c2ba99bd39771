"""CUDA-graph capture, the one implementation the GPT decode loop and the CFM loop share.

``Graphed(fn, device)`` wraps a callable that reads static input buffers and writes static outputs (the caller
refills the inputs in place between calls). On CUDA (``enabled``):

    call 1   fn() eagerly: every Triton kernel compiles, every lazily built table or cache is built, so nothing is
             allocated or compiled inside the capture
    call 2   fn captured once into a CUDA graph (in the owner's memory pool), then replayed: the capture executes
             nothing, so this call's result is the replay's
    later    replay only: one launch for the whole of fn

It returns fn's result; once captured that is the graph's static output, rewritten by the next replay: copy what
must outlive it. Graphs of one owner share one memory pool (``pool``), which is safe because an owner replays them
one at a time, under its lock. Captures use ``capture_error_mode="thread_local"``: another thread's CUDA work (on
its own streams) neither breaks a capture nor is broken by it; one capture runs at a time in the process.
Disabled (CPU, ``graphs=False``) every call is ``fn()``: the same code, eagerly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Optional

import torch

__all__ = ["Graphed", "graphs_wanted", "bucket_length"]

_CAPTURE_LOCK = threading.Lock()


def bucket_length(T: int, granule: int) -> int:
    """The padded length of a graphed run of T frames: a multiple of max(granule, 2**(bit_length(T) - 4)), so at
    most about 1/8 of the frames are padding and one octave of lengths needs about 8 graphs."""
    step = max(int(granule), 1 << max(0, int(T).bit_length() - 4))
    return -(-int(T) // step) * step


def graphs_wanted(graphs: Optional[bool], device: torch.device) -> bool:
    """CUDA graphs for work on ``device``: the default (None) and True mean yes on CUDA; never elsewhere."""
    return torch.device(device).type == "cuda" and graphs is not False


class MemoryPool:
    """A lazily made CUDA-graph memory pool handle shared by the graphs of one owner."""

    def __init__(self) -> None:
        self._handle = None

    def handle(self):
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle


class Graphed:
    def __init__(self, fn: Callable[[], object], device, *, enabled: bool, pool: Optional[MemoryPool] = None):
        self.fn, self.device, self.enabled = fn, torch.device(device), bool(enabled)
        self.pool = pool if pool is not None else MemoryPool()
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: object = None
        self.warm = False  # the eager call ran
        self.capture_s: Optional[float] = None  # host seconds of the capture (the benchmark reports it)
        self.replays = 0

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
            return self.out
        if not (self.enabled and self.warm):
            self.warm = True
            return self.fn()
        self._capture()
        return self.__call__()

    def _capture(self) -> None:
        t0 = time.perf_counter()
        with _CAPTURE_LOCK:
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool.handle(), capture_error_mode="thread_local"):
                out = self.fn()
        self.graph, self.out, self.capture_s = graph, out, time.perf_counter() - t0
