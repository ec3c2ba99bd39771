"""Fused attention: non-causal attention with in-kernel interleaved RoPE (DiT), causal prefill that fills a static
KV cache (GPT-2), and split-K decode over that cache (flash-decoding) with a reduction pass.

Two Triton kernels do the attention; constexpr flags select the variant, the math is shared:
    _attn_fwd_kernel      a query block against all (or, causal, the earlier) keys, online softmax.
                          ROPE: rotate q and k in the kernel; CAUSAL; HAS_LENS: per-batch key lengths;
                          WRITE_CACHE: store this block's k and v into the KV cache in the same pass.
    _attn_decode_kernel   one new query per (row, head) against one split of the cached keys, plus (split 0)
                          the new key, which it also appends to the cache: one launch per step, then
    _attn_decode_reduce_kernel   merges the splits' (max, sum, acc) partials into the output; or, with a tickets
                          buffer (FOLD), no second launch: the last split of each (row, head) to finish merges them
                          (an acq_rel atomic ticket, the partials read from L2), one graph node per layer.

Math:       o_i = sum_j softmax_j(s_ij) v_j,  s_ij = scale * <q_i, k_j>, scale = 1/sqrt(D) by default.
            Keys j < x_lens[b] only (HAS_LENS); j <= i (CAUSAL, query and key positions both start at 0).
            RoPE (interleaved pairs, GPT-J style): dims (2i, 2i+1) of q and k at position t rotate by the angle
            t * base^(-2i/D):  (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); positions 0..T-1.
Contract:   q, k, v are [B, T, H, D] views with any batch/token/head strides and a contiguous last dim: the thirds
            of a fused projection output [B, T, 3*H*D] (q|k|v, heads contiguous in each third: the DiT ``wqkv``
            nn.Linear output and the GPT-2 ``c_attn`` Conv1D output have this same layout) are used in place, with
            no transpose copy. Output [B, T, H*D] contiguous, ready for the output projection.
            RoPE table: the official ``freqs_cis`` layout [S >= T, D/2, 2] (cos, sin), any float dtype.
            KV cache: per layer k_cache, v_cache [B_max, H, S_max, D] (any strides, last dim contiguous), e.g. the
            two halves of one [layers, 2, B_max, H, S_max, D] buffer allocated once. Why this layout: a decode
            program reads one (row, head) slab, S x D contiguous elements, so every key block is one contiguous
            run of BLOCK_N * D * 2 bytes (fully coalesced), and the prefill writes whole 128-byte rows.
            Decode lengths: int32/int64 [B] on the device, the number of tokens already cached per row (the new
            token goes to position lengths[b]); no .item(). The caller advances them (lengths += 1) after the step.
Beam reordering (decode): no cache copy. An optional ``row_table`` int32 [B, S_max] says, per logical row r and
            position s, which physical cache row holds that token. Each step writes the new k/v of logical row r
            to physical row r at position lengths[r] and sets row_table[r, lengths[r]] = r; a beam reorder is
            ``row_table = row_table[beam_idx]`` (one gather of B * S_max int32, 21 KiB for 3 x 1800, shared by all
            24 layers), instead of HF's index_select of every layer's cache (24 x 2 x 3 x S x 1280 x 2 bytes,
            663 MB read and written at S = 1800). It is conflict-free because every (physical row, position) pair is
            written exactly once, at the step where its logical row reaches that position (rows grow by one
            token per step, as in beam search). The price is one extra int32 load per key and a gathered (not
            slab-contiguous) key block: each key row is still one contiguous D * 2 = 128-byte segment.
            Caller contract: reorder ``lengths`` with the table (``lengths = lengths[beam_idx]``; in beam search
            all rows have one length, and rows of unequal length could overwrite a position another row still
            reads); start every generation from an identity table (a prefill does not reset it). Table values
            must name physical rows in [0, B_max): checked on the host for CPU tensors; on the device (no sync)
            an entry outside that range is never followed (no out-of-bounds read) and its row's output is NaN.
            Inside a CUDA graph, copy the reordered table into the captured buffer
            (``table.copy_(table.index_select(0, beam_idx))``).
Numerics:   loads upcast to fp32 for the RoPE (fp32 products, as the official ``apply_rotary_emb``), then the rotated
            q and k are rounded back to the input dtype (its ``type_as``); scores and the softmax state in fp32
            (exp2 of log2e-scaled scores); P is rounded to v's dtype for the P @ V product (as flash attention
            does); fp32 accumulators; one rounding at the store. fp16/bf16 dots run on tensor cores. fp32 dots follow
            ``fp32_precision``, whose launcher default is "ieee": exact fp32 FMAs on CUDA cores. "tf32x3" (three
            TF32 mma products, about fp32 accuracy, 2.5x the ieee peak on an H100: 165 vs 67 TFLOP/s; what torch's
            fp32 memory-efficient SDPA multiplies with on sm80+) and "tf32" (one product, ~1e-3 relative error) are
            the caller's choice: these kernels know no model (bench/NOTES.md records why the fast DiT passes
            "tf32x3", its default). The compiled tf32x3 accuracy is not yet checked on a GPU against the tolerance
            rule. The interpreter ignores ``fp32_precision`` (its dot computes exact fp32).
            Angles: the kernel does not compute sin/cos; it reads a table built exactly as the official
            ``precompute_freqs_cis`` (fp32 inverse frequencies ``1/base**(arange(0, D, 2)/D)``, fp32 outer product
            with the positions, cos/sin in fp32), so its angles are bit-identical to the official module's; only
            the rotation's two fp32 products may be fused into an FMA on the GPU (<= 1 fp32 ulp per element).
            Pass the official table (``freqs_cis``) to use exactly the numbers the official model holds.
            Decode: q.k and p.v on CUDA cores in fp32 (one query row per program: a GEMV, bandwidth-bound,
            where an mma would waste 15 of its 16 rows).
Matches:    indextts_kernels.reference.{attention_ref, dit_attention_ref, gpt_prefill_attention_ref,
            gpt_decode_attention_ref} (= official gpt_fast ``Attention`` with its ``freqs_cis`` and HF
            ``GPT2Attention`` with its cache; tests/test_official_attention.py).
Limits:     head_dim 64 or 128; B * H <= 65535 (a grid axis); one layer's cache < 2**31 elements; forward only.
            Key lengths of 0 give zero output rows (SDPA gives NaN there). Decode lengths >= S_max or < 0: checked on
            the host for CPU tensors; on the device (no sync) such a row writes nothing and its output is NaN.
            The RoPE of each key block is recomputed by every query block (T / 128 times per head): a few FMAs per
            key element next to the two MMAs, instead of a separate pass that would write k back to memory.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from ._jit import cast_to, dot
from ._utils import cdiv, check_launchable, check_tensor, is_interpreting, next_pow2, note_launch
from ._validate import (  # noqa: F401
    FP32_PRECISIONS,
    attention_args,
    decode_attention_args,
    qkv_heads,
    rope_table_args,
    validate_once,
)

__all__ = [
    "attention_fwd",
    "dit_attention_fwd",
    "gpt_prefill_attention_fwd",
    "gpt_decode_attention_fwd",
    "attention_launch_config",
    "decode_num_splits",
]


@triton.jit
def _mma(a, b, acc, FP32_PREC: tl.constexpr):
    """acc + a @ b on tensor cores; fp32 operands use FP32_PREC (tf32x3 / ieee / tf32)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=FP32_PREC)
    return dot(a, b, acc)


