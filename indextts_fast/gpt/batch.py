"""Several GPT generations in one decode tick: continuous batching over a fixed pool of KV-cache slots.

    engine = BatchDecoder(fast, args, slots=4, capacity=1024)   # args: the default settings (and the beam count)
    out = engine.run([Request(input_ids, prefix_emb, max_length=..., generator=..., args=...), ...])

The pool: one KV cache of ``slots x K`` rows (K = ``args.num_beams``), each slot a request's K beam rows, and per
slot the decode state of its request's settings (``decode.DecodeState``: its sequences, flags and beam hypotheses,
its processors' and select's configuration; its logits and next embeddings are views of the pool's [slots x K]
buffers; a slot keeps the states of the last ``MAX_STATES`` settings it ran). A tick is, per slot, the fused
select (processors, the draw from the slot's own generator, the choice, the beam step, the row reorders inside
the slot, the append, the stop condition, the next embeddings), then one model step over every row of the pool:
the decode attention reads each row through the row table at its own length, so a slot's rows only ever read its
own cache rows.

Joining and leaving: a request joins a free slot between ticks (its prompt prefilled at batch 1 into the slot's
first physical row, every beam row of the slot pointed at it, its decode state reset); the host reads the running
flags every ``CHECK_EVERY`` ticks and a finished slot's sequences are taken out (the generator put back where the
generation's own draws left it, as ``Decoder.generate`` does) and the slot freed for the next request in line.
Idle slots run with their running flag off: every update of theirs is gated, their model rows compute values
nobody reads.

Exactness: the tick always runs the whole pool (every slot, idle or not), so every row's arithmetic is the same
whatever the other slots hold: a request's tokens are the ones it gets alone in the same pool (the GEMM
configurations depend on the row count, so a pool of another width may round differently). Greedy and beam
search are deterministic; a sampled request draws from its own generator (``Request.generator``: seeded per
request), never from another request's.

Bounds: ``slots`` (the KV memory: slots x K x capacity positions x layers x 2 x width) and ``max_queue`` (requests
waiting for a slot); a request beyond them is refused with ``PoolFull`` (the caller's back-pressure), never queued
without bound. On CUDA, while no slot samples, the tick is one CUDA graph (``_graphs.Graphed``), one per
combination of the slots' settings, at most ``MAX_TICKS`` kept; with sampling it runs eagerly (a per-slot
generator inside a captured graph needs registering with the graph: not done yet).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict, deque
from typing import Optional

import torch

from .._graphs import Graphed, MemoryPool, graphs_wanted
from ..profiling import nvtx_range
from .cache import KVCache
from .decode import CHECK_EVERY, MAX_STATES, DecodeState, needed_positions, position_error
from .model import FastGPT
from .sampling import GenerationArgs

__all__ = ["BatchDecoder", "Request", "PoolFull", "Cancelled", "MAX_TICKS"]

MAX_TICKS = 8  # graphed ticks (combinations of the slots' settings) a pool keeps


class PoolFull(RuntimeError):
    """More requests than the pool's slots and its queue hold."""


class Cancelled(RuntimeError):
    """A request whose ``cancel`` event was set: it left the pool (or its queue) at the next stop-flag read."""


@dataclasses.dataclass
class Request:
    """One generation: ``input_ids`` [1, P] (the official fake ids, then the start token), ``prefix_emb`` [1,
    prefix_len, C] (the conditioning and text embeddings), ``max_length`` (prompt included; default: its settings'),
    ``generator`` (sampling: the request's own; None: the device's default generator), ``args`` (its generation
    settings: temperature, top-k / top-p, penalties, sampling or not, with the pool's beam count; None: the
    pool's), ``cancel`` (an event: once set, the request leaves at the next stop-flag read, its slot freed, its
    result ``Cancelled``)."""

    input_ids: torch.Tensor
    prefix_emb: torch.Tensor
    max_length: Optional[int] = None
    generator: Optional[torch.Generator] = None
    position_offset: int = 0
    args: Optional[GenerationArgs] = None  # the request's own settings (the pool's beam count); None: the pool's
    cancel: Optional[threading.Event] = None


class _SlotCache:
    """A slot's view of the pool's row table and lengths (what its decode state's select reorders)."""

    def __init__(self, cache: KVCache, lo: int, hi: int):
        self.table, self.lengths = cache.table[lo:hi], cache.lengths[lo:hi]


class _SlotDecoder:
    """What a slot's decode state reads of its decoder: the model's weights and the slot's cache view."""

    def __init__(self, fast: FastGPT, cache: _SlotCache):
        self.fast, self.cache = fast, cache


