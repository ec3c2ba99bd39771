"""Decode-loop sampling kernels: the logits processors, and one token's choice with all the loop state around it.

Two kernels, one launcher each; constexpr flags select what runs:
    _logits_process_kernel  one program per row: log_softmax (beam methods), the repetition penalty over a seen-id
                            mask, the minimum lengths (the stop id's score -inf while short), temperature, top-k,
                            top-p with min_keep, the beam scores added. Writes the processed scores.
    _decode_select_kernel   one program: the softmax of the scores (flattened over the rows under beams), the
                            choice (argmax; the exponential race ``argmax / top-n of probs / noise`` that
                            ``torch.multinomial`` runs, on the caller's Exp(1) noise; the beam step's 2K candidates,
                            sorted), the draw's validity, the beam scorer's hypotheses (fp64) and its finishing rule,
                            the rows reordered (sequences, seen mask, the KV cache's row table and lengths, beam
                            scores), the append, the stop condition, the next position and the next tokens'
                            embedding. With PROCESS (one row, no noise: greedy) it runs the processors itself.
The random numbers stay the caller's torch call (``torch.empty_like(probs).exponential_(1)``), so the stream is
the official one; everything around that call is these two launches (greedy: one).

Math (per row of V scores, fp32 as the official processors; hypothesis scores fp64 as its Python floats):
    log_softmax   (x - max) - log(sum exp(x - max))
    penalty       seen: x < 0 ? x * p : x / p
    min lengths   (cur < min_length or cur - prompt_len < min_new_tokens): x[eos] = -inf
    temperature   x / T
    top-k         x < kth -> -inf, kth the exact k-th largest value (k = max(top_k, min_keep)): a radix select
                  (8 passes of 4-bit digits) over the order-preserving key of the fp32 value (-0.0 as +0.0)
    top-p         the official sorts ascending (stable: ties by index), softmaxes, cumsums and drops the prefix
                  with cumulative <= 1 - top_p, never the last min_keep. Here: the largest key T with
                  sum(p[key < T]) <= 1 - top_p (the same radix search on the sums); drop key < T, and the ties at
                  T whose running sum (by index) stays <= 1 - top_p; the min_keep largest (key, index) are kept.
    scalar div    x / s as the official's device does it: CUDA multiplies by the fp32 reciprocal (RECIP), the
                  CPU divides.
Reductions (the softmax sums, the top-p sums) add in another order than torch: the same math, last-bit
differences.
Contract:   scores / logits [rows, V] fp32 (row stride free, last dim contiguous); bool state as uint8 views; the
            state tensors of ``reference.decode_select_ref`` (names and shapes there); rows <= 16, V <= 65536.
Matches:    indextts_kernels.reference.{logits_process_ref, decode_select_ref}
Limits:     forward only; no .item() or host sync (CUDA-graph safe). One program per row (processors) or one
            program (select) walks the rows in 1024-wide chunks (a whole 8194-wide row and its keys would not fit
            the registers); top-k and top-p cost 8 passes over the row each (the processed row stays in L1 / L2).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from ._jit import cast_to
from ._utils import check_launchable, check_tensor, is_interpreting, next_pow2, note_launch
from .reference import SAMPLING_MAX_ROWS, SAMPLING_MAX_VOCAB, ProcessConfig, SelectConfig

__all__ = ["logits_process_fwd", "decode_select_fwd", "sampling_launch_config", "SELECT_STATE"]

MAX_ROWS, MAX_VOCAB = SAMPLING_MAX_ROWS, SAMPLING_MAX_VOCAB
EARLY_FALSE, EARLY_TRUE, EARLY_NEVER = 0, 1, 2

# the state tensors of decode_select (reference.decode_select_ref): name -> (dtypes, beams only)
_I64, _I32, _U8, _F64, _F32 = (torch.int64,), (torch.int32,), (torch.bool,), (torch.float64,), (torch.float32,)
SELECT_STATE = {
    "ids": (_I64, False), "cur": (_I64, False), "max_length": (_I64, False), "prompt_len": (_I64, False),
    "pos_base": (_I64, False), "running": (_U8, False), "overflow": (_U8, False), "valid": (_U8, False),
    "tokens": (_I64, False), "pos": (_I64, False), "seen": (_U8, False), "lengths": (_I32, False),
    "table": (_I32, True), "pending": (_I32, False), "emb": (None, False), "tok_emb": (None, False),
    "pos_emb": (None, False), "beam_scores": (_F32, True), "hyp_scores": (_F64, True), "hyp_seq": (_I64, True),
    "hyp_len": (_I64, True), "hyp_ids": (_I64, True), "count": (_I64, True), "inserted": (_I64, True),
    "done": (_U8, True), "powers": (_F64, True), "never_power": (_F64, True),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# jit helpers (rows are walked in CHUNK-wide blocks: a 16384-lane row and its keys would not fit the registers)
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _key(x):
    """The order-preserving int32 key of fp32 x (-0.0 keyed as +0.0, as comparisons see it)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _div(x, s, inv_s, RECIP: tl.constexpr):
    if RECIP:
        return x * inv_s
    else:
        return tl.math.div_rn(x, s)


@triton.jit
def _elementwise(
    x, c, cm, SEEN, row, stride_seen, lse_m, lse, cur, prompt_len,
    penalty, inv_penalty, min_length, min_new, eos, temperature, inv_temperature,
    LOG_SOFTMAX: tl.constexpr, HAS_PENALTY: tl.constexpr, HAS_MIN: tl.constexpr, HAS_TEMP: tl.constexpr,
    RECIP: tl.constexpr,
):  # fmt: skip
    """The elementwise processors on the chunk x (lanes c, mask cm): log_softmax (given the row's max and log-sum),
    the repetition penalty, the minimum lengths, the temperature. Masked lanes stay -inf."""
    if LOG_SOFTMAX:
        x = (x - lse_m) - lse
    if HAS_PENALTY:
        seen = tl.load(SEEN + row * stride_seen + c, mask=cm, other=0) != 0
        x = tl.where(seen, tl.where(x < 0, x * penalty, _div(x, penalty, inv_penalty, RECIP)), x)
    if HAS_MIN:
        short = (cur < min_length) | (cur - prompt_len < min_new)
        x = tl.where(short & (c == eos), -float("inf"), x)
    if HAS_TEMP:
        x = _div(x, temperature, inv_temperature, RECIP)
    return tl.where(cm, x, -float("inf"))