@triton.jit
def _rope_pair(x0, x1, c, s):
    """Rotate the interleaved pair halves (x0 = dims 2i, x1 = dims 2i+1) in fp32, as the official module."""
    return x0 * c - x1 * s, x1 * c + x0 * s


@triton.jit(do_not_specialize=["T", "H"])
def _attn_fwd_kernel(
    Q,  # pointer to q [B, T, H, D] (strides below, last dim contiguous)
    K,  # pointer to k [B, T, H, D]
    V,  # pointer to v [B, T, H, D]
    O,  # pointer to the output [B, T, H, D]
    LENS,  # pointer to int32 key lengths [B] (HAS_LENS)
    ROT,  # pointer to the RoPE table [S, D/2, 2] (cos, sin) (ROPE)
    KC,  # pointer to the k cache [B, H, S, D] (WRITE_CACHE)
    VC,  # pointer to the v cache [B, H, S, D] (WRITE_CACHE)
    T,
    H,
    sq_b, sq_t, sq_h,
    sk_b, sk_t, sk_h,
    sv_b, sv_t, sv_h,
    so_b, so_t, so_h,
    srot_t, srot_i,  # strides of the RoPE table's position and pair axes
    skc_b, skc_h, skc_t,
    svc_b, svc_h, svc_t,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_LENS: tl.constexpr,
    ROPE: tl.constexpr,
    WRITE_CACHE: tl.constexpr,
    FP32_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2

    m0 = pid_m * BLOCK_M
    r = tl.arange(0, BLOCK_M)  # in-tile offsets stay int32; the per-block base pointers carry the int64 part
    rows = m0 + r
    row_ok = rows < T
    d = tl.arange(0, HEAD_DIM)
    e = tl.arange(0, HALF)  # pair index: dims 2e and 2e + 1
    n = tl.arange(0, BLOCK_N)

    q_base = Q + b * sq_b + h * sq_h
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    m0_64 = m0.to(tl.int64)

    if WRITE_CACHE:  # this program's rows of k and v go to the cache (post-RoPE k, as a KV cache holds)
        kc_blk = KC + b * skc_b + h * skc_h + m0_64 * skc_t
        vc_blk = VC + b * svc_b + h * svc_h + m0_64 * svc_t
        k_blk = k_base + m0_64 * sk_t
        wv = tl.load(v_base + m0_64 * sv_t + r[:, None] * sv_t + d[None, :], mask=row_ok[:, None], other=0.0)
        tl.store(vc_blk + r[:, None] * svc_t + d[None, :], wv, mask=row_ok[:, None])
        if ROPE:
            w0 = tl.load(k_blk + r[:, None] * sk_t + 2 * e[None, :], mask=row_ok[:, None], other=0.0)
            w1 = tl.load(k_blk + r[:, None] * sk_t + 2 * e[None, :] + 1, mask=row_ok[:, None], other=0.0)
            wrot = ROT + m0_64 * srot_t + r[:, None] * srot_t + e[None, :] * srot_i
            wc = tl.load(wrot, mask=row_ok[:, None], other=1.0).to(tl.float32)
            ws = tl.load(wrot + 1, mask=row_ok[:, None], other=0.0).to(tl.float32)
            w0, w1 = _rope_pair(w0.to(tl.float32), w1.to(tl.float32), wc, ws)
            tl.store(
                kc_blk + r[:, None] * skc_t + 2 * e[None, :], cast_to(w0, KC.dtype.element_ty), mask=row_ok[:, None]
            )
            tl.store(
                kc_blk + r[:, None] * skc_t + 2 * e[None, :] + 1, cast_to(w1, KC.dtype.element_ty), mask=row_ok[:, None]
            )
        else:
            wk = tl.load(k_blk + r[:, None] * sk_t + d[None, :], mask=row_ok[:, None], other=0.0)
            tl.store(kc_blk + r[:, None] * skc_t + d[None, :], wk, mask=row_ok[:, None])

    # q block, rotated and rounded back to the input dtype (the official type_as), kept for the whole loop
    q_blk = q_base + m0_64 * sq_t
    if ROPE:
        q0 = tl.load(q_blk + r[:, None] * sq_t + 2 * e[None, :], mask=row_ok[:, None], other=0.0)
        q1 = tl.load(q_blk + r[:, None] * sq_t + 2 * e[None, :] + 1, mask=row_ok[:, None], other=0.0)
        qrot = ROT + m0_64 * srot_t + r[:, None] * srot_t + e[None, :] * srot_i
        qc = tl.load(qrot, mask=row_ok[:, None], other=1.0).to(tl.float32)
        qs = tl.load(qrot + 1, mask=row_ok[:, None], other=0.0).to(tl.float32)
        f0, f1 = _rope_pair(q0.to(tl.float32), q1.to(tl.float32), qc, qs)
        q0 = cast_to(f0, Q.dtype.element_ty)
        q1 = cast_to(f1, Q.dtype.element_ty)
    else:
        q = tl.load(q_blk + r[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)

    kv_len = T
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(LENS + b).to(tl.int32), T)
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)

    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units: exp2(s * log2e) = exp(s)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked tiles give p = 0, never NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    k_blk = k_base  # advanced by one key block per iteration (64-bit scalar pointers, int32 in-tile offsets)
    v_blk = v_base
    r_blk = ROT
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + n
        col_ok = cols < kv_len
        s_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if ROPE:  # k block loaded transposed [D/2, BLOCK_N], once per pair half
            kb = k_blk + n[None, :] * sk_t + 2 * e[:, None]
            k0 = tl.load(kb, mask=col_ok[None, :], other=0.0)
            k1 = tl.load(kb + 1, mask=col_ok[None, :], other=0.0)
            kr = r_blk + n[None, :] * srot_t + e[:, None] * srot_i
            kc = tl.load(kr, mask=col_ok[None, :], other=1.0).to(tl.float32)
            ks = tl.load(kr + 1, mask=col_ok[None, :], other=0.0).to(tl.float32)
            g0, g1 = _rope_pair(k0.to(tl.float32), k1.to(tl.float32), kc, ks)
            # permuting the head dims of q and k alike leaves q.k unchanged: even dims, then odd dims
            s_acc = _mma(q0, cast_to(g0, K.dtype.element_ty), s_acc, FP32_PREC)
            s_acc = _mma(q1, cast_to(g1, K.dtype.element_ty), s_acc, FP32_PREC)
        else:
            kT = tl.load(k_blk + n[None, :] * sk_t + d[:, None], mask=col_ok[None, :], other=0.0)
            s_acc = _mma(q, kT, s_acc, FP32_PREC)
        s_acc = s_acc * qk_scale
        valid = col_ok[None, :]
        if CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        s_acc = tl.where(valid, s_acc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_acc, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s_acc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(v_blk + n[:, None] * sv_t + d[None, :], mask=col_ok[:, None], other=0.0)
        acc = _mma(cast_to(p, V.dtype.element_ty), vt, acc * alpha[:, None], FP32_PREC)
        m_i = m_new
        k_blk += BLOCK_N * sk_t
        v_blk += BLOCK_N * sv_t
        r_blk += BLOCK_N * srot_t

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # a row with no keys (length 0) stores zeros
    out = acc / l_safe[:, None]
    o_ptrs = O + b * so_b + h * so_h + m0_64 * so_t + r[:, None] * so_t + d[None, :]
    tl.store(o_ptrs, cast_to(out, O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["H", "S", "NROWS"])
def _attn_decode_kernel(
    Q,  # pointer to the new queries [B, H, D] (strides below)
    KN,  # pointer to the new keys [B, H, D]
    VN,  # pointer to the new values [B, H, D]
    KC,  # pointer to the k cache [B_phys, H, S, D]
    VC,  # pointer to the v cache [B_phys, H, S, D]
    LENS,  # pointer to int32 cached lengths [B]: the new token goes to position LENS[b]
    TABLE,  # pointer to int32 row table [B, S] (HAS_TABLE): physical cache row of (row, position)
    PM,  # pointer to fp32 partial maxima [B * H, NUM_SPLITS] (log2 units)
    PL,  # pointer to fp32 partial sums [B * H, NUM_SPLITS]
    PACC,  # pointer to fp32 partial outputs [B * H, NUM_SPLITS, D] (unnormalized)
    TICKETS,  # pointer to int32 [B * H] arrival counters, zero between launches (FOLD)
    O,  # pointer to the output [B, H, D] (FOLD: the last split to finish merges the partials into it)
    H,
    S,  # cache capacity: a row with LENS[b] >= S (or < 0) writes nothing and gets a NaN output
    NROWS,  # physical cache rows: a table entry outside [0, NROWS) is not read and makes the row's output NaN
    sq_b, sq_h,
    skn_b, skn_h,
    svn_b, svn_h,
    skc_b, skc_h, skc_t,
    svc_b, svc_h, svc_t,
    stab_b,
    so_b, so_h,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    HAS_TABLE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FOLD: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    qk_scale = sm_scale * 1.4426950408889634

    L = tl.load(LENS + b).to(tl.int32)  # cached tokens of this row
    q = tl.load(Q + b * sq_b + h * sq_h + d).to(tl.float32)
    chunk = tl.cdiv(tl.cdiv(L, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    fits = (L >= 0) & (L < S)  # a negative device length would write before the row's slab
    hi = tl.minimum(tl.minimum(lo + chunk, L), S)

    # the new token: every split loads it (128 bytes), split 0 attends to it from registers and appends it
    is_first = split == 0
    kn = tl.load(KN + b * skn_b + h * skn_h + d)
    vn = tl.load(VN + b * svn_b + h * svn_h + d)
    first = ((d * 0 + split) == 0) & fits
    tl.store(KC + b * skc_b + h * skc_h + L.to(tl.int64) * skc_t + d, kn, mask=first)
    tl.store(VC + b * svc_b + h * svc_h + L.to(tl.int64) * svc_t + d, vn, mask=first)
    if HAS_TABLE:
        tl.store(TABLE + b * stab_b + L, b.to(tl.int32), mask=is_first & (h == 0) & fits)
    m_i = tl.where(is_first, tl.sum(q * kn.to(tl.float32), axis=0) * qk_scale, -1.0e30)
    l_i = tl.where(is_first, tl.where(fits, 1.0, float("nan")), 0.0)
    acc = tl.where(first, vn.to(tl.float32), 0.0)

    kc_h = KC + h * skc_h
    vc_h = VC + h * svc_h
    # The row table of the next block is requested one iteration ahead, and a block's K and V together before
    # its arithmetic: the dependent chain table -> K -> V costs one DRAM latency per block instead of three.
    pos = lo + tl.arange(0, BLOCK_N)
    if HAS_TABLE:
        phys = tl.load(TABLE + b * stab_b + pos, mask=pos < hi, other=0)
    else:
        phys = tl.zeros([BLOCK_N], tl.int32) + b.to(tl.int32)
    for start_n in range(lo, hi, BLOCK_N):
        pos = start_n + tl.arange(0, BLOCK_N)
        ok = pos < hi
        if HAS_TABLE:
            in_range = (phys >= 0) & (phys < NROWS)
            bad = ok & ~in_range  # a corrupt table entry: never read through it, and make the row's output NaN
            ok = ok & in_range
        # int32 offsets inside one layer's cache (the launcher checks it holds < 2**31 elements)
        k = tl.load(kc_h + (phys * skc_b + pos * skc_t)[:, None] + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(vc_h + (phys * svc_b + pos * svc_t)[:, None] + d[None, :], mask=ok[:, None], other=0.0)
        if HAS_TABLE:
            nxt = pos + BLOCK_N
            phys = tl.load(TABLE + b * stab_b + nxt, mask=nxt < hi, other=0)
        s = tl.sum(q[None, :] * k.to(tl.float32), axis=1) * qk_scale
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        if HAS_TABLE:
            p = tl.where(bad, float("nan"), p)  # loud, never silent garbage
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        m_i = m_new

    part = pid_bh.to(tl.int64) * NUM_SPLITS + split
    tl.store(PM + part, m_i)
    tl.store(PL + part, l_i)
    tl.store(PACC + part * HEAD_DIM + d, acc)
    if FOLD:
        # The last split of this (row, head) to arrive merges the partials: every thread's stores are done
        # (barrier) before the acq_rel ticket, and the merge reads L2 (.cg), never a stale L1 line.
        tl.debug_barrier()
        ticket = tl.atomic_add(TICKETS + pid_bh, 1, sem="acq_rel", scope="gpu")
        if ticket == NUM_SPLITS - 1:
            _merge_splits(PM, PL, PACC, O, pid_bh, b, h, so_b, so_h, HEAD_DIM, NUM_SPLITS, ".cg")
            tl.atomic_xchg(TICKETS + pid_bh, 0, sem="relaxed", scope="gpu")  # zero again for the next launch


@triton.jit
def _merge_splits(PM, PL, PACC, O, pid_bh, b, h, so_b, so_h, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
                  CACHE: tl.constexpr):  # fmt: skip
    """Merge the NUM_SPLITS (max, sum, acc) partials of one (row, head) into its output."""
    sp = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM)
    base = pid_bh.to(tl.int64) * NUM_SPLITS
    m = tl.load(PM + base + sp, cache_modifier=CACHE)
    l = tl.load(PL + base + sp, cache_modifier=CACHE)
    acc = tl.load(PACC + (base + sp)[:, None] * HEAD_DIM + d[None, :], cache_modifier=CACHE)
    m_all = tl.max(m, axis=0)
    w = tl.exp2(m - m_all)  # empty splits hold m = -1e30, l = 0, acc = 0: weight 0
    den = tl.sum(w * l, axis=0)
    out = tl.sum(w[:, None] * acc, axis=0) / den
    tl.store(O + b * so_b + h * so_h + d, cast_to(out, O.dtype.element_ty))


@triton.jit
def _attn_decode_reduce_kernel(
    PM,  # pointer to fp32 partial maxima [B * H, NUM_SPLITS]
    PL,  # pointer to fp32 partial sums [B * H, NUM_SPLITS]
    PACC,  # pointer to fp32 partial outputs [B * H, NUM_SPLITS, D]
    O,  # pointer to the output [B, H, D] (strides below)
    H,
    so_b, so_h,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    _merge_splits(PM, PL, PACC, O, pid_bh, b, h, so_b, so_h, HEAD_DIM, NUM_SPLITS, "")


# ----------------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------------
def attention_launch_config(
    head_dim: int,
    dtype: torch.dtype,
    rope: bool = False,
    fp32_precision: str = "ieee",
    interpret: Optional[bool] = None,
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the full/causal kernel.

    Chosen from the AOT table (0 spills on sm_86/89/90 at head_dim 64): fp16/bf16 head_dim 64 run 128 x 64
    tiles on 8 warps (128 x 32 with the in-kernel RoPE, whose cos/sin and pair halves cost registers); fp32 with
    tf32x3 (three operand splits in registers) 64 x 32 on 8 warps; exact fp32 (CUDA-core FMAs, whose operands
    are replicated across threads) 64 x 16 on 8 warps; head_dim 128 64 x 32 on 8 warps, except fp32 at head_dim
    128: 32 x 16 (ieee with RoPE) and 32 x 32 (tf32x3/tf32), where the larger tiles spill. Not tuned on a GPU yet.
    Under the interpreter one 64 x 64 tile keeps the per-program Python cost low.
    """
    if is_interpreting() if interpret is None else interpret:
        return 64, 64, 4, 1
    if dtype == torch.float32 and fp32_precision == "ieee":
        return (32, 16, 8, 3) if rope and head_dim > 64 else (64, 16, 8, 3)
    if dtype == torch.float32:
        return (32, 32, 8, 3) if head_dim > 64 else (64, 32, 8, 3)
    if head_dim > 64:
        return 64, 32, 8, 3
    return (128, 32, 8, 3) if rope else (128, 64, 8, 3)


def decode_num_splits(s_max: int, interpret: Optional[bool] = None) -> int:
    """KV splits per (row, head) for decode, fixed by the cache capacity (not the data): graph safe.

    20 heads x 3 beams = 60 (row, head) pairs fill half an H100 at most; 8 splits of a 1800-token context
    (about 4 blocks of 64 keys each) give 480 programs. Short contexts leave the later splits empty (they store
    a zero-weight partial). Under the interpreter: 2 splits (enough to test the merge).
    """
    if is_interpreting() if interpret is None else interpret:
        return 2
    return max(1, min(16, next_pow2(cdiv(s_max, 256))))


DECODE_WARPS = 1  # one warp per decode program: its reductions are shuffles, and it keeps 16-29 loads in flight


def decode_block_n(head_dim: int, dtype: torch.dtype = torch.float16, interpret: Optional[bool] = None) -> int:
    """Keys per decode iteration: as many as keep one warp's K and V tiles at 128 half or 64 fp32 values per
    thread each (fp16/bf16: 64 keys at head_dim 64, 32 at 128; fp32: 32 and 16); 0 spills in the AOT table.
    Under the interpreter 64 always (each iteration costs milliseconds of Python, whatever its size)."""
    if is_interpreting() if interpret is None else interpret:
        return 64
    per_thread = 64 if dtype == torch.float32 else 128
    return max(16, min(64, 32 * DECODE_WARPS * per_thread // head_dim))


def _device_ctx(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


_ROPE_TABLES: dict = {}


def _rope_table(T: int, D: int, base: float, device: torch.device) -> torch.Tensor:
    """The official freqs_cis table (fp32, [S, D/2, 2]), built once per (D, base, device) for S >= T: a convenience
    for eager callers. Never built during a CUDA-graph capture (it would live in the graph's private pool and be
    cached beyond it): callers that capture pass ``freqs_cis`` (``reference.rope_table_ref``) built beforehand."""
    from .reference import rope_table_ref

    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "attention_fwd: rope=True without freqs_cis during a CUDA-graph capture; build the table before capturing "
            "(indextts_kernels.reference.rope_table_ref(max_len, head_dim)) and pass it as freqs_cis"
        )
    key = (D, float(base), str(device))
    tab = _ROPE_TABLES.get(key)
    if tab is None or tab.shape[0] < T:
        tab = rope_table_ref(max(T, 4096), D, base, device=device)
        _ROPE_TABLES[key] = tab
    return tab


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    x_lens: Optional[torch.Tensor] = None,
    freqs_cis: Optional[torch.Tensor] = None,
    rope: bool = False,
    rope_base: float = 10000.0,
    sm_scale: Optional[float] = None,
    k_cache: Optional[torch.Tensor] = None,
    v_cache: Optional[torch.Tensor] = None,
    fp32_precision: str = "ieee",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention over q, k, v [B, T, H, D] views (any strides, contiguous last dim); returns [B, T, H*D].

    ``rope=True`` rotates q and k in the kernel (interleaved pairs) with ``freqs_cis`` [S >= T, D/2, 2] (the
    official table), or with the same table built here when ``freqs_cis`` is None. ``x_lens`` int [B]: keys
    at positions >= x_lens[b] are masked. With ``k_cache``/``v_cache`` [B_max, H, S_max, D] (the input dtype)
    the (rotated) k and v are also written to positions 0..T-1 of the cache, in the same pass.
    """
    op = "attention_fwd"
    validate_once(
        attention_args, op, q, k, v, causal=causal, x_lens=x_lens, k_cache=k_cache, v_cache=v_cache, out=out,
        fp32_precision=fp32_precision, freqs_cis=freqs_cis,
    )  # fmt: skip
    check_launchable(q, op)
    B, T, H, D = q.shape
    if rope:
        if freqs_cis is None:
            freqs_cis = _rope_table(T, D, rope_base, q.device)
        validate_once(rope_table_args, freqs_cis, T, D, q.device)
    elif freqs_cis is not None:
        raise ValueError(f"{op}: freqs_cis given but rope=False")
    if out is None:
        out = torch.empty((B, T, H * D), dtype=q.dtype, device=q.device)
    if B * T * H == 0:
        return out
    o4 = out.view(B, T, H, D)
    scale = float(D**-0.5 if sm_scale is None else sm_scale)
    BLOCK_M, BLOCK_N, num_warps, num_stages = attention_launch_config(D, q.dtype, rope, fp32_precision)
    rot = freqs_cis if rope else q
    srot_t, srot_i = (freqs_cis.stride(0), freqs_cis.stride(1)) if rope else (0, 0)
    write = k_cache is not None
    kc = k_cache if write else q
    vc = v_cache if write else q
    kcs = (kc.stride(0), kc.stride(1), kc.stride(2)) if write else (0, 0, 0)
    vcs = (vc.stride(0), vc.stride(1), vc.stride(2)) if write else (0, 0, 0)
    lens = x_lens if x_lens is not None else q
    grid = (cdiv(T, BLOCK_M), B * H)
    with _device_ctx(q):
        note_launch("attention")
        _attn_fwd_kernel[grid](
            q, k, v, o4, lens, rot, kc, vc,
            T, H,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            o4.stride(0), o4.stride(1), o4.stride(2),
            srot_t, srot_i, *kcs, *vcs,
            scale,
            HEAD_DIM=D, CAUSAL=bool(causal), HAS_LENS=x_lens is not None, ROPE=bool(rope), WRITE_CACHE=write,
            FP32_PREC=fp32_precision, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    return out


def dit_attention_fwd(
    qkv: torch.Tensor,
    n_heads: int,
    *,
    x_lens: Optional[torch.Tensor] = None,
    freqs_cis: Optional[torch.Tensor] = None,
    rope_base: float = 10000.0,
    fp32_precision: str = "ieee",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT self-attention core: ``wqkv`` output [B, T, 3*H*D] -> [B, T, H*D] (RoPE on q, k; non-causal; 1/sqrt(D)).

    Everything between ``wqkv`` and ``wo`` of the official gpt_fast ``Attention``: split, RoPE (positions 0..T-1),
    SDPA with the key-length mask ``x_lens`` (None: all keys, as IndexTTS2's all-true mask), head merge.
    """
    q, k, v = qkv_heads("qkv", qkv, n_heads)
    return attention_fwd(
        q, k, v, x_lens=x_lens, freqs_cis=freqs_cis, rope=True, rope_base=rope_base, fp32_precision=fp32_precision,
        out=out,
    )  # fmt: skip


def gpt_prefill_attention_fwd(
    qkv: torch.Tensor,
    n_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    fp32_precision: str = "ieee",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """GPT-2 causal prefill: ``c_attn`` output [B, T, 3*H*D] -> [B, T, H*D]; k, v also fill cache positions 0..T-1.

    Scale 1/sqrt(D) (1/8 for GPT-2's 64-wide heads). After it the caller's lengths are T for every row.
    """
    q, k, v = qkv_heads("qkv", qkv, n_heads)
    return attention_fwd(q, k, v, causal=True, k_cache=k_cache, v_cache=v_cache, fp32_precision=fp32_precision, out=out)


def gpt_decode_attention_fwd(
    qkv: torch.Tensor,
    n_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    *,
    row_table: Optional[torch.Tensor] = None,
    num_splits: Optional[int] = None,
    sm_scale: Optional[float] = None,
    tickets: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One decode step: ``c_attn`` output [B, 1, 3*H*D] of the new tokens -> [B, 1, H*D].

    Appends the new k, v of row b at cache position ``lengths[b]`` (and, with ``row_table``, records
    ``row_table[b, lengths[b]] = b``) and attends over positions 0..lengths[b] of that row, in one split-K launch
    plus a reduction launch. With ``tickets`` (int32, at least B * H elements, zero; the caller allocates them once
    and never touches them again) the reduction is folded into the split-K launch: each program takes a ticket
    after storing its partial, and the last split of a (row, head) merges them, then zeroes its ticket again; one
    launch per step (one graph node instead of two), the same arithmetic. Launches sharing one tickets buffer must
    not run concurrently (one buffer per stream). The caller then advances ``lengths += 1``. See the module
    docstring for the row-table beam reordering.
    """
    op = "gpt_decode_attention_fwd"
    q, k, v = qkv_heads("qkv", qkv, n_heads)
    validate_once(decode_attention_args, op, q, k_cache, v_cache, lengths, row_table=row_table, out=out, qkv=qkv)
    check_launchable(qkv, op)
    B, _, H, D = q.shape
    S = k_cache.shape[2]
    if out is None:
        out = torch.empty((B, 1, H * D), dtype=qkv.dtype, device=qkv.device)
    if B == 0:
        return out
    splits = decode_num_splits(S) if num_splits is None else int(num_splits)
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"{op}: num_splits must be a power of two >= 1, got {num_splits}")
    if tickets is not None:
        check_tensor("tickets", tickets, dtypes=(torch.int32,), device=qkv.device)
        if not tickets.is_contiguous() or tickets.numel() < B * H:
            raise ValueError(f"{op}: tickets must be a contiguous int32 tensor of at least B * H = {B * H} elements, "
                             f"got shape {tuple(tickets.shape)}")  # fmt: skip
    pm = torch.empty((B * H, splits), dtype=torch.float32, device=qkv.device)
    pl = torch.empty_like(pm)
    pacc = torch.empty((B * H, splits, D), dtype=torch.float32, device=qkv.device)
    o3 = out.view(B, H, D)
    scale = float(D**-0.5 if sm_scale is None else sm_scale)
    table = row_table if row_table is not None else lengths
    stab = row_table.stride(0) if row_table is not None else 0
    with _device_ctx(qkv):
        note_launch("decode_attention")
        _attn_decode_kernel[(B * H, splits)](
            q, k, v, k_cache, v_cache, lengths, table, pm, pl, pacc, lengths if tickets is None else tickets, o3,
            H, S, k_cache.shape[0],
            q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            stab, o3.stride(0), o3.stride(1), scale,
            HEAD_DIM=D, HAS_TABLE=row_table is not None, NUM_SPLITS=splits, BLOCK_N=decode_block_n(D, qkv.dtype),
            FOLD=tickets is not None, num_warps=DECODE_WARPS,
        )  # fmt: skip
        if tickets is not None:
            return out
        note_launch("decode_attention_reduce")
        _attn_decode_reduce_kernel[(B * H,)](
            pm, pl, pacc, o3, H, o3.stride(0), o3.stride(1), HEAD_DIM=D, NUM_SPLITS=splits, num_warps=1,
        )  # fmt: skip
    return out


# the forward kernel's variants by launcher: (CAUSAL, HAS_LENS, ROPE, WRITE_CACHE)
_FWD_VARIANTS = {
    "dit_rope": (False, False, True, False),  # dit_attention_fwd
    "dit_rope_lens": (False, True, True, False),  # dit_attention_fwd with x_lens
    "gpt_prefill_cache": (True, False, False, True),  # gpt_prefill_attention_fwd
    "full": (False, False, False, False),  # attention_fwd
}


def compile_variants(fwd=(), decode=()):
    """Every kernel specialization the launchers produce for the requested cases, for the AOT compile check.

    ``fwd``: (variant, cases) pairs, variant a key of ``_FWD_VARIANTS`` and cases (dtype or fp32 precision,
    head_dim) pairs: "fp16", "bf16", "fp32" (exact fp32, "ieee"), "tf32x3" or "tf32" (fp32 data).
    ``decode``: (dtype, head_dim, cache capacity S_max) of the split-K decode (with and without a row table) and
    its reduction; S_max sets the split count.
    Yields (name, jit_fn, signature, constexprs, num_warps, divisible): ``divisible`` names the pointer and stride
    arguments that real launches specialize as 16-divisible (torch allocations are 16-byte aligned; the strides of
    a fused projection output and of a cache are multiples of the head_dim, 64 or 128), so the check compiles
    the code that actually runs.
    """
    tdt = {"fp32": torch.float32, "tf32x3": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
           "bf16": torch.bfloat16}  # fmt: skip
    strides = ("sq_b", "sq_t", "sq_h", "sk_b", "sk_t", "sk_h", "sv_b", "sv_t", "sv_h", "so_b", "so_t", "so_h",
               "srot_t", "srot_i", "skc_b", "skc_h", "skc_t", "svc_b", "svc_h", "svc_t")  # fmt: skip
    for name, cases in fwd:
        causal, lens, rope, write = _FWD_VARIANTS[name]
        for tname, D in cases:
            prec = tname if tname in ("tf32x3", "tf32") else "ieee"  # fp32 data for all three precisions
            bm, bn, nw, _ = attention_launch_config(D, tdt[tname], rope, prec, interpret=False)
            p = "*fp32" if tname in ("tf32x3", "tf32") else f"*{tname}"
            # unused pointers are q's, as the launcher passes them (x_lens int32, the official fp32 RoPE table)
            sig = {"Q": p, "K": p, "V": p, "O": p, "LENS": "*i32" if lens else p, "ROT": "*fp32" if rope else p,
                   "KC": p, "VC": p, "T": "i32", "H": "i32", **{s: "i32" for s in strides}, "sm_scale": "fp32"}  # fmt: skip
            const = dict(HEAD_DIM=D, CAUSAL=causal, HAS_LENS=lens, ROPE=rope, WRITE_CACHE=write,
                         FP32_PREC=prec, BLOCK_M=bm, BLOCK_N=bn)  # fmt: skip
            sig.update({k: "constexpr" for k in const})
            div = ["Q", "K", "V", "O", "LENS", "ROT", "KC", "VC", *(s for s in strides if s != "srot_i" or not rope)]
            yield f"attn/{name}/{tname}/D{D}/{bm}x{bn}", _attn_fwd_kernel, sig, const, nw, div
    dstrides = ("sq_b", "sq_h", "skn_b", "skn_h", "svn_b", "svn_h", "skc_b", "skc_h", "skc_t", "svc_b", "svc_h",
                "svc_t")  # fmt: skip
    cases = ((*case, tab, fold) for case in decode for tab in (True, False) for fold in (True, False))
    for tname, D, s_max, has_table, fold in cases:
        splits = decode_num_splits(s_max, interpret=False)
        p = f"*{tname}"
        sig = {"Q": p, "KN": p, "VN": p, "KC": p, "VC": p, "LENS": "*i32", "TABLE": "*i32", "PM": "*fp32",
               "PL": "*fp32", "PACC": "*fp32", "TICKETS": "*i32", "O": p, "H": "i32", "S": "i32", "NROWS": "i32",
               **{s: "i32" for s in dstrides}, "stab_b": "i32", "so_b": "i32", "so_h": "i32",
               "sm_scale": "fp32"}  # fmt: skip
        const = dict(HEAD_DIM=D, HAS_TABLE=has_table, NUM_SPLITS=splits,
                     BLOCK_N=decode_block_n(D, tdt[tname], interpret=False), FOLD=fold)  # fmt: skip
        sig.update({k: "constexpr" for k in const})
        div = ["Q", "KN", "VN", "KC", "VC", "LENS", "TABLE", "PM", "PL", "PACC", "TICKETS", "O", *dstrides, "stab_b",
               "so_b", "so_h"]  # fmt: skip
        tab = ("+table" if has_table else "") + ("+fold" if fold else "")
        yield f"attn/decode{tab}/{tname}/D{D}/S{splits}", _attn_decode_kernel, sig, const, DECODE_WARPS, div
    for tname, D, s_max in decode:
        splits = decode_num_splits(s_max, interpret=False)
        sig = {"PM": "*fp32", "PL": "*fp32", "PACC": "*fp32", "O": f"*{tname}", "H": "i32", "so_b": "i32",
               "so_h": "i32", "HEAD_DIM": "constexpr", "NUM_SPLITS": "constexpr"}  # fmt: skip
        const = dict(HEAD_DIM=D, NUM_SPLITS=splits)
        div = ["PM", "PL", "PACC", "O", "so_b", "so_h"]
        yield f"attn/decode_reduce/{tname}/D{D}/S{splits}", _attn_decode_reduce_kernel, sig, const, 1, div
