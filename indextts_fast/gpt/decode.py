"""The GPT decode loop: one batch-1 prompt prefill, then one tick per code, with the official sampling.

Replaces Hugging Face ``generate`` inside ``UnifiedVoice.inference_speech`` (greedy, multinomial sampling, beam
search, beam sampling; ``sampling.py`` has the exact semantics). Three things, one name each:

    Decoder      one KV cache of ``rows`` rows (1, or the beam count) and the model step of one token, plus the
                 decode states built on it; ``Decoder.generate`` is the whole token path (below)
    DecodeState  one generation's state as static device buffers updated in place (the sequences, the current
                 length, the running flag, the repetition penalty's seen-id mask, the beam scores and hypotheses,
                 the next tokens and their logits) and ``tick``: one iteration of the official loop on them
    generate     the function the enable() patch calls: a decoder that fits (reused, or a new one), then its run

The prompt is prefilled once, into physical row 0 of the static KV cache, and every beam reads it through the row
table (the official prefill runs ``num_beams`` identical rows); beams are reordered by permuting that table.
Mel positions follow the official repository's default path (``GPT2InferenceModel.forward`` with its KV cache):
the prompt's tokens after the conditioning prefix (the start token, any ``input_tokens``) get mel positions 0, 1,
...; a token fed when the sequence is ``cur`` long gets ``cur - prefix_len``: code k at k + 2. Without a KV cache
(``kv_cache=False``, and the transformers-5 refactor, whose generate hands its cache over under another name) the
official recomputes the whole sequence each step and code k gets k + 1: ``position_offset=-1``.

Per tick, on the device only: the processors, the draw or the beam step, the append, the stop condition, then the
model step on the new tokens (embedding at their mel position, the blocks, the head); every update is gated by
the running flag, so a tick after the stop changes nothing (its model step rewrites the cache slot past the last
token, which nothing reads). That is what lets the host read the flag only every ``CHECK_EVERY`` ticks, and what
makes the tick one CUDA graph replay on CUDA (``_graphs.Graphed``: first tick eager, second captured). Around the
model step a tick is two launches (``ops.logits_process``, then ``ops.decode_select``: the choice, the beam step and
its hypotheses, the row reorders of the sequences, the seen mask and the KV cache's table and lengths, the append,
the stop condition, the next tokens' embedding) with the official draw's ``exponential_`` between them (greedy: one
launch), plus the copy of the new logits: 3 graph nodes (greedy 2) besides the model's. The cache lengths of a
step advance at the next tick's select (``pending``). With
sampling an extra tick still draws random numbers, which would shift the stream later draws (s2mel's noise) read:
the host keeps the generator's state before each tick (host values: a CUDA generator's seed and offset, which a
replay advances on the host) and after the stop puts back the one from before the first extra tick, so the
generator ends where the official loop leaves it. Custom logits processors (typical sampling) read the sequences
at their growing length: those ticks run eagerly, and the flag is read after each.

Memory: a decoder's cache holds at most the prompt plus the mel position table's positions (the official
generate cannot go further: it raises at the table's end), rounded up to ``CAPACITY_STEP`` so that sentences of
similar lengths share one decoder; a decoder keeps at most ``MAX_STATES`` decode states (each with its graph, all
in one memory pool), least recently used dropped.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Optional

import torch

from indextts_kernels.reference import SAMPLING_MAX_ROWS, SAMPLING_MAX_VOCAB, SelectConfig

from .. import ops
from .._graphs import Graphed, MemoryPool, graphs_wanted
from ..profiling import nvtx_range
from .cache import KVCache
from .model import FastGPT
from .sampling import BeamScorer, GenerationArgs, draw, process_config, process_scores

__all__ = ["Decoder", "DecodeState", "generate", "CHECK_EVERY", "CAPACITY_STEP", "MAX_STATES", "position_error"]

CHECK_EVERY = 8  # ticks between two reads of the stop flag
CAPACITY_STEP = 256  # positions: a decoder's KV cache and sequences are sized in multiples of this
MAX_STATES = 4  # decode states (sets of generation arguments, one CUDA graph each) a decoder keeps


def position_error(pos: int, rows: int) -> IndexError:
    """What the official generate's failure at a mel position beyond the table becomes here."""
    return IndexError(f"mel position {pos} is beyond the mel position table ({rows} rows): max_length is too large")


