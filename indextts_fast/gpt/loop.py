"""The decode loop on the device: one token = one fixed sequence of device ops, a CUDA graph replay on CUDA.

``LoopState`` holds a generation's whole state in static device buffers updated in place: the sequences [rows,
capacity], the current length, max_length, the prompt length and the position base as device scalars, a
running flag, the seen-id mask of the repetition penalty, the beam scores and the beam scorer's hypotheses, the
next tokens, their mel position and the logits. ``tick`` is one iteration of the official loop:

    rows = 1:  scores = processors(logits); token = argmax | draw(softmax); append; stop at eos or max_length
    beams:     scores = processors(log_softmax(logits)) + beam scores; beam step (candidates, hypotheses, done);
               reorder the sequences, the seen mask and the KV cache's row table; append; stop when done or at
               max_length
    then:      the model step on the new tokens (embedding at their mel position, 24 blocks, the head): the next
               logits; the cache advances only while running

Every update is gated by the running flag, so a tick after the stop changes nothing (its model step rewrites
the slot past the last token, which nothing reads). That is what lets the host read the flag only every
``CHECK_EVERY`` ticks. With sampling an extra tick still draws random numbers, which would shift the stream that
later draws (s2mel's noise) read; so before each tick the host keeps the generator's state (host values: a CUDA
generator's seed and offset, which a graph replay advances on the host), and after the stop it puts back the
state from before the first extra tick: the generator ends where the official loop leaves it, one draw per
generated token.

On CUDA (``graphs=True``) the first tick of a state runs eagerly (it compiles every kernel), the second is
captured and every later tick, of this and of later generations with the same generation arguments, replays the
graph: the state is reset in place, so its addresses never change. Custom logits processors (which read the
sequences at their current, growing length) run eagerly, ticking with the host's length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional

import torch

from .._graphs import capture
from ..profiling import nvtx_range
from .sampling import BeamScorer, GenerationArgs, draw, process_scores

__all__ = ["LoopState", "CHECK_EVERY", "device_generator", "position_error", "state_key"]

CHECK_EVERY = 8  # ticks between two reads of the stop flag


def position_error(pos: int, rows: int) -> IndexError:
    """What the official generate's failure at a mel position beyond the table becomes here."""
    return IndexError(f"mel position {pos} is beyond the mel position table ({rows} rows): max_length is too large")


