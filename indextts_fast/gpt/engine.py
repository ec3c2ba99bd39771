"""The GPT decode step as one replayable unit: static inputs, the static KV cache, one CUDA graph per row count.

``DecodeStep`` owns a KV cache of ``rows`` rows (1, or the beam count) and runs, per generated token,

    x = mel_embedding(tokens) + mel_pos_embedding(pos);  24 blocks (6 kernels each);  logits = mel_head(...)
    cache.lengths += 1

reading ``tokens`` [rows] and ``pos`` [1] from device buffers it owns, so that every step launches the same
kernels on the same addresses. On CUDA (``graphs=True``) the first step runs eagerly (it compiles every kernel),
the second is captured into a ``torch.cuda.CUDAGraph`` and every later step replays it: about 150 launches become
one. The capture itself executes nothing, so no step's result depends on whether it was captured. Nothing is
allocated lazily inside the capture: the RoPE-free GPT needs no tables, the launchers' SM-count lookups are cached
by the eager step, and the op outputs come from the graph's private pool (the same addresses every replay).

What stays outside the graph: the logits processors, the draw and the beam bookkeeping (``generate.decode_loop``,
the official semantics step for step) and the beam reorder, which permutes the cache's row table and lengths in
place (``copy_``), so the graph reads the new order on its next replay. The host reads one flag per step (stop?).

``graphs=False`` (and every CPU run) executes the same ``_run`` eagerly: the engine's tokens are those of the
eager loop by construction, and the parity tests run it against the official generation.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..profiling import nvtx_range
from .cache import KVCache
from .model import FastGPT

__all__ = ["DecodeStep"]


class DecodeStep:
    def __init__(self, fast: FastGPT, rows: int, max_len: int, *, graphs: Optional[bool] = None):
        self.fast, self.rows = fast, int(rows)
        dev = fast.device
        self.cache = KVCache(fast.n_layers, self.rows, fast.n_heads, max_len, fast.head_dim, fast.dtype, dev)
        self.tokens = torch.zeros((self.rows,), dtype=torch.int64, device=dev)
        self.pos = torch.zeros((1,), dtype=torch.int64, device=dev)
        self.graphs = (dev.type == "cuda") if graphs is None else bool(graphs) and dev.type == "cuda"
        self.graph = None
        self.out: Optional[torch.Tensor] = None
        self.steps = 0  # steps run since construction (eager + replayed)
        self.capture_s: Optional[float] = None  # host seconds the capture took (reported by the benchmark)

    def fits(self, fast: FastGPT, rows: int, max_len: int) -> bool:
        return fast is self.fast and rows == self.rows and max_len <= self.cache.max_len

    def _run(self) -> torch.Tensor:
        fast, cache = self.fast, self.cache
        x = fast.embed_mel(self.tokens[:, None], self.pos)
        logits = fast.logits(fast.decode(x, cache)[:, 0])
        cache.lengths += 1
        return logits

    def __call__(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits [rows, V] (fp32) of ``tokens`` [rows] at mel position ``pos``, appended to the cache."""
        self.tokens.copy_(tokens)
        self.pos.fill_(pos)
        self.steps += 1
        with nvtx_range("gpt.decode"):
            if not self.graphs:
                return self._run()
            if self.graph is None and self.steps >= 2:
                self._capture()
            if self.graph is None:
                return self._run()  # the first step: eager, compiles every kernel
            self.graph.replay()
            return self.out.clone()  # the static output is overwritten by the next replay

    def _capture(self) -> None:
        t0 = time.perf_counter()
        torch.cuda.synchronize(self.fast.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self._run()
        self.graph = graph
        self.capture_s = time.perf_counter() - t0