def _device_generator(device: torch.device) -> Optional[torch.Generator]:
    """The generator ``exponential_`` draws from on ``device`` without an explicit one (None: unknown kind)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return None


def needed_positions(fast: FastGPT, prompt_len: int, max_length: int) -> int:
    """Cache positions a generation can use: max_length, but never past the mel position table's end (the prompt
    plus the table, with a slot for the no-op ticks' writes)."""
    return min(max(int(max_length), prompt_len), prompt_len + fast.w.mel_pos.shape[0] + 1)


class DecodeState:
    def __init__(self, args: GenerationArgs, capacity: int, vocab: int, device, *, pos_limit: int,
                 decoder: Optional[Decoder] = None):  # fmt: skip
        K = args.num_beams
        self.args, self.K, self.L, self.V, self.pos_limit = args, K, int(capacity), int(vocab), int(pos_limit)
        dev = torch.device(device)
        i64, b = dict(dtype=torch.int64, device=dev), dict(dtype=torch.bool, device=dev)
        self.ids = torch.full((K, self.L), args.pad_token_id, **i64)
        self.cur, self.max_length, self.prompt_len, self.pos_base = (torch.zeros((), **i64) for _ in range(4))
        self.running = torch.zeros((), **b)
        self.overflow = torch.zeros((), **b)  # a running step's position was beyond the table
        self.valid = torch.ones((), **b)  # every draw's probabilities were valid
        self.tokens, self.pos = torch.zeros((K,), **i64), torch.zeros((1,), **i64)
        self.logits = torch.zeros((K, self.V), dtype=torch.float32, device=dev)
        self.seen = torch.zeros((K, self.V), **b) if args.repetition_penalty != 1.0 else None
        self.beam_scores = torch.zeros((K,), dtype=torch.float32, device=dev) if K > 1 else None
        self.scorer = BeamScorer(args, self.L, dev) if K > 1 else None
        self._rows = torch.arange(K, device=dev)
        self.prompt_host = self.max_length_host = 0  # the host's copies for this generation
        self.tick_graph: Optional[Graphed] = None  # the Decoder's graphed tick of this state
        self.generator: Optional[torch.Generator] = None  # the draw's generator (None: the device's default)
        self.ticks = 0  # ticks the last generation executed (with the no-op ones after the stop)
        # the fused tick (a decoder's state without custom processors, at sizes the kernels take): two sampling
        # launches around the draw
        fits = K <= SAMPLING_MAX_ROWS and self.V <= SAMPLING_MAX_VOCAB
        self.decoder = decoder if decoder is not None and not args.custom_processors and fits else None
        if self.decoder is not None:
            fast = self.decoder.fast
            self.pending = torch.zeros((), dtype=torch.int32, device=dev)  # the last step's cache length advance
            self.emb = torch.zeros((K, 1, fast.width), dtype=fast.stream_dtype, device=dev)  # the next tokens' input
            self.process_cfg = process_config(args, log_softmax=K > 1)
            self.select_cfg = SelectConfig(num_beams=K, do_sample=args.do_sample, eos=args.eos_token_id,
                                           pos_limit=self.pos_limit, early_stopping=args.early_stopping,
                                           length_penalty=args.length_penalty)  # fmt: skip

    def reset(self, input_ids: torch.Tensor, logits: torch.Tensor, *, prefix_len: int, max_length: int,
              position_offset: int = 0) -> None:  # fmt: skip
        """A new generation from ``input_ids`` [1, P] whose last position gave ``logits`` [1, V] (fp32)."""
        K, P = self.K, input_ids.shape[1]
        if P > self.L:
            raise ValueError(f"decode state: a prompt of {P} positions in a state of {self.L}")
        self.prompt_host, self.max_length_host = P, int(max_length)
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
        if self.decoder is not None:
            self.pending.zero_()
        self.logits.copy_(logits.expand(K, self.V))
        if self.seen is not None:
            self.seen.zero_()
            self.seen.scatter_(1, ids.expand(K, P), True)
        if K > 1:
            self.beam_scores.zero_()
            self.beam_scores[1:] = -1e9  # only the first (identical) beam's candidates count at the first step
            self.scorer.reset(P, int(max_length))

    # --- one token: device ops only (no host sync, no growing shape) ------------------------------------------
    def _append(self, tokens: torch.Tensor, run: torch.Tensor) -> None:
        idx = self.cur.clamp(max=self.L - 1).view(1, 1).expand(self.K, 1)
        self.ids.scatter_(1, idx, torch.where(run, tokens[:, None], self.ids.gather(1, idx)))
        if self.seen is not None:
            t = tokens[:, None]
            self.seen.scatter_(1, t, self.seen.gather(1, t) | run)
        self.cur.add_(run.to(torch.int64))

    def _feed(self, tokens: torch.Tensor, still: torch.Tensor, step) -> None:
        pos = self.cur - self.pos_base  # the official cur_len - prefix_len (+ offset)
        over = still & (pos >= self.pos_limit)  # the official step would fail here: stop, and raise on the host
        self.overflow.copy_(self.overflow | over)
        live = still & ~over
        self.running.copy_(live)
        self.pos.copy_(pos.clamp(0, self.pos_limit - 1).view(1))
        self.tokens.copy_(tokens)
        self.logits.copy_(step(self.tokens, self.pos, live))

    def _select_state(self) -> dict:
        """The tensors the fused select updates in place (``indextts_kernels.reference.decode_select_ref``)."""
        cache, w = self.decoder.cache, self.decoder.fast.w
        t = dict(ids=self.ids, cur=self.cur, max_length=self.max_length, prompt_len=self.prompt_len,
                 pos_base=self.pos_base, running=self.running, overflow=self.overflow, valid=self.valid,
                 tokens=self.tokens, pos=self.pos, seen=self.seen, lengths=cache.lengths, table=cache.table,
                 pending=self.pending, emb=self.emb, tok_emb=w.mel_embedding, pos_emb=w.mel_pos)  # fmt: skip
        if self.K > 1:
            sc = self.scorer
            t.update(beam_scores=self.beam_scores, hyp_scores=sc.hyp_scores, hyp_seq=sc.hyp_seq, hyp_len=sc.hyp_len,
                     hyp_ids=sc.hyp_ids, count=sc.count, inserted=sc.inserted, done=sc.done, powers=sc.powers,
                     never_power=sc.never_power)  # fmt: skip
        return t

    def _tick_fused(self) -> None:
        """The tick as two launches around the draw (greedy: one), then the model step on the embedded tokens:
        the processors (``ops.logits_process``), the official draw's random numbers (the same torch call on the
        same shape: ``exponential_`` on [1, rows * V]), the choice with everything after it (``ops.decode_select``:
        argmax or the exponential race, the beam step and its hypotheses, the row reorders of the sequences, the
        seen mask and the KV cache's table and lengths, the append, the stop condition, the next embedding, the
        previous step's cache length advance)."""
        self.select()
        self.logits.copy_(self.decoder.step_emb(self.emb))

    def select(self) -> None:
        """The fused tick without its model step: the processors, the draw, the choice and everything after it,
        up to the next tokens' embedding in ``emb``."""
        t, K, V = self._select_state(), self.K, self.V
        if K == 1 and not self.args.do_sample:
            ops.decode_select(self.logits, None, t, self.select_cfg, self.process_cfg)
        else:
            scores = ops.logits_process(self.logits, self.process_cfg, self.seen, self.cur, self.prompt_len,
                                        self.beam_scores)  # fmt: skip
            noise = None
            if self.args.do_sample:  # torch.multinomial's draw on probs [1, rows * V]: the official stream
                noise = torch.empty((1, K * V), dtype=torch.float32, device=scores.device)
                noise.exponential_(1, generator=self.generator)
            ops.decode_select(scores, noise, t, self.select_cfg)

    def tick(self, step, reorder=None, input_ids: Optional[torch.Tensor] = None) -> None:
        """One iteration of the official loop, then ``step(tokens, pos, live) -> logits`` on its tokens.
        ``reorder(rows)`` follows every beam reorder; ``input_ids`` (the sequences at the current length) is read
        by custom processors only. A decoder's state without custom processors runs the fused tick instead (its
        own model step; ``step`` and ``reorder`` unused)."""
        if self.decoder is not None:
            return self._tick_fused()
        args, run = self.args, self.running  # the flag itself: read before the tick rewrites it
        if self.K == 1:
            scores = process_scores(args, self.seen, self.logits, input_ids, self.cur, self.prompt_len)
            if args.do_sample:
                tok, ok = draw(torch.softmax(scores, dim=-1), 1)
                tok = tok.squeeze(1)
                self.valid.copy_(self.valid & (ok | ~run))
            else:
                tok = torch.argmax(scores, dim=-1)
            self._append(tok, run)
            self._feed(tok, run & (self.cur < self.max_length) & (tok[0] != args.eos_token_id), step)
            return
        scores = process_scores(args, self.seen, torch.log_softmax(self.logits, dim=-1), input_ids, self.cur,
                                self.prompt_len)  # fmt: skip
        scores = scores + self.beam_scores[:, None]
        sc = self.scorer
        nscores, ntok, nrows, ok = sc.step(scores.view(1, -1), self.ids, self.cur, self.prompt_len, run)
        self.valid.copy_(self.valid & (ok | ~run))
        rows = torch.where(run, nrows, self._rows)
        self.ids.copy_(self.ids.index_select(0, rows))
        if self.seen is not None:
            self.seen.copy_(self.seen.index_select(0, rows))
        self.beam_scores.copy_(torch.where(run, nscores, self.beam_scores))
        self._append(ntok, run)
        if reorder is not None:
            reorder(rows)
        self._feed(ntok, run & (self.cur < self.max_length) & ~sc.done, step)

    # --- after the stop (host) ---------------------------------------------------------------------------------
    def finish(self, gen: Optional[torch.Generator], saved: Optional[list]) -> torch.Tensor:
        """The sequences [1, L] as the official generate returns them; the generator put back where the official
        loop leaves it (``saved``: its states before the last ticks); the official errors raised."""
        P, cur = self.prompt_host, int(self.cur)
        drawn = cur - P  # the official loop draws once per generated token; later ticks drew for nothing
        if saved is not None and drawn < self.ticks:
            gen.set_state(saved[drawn % len(saved)])
        if bool(self.overflow):
            raise position_error(self.pos_limit, self.pos_limit)
        if not bool(self.valid):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if self.K == 1:
            return self.ids[:1, :cur].clone()
        return self.scorer.finalize(self.beam_scores, self.ids, cur, P, self.max_length_host)