def device_generator(device: torch.device) -> Optional[torch.Generator]:
    """The generator ``exponential_`` draws from on ``device`` without an explicit one (None: unknown kind)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return None


Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens, pos [1], active) -> logits


def state_key(args: GenerationArgs, vocab: int) -> tuple:
    """What a state (and its captured graph) is built for: the arguments baked into its ops; max_length is data."""
    return dataclasses.replace(args, max_length=0), int(vocab)


class LoopState:
    def __init__(self, args: GenerationArgs, capacity: int, vocab: int, device, *, pos_limit: int):
        K = args.num_beams
        self.args, self.K, self.L, self.V, self.pos_limit = args, K, int(capacity), int(vocab), int(pos_limit)
        dev = torch.device(device)
        i64 = dict(dtype=torch.int64, device=dev)
        self.ids = torch.full((K, self.L), args.pad_token_id, **i64)
        self.cur, self.max_length, self.prompt_len, self.pos_base = (torch.zeros((), **i64) for _ in range(4))
        self.running = torch.zeros((), dtype=torch.bool, device=dev)
        self.overflow = torch.zeros((), dtype=torch.bool, device=dev)  # a running step's position beyond the table
        self.valid = torch.ones((), dtype=torch.bool, device=dev)  # every draw's probabilities were valid
        self.tokens = torch.zeros((K,), **i64)
        self.pos = torch.zeros((1,), **i64)
        self.logits = torch.zeros((K, self.V), dtype=torch.float32, device=dev)
        self.seen = torch.zeros((K, self.V), dtype=torch.bool, device=dev) if args.repetition_penalty != 1.0 else None
        self.beam_scores = torch.zeros((K,), dtype=torch.float32, device=dev) if K > 1 else None
        self.scorer = BeamScorer(args, self.L, dev) if K > 1 else None
        self._rows = torch.arange(K, device=dev)
        self._P = self._max_length = 0  # the host's copies of this generation's prompt length and max_length
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.warm = False  # one eager tick has run (the kernels are compiled)
        self.capture_s: Optional[float] = None
        self.replays = 0
        self.ticks = 0  # ticks the last run executed (with the no-op ones after the stop)

    # --- per generation (eager, outside any graph) -------------------------------------------------------------
    def reset(self, input_ids: torch.Tensor, logits: torch.Tensor, *, prefix_len: int, max_length: int,
              position_offset: int = 0) -> None:  # fmt: skip
        """A new generation from ``input_ids`` [1, P] whose last position gave ``logits`` [1, V] (fp32)."""
        K, P = self.K, input_ids.shape[1]
        if P > self.L or max_length > self.L:
            raise ValueError(f"decode loop: max_length {max(P, max_length)} exceeds the state's {self.L} positions")
        self._P, self._max_length = P, int(max_length)
        ids = input_ids.to(self.ids.device)
        self.ids.fill_(self.args.pad_token_id)
        self.ids[:, :P] = ids
        self.cur.fill_(P)
        self.max_length.fill_(int(max_length))
        self.prompt_len.fill_(P)
        self.pos_base.fill_(int(prefix_len) - int(position_offset))
        self.running.fill_(P < max_length)
        self.overflow.zero_()
        self.valid.fill_(True)
        self.logits.copy_(logits.expand(K, self.V))
        if self.seen is not None:
            self.seen.zero_()
            self.seen.scatter_(1, ids.expand(K, P), True)
        if K > 1:
            self.beam_scores.zero_()
            self.beam_scores[1:] = -1e9  # only the first (identical) beam's candidates count at the first step
            self.scorer.reset()

    # --- one token (device ops only: no host sync, no growing shape) -------------------------------------------
    def _append(self, ids: torch.Tensor, tokens: torch.Tensor, run: torch.Tensor) -> None:
        idx = self.cur.clamp(max=self.L - 1).view(1, 1).expand(self.K, 1)
        ids.scatter_(1, idx, torch.where(run, tokens[:, None], ids.gather(1, idx)))
        if self.seen is not None:
            t = tokens[:, None]
            self.seen.scatter_(1, t, self.seen.gather(1, t) | run)

    def _feed(self, tokens: torch.Tensor, still: torch.Tensor, step: Step) -> None:
        pos = self.cur - self.pos_base  # the official cur_len - prefix_len (+ offset)
        over = still & (pos >= self.pos_limit)  # the official step would fail here: stop, and raise on the host
        self.overflow.copy_(self.overflow | over)
        live = still & ~over
        self.running.copy_(live)
        self.pos.copy_(pos.clamp(0, self.pos_limit - 1).view(1))
        self.tokens.copy_(tokens)
        self.logits.copy_(step(self.tokens, self.pos, live))

    def tick(self, step: Step, reorder=None, record: Optional[list] = None, input_ids=None) -> None:
        # ``run`` is the state's flag itself: read before the tick rewrites it (running.copy_ at the end)
        args, K, run = self.args, self.K, self.running
        if K == 1:
            scores = process_scores(args, self.seen, self.logits, input_ids)
            if args.do_sample:
                tok, ok = draw(torch.softmax(scores, dim=-1), 1)
                tok = tok.squeeze(1)
                self.valid.copy_(self.valid & (ok | ~run))
            else:
                tok = torch.argmax(scores, dim=-1)
            if record is not None:  # copies: without processors ``scores`` is the logits buffer the next tick rewrites
                record.append((scores.clone(), tok.clone(), torch.zeros_like(tok)))
            self._append(self.ids, tok, run)
            self.cur.add_(run.to(torch.int64))
            still = run & (self.cur < self.max_length) & (tok[0] != args.eos_token_id)
            self.running.copy_(still)
            self._feed(tok, still, step)
            return
        processed = process_scores(args, self.seen, torch.log_softmax(self.logits, dim=-1), input_ids)
        scores = processed + self.beam_scores[:, None]
        sc = self.scorer
        nscores, ntok, nrows, ok = sc.step(scores.view(1, -1), self.ids, self.cur, self.prompt_len, self.max_length,
                                           run)  # fmt: skip
        self.valid.copy_(self.valid & (ok | ~run))
        rows = torch.where(run, nrows, self._rows)
        if record is not None:
            record.append((processed.clone(), ntok.clone(), rows.clone()))
        self.ids.copy_(self.ids.index_select(0, rows))
        if self.seen is not None:
            self.seen.copy_(self.seen.index_select(0, rows))
        self._append(self.ids, ntok, run)
        self.beam_scores.copy_(torch.where(run, nscores, self.beam_scores))
        self.cur.add_(run.to(torch.int64))
        if reorder is not None:
            reorder(rows)
        still = run & (self.cur < self.max_length) & ~sc.done
        self.running.copy_(still)
        self._feed(ntok, still, step)

    # --- the host loop ---------------------------------------------------------------------------------------------
    def _graph_tick(self, step: Step, reorder) -> None:
        if self.graph is None and not self.warm:
            self.tick(step, reorder)  # eager: compiles every kernel before the capture
            self.warm = True
            return
        if self.graph is None:
            self.graph, _, self.capture_s = capture(lambda: self.tick(step, reorder), self.ids.device)
        self.graph.replay()  # the capture executed nothing: this replay is the tick
        self.replays += 1

    def run(self, step: Step, reorder=None, *, graphs: bool = False, record: Optional[list] = None) -> torch.Tensor:
        """Tick until the stop; the sequences [1, L] as the official generate returns them."""
        args, P, maxlen = self.args, self._P, self._max_length
        if P >= maxlen:  # nothing to generate: the official loop does not run
            return self.ids[:1, :P].clone()
        custom = bool(args.custom_processors)
        gen = device_generator(self.ids.device) if args.do_sample else None
        every = 1 if (custom or record is not None or (args.do_sample and gen is None)) else CHECK_EVERY
        states = [None] * every if gen is not None and every > 1 else None  # the generator before the last ticks
        ticks = 0
        with nvtx_range("gpt.decode"):
            while True:
                if states is not None:
                    states[ticks % every] = gen.get_state()
                if graphs and not custom and record is None:
                    self._graph_tick(step, reorder)
                else:
                    self.tick(step, reorder, record, self.ids[:, : P + ticks] if custom else None)
                ticks += 1
                if (ticks % every == 0 or P + ticks >= maxlen) and not bool(self.running):
                    break
        self.ticks = ticks
        cur = int(self.cur)
        drawn = cur - P  # the official loop draws once per generated token; the ticks after that drew for nothing
        if states is not None and drawn < ticks:
            gen.set_state(states[drawn % every])
        if bool(self.overflow):
            raise position_error(self.pos_limit, self.pos_limit)
        if not bool(self.valid):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if self.K == 1:
            return self.ids[:1, :cur].clone()
        return self.scorer.finalize(self.beam_scores, self.ids, cur, P, maxlen)