@triton.jit
def _row_max_lse(X, V, CHUNK: tl.constexpr):
    """(max, log(sum(exp(x - max)))) of the row X[0:V]."""
    m = tl.max(tl.full((CHUNK,), -float("inf"), tl.float32), axis=0)
    for c0 in range(0, V, CHUNK):
        c = c0 + tl.arange(0, CHUNK)
        m = tl.maximum(m, tl.max(tl.load(X + c, mask=c < V, other=-float("inf")), axis=0))
    s = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
    for c0 in range(0, V, CHUNK):
        c = c0 + tl.arange(0, CHUNK)
        x = tl.load(X + c, mask=c < V, other=-float("inf"))
        s += tl.sum(tl.where(c < V, tl.exp(x - m), 0.0), axis=0)
    return m, tl.log(s)


@triton.jit
def _ukey(x):
    """The order-preserving key of fp32 x as an int64 in [0, 2^32) (-0.0 keyed as +0.0, as comparisons see it)."""
    return _key(x).to(tl.int64) + 2147483648


@triton.jit
def _masked(Y, c, cm, kth):
    """Chunk c of the stored row with the top-k cut (keys below kth) applied: the values top-p sees."""
    y = tl.load(Y + c, mask=cm, other=-float("inf"))
    return tl.where(cm & (_ukey(y) >= kth), y, -float("inf"))


@triton.jit
def _digits(uk, inr, shift):
    """[CHUNK, 16] one-hot of the 4-bit digit of uk at ``shift``, for the lanes in the current key range."""
    bins = tl.arange(0, 16)
    return (((uk >> shift) & 15)[:, None] == bins[None, :]) & inr[:, None]


@triton.jit
def _kth_largest_key(Y, V, kth_floor, k, CHUNK: tl.constexpr):
    """The largest T with count(key >= T) >= k over the row (after the cut at kth_floor): the key of the k-th
    largest value, exactly, by a radix select over 4-bit digits of the keys (8 passes)."""
    bins = tl.arange(0, 16)
    prefix = tl.sum(tl.zeros((CHUNK,), tl.int64), axis=0)  # the digits fixed so far
    above = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)  # lanes above the current key range
    for level in range(8):
        shift = 28 - 4 * level
        counts = tl.zeros((16,), tl.int32)
        for c0 in range(0, V, CHUNK):
            c = c0 + tl.arange(0, CHUNK)
            cm = c < V
            uk = _ukey(_masked(Y, c, cm, kth_floor))
            inr = cm & ((uk >> (shift + 4)) == (prefix >> (shift + 4)))
            counts += tl.sum(_digits(uk, inr, shift).to(tl.int32), axis=0)
        suffix = tl.sum(tl.where(bins[:, None] <= bins[None, :], counts[None, :], 0), axis=1)  # lanes in bins >= b
        b = tl.maximum(tl.max(tl.where(above + suffix >= k, bins, -1), axis=0), 0)
        above += tl.sum(tl.where(bins > b, counts, 0), axis=0)
        prefix = prefix | (b.to(tl.int64) << shift)
    return prefix