class Decoder:
    """The KV cache of ``rows`` rows and ``capacity`` positions, the model step of one token, and the decode states
    (with their CUDA graphs on CUDA) of the generation arguments it has run."""

    def __init__(self, fast: FastGPT, rows: int, capacity: int, *, graphs: Optional[bool] = None):
        self.fast, self.rows, self.capacity = fast, int(rows), int(capacity)
        self.cache = KVCache(fast.n_layers, self.rows, fast.n_heads, self.capacity, fast.head_dim, fast.dtype,
                             fast.device)  # fmt: skip
        self.graphs = graphs_wanted(graphs, fast.device)
        self.states: OrderedDict = OrderedDict()  # state key -> DecodeState, least recently used first
        self.pool = MemoryPool()  # the states' graphs share it: one state replays at a time

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [rows, V] (fp32) of ``tokens`` [rows] at mel position ``pos`` [1] (device tensors), appended to
        the cache, whose lengths advance where ``live`` (a device bool; None: always)."""
        fast, cache = self.fast, self.cache
        logits = fast.logits(fast.decode(fast.embed_mel(tokens[:, None], pos), cache)[:, 0])
        cache.lengths += 1 if live is None else live.to(torch.int32)
        return logits

    def step_emb(self, emb: torch.Tensor) -> torch.Tensor:
        """The head's logits [rows, V] (the weights' dtype; the caller's copy casts) of the embedded tokens
        ``emb`` [rows, 1, C] (the stream), appended to the cache at ``cache.lengths``, which the caller advances."""
        fast = self.fast
        return fast.logits(fast.decode(emb, self.cache)[:, 0], fp32=False)

    def state(self, args: GenerationArgs, vocab: int) -> DecodeState:
        """The decode state for ``args`` (max_length is per generation, not part of the key), built on first use."""
        key = (dataclasses.replace(args, max_length=0, use_cache=True), int(vocab))
        st = self.states.pop(key, None)
        if st is None:
            st = DecodeState(args, self.capacity, vocab, self.fast.device, pos_limit=self.fast.w.mel_pos.shape[0],
                             decoder=self)  # fmt: skip
            reorder = self.cache.reorder if args.num_beams > 1 else None
            st.tick_graph = Graphed(lambda: st.tick(self.step, reorder), self.fast.device,
                                    enabled=self.graphs and not args.custom_processors, pool=self.pool)  # fmt: skip
        self.states[key] = st
        while len(self.states) > MAX_STATES:
            self.states.popitem(last=False)
        return st

    def generate(self, args: GenerationArgs, input_ids: torch.Tensor, prefix_emb: torch.Tensor, *,
                 position_offset: int = 0) -> torch.Tensor:  # fmt: skip
        """The token path. ``input_ids`` [1, P] (the official fake ids, then the start token and any given
        tokens), ``prefix_emb`` [1, prefix_len, C] (the conditioning + text embeddings ``inference_speech``
        stores). Returns the sequences [1, L] including the prompt, as the official generate."""
        fast, cache, dev = self.fast, self.cache, self.fast.device
        prefix_len, P = prefix_emb.shape[1], input_ids.shape[1]
        if P >= args.max_length:  # the official generate raises here too (resolve_generation_args words it)
            raise ValueError(f"decode: a prompt of {P} positions and max_length {args.max_length}: nothing to generate")
        input_ids = input_ids.to(dev)
        tail = input_ids[:, prefix_len:]  # the start token and any given tokens: mel positions 0, 1, ...
        if tail.shape[1] > fast.w.mel_pos.shape[0]:
            raise position_error(tail.shape[1] - 1, fast.w.mel_pos.shape[0])
        cache.reset()
        with nvtx_range("gpt.prefill"):
            emb = torch.cat([fast.to_stream(prefix_emb.to(dev)),
                             fast.embed_mel(tail, torch.arange(tail.shape[1], device=dev))], dim=1)  # fmt: skip
            h = fast.prefill(emb, cache)  # physical row 0
            cache.share_prompt(P)
            logits = fast.logits(h[:, -1])
        st = self.state(args, logits.shape[-1])
        st.reset(input_ids, logits, prefix_len=prefix_len, max_length=args.max_length, position_offset=position_offset)
        custom = bool(args.custom_processors)
        gen = _device_generator(dev) if args.do_sample else None
        every = 1 if custom or (args.do_sample and gen is None) else CHECK_EVERY
        saved = [None] * every if gen is not None and every > 1 else None  # the generator before the last ticks
        ticks = 0
        with nvtx_range("gpt.decode"):
            while True:
                if saved is not None:
                    saved[ticks % every] = gen.get_state()
                if custom:
                    st.tick(self.step, cache.reorder if self.rows > 1 else None, st.ids[:, : P + ticks])
                else:
                    st.tick_graph()
                ticks += 1
                if (ticks % every == 0 or P + ticks >= args.max_length) and not bool(st.running):
                    break
        st.ticks = ticks
        return st.finish(gen, saved)


def generate(fast: FastGPT, args: GenerationArgs, input_ids: torch.Tensor, prefix_emb: torch.Tensor,
             decoder: Optional[Decoder] = None, *, position_offset: int = 0,
             graphs: Optional[bool] = None) -> tuple[torch.Tensor, Decoder]:  # fmt: skip
    """Generate from one prompt on ``decoder`` when it fits (its cache, its states and their graphs reused), else on
    a new one sized in ``CAPACITY_STEP`` multiples. Returns (sequences [1, L], the decoder that ran them)."""
    need = needed_positions(fast, input_ids.shape[1], args.max_length)
    fits = (decoder is not None and decoder.fast is fast and decoder.rows == args.num_beams
            and decoder.capacity >= need and decoder.graphs == graphs_wanted(graphs, fast.device))  # fmt: skip
    if not fits:
        decoder = None  # the old cache is freed before the new one is allocated
        decoder = Decoder(fast, args.num_beams, -(-need // CAPACITY_STEP) * CAPACITY_STEP, graphs=graphs)
    return decoder.generate(args, input_ids, prefix_emb, position_offset=position_offset), decoder
