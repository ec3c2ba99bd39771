"""The GPT decode step and the decode loop's states: static buffers, the static KV cache, CUDA graphs.

``DecodeStep`` owns a KV cache of ``rows`` rows (1, or the beam count) and the model step of one token,

    x = mel_embedding(tokens) + mel_pos_embedding(pos);  24 blocks (6 kernels each);  logits = mel_head(...)
    cache.lengths += active

on device tensors only (``step``), and one ``LoopState`` (``loop.py``) per set of generation arguments: the
sampler, the beam bookkeeping and the stop condition as device state. On CUDA (``graphs=True``) a loop state
captures its whole tick (processors, draw, beam step, cache reorder, model step) as one CUDA graph on its second
tick and replays it for every later token, of this generation and of the next ones (the engine and its states
are reused while they fit): about 150 kernel launches and 50-100 small torch ops become one replay. The capture
itself executes nothing, so no token depends on whether it was captured. Nothing is allocated lazily inside the
capture: the RoPE-free GPT needs no tables, the launchers' SM-count lookups are cached by the eager tick, and the
op outputs come from the graph's private pool (the same addresses every replay).

``graphs=False`` (and every CPU run) executes the same ticks eagerly: the parity tests run exactly the code a
graph captures, against the official generation.
"""

from __future__ import annotations

from typing import Optional

import torch

from .cache import KVCache
from .loop import LoopState, state_key
from .model import FastGPT
from .sampling import GenerationArgs

__all__ = ["DecodeStep"]


class DecodeStep:
    def __init__(self, fast: FastGPT, rows: int, max_len: int, *, graphs: Optional[bool] = None):
        self.fast, self.rows = fast, int(rows)
        dev = fast.device
        self.cache = KVCache(fast.n_layers, self.rows, fast.n_heads, max_len, fast.head_dim, fast.dtype, dev)
        self.graphs = (dev.type == "cuda") if graphs is None else bool(graphs) and dev.type == "cuda"
        self.loops: dict = {}  # state_key -> LoopState (its graph captured on its second tick)
        self._tokens = torch.zeros((self.rows,), dtype=torch.int64, device=dev)
        self._pos = torch.zeros((1,), dtype=torch.int64, device=dev)

    def fits(self, fast: FastGPT, rows: int, max_len: int) -> bool:
        return fast is self.fast and rows == self.rows and max_len <= self.cache.max_len

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [rows, V] (fp32) of ``tokens`` [rows] at mel position ``pos`` [1] (device tensors), appended to
        the cache; the cache's lengths advance by ``active`` (a device bool; None: always)."""
        fast, cache = self.fast, self.cache
        x = fast.embed_mel(tokens[:, None], pos)
        logits = fast.logits(fast.decode(x, cache)[:, 0])
        cache.lengths += 1 if active is None else active.to(torch.int32)
        return logits

    def __call__(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """``step`` from host values (an eager helper: the loop passes its own device buffers)."""
        self._tokens.copy_(tokens)
        self._pos.fill_(int(pos))
        return self.step(self._tokens, self._pos)

    def loop(self, args: GenerationArgs, vocab: int) -> LoopState:
        """The loop state for ``args`` (built once per set of arguments; max_length is per generation)."""
        if args.num_beams != self.rows:
            raise ValueError(f"decode step: {args.num_beams} beams on an engine of {self.rows} rows")
        key = state_key(args, vocab)
        st = self.loops.get(key)
        if st is None:
            st = LoopState(args, self.cache.max_len, vocab, self.fast.device, pos_limit=self.fast.w.mel_pos.shape[0])
            self.loops[key] = st
        return st

    @property
    def captured(self) -> int:
        return sum(st.graph is not None for st in self.loops.values())

    @property
    def capture_s(self) -> Optional[float]:
        """Host seconds the captures took (the benchmark reports it); None before any."""
        times = [st.capture_s for st in self.loops.values() if st.capture_s is not None]
        return sum(times) if times else None