@triton.jit
def _process_row(
    X, SEEN, Y, row, stride_x, stride_seen, V, cur, prompt_len, beam_score,
    penalty, inv_penalty, min_length, min_new, eos, temperature, inv_temperature, top_k, top_p_thr, min_keep,
    LOG_SOFTMAX: tl.constexpr, HAS_PENALTY: tl.constexpr, HAS_MIN: tl.constexpr, HAS_TEMP: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_BEAM: tl.constexpr, RECIP: tl.constexpr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    """Row ``row`` of X through the processor chain into the row Y (fp32, V wide)."""
    Xr = X + row * stride_x
    lse_m = 0.0
    lse = 0.0
    if LOG_SOFTMAX:
        lse_m, lse = _row_max_lse(Xr, V, CHUNK)
    for c0 in range(0, V, CHUNK):
        c = c0 + tl.arange(0, CHUNK)
        cm = c < V
        x = tl.load(Xr + c, mask=cm, other=-float("inf")).to(tl.float32)
        x = _elementwise(x, c, cm, SEEN, row, stride_seen, lse_m, lse, cur, prompt_len, penalty, inv_penalty,
                         min_length, min_new, eos, temperature, inv_temperature, LOG_SOFTMAX, HAS_PENALTY, HAS_MIN,
                         HAS_TEMP, RECIP)  # fmt: skip
        if HAS_BEAM and not (HAS_TOP_K or HAS_TOP_P):
            x = x + beam_score
        tl.store(Y + c, x, mask=cm)
    if HAS_TOP_K or HAS_TOP_P:
        tl.debug_barrier()
        kth = tl.sum(tl.zeros((CHUNK,), tl.int64), axis=0)  # keys below it are cut (0: none)
        if HAS_TOP_K:
            kth = _kth_largest_key(Y, V, kth, top_k, CHUNK)
        T = tl.sum(tl.zeros((CHUNK,), tl.int64), axis=0)
        below = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        tk = tl.sum(tl.zeros((CHUNK,), tl.int64), axis=0) + 4294967295
        above = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        n_k = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        m = tl.max(tl.full((CHUNK,), -float("inf"), tl.float32), axis=0)
        s = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        inv_s = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        if HAS_TOP_P:
            # the softmax of the cut row (the probabilities as e * (1 / sum): no division in the passes)
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                m = tl.maximum(m, tl.max(_masked(Y, c, c < V, kth), axis=0))
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                s += tl.sum(tl.where(c < V, tl.exp(_masked(Y, c, c < V, kth) - m), 0.0), axis=0)
            inv_s = tl.math.div_rn(1.0, s)
            # T: the largest key whose strictly smaller values sum to <= 1 - top_p (a radix search: per 4-bit digit,
            # the last bin whose start still has at most 1 - top_p below it); below: that sum
            bins = tl.arange(0, 16)
            for level in range(8):
                shift = 28 - 4 * level
                w = tl.zeros((16,), tl.float32)
                for c0 in range(0, V, CHUNK):
                    c = c0 + tl.arange(0, CHUNK)
                    cm = c < V
                    y = _masked(Y, c, cm, kth)
                    uk = _ukey(y)
                    inr = cm & ((uk >> (shift + 4)) == (T >> (shift + 4)))
                    p = tl.exp(y - m) * inv_s
                    w += tl.sum(tl.where(_digits(uk, inr, shift), p[:, None], 0.0), axis=0)
                pre = below + tl.sum(tl.where(bins[None, :] < bins[:, None], w[None, :], 0.0), axis=1)  # bins < b
                b = tl.maximum(tl.max(tl.where(pre <= top_p_thr, bins, -1), axis=0), 0)
                below = tl.sum(tl.where(bins == b, pre, 0.0), axis=0)
                T = T | (b.to(tl.int64) << shift)
            # the min_keep largest (key, index) are never dropped: the last min_keep of the ascending order
            tk = _kth_largest_key(Y, V, kth, min_keep, CHUNK)
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                cm = c < V
                uk = _ukey(_masked(Y, c, cm, kth))
                above += tl.sum((cm & (uk > tk)).to(tl.int32), axis=0)
                n_k += tl.sum((cm & (uk == tk)).to(tl.int32), axis=0)
        # the cuts applied, chunk by chunk; ties ranked by index across chunks (the stable sort's order)
        seen_t = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        seen_k = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        for c0 in range(0, V, CHUNK):
            c = c0 + tl.arange(0, CHUNK)
            cm = c < V
            y = _masked(Y, c, cm, kth)
            if HAS_TOP_P:
                uk = _ukey(y)
                p = tl.exp(y - m) * inv_s
                tie = cm & (uk == T)
                tie_k = cm & (uk == tk)
                # both running tie counts (1-based, by index) in one scan: the low and high 16 bits (CHUNK < 2^16)
                both = tl.cumsum(tie.to(tl.int32) + (tie_k.to(tl.int32) << 16), axis=0)
                rank = seen_t + (both & 0xFFFF)
                rank_k = seen_k + (both >> 16)
                seen_t += tl.sum(tie.to(tl.int32), axis=0)
                seen_k += tl.sum(tie_k.to(tl.int32), axis=0)
                drop = cm & ((uk < T) | (tie & (below + rank.to(tl.float32) * p <= top_p_thr)))
                keep = cm & ((uk > tk) | (tie_k & (n_k - rank_k < min_keep - above)))
                y = tl.where(drop & ~keep, -float("inf"), y)
            if HAS_BEAM:
                y = y + beam_score
            tl.store(Y + c, y, mask=cm)


@triton.jit
def _best_update(v, c, cm, best, idx):
    """The running argmax (first index of the maximum; a NaN counts as +inf) updated with chunk v (lanes c)."""
    v = tl.where(v != v, float("inf"), v)
    mx = tl.max(tl.where(cm, v, -float("inf")), axis=0)
    i = tl.min(tl.where(cm & (v == mx), c, 2147483647), axis=0).to(tl.int64)
    better = mx > best
    return tl.where(better, mx, best), tl.where(better, i, idx)


@triton.jit
def _probs_bad(probs, cm):
    """Lanes that fail torch.multinomial's checks: inf, nan or negative."""
    return tl.sum((cm & ((probs != probs) | (probs == float("inf")) | (probs < 0))).to(tl.int32), axis=0)


@triton.jit
def _worst(hs, filled):
    """The worst kept hypothesis score (1e9 with none kept)."""
    n = tl.sum(filled.to(tl.int32), axis=0)
    w = tl.min(tl.where(filled, hs, float("inf")), axis=0)
    return tl.where(n > 0, w, 1e9)


@triton.jit
def _top_n_merge(pv, pi, cand_v, cand_i, n, BLOCK: tl.constexpr):
    """The n best of (pv, pi) and (cand_v, cand_i) (each BLOCK wide; value descending, then flat index
    ascending), as a BLOCK-wide vector (-inf / int64 max past n)."""
    lanes = tl.arange(0, BLOCK)
    out_v = tl.full((BLOCK,), -float("inf"), tl.float32)
    out_i = tl.full((BLOCK,), 9223372036854775807, tl.int64)
    for j in range(n):
        m1 = tl.max(pv, axis=0)
        m2 = tl.max(cand_v, axis=0)
        mx = tl.maximum(m1, m2)
        i1 = tl.min(tl.where(pv == mx, pi, 9223372036854775807), axis=0)
        i2 = tl.min(tl.where(cand_v == mx, cand_i, 9223372036854775807), axis=0)
        sel = tl.minimum(i1, i2)
        pv = tl.where(pi == sel, -float("inf"), pv)
        pi = tl.where(pi == sel, 9223372036854775807, pi)
        cand_v = tl.where(cand_i == sel, -float("inf"), cand_v)
        cand_i = tl.where(cand_i == sel, 9223372036854775807, cand_i)
        out_v = tl.where(lanes == j, mx, out_v)
        out_i = tl.where(lanes == j, sel, out_i)
    return out_v, out_i


@triton.jit
def _chunk_top_n(v, c, cm, base, n, BLOCK: tl.constexpr):
    """The n best lanes of chunk v (value descending, then index ascending) as (values, base + index), BLOCK wide."""
    lanes = tl.arange(0, BLOCK)
    out_v = tl.full((BLOCK,), -float("inf"), tl.float32)
    out_i = tl.full((BLOCK,), 9223372036854775807, tl.int64)
    avail = cm
    for j in range(n):
        mx = tl.max(tl.where(avail, v, -float("inf")), axis=0)
        i = tl.min(tl.where(avail & (v == mx), c, 2147483647), axis=0)
        got = i != 2147483647
        avail = avail & (c != i)
        out_v = tl.where((lanes == j) & got, mx, out_v)
        out_i = tl.where((lanes == j) & got, base + i, out_i)
    return out_v, out_i


# ----------------------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["penalty", "inv_penalty", "min_length", "min_new", "eos", "temperature",
                               "inv_temperature", "top_k", "top_p_thr", "min_keep"])  # fmt: skip