class _PrefillCache:
    """The pool's cache seen by a batch-1 prefill into one physical row."""

    def __init__(self, cache: KVCache, row: int):
        self.cache, self.row = cache, row

    def layer(self, i: int):
        k, v = self.cache.layer(i)
        return k[self.row : self.row + 1], v[self.row : self.row + 1]


class BatchDecoder:
    def __init__(self, fast: FastGPT, args: GenerationArgs, *, slots: int, capacity: int, max_queue: int = 64,
                 graphs: Optional[bool] = None):  # fmt: skip
        if slots < 1 or capacity < 2:
            raise ValueError(f"batch decode: slots must be >= 1 and capacity >= 2, got {slots} and {capacity}")
        self.fast, self.args, self.slots, self.capacity = fast, args, int(slots), int(capacity)
        self.K, self.max_queue = args.num_beams, int(max_queue)
        K, dev = self.K, fast.device
        self.cache = KVCache(fast.n_layers, slots * K, fast.n_heads, self.capacity, fast.head_dim, fast.dtype, dev)
        vocab = fast.w.mel_head_w.shape[0]
        self.emb = torch.zeros((slots * K, 1, fast.width), dtype=fast.stream_dtype, device=dev)
        self.logits = torch.zeros((slots * K, vocab), dtype=torch.float32, device=dev)
        self.vocab, self.pos_limit = vocab, fast.w.mel_pos.shape[0]
        # per slot, the decode states of the settings it ran (LRU, at most MAX_STATES), and the one it runs now
        self._slot_states: list[OrderedDict] = [OrderedDict() for _ in range(slots)]
        self.states: list[DecodeState] = [self._state(g, args) for g in range(slots)]
        self.graphs = graphs_wanted(graphs, dev)
        self._ticks: OrderedDict = OrderedDict()  # the slots' states (identities) -> their graphed tick
        self._pool = MemoryPool()
        self.lock = threading.Lock()  # one run at a time: the pool's buffers are static
        self._busy: list = []  # the slots running a request now, in order
        for g in range(slots):
            self._free(g)

    def _state(self, g: int, args: GenerationArgs) -> DecodeState:
        """Slot g's decode state for ``args`` (built on first use; its logits and next embeddings are the pool's)."""
        if args.custom_processors:
            raise ValueError("batch decode: custom logits processors run one generation at a time")
        if args.num_beams != self.K:
            raise ValueError(f"batch decode: a request with {args.num_beams} beams in a pool of {self.K}-beam slots")
        key = dataclasses.replace(args, max_length=0, use_cache=True)
        states = self._slot_states[g]
        st = states.pop(key, None)
        if st is None:
            K = self.K
            view = _SlotDecoder(self.fast, _SlotCache(self.cache, g * K, (g + 1) * K))
            st = DecodeState(args, self.capacity, self.vocab, self.fast.device, pos_limit=self.pos_limit, decoder=view)
            if st.decoder is None:
                raise ValueError(f"batch decode: {K} beams or a vocabulary of {self.vocab} is beyond the fused tick")
            st.emb, st.logits = self.emb[g * K : (g + 1) * K], self.logits[g * K : (g + 1) * K]
        states[key] = st
        while len(states) > MAX_STATES:
            states.popitem(last=False)
        return st

    @property
    def tick_graph(self) -> Graphed:
        """The tick of the slots' current states: one CUDA graph per combination (at most ``MAX_TICKS`` kept),
        eager where a slot samples (its generator would have to be registered with the graph)."""
        key = tuple(id(st) for st in self.states)
        g = self._ticks.pop(key, None)
        if g is None:
            states = list(self.states)
            graphed = self.graphs and not any(st.args.do_sample for st in states)
            # eager: the selects of the busy slots only (an idle slot's select changes nothing: its running flag is
            # off); a graph has every slot's
            tick = (lambda: self._tick(states)) if graphed else (lambda: self._tick([states[i] for i in self._busy]))
            g = Graphed(tick, self.fast.device, enabled=graphed, pool=self._pool)
        self._ticks[key] = g
        while len(self._ticks) > MAX_TICKS:
            self._ticks.popitem(last=False)
        return g

    # --- the tick ----------------------------------------------------------------------------------------------
    def _tick(self, states: list) -> None:
        for st in states:
            st.select()
        fast = self.fast
        self.logits.copy_(fast.logits(fast.decode(self.emb, self.cache)[:, 0], fp32=False))

    # --- slots ----------------------------------------------------------------------------------------------------
    def _rows(self, g: int) -> slice:
        return slice(g * self.K, (g + 1) * self.K)

    def _identity(self, rows: slice) -> torch.Tensor:
        return torch.arange(rows.start, rows.stop, dtype=torch.int32, device=self.fast.device)[:, None]

    def _free(self, g: int) -> None:
        """An idle slot: identity table rows, empty, not running (its ticks change nothing)."""
        rows = self._rows(g)
        self.cache.table[rows] = self._identity(rows)
        self.cache.lengths[rows] = 0
        st = self.states[g]
        st.running.fill_(False)
        st.pending.zero_()
        st.generator = None

    def _join(self, g: int, r: Request) -> int:
        """Prefill ``r`` into slot g and reset its state; returns its prompt length."""
        fast, dev, args = self.fast, self.fast.device, self.args
        prefix_len, P = r.prefix_emb.shape[1], r.input_ids.shape[1]
        own = args if r.args is None else r.args
        max_length = int(own.max_length if r.max_length is None else r.max_length)
        if P >= max_length:
            raise ValueError(f"batch decode: a prompt of {P} positions and max_length {max_length}: nothing to do")
        if needed_positions(fast, P, max_length) > self.capacity:
            raise ValueError(f"batch decode: max_length {max_length} exceeds the pool's {self.capacity} positions")
        if r.generator is not None and torch.device(r.generator.device).type != dev.type:
            raise ValueError(f"batch decode: the request's generator is on {r.generator.device}, the model on {dev}")
        ids = r.input_ids.to(dev)
        tail = ids[:, prefix_len:]
        if tail.shape[1] > fast.w.mel_pos.shape[0]:
            raise position_error(tail.shape[1] - 1, fast.w.mel_pos.shape[0])
        rows = self._rows(g)
        emb = torch.cat([fast.to_stream(r.prefix_emb.to(dev)),
                         fast.embed_mel(tail, torch.arange(tail.shape[1], device=dev))], dim=1)  # fmt: skip
        h = fast.prefill(emb, _PrefillCache(self.cache, rows.start))
        self.cache.table[rows, :P] = rows.start
        self.cache.table[rows, P:] = self._identity(rows)
        self.cache.lengths[rows] = P
        st = self.states[g] = self._state(g, self.args if r.args is None else r.args)
        st.generator = r.generator
        st.reset(ids, fast.logits(h[:, -1]), prefix_len=prefix_len, max_length=max_length,
                 position_offset=r.position_offset)  # fmt: skip
        return P

    # --- the host loop ---------------------------------------------------------------------------------------------
    def run(self, requests: list[Request]) -> list:
        """Every request's sequences [1, L] (prompt included, as the official generate returns them), in order;
        where a request fails (a prompt or max_length the pool cannot hold, the official errors: the mel position
        table's end, an invalid probability), its entry is the exception, and the other requests are unaffected.
        At most ``slots`` run at once; the rest wait (at most ``max_queue``) and join as slots free up."""
        with self.lock:
            return self._run(list(requests))

    def _run(self, requests: list) -> list:
        if len(requests) > self.slots + self.max_queue:
            raise PoolFull(f"batch decode: {len(requests)} requests for {self.slots} slots and a queue of "
                           f"{self.max_queue}: send fewer at a time")  # fmt: skip
        waiting = deque(enumerate(requests))
        results: list = [None] * len(requests)
        active: dict[int, list] = {}  # slot -> [request index, prompt length, ticks, saved generator states]
        free = list(range(self.slots))
        with nvtx_range("gpt.batch_decode"):
            while waiting or active:
                for i, r in [w for w in waiting if _cancelled(w[1])]:
                    waiting.remove((i, r))
                    results[i] = Cancelled("batch decode: the request was cancelled before it started")
                while waiting and free:
                    i, r = waiting.popleft()
                    g = free.pop(0)
                    try:
                        active[g] = [i, self._join(g, r), 0, [None] * CHECK_EVERY, r]
                    except (ValueError, IndexError) as e:  # this request's own error: the others go on
                        results[i] = e
                        self._free(g)
                        free.append(g)
                self._busy = sorted(active)
                for _ in range(CHECK_EVERY):
                    for g, a in active.items():
                        st = self.states[g]
                        gen = st.generator if st.args.do_sample else None
                        if gen is not None:
                            a[3][a[2] % CHECK_EVERY] = gen.get_state()
                        a[2] += 1
                    self.tick_graph()
                for g in [g for g in active if _cancelled(active[g][4])]:
                    results[active.pop(g)[0]] = Cancelled("batch decode: the request was cancelled")
                    self._free(g)
                    free.append(g)
                for g in [g for g in active if not bool(self.states[g].running)]:
                    i, _, ticks, saved, _ = active.pop(g)
                    st = self.states[g]
                    st.ticks = ticks
                    gen = st.generator if st.args.do_sample else None
                    try:
                        results[i] = st.finish(gen, saved if gen is not None else None)
                    except (RuntimeError, IndexError) as e:  # the official errors of this generation alone
                        results[i] = e
                    self._free(g)
                    free.append(g)
        return results


def _cancelled(r: Request) -> bool:
    return r.cancel is not None and r.cancel.is_set()