def _logits_process_kernel(
    X,  # pointer to logits [rows, V] fp32
    SEEN,  # pointer to the seen-id mask [rows, V] uint8 (HAS_PENALTY)
    CUR,  # pointer to the sequences' length, int64 [] (HAS_MIN)
    PROMPT_LEN,  # pointer to the prompt's length, int64 [] (HAS_MIN)
    BEAM_SCORES,  # pointer to the beam scores [rows] fp32 (HAS_BEAM)
    OUT,  # pointer to the processed scores [rows, V] fp32
    stride_x, stride_seen, stride_out, V,
    penalty, inv_penalty, min_length, min_new, eos, temperature, inv_temperature, top_k, top_p_thr, min_keep,
    LOG_SOFTMAX: tl.constexpr, HAS_PENALTY: tl.constexpr, HAS_MIN: tl.constexpr, HAS_TEMP: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_BEAM: tl.constexpr, RECIP: tl.constexpr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cur = 0
    prompt_len = 0
    if HAS_MIN:
        cur = tl.load(CUR)
        prompt_len = tl.load(PROMPT_LEN)
    beam_score = 0.0
    if HAS_BEAM:
        beam_score = tl.load(BEAM_SCORES + row)
    _process_row(
        X, SEEN, OUT + row * stride_out, row, stride_x, stride_seen, V, cur, prompt_len, beam_score,
        penalty, inv_penalty, min_length, min_new, eos, temperature, inv_temperature, top_k, top_p_thr, min_keep,
        LOG_SOFTMAX, HAS_PENALTY, HAS_MIN, HAS_TEMP, HAS_TOP_K, HAS_TOP_P, HAS_BEAM, RECIP, CHUNK,
    )  # fmt: skip


@triton.jit
def _embed_row(EMB, TOK_EMB, POS_EMB, row, tok, pos, stride_emb, stride_te, stride_pe, C, BLOCK_C: tl.constexpr):
    """emb[row] = (tok_emb[tok] + pos_emb[pos]) rounded to the tables' dtype, stored as the stream dtype."""
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        e = tl.load(TOK_EMB + tok * stride_te + c, mask=cm, other=0.0).to(tl.float32)
        p = tl.load(POS_EMB + pos * stride_pe + c, mask=cm, other=0.0).to(tl.float32)
        y = cast_to(e + p, TOK_EMB.dtype.element_ty).to(tl.float32)
        tl.store(EMB + row * stride_emb + c, cast_to(y, EMB.dtype.element_ty), mask=cm)


@triton.jit(do_not_specialize=["K", "V", "L", "S", "C", "eos", "pos_limit", "penalty", "inv_penalty", "min_length",
                               "min_new", "p_eos", "temperature", "inv_temperature", "top_k", "top_p_thr",
                               "min_keep"])  # fmt: skip
def _decode_select_kernel(
    X,  # pointer to the scores [rows, V] fp32 (PROCESS: the raw logits)
    NOISE,  # pointer to the Exp(1) noise [rows * V] fp32, contiguous (SAMPLE)
    IDS, CUR, MAX_LENGTH, PROMPT_LEN, POS_BASE, RUNNING, OVERFLOW, VALID, TOKENS, POS, SEEN, LENGTHS, TABLE,
    PENDING, EMB, TOK_EMB, POS_EMB,
    BEAM_SCORES, HYP_SCORES, HYP_SEQ, HYP_LEN, HYP_IDS, COUNT, INSERTED, DONE, POWERS, NEVER_POWER,
    stride_x, stride_ids, stride_seen, stride_table, stride_hyp, stride_emb, stride_te, stride_pe,
    K, V, L, S, C, eos, pos_limit,
    penalty, inv_penalty, min_length, min_new, p_eos, temperature, inv_temperature, top_k, top_p_thr, min_keep,
    PROCESS: tl.constexpr, HAS_PENALTY: tl.constexpr, HAS_MIN: tl.constexpr, HAS_TEMP: tl.constexpr,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, RECIP: tl.constexpr,
    SAMPLE: tl.constexpr, BEAM: tl.constexpr, HAS_SEEN: tl.constexpr, EARLY: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    run = tl.load(RUNNING) != 0
    cur = tl.load(CUR)
    slots = tl.arange(0, BLOCK_R)  # rows / hypothesis slots
    slot_ok = slots < K
    pending = tl.load(PENDING)
    if SAMPLE:
        # the softmax over all rows' scores (flattened: the beam-sample's [1, rows * V]; one row otherwise)
        m = tl.max(tl.full((CHUNK,), -float("inf"), tl.float32), axis=0)
        for r in range(K):
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                m = tl.maximum(m, tl.max(tl.load(X + r * stride_x + c, mask=c < V, other=-float("inf")), axis=0))
        tot = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        for r in range(K):
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                x = tl.load(X + r * stride_x + c, mask=c < V, other=-float("inf"))
                tot += tl.sum(tl.where(c < V, tl.exp(x - m), 0.0), axis=0)
    if not BEAM:
        # ---- one row: argmax, or the exponential race -------------------------------------------------------------
        best = tl.max(tl.full((CHUNK,), -float("inf"), tl.float32), axis=0)
        tok = tl.sum(tl.zeros((CHUNK,), tl.int64), axis=0)
        bad = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        psum = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        for c0 in range(0, V, CHUNK):
            c = c0 + tl.arange(0, CHUNK)
            cm = c < V
            x = tl.load(X + c, mask=cm, other=-float("inf"))
            if PROCESS:
                x = _elementwise(x, c, cm, SEEN, 0, stride_seen, 0.0, 0.0, cur, tl.load(PROMPT_LEN), penalty,
                                 inv_penalty, min_length, min_new, p_eos, temperature, inv_temperature, False,
                                 HAS_PENALTY, HAS_MIN, False, RECIP)  # fmt: skip
            if SAMPLE:
                probs = tl.math.div_rn(tl.where(cm, tl.exp(x - m), 0.0), tot)
                bad += _probs_bad(probs, cm)
                psum += tl.sum(probs, axis=0)
                x = tl.math.div_rn(probs, tl.load(NOISE + c, mask=cm, other=1.0))
            best, tok = _best_update(x, c, cm, best, tok)
        if SAMPLE:
            ok = (bad == 0) & (psum != 0)
            tl.store(VALID, ((tl.load(VALID) != 0) & (ok | ~run)).to(tl.uint8))
        tl.store(LENGTHS, tl.load(LENGTHS) + pending)
        idx = tl.minimum(cur, L - 1)
        tl.store(IDS + idx, tl.where(run, tok, tl.load(IDS + idx)))
        if HAS_SEEN:
            tl.store(SEEN + tok, ((tl.load(SEEN + tok) != 0) | run).to(tl.uint8))
        cur = cur + run.to(tl.int64)
        tl.store(CUR, cur)
        still = run & (cur < tl.load(MAX_LENGTH)) & (tok != eos)
        tok_r = tl.where(slots == 0, tok, 0)
    else:
        # ---- beams: 2K candidates over the flattened rows, the hypotheses, the reorder ----------------------------
        N = 2 * K
        cn = tl.arange(0, BLOCK_N)
        c_ok = cn < N
        top_v = tl.full((BLOCK_N,), -float("inf"), tl.float32)
        top_i = tl.full((BLOCK_N,), 9223372036854775807, tl.int64)
        bad = tl.sum(tl.zeros((CHUNK,), tl.int32), axis=0)
        psum = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        for r in range(K):
            for c0 in range(0, V, CHUNK):
                c = c0 + tl.arange(0, CHUNK)
                cm = c < V
                x = tl.load(X + r * stride_x + c, mask=cm, other=-float("inf"))
                if SAMPLE:
                    probs = tl.math.div_rn(tl.where(cm, tl.exp(x - m), 0.0), tot)
                    bad += _probs_bad(probs, cm)
                    psum += tl.sum(probs, axis=0)
                    x = tl.math.div_rn(probs, tl.load(NOISE + r * V + c, mask=cm, other=1.0))
                x = tl.where(x != x, float("inf"), x)  # a NaN ranks first, as in torch.topk
                cv, ci = _chunk_top_n(x, c, cm, r * V, N, BLOCK_N)
                top_v, top_i = _top_n_merge(top_v, top_i, cv, ci, N, BLOCK_N)
        if SAMPLE:
            ok = (bad == 0) & (psum != 0)
            tl.store(VALID, ((tl.load(VALID) != 0) & (ok | ~run)).to(tl.uint8))
        cand = tl.where(c_ok & (top_i != 9223372036854775807), top_i, 0)  # never an index outside the rows
        if SAMPLE:
            # the candidates' scores, sorted descending (stable: the draw's order among equal scores)
            cs = tl.load(X + (cand // V) * stride_x + cand % V, mask=c_ok, other=-float("inf"))
            si = tl.reshape(cs, (BLOCK_N, 1))
            sj = tl.reshape(cs, (1, BLOCK_N))
            before = c_ok[:, None] & ((si > sj) | ((si == sj) & (cn[:, None] < cn[None, :])))
            rank = tl.sum(before.to(tl.int32), axis=0)  # the sorted position of candidate j
            rank = tl.where(c_ok, rank, cn)
            perm = rank[None, :] == cn[:, None]  # [new position, old position]
            cs = tl.sum(tl.where(perm, sj, 0.0), axis=1)
            cand = tl.sum(tl.where(perm, tl.reshape(cand, (1, BLOCK_N)), 0), axis=1)
        else:
            cs = top_v
        beam = cand // V
        token = cand % V
        is_eos = c_ok & (token == eos)
        # the first K non-eos candidates continue, in rank order
        ne = c_ok & ~is_eos
        ne_rank = tl.sum((ne[:, None] & (cn[:, None] < cn[None, :])).to(tl.int32), axis=0)  # non-eos before j
        pick = (ne & (ne_rank < K))[None, :] & (ne_rank[None, :] == slots[:, None])  # [slot, candidate]
        n_scores = tl.sum(tl.where(pick, tl.reshape(cs, (1, BLOCK_N)), 0.0), axis=1)
        n_tok = tl.sum(tl.where(pick, tl.reshape(token, (1, BLOCK_N)), 0), axis=1)
        n_rows = tl.sum(tl.where(pick, tl.reshape(beam, (1, BLOCK_N)), 0), axis=1)
        # the hypotheses: eos candidates within the first K ranks, in rank order
        done = tl.load(DONE) != 0
        denom = tl.load(POWERS + (cur + 1 - tl.load(PROMPT_LEN)))
        hs = tl.load(HYP_SCORES + slots, mask=slot_ok, other=float("inf"))
        hq = tl.load(HYP_SEQ + slots, mask=slot_ok, other=-1)
        hl = tl.load(HYP_LEN + slots, mask=slot_ok, other=0)
        count = tl.load(COUNT)
        inserted = tl.load(INSERTED)
        src = tl.full((BLOCK_R,), -1, tl.int64)  # the row each slot's sequence is copied from (-1: none)
        for r in range(K):
            at_r = cn == r
            score = tl.sum(tl.where(at_r, cs, 0.0), axis=0).to(tl.float64) / denom
            allowed = (tl.sum((at_r & is_eos).to(tl.int32), axis=0) > 0) & ~done & run
            b = tl.sum(tl.where(at_r, beam, 0), axis=0)
            filled = slot_ok & (hq >= 0)
            full = count >= K
            accept = allowed & (~full | (score > _worst(hs, filled)))
            free_slot = tl.min(tl.where(slot_ok & ~filled, slots, BLOCK_R), axis=0)
            free_slot = tl.where(free_slot == BLOCK_R, 0, free_slot)
            key = tl.where(filled, hs, float("inf"))
            tied = filled & (key == tl.min(key, axis=0))
            tq = tl.where(tied, hq, 9223372036854775807)
            worst_slot = tl.min(tl.where(slot_ok & (tq == tl.min(tq, axis=0)), slots, BLOCK_R), axis=0)
            slot = tl.where(full, worst_slot, free_slot)
            onehot = (slots == slot) & accept
            hs = tl.where(onehot, score, hs)
            hq = tl.where(onehot, inserted, hq)
            hl = tl.where(onehot, cur, hl)
            src = tl.where(onehot, b, src)
            count += (accept & ~full).to(tl.int64)
            inserted += 1
        best = tl.sum(tl.where(cn == 0, cs, 0.0), axis=0).to(tl.float64)
        if EARLY == 1:
            finished = True
        elif EARLY == 2:
            finished = _worst(hs, slot_ok & (hq >= 0)) >= best / tl.load(NEVER_POWER)
        else:
            finished = _worst(hs, slot_ok & (hq >= 0)) >= best / denom
        done = done | (run & (count >= K) & finished)
        tl.store(HYP_SCORES + slots, hs, mask=slot_ok)
        tl.store(HYP_SEQ + slots, hq, mask=slot_ok)
        tl.store(HYP_LEN + slots, hl, mask=slot_ok)
        tl.store(COUNT, count)
        tl.store(INSERTED, inserted)
        tl.store(DONE, done.to(tl.uint8))
        # the reorder (rows), with the append and the hypotheses' copies, column block by column block: each
        # block's sources are loaded before any of it is stored
        rows = tl.where(run, n_rows, slots)
        idx = tl.minimum(cur, L - 1)
        for c0 in range(0, L, BLOCK_L):
            c = c0 + tl.arange(0, BLOCK_L)
            m2 = slot_ok[:, None] & (c < L)[None, :]
            moved = tl.load(IDS + rows[:, None] * stride_ids + c[None, :], mask=m2, other=0)
            hm = m2 & (src >= 0)[:, None]
            hyp = tl.load(IDS + src[:, None] * stride_ids + c[None, :], mask=hm, other=0)
            tl.debug_barrier()
            moved = tl.where(run & (c == idx)[None, :], n_tok[:, None], moved)
            tl.store(IDS + slots[:, None] * stride_ids + c[None, :], moved, mask=m2)
            tl.store(HYP_IDS + slots[:, None] * stride_hyp + c[None, :], hyp, mask=hm)
        if HAS_SEEN:
            for c0 in range(0, V, BLOCK_L):
                c = c0 + tl.arange(0, BLOCK_L)
                m2 = slot_ok[:, None] & (c < V)[None, :]
                sm = tl.load(SEEN + rows[:, None] * stride_seen + c[None, :], mask=m2, other=0) != 0
                tl.debug_barrier()
                sm = sm | (run & (c[None, :] == n_tok[:, None]))
                tl.store(SEEN + slots[:, None] * stride_seen + c[None, :], sm.to(tl.uint8), mask=m2)
        for c0 in range(0, S, BLOCK_L):
            c = c0 + tl.arange(0, BLOCK_L)
            m2 = slot_ok[:, None] & (c < S)[None, :]
            t = tl.load(TABLE + rows[:, None] * stride_table + c[None, :], mask=m2, other=0)
            tl.debug_barrier()
            tl.store(TABLE + slots[:, None] * stride_table + c[None, :], t, mask=m2)
        lens = tl.load(LENGTHS + rows, mask=slot_ok, other=0)
        bs = tl.load(BEAM_SCORES + slots, mask=slot_ok, other=0.0)
        tl.debug_barrier()
        tl.store(LENGTHS + slots, lens + pending, mask=slot_ok)
        tl.store(BEAM_SCORES + slots, tl.where(run, n_scores, bs), mask=slot_ok)
        cur = cur + run.to(tl.int64)
        tl.store(CUR, cur)
        still = run & (cur < tl.load(MAX_LENGTH)) & ~done
        tok_r = n_tok
    # ---- the feed: stop condition, next position, next tokens' embedding ------------------------------------------
    pos = cur - tl.load(POS_BASE)
    over = still & (pos >= pos_limit)
    tl.store(OVERFLOW, ((tl.load(OVERFLOW) != 0) | over).to(tl.uint8))
    live = still & ~over
    tl.store(RUNNING, live.to(tl.uint8))
    tl.store(PENDING, live.to(tl.int32))
    pos = tl.minimum(tl.maximum(pos, 0), pos_limit - 1)
    tl.store(POS, pos)
    tl.store(TOKENS + slots, tok_r, mask=slot_ok)
    for r in range(K):
        tok = tl.sum(tl.where(slots == r, tok_r, 0), axis=0)
        _embed_row(EMB, TOK_EMB, POS_EMB, r, tok, pos, stride_emb, stride_te, stride_pe, C, BLOCK_C)


# ----------------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------------
def sampling_launch_config(V: int, interpret: Optional[bool] = None) -> tuple[int, int]:
    """(CHUNK, num_warps): rows are walked in CHUNK-wide blocks (4 fp32 values per thread at 8 warps). The
    interpreter walks 128-wide blocks, so that the small test rows cross block boundaries."""
    if is_interpreting() if interpret is None else interpret:
        return min(128, next_pow2(V)), 4
    return min(1024, next_pow2(V)), 8


def _recip(s: float) -> float:
    """The fp32 reciprocal of fp32(s), as CUDA's tensor / scalar computes it."""
    return float(np.float32(1.0) / np.float32(s))


def _process_scalars(cfg: ProcessConfig, V: int) -> tuple[dict, dict]:
    """(the scalar arguments, the constexpr flags) of the processor chain `cfg` at vocabulary V."""
    sample = cfg.do_sample
    return dict(
        penalty=float(cfg.penalty), inv_penalty=_recip(cfg.penalty), min_length=int(cfg.min_length),
        min_new=int(cfg.min_new_tokens), temperature=float(cfg.temperature), inv_temperature=_recip(cfg.temperature),
        top_k=min(max(int(cfg.top_k), int(cfg.min_keep)), V), top_p_thr=float(np.float32(1 - cfg.top_p)),
        min_keep=int(cfg.min_keep),
    ), dict(
        HAS_PENALTY=cfg.penalty != 1.0, HAS_MIN=cfg.min_length > 0 or cfg.min_new_tokens > 0,
        HAS_TEMP=sample and cfg.temperature != 1.0, HAS_TOP_K=sample and cfg.top_k != 0,
        HAS_TOP_P=sample and cfg.top_p < 1.0,
    )  # fmt: skip


def _check_process(op, logits, cfg, seen, cur, prompt_len, beam_scores):
    if not isinstance(cfg, ProcessConfig):
        raise TypeError(f"{op}: cfg must be a ProcessConfig, got {type(cfg).__name__}")
    check_tensor("logits", logits, dtypes=(torch.float32,), min_dim=2)
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must be [rows, V], got {tuple(logits.shape)}")
    R, V = logits.shape
    if not 1 <= R <= MAX_ROWS or not 1 <= V <= MAX_VOCAB:
        raise ValueError(f"{op}: logits [{R}, {V}]: rows in 1..{MAX_ROWS}, V in 1..{MAX_VOCAB}")
    dev = logits.device
    if cfg.penalty != 1.0:
        check_tensor("seen", seen, dtypes=(torch.bool,), device=dev, shape=(R, V))
    if cfg.min_length > 0 or cfg.min_new_tokens > 0:
        for name, t in (("cur", cur), ("prompt_len", prompt_len)):
            check_tensor(name, t, dtypes=(torch.int64,), device=dev, shape=(), min_dim=0)
    if beam_scores is not None:
        check_tensor("beam_scores", beam_scores, dtypes=(torch.float32,), device=dev, shape=(R,))
    return R, V


def logits_process_fwd(logits: torch.Tensor, cfg: ProcessConfig, seen: Optional[torch.Tensor] = None,
                       cur: Optional[torch.Tensor] = None, prompt_len: Optional[torch.Tensor] = None,
                       beam_scores: Optional[torch.Tensor] = None, *,
                       out: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """The processor chain of ``reference.logits_process_ref`` on ``logits`` [rows, V] fp32: one launch, one
    program per row. Returns the scores [rows, V] fp32 (``out`` if given)."""
    op = "logits_process_fwd"
    R, V = _check_process(op, logits, cfg, seen, cur, prompt_len, beam_scores)
    check_launchable(logits, op)
    if out is None:
        out = torch.empty((R, V), dtype=torch.float32, device=logits.device)
    else:
        check_tensor("out", out, dtypes=(torch.float32,), device=logits.device, shape=(R, V))
    scalars, flags = _process_scalars(cfg, V)
    CHUNK, num_warps = sampling_launch_config(V)
    seen_u8 = seen.view(torch.uint8) if seen is not None else out
    z = cur if cur is not None else out
    with torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext():
        note_launch("logits_process")
        _logits_process_kernel[(R,)](
            logits, seen_u8, z, prompt_len if prompt_len is not None else z,
            beam_scores if beam_scores is not None else out, out,
            logits.stride(0), seen_u8.stride(0), out.stride(0), V, eos=int(cfg.eos), **scalars,
            LOG_SOFTMAX=cfg.log_softmax, HAS_BEAM=beam_scores is not None, RECIP=logits.is_cuda, **flags,
            CHUNK=CHUNK, num_warps=num_warps,
        )  # fmt: skip
    return out


def _check_select(op, scores, noise, t, cfg, process):
    if not isinstance(cfg, SelectConfig):
        raise TypeError(f"{op}: cfg must be a SelectConfig, got {type(cfg).__name__}")
    check_tensor("scores", scores, dtypes=(torch.float32,), min_dim=2)
    R, V = scores.shape
    K = cfg.num_beams
    dev = scores.device
    if R != K or not 1 <= K <= MAX_ROWS or not 1 <= V <= MAX_VOCAB:
        raise ValueError(f"{op}: scores [{R}, {V}] for {K} beams (rows = beams <= {MAX_ROWS}, V <= {MAX_VOCAB})")
    if cfg.do_sample:
        check_tensor("noise", noise, dtypes=(torch.float32,), device=dev)
        if noise.numel() != R * V or not noise.is_contiguous():
            raise ValueError(f"{op}: noise must be contiguous with {R * V} elements, got {tuple(noise.shape)}")
    elif noise is not None:
        raise ValueError(f"{op}: noise given without do_sample")
    if process is not None:
        if K != 1 or cfg.do_sample or not isinstance(process, ProcessConfig) or process.log_softmax:
            raise ValueError(f"{op}: process runs in the select only for one row without sampling or log_softmax")
        _check_process(op, scores, process, t.get("seen"), t.get("cur"), t.get("prompt_len"), None)
    for name, (dtypes, beams_only) in SELECT_STATE.items():
        v = t.get(name)
        if name == "seen" and v is None or (beams_only and K == 1 and v is None):
            continue
        if v is None:
            raise ValueError(f"{op}: state tensor {name!r} missing")
        check_tensor(name, v, dtypes=dtypes or (torch.float32, torch.float16, torch.bfloat16), device=dev,
                     min_dim=0)  # fmt: skip
    ids, emb, te, pe = t["ids"], t["emb"], t["tok_emb"], t["pos_emb"]
    if ids.dim() != 2 or ids.shape[0] != K:
        raise ValueError(f"{op}: ids must be [{K}, L], got {tuple(ids.shape)}")
    if t["seen"] is not None and tuple(t["seen"].shape) != (K, V):
        raise ValueError(f"{op}: seen must be [{K}, {V}], got {tuple(t['seen'].shape)}")
    C = te.shape[-1]
    if emb.numel() != K * C or emb.stride(-1) != 1 or pe.shape[-1] != C or te.dtype != pe.dtype:
        raise ValueError(f"{op}: emb [{K}, 1, {C}] and embedding tables [*, {C}] of one dtype required")
    if t["lengths"].shape != (K,) or (K > 1 and t["table"].shape[0] != K):
        raise ValueError(f"{op}: lengths [{K}] and table [{K}, S] required")
    if K > 1:
        if t["hyp_ids"].shape != ids.shape or t["powers"].shape[0] < ids.shape[1] + 1:
            raise ValueError(f"{op}: hyp_ids {tuple(ids.shape)} and powers [>= L + 1] required")
    if cfg.pos_limit > t["pos_emb"].shape[0] or cfg.pos_limit < 1:
        raise ValueError(f"{op}: pos_limit {cfg.pos_limit} beyond the position table ({pe.shape[0]} rows)")
    return K, V


def decode_select_fwd(scores: torch.Tensor, noise: Optional[torch.Tensor], t: dict, cfg: SelectConfig,
                      process: Optional[ProcessConfig] = None) -> None:  # fmt: skip
    """``reference.decode_select_ref`` in one launch: the choice, the draw's validity, the beam step and its
    hypotheses, the reorders, the append, the stop condition and the next embedding, in place on ``t``."""
    op = "decode_select_fwd"
    K, V = _check_select(op, scores, noise, t, cfg, process)
    check_launchable(scores, op)
    u8 = {n: t[n].view(torch.uint8) for n in ("running", "overflow", "valid", "done", "seen") if t.get(n) is not None}
    ids, emb, te, pe = t["ids"], t["emb"], t["tok_emb"], t["pos_emb"]
    L, C = ids.shape[1], te.shape[-1]
    beam = K > 1
    d = ids  # a dummy for what this variant never reads
    table = t["table"] if beam else t["lengths"]
    S = table.shape[-1] if beam else 1
    proc = process if process is not None else ProcessConfig()
    scalars, flags = _process_scalars(proc, V)
    if process is None:
        flags = {k: False for k in flags}
    CHUNK, num_warps = sampling_launch_config(V)
    lp, es = cfg.length_penalty, cfg.early_stopping
    early = EARLY_TRUE if es is True else EARLY_NEVER if es == "never" and lp > 0.0 else EARLY_FALSE

    def g(name):
        return t[name] if beam else d

    emb2 = emb.view(K, C)
    with torch.cuda.device(scores.device) if scores.is_cuda else contextlib.nullcontext():
        note_launch("decode_select")
        _decode_select_kernel[(1,)](
            scores, noise if noise is not None else scores,
            ids, t["cur"], t["max_length"], t["prompt_len"], t["pos_base"], u8["running"], u8["overflow"],
            u8["valid"], t["tokens"], t["pos"], u8.get("seen", ids), t["lengths"], table, t["pending"], emb2, te, pe,
            g("beam_scores"), g("hyp_scores"), g("hyp_seq"), g("hyp_len"), g("hyp_ids"), g("count"), g("inserted"),
            u8.get("done", ids), g("powers"), g("never_power"),
            scores.stride(0), ids.stride(0), u8["seen"].stride(0) if "seen" in u8 else 0, table.stride(0),
            t["hyp_ids"].stride(0) if beam else 0, emb2.stride(0), te.stride(0), pe.stride(0),
            K, V, L, S, C, int(cfg.eos), int(cfg.pos_limit), p_eos=int(proc.eos), **scalars,
            PROCESS=process is not None, **flags, RECIP=scores.is_cuda,
            SAMPLE=cfg.do_sample, BEAM=beam, HAS_SEEN="seen" in u8, EARLY=early,
            CHUNK=CHUNK, BLOCK_R=next_pow2(K), BLOCK_N=next_pow2(2 * K),
            BLOCK_L=min(256, next_pow2(max(L, S, V if "seen" in u8 else 1))), BLOCK_C=min(1024, next_pow2(C)),
            num_warps=num_warps,
        )  # fmt: skip


_PROCESS_FLAGS = ("LOG_SOFTMAX", "HAS_PENALTY", "HAS_MIN", "HAS_TEMP", "HAS_TOP_K", "HAS_TOP_P", "HAS_BEAM")
_SELECT_PTRS = ("X", "NOISE", "IDS", "CUR", "MAX_LENGTH", "PROMPT_LEN", "POS_BASE", "RUNNING", "OVERFLOW", "VALID",
                "TOKENS", "POS", "SEEN", "LENGTHS", "TABLE", "PENDING", "EMB", "TOK_EMB", "POS_EMB", "BEAM_SCORES",
                "HYP_SCORES", "HYP_SEQ", "HYP_LEN", "HYP_IDS", "COUNT", "INSERTED", "DONE", "POWERS", "NEVER_POWER")  # fmt: skip
_SELECT_TYPES = dict(X="*fp32", NOISE="*fp32", IDS="*i64", CUR="*i64", MAX_LENGTH="*i64", PROMPT_LEN="*i64",
                     POS_BASE="*i64", RUNNING="*u8", OVERFLOW="*u8", VALID="*u8", TOKENS="*i64", POS="*i64",
                     SEEN="*u8", LENGTHS="*i32", TABLE="*i32", PENDING="*i32", EMB="*fp32", BEAM_SCORES="*fp32",
                     HYP_SCORES="*fp64", HYP_SEQ="*i64", HYP_LEN="*i64", HYP_IDS="*i64", COUNT="*i64",
                     INSERTED="*i64", DONE="*u8", POWERS="*fp64", NEVER_POWER="*fp64")  # fmt: skip
_SCALARS = dict(penalty="fp32", inv_penalty="fp32", min_length="i32", min_new="i32", eos="i32", temperature="fp32",
                inv_temperature="fp32", top_k="i32", top_p_thr="fp32", min_keep="i32")  # fmt: skip


def compile_variants(vocab: int = 8194, beams=(3,), capacity: int = 2048, width: int = 1280,
                     tables=("fp32", "fp16", "bf16")):  # fmt: skip
    """The specializations the decode loop launches (compiled: RECIP, CUDA's scalar division), for the AOT check.

    ``vocab``: the logits width; ``beams``: the beam counts (their candidate blocks); ``capacity``, ``width``: the
    sequences' and the embedding's sizes (the block sizes follow); ``tables``: the embedding tables' dtypes. The
    processors: every flag the official modes set (greedy with a penalty and minimum lengths, multinomial with
    temperature / top-k / top-p, beam search, beam-sample at the official defaults), and all of them at once.
    Yields (name, jit_fn, signature, constexprs, num_warps)."""
    CHUNK, nw = sampling_launch_config(vocab, interpret=False)
    process_cases = {
        "sample": (False, True, True, True, True, True, False),
        "beam": (True, True, True, False, False, False, True),
        "beam_sample": (True, True, False, True, True, True, True),
        "all": (True, True, True, True, True, True, True),
    }
    for name, flags in process_cases.items():
        sig = {"X": "*fp32", "SEEN": "*u8", "CUR": "*i64", "PROMPT_LEN": "*i64", "BEAM_SCORES": "*fp32",
               "OUT": "*fp32", "stride_x": "i32", "stride_seen": "i32", "stride_out": "i32", "V": "i32",
               **_SCALARS}  # fmt: skip
        const = dict(zip(_PROCESS_FLAGS, flags, strict=True), RECIP=True, CHUNK=CHUNK)
        sig.update({k: "constexpr" for k in const})
        yield f"sampling/process/{name}/V{vocab}", _logits_process_kernel, sig, const, nw
    select_cases = [("greedy", 1, False, True, 0), ("greedy_plain", 1, False, False, 0), ("sample", 1, True, False, 0)]
    select_cases += [(f"beam{k}{'_sample' if smp else ''}/early{e}", k, smp, False, e) for k in beams
                     for smp in (True, False) for e in (EARLY_FALSE, EARLY_TRUE, EARLY_NEVER)]  # fmt: skip
    for (name, K, sample, process, early), tname in ((c, t) for c in select_cases for t in tables):
        beam = K > 1
        sig = {p: _SELECT_TYPES.get(p, f"*{tname}") for p in _SELECT_PTRS}
        if not beam:  # the launcher's dummies
            sig.update({p: "*i64" for p in _SELECT_PTRS[19:]})
            sig["DONE"] = "*i64"
        sig.update({s: "i32" for s in ("stride_x", "stride_ids", "stride_seen", "stride_table", "stride_hyp",
                                       "stride_emb", "stride_te", "stride_pe", "K", "V", "L", "S", "C", "eos",
                                       "pos_limit")})  # fmt: skip
        sig.update({("p_eos" if k == "eos" else k): v for k, v in _SCALARS.items()})
        sig = {k: sig[k] for k in [*_SELECT_PTRS, "stride_x", "stride_ids", "stride_seen", "stride_table",
                                   "stride_hyp", "stride_emb", "stride_te", "stride_pe", "K", "V", "L", "S", "C",
                                   "eos", "pos_limit", "penalty", "inv_penalty", "min_length", "min_new", "p_eos",
                                   "temperature", "inv_temperature", "top_k", "top_p_thr", "min_keep"]}  # fmt: skip
        const = dict(PROCESS=process, HAS_PENALTY=process, HAS_MIN=process, HAS_TEMP=False, HAS_TOP_K=False,
                     HAS_TOP_P=False, RECIP=True, SAMPLE=sample, BEAM=beam, HAS_SEEN=True, EARLY=early,
                     CHUNK=CHUNK, BLOCK_R=next_pow2(K), BLOCK_N=next_pow2(2 * K),
                     BLOCK_L=min(256, next_pow2(max(capacity, vocab))), BLOCK_C=min(1024, next_pow2(width)))  # fmt: skip
        sig.update({k: "constexpr" for k in const})
        yield f"sampling/select/{name}/{tname}/V{vocab}", _decode_select_kernel, sig, const, nw
