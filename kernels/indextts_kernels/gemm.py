"""GEMM with fused epilogues: linear (+ bias) (+ gelu_new) (+ residual), and SwiGLU over a packed w13 weight.

Two Triton kernels, one per inner-product regime, serve every projection that needs an epilogue:
``_gemm_mma_kernel`` (tensor-core tiles) and ``_gemm_gemv_kernel`` (decode: the weight streamed on CUDA cores,
optionally with a LayerNorm prologue). Both end in the same @triton.jit ``_epilogue``; constexpr flags pick it.

Math (x [M, K], weight [N, K] = nn.Linear's [out, in]; accumulation and epilogue in fp32, one rounding at the store):
    linear            y = x @ W^T (+ b) (then gelu_new) (+ residual)
    gelu_new          g(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) = u * sigmoid(2 sqrt(2/pi) (u + 0.044715 u^3))
                      (the same function written through sigmoid: 0.5 (1 + tanh(z)) = sigmoid(2 z); no libdevice)
    swiglu            h = silu(x @ W1^T) * (x @ W3^T), W13 = cat([W1, W3], dim 0) of shape [2I, K]: output column j
                      reads row j (w1) and row I + j (w3) of W13; one pass over x, the [M, I] hidden written once
Ops built on them (the launchers below):
    DiT FeedForward   out = residual + w2(silu(w1 x) * w3 x)      = linear(swiglu(x, w13), w2, residual=residual)
    GPT-2 MLP         out = residual + c_proj(gelu_new(c_fc(x)))  = linear(linear(x, fc, b, gelu_new), proj, b, residual)
    projections       GPT-2 c_attn (+bias), attn c_proj (+bias +residual); DiT wqkv, wo (+residual), skip_in_linear (+bias)
Contract:   x [..., K] with contiguous leading dims; weight [N, K] contiguous (row-major, K contiguous). GPT-2 Conv1D
            weights ([in, out] in the checkpoint) must be transposed to [out, in] first. x, weight and bias share one
            dtype (fp32, fp16 or bf16); the residual may be of another float dtype (a model under fp16 autocast keeps
            an fp32 residual stream with fp16 operands) and the output takes torch's promotion of (x, residual).
Numerics:   fp32 accumulation; epilogue in fp32 (bias, activation, residual); one rounding at the store, plus the
            official cast points: before gelu_new the projection is rounded to x's dtype (the Conv1D output the
            activation reads), and a wider residual is added to the projection rounded to x's dtype (torch's
            promotion of ``residual + proj(x)``). Otherwise the unfused torch ops round after each op at the working
            dtype; this kernel does not (it is closer to the fp32 result).
            fp32 inputs: ``precision`` picks the tensor-core regime's dot. The launchers' default is "ieee": exact
            fp32 products (FMA, no tensor cores), as torch's fp32 matmul under its default allow_tf32=False.
            "tf32x3" (three TF32 tensor-core products, about fp32 accuracy) and "tf32" (one product of 10-bit
            mantissa inputs) are the caller's choice: these kernels know no model (bench/NOTES.md records why the
            fast DiT passes "tf32x3", its default). The decode regime always multiplies in fp32 on CUDA cores,
            whatever ``precision`` says. The interpreter's fp32 dot is exact, so there ``dot_prec`` emulates the
            tensor cores' TF32 operand rounding and Triton's tf32x3 split.
Regimes:    M > 8: tensor-core tiles (tl.dot), grouped tile order for L2 reuse, tile size from the tile count.
            M <= 8 (decode: a row per beam): GEMV-style. Every program owns all M rows and a few output columns and
            streams its weight rows once (prefetching the next K slab while it multiplies the current one) into a
            [M, BLOCK_N, BLOCK_K] fp32 accumulator on CUDA cores, reduced once at the end. The launcher picks the
            kernel with its config (``_specialization``); only the inner product differs. Why a GEMV regime:
            tl.dot needs 16 rows and 16 columns per tile, which pads M = 3 to 16 and, worse, forces >= 16 output
            columns per program (80 programs for c_proj's 1280 outputs, too few to keep HBM busy); the GEMV form
            reads the weight once with 1-8 columns per program (160-5120 programs, gemv_config) and needs no split-K
            workspace or second pass, so the nonlinear epilogue (gelu_new) stays in the kernel.
In place:   out=residual (the very same view) is allowed; any other overlap of out with an input is refused.
Matches:    indextts_kernels.reference.{linear_ref, swiglu_linear_ref, swiglu_feed_forward_ref, gpt2_mlp_ref}
WaveNet:    two more tensor-core kernels on the same tiles (section at the end): the s2mel WaveNet layer as two GEMMs,
            the k-tap REFLECT conv gathered in the A load with the gated tanh * sigmoid epilogue, and res_skip with the
            in-place residual / skip updates (reference.wavenet_gate_ref, reference.wavenet_res_skip_ref).
Limits:     forward only; K >= 1; no split-K (K <= 5120 here); no .item() or host sync (CUDA-graph safe).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ._jit import cast_to, dot_prec
from ._utils import (
    cdiv,
    check_launchable,
    check_out_buffer,
    check_tensor,
    is_interpreting,
    next_pow2,
    note_launch,
    rows_view,
)
from ._validate import ffn_args, gemm_args, ln_gemm_args, validate_once
from .reference import pack_w13

__all__ = [
    "linear_fwd",
    "swiglu_linear_fwd",
    "swiglu_feed_forward_fwd",
    "gpt2_mlp_fwd",
    "pack_w13",
    "gemm_launch_config",
    "wavenet_gate_fwd",
    "wavenet_res_skip_fwd",
]

ACT_NONE, ACT_GELU_NEW, ACT_SWIGLU = 0, 1, 2
_ACTIVATIONS = {None: ACT_NONE, "gelu_new": ACT_GELU_NEW}
DECODE_MAX_M = 8  # rows up to which the GEMV regime runs
_H100_SMS = 132  # the tile-count target used for the AOT table (launches ask the device)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(rows, columns) of this program's output tile, in grouped order: GROUP_M row tiles sweep the columns
    together, so their weight tiles are reused from L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_size
    pid_n = (pid % num_in_group) // group_size
    return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _operand_rows(rm, rn, M, N, stride_wn):
    """(x rows, weight rows, offset of the first w3 row of a packed SwiGLU weight), int64 for the stride products.
    Operand rows/columns past the edge wrap to valid ones (their results are never stored): the loads in the K loop
    need no row/column mask, only a K mask when K is not a multiple of BLOCK_K."""
    return (rm % M).to(tl.int64), (rn % N).to(tl.int64), tl.cast(N, tl.int64) * stride_wn


@triton.jit
def _epilogue(acc, gate, BIAS, R, C, W, rm, rn, m_ok, n_ok, stride_rm, stride_cm,
              HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr):  # fmt: skip
    """Both regimes' epilogue, fp32: acc [BM, BN] = x @ W^T of rows rm and columns rn (gate = x @ W3^T for SwiGLU),
    then bias, activation, residual and one rounding at the store into C, plus the official cast points below (W's
    element type is the operands' dtype). Only rows m_ok and columns n_ok are stored."""
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        # the projection's result in x's dtype first (the official Conv1D output), then the activation in fp32
        # (under CUDA autocast gelu_new's pow runs in fp32, so the official activation is fp32 math on it too)
        acc = cast_to(acc, W.dtype.element_ty).to(tl.float32)
        # gelu_new: 0.5 u (1 + tanh(z)) with z = sqrt(2/pi) (u + 0.044715 u^3), and 0.5 (1 + tanh(z)) = sigmoid(2z)
        acc = acc * tl.sigmoid(1.5957691216057308 * (acc + 0.044715 * acc * acc * acc))
    if ACT == 2:
        acc = acc * tl.sigmoid(acc) * gate
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        if R.dtype.element_ty != W.dtype.element_ty:
            # a wider residual stream (fp32 under fp16 autocast): the projection is rounded to x's dtype, then added
            # in the stream's precision, as torch's type promotion of ``residual + proj(x)`` does
            acc = cast_to(acc, W.dtype.element_ty).to(tl.float32)
        acc += tl.load(R + rm.to(tl.int64)[:, None] * stride_rm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(C + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :], cast_to(acc, C.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _gemm_mma_kernel(
    A,  # pointer to x rows [M, K]
    W,  # pointer to the weight [N, K] ([2N, K] for SwiGLU: w1 rows, then w3 rows)
    BIAS,  # pointer to bias [N] (HAS_BIAS)
    R,  # pointer to residual rows [M, N] (HAS_RESIDUAL)
    C,  # pointer to output rows [M, N]
    LNW,  # unused (the GEMV's LayerNorm operands): both kernels take one argument list, so one launch call serves
    LNB,  # both, and the compiled code is the one-kernel version's (without these three ptxas allocated sm_90's
    ln_eps,  # wgmma tiles differently: +-1-3 registers, +-1 load in flight)
    M,
    N,  # output columns (I for SwiGLU)
    K,
    stride_am,
    stride_wn,
    stride_rm,
    stride_cm,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 gelu_new, 2 swiglu (silu(x w1) * (x w3))
    INPUT_PRECISION: tl.constexpr,  # fp32 tl.dot: "ieee", "tf32" or "tf32x3"
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K mask in the loop
):
    """Tensor-core regime (M > 8): one [BLOCK_M, BLOCK_N] tile per program, tl.dot over K slabs."""
    rm, rn = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    am, wn, w3_off = _operand_rows(rm, rn, M, N, stride_wn)
    a_ptrs = A + am[:, None] * stride_am + rk[None, :]  # [BM, BK]
    w_ptrs = W + wn[None, :] * stride_wn + rk[:, None]  # [BK, BN]: the W^T tile, K contiguous
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = (k + rk) < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = dot_prec(a, w, acc, INPUT_PRECISION)
        if ACT == 2:
            if EVEN_K:
                w3 = tl.load(w_ptrs + w3_off)
            else:
                w3 = tl.load(w_ptrs + w3_off, mask=k_ok[:, None], other=0.0)
            gate = dot_prec(a, w3, gate, INPUT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    _epilogue(acc, gate, BIAS, R, C, W, rm, rn, m_ok, n_ok, stride_rm, stride_cm, HAS_BIAS, HAS_RESIDUAL, ACT)


@triton.jit(do_not_specialize=["M"])
def _gemm_gemv_kernel(
    A,  # pointer to x rows [M, K] (HAS_LN: the residual stream)
    W,  # pointer to the weight [N, K] ([2N, K] for SwiGLU: w1 rows, then w3 rows)
    BIAS,  # pointer to bias [N] (HAS_BIAS)
    R,  # pointer to residual rows [M, N] (HAS_RESIDUAL)
    C,  # pointer to output rows [M, N]
    LNW,  # pointer to the LayerNorm gain [K] (HAS_LN)
    LNB,  # pointer to the LayerNorm bias [K] (HAS_LN)
    ln_eps,
    M,
    N,  # output columns (I for SwiGLU)
    K,
    stride_am,
    stride_wn,
    stride_rm,
    stride_cm,
    HAS_LN: tl.constexpr,  # x is the residual stream, LayerNorm(x) (rounded to W's dtype) the operand
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 gelu_new, 2 swiglu (silu(x w1) * (x w3))
    BLOCK_M: tl.constexpr,  # >= M: every program owns all the rows
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K mask in the loop
    PREFETCH: tl.constexpr,  # the next K slab is loaded in the body that multiplies the current one
):
    """Decode regime (M <= 8): every row and BLOCK_N output columns per program, CUDA-core products, the weight
    streamed once."""
    # the MMA kernel's tile order with one row tile (the program's column block is its id): the same arithmetic,
    # because ptxas allocates the K loop better after it (with rm = arange(BLOCK_M) c_proj's BM1 GEMV spilled 8
    # bytes on sm_86/89/90)
    rm, rn = _tile(M, N, BLOCK_M, BLOCK_N, 1)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    am, wn, w3_off = _operand_rows(rm, rn, M, N, stride_wn)
    # [BM, BN, BK] tiles: a slab's BK values are split over all the program's threads, one 16-byte vector each
    # (BK = 32 * num_warps * 16 bytes / element), and every thread holds its vector of every row and every
    # column. x's slab is read in the very layout the weight's is, so nothing crosses threads (no shared
    # memory, no barrier) until the one reduction over K at the end.
    a_ptrs = A + am[:, None, None] * stride_am + rk[None, None, :]  # [BM, 1, BK]
    w_ptrs = W + wn[None, :, None] * stride_wn + rk[None, None, :]  # [1, BN, BK]
    kk = rk[None, None, :]
    mean0 = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
    corr = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
    if HAS_LN:
        # the LayerNorm of the consumed rows (a decode row is K values, a few KB: L1/L2-resident), with
        # layer_norm_fwd's corrected two-pass statistics: mean0, then the mean of the deviations, then the variance
        # about both
        s1 = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            xa = tl.load(a_ptrs + k, mask=(k + kk) < K, other=0.0).to(tl.float32)
            s1 += tl.sum(xa, axis=2, keep_dims=True)
        mean0 = s1 / K
        s2 = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            ok = (k + kk) < K
            xa = tl.load(a_ptrs + k, mask=ok, other=0.0).to(tl.float32)
            s2 += tl.sum(tl.where(ok, xa - mean0, 0.0), axis=2, keep_dims=True)
        corr = s2 / K
        s3 = tl.zeros([BLOCK_M, 1, 1], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            ok = (k + kk) < K
            xa = tl.load(a_ptrs + k, mask=ok, other=0.0).to(tl.float32)
            xc = tl.where(ok, (xa - mean0) - corr, 0.0)
            s3 += tl.sum(xc * xc, axis=2, keep_dims=True)
        rstd = tl.math.rsqrt(s3 / K + ln_eps)
    acc3d = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    gate3d = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    # software prefetch (PREFETCH): the next slab's loads are requested in the body that multiplies the current
    # one, back to back, as one batch per thread (without it ptxas interleaves the slab's loads with their
    # products and fewer are in flight: the audit's loads-in-flight column, 3 against 5 at BM = 1)
    k_ok = kk < K
    a_nx = tl.load(a_ptrs, mask=k_ok & PREFETCH, other=0.0)
    w_nx = tl.load(w_ptrs, mask=k_ok & PREFETCH, other=0.0)
    w3_nx = w_nx
    if ACT == 2:
        w3_nx = tl.load(w_ptrs + w3_off, mask=k_ok & PREFETCH, other=0.0)
    for k in range(0, K, BLOCK_K):
        if PREFETCH:
            a = a_nx.to(tl.float32)
            w = w_nx.to(tl.float32)
            w3 = w3_nx.to(tl.float32)
            if EVEN_K:
                # the last iteration re-reads the first slab (an L2 hit, never used) instead of masking the loads
                nxt = tl.multiple_of((k + BLOCK_K) % K, BLOCK_K)  # K % BLOCK_K == 0
                a_nx = tl.load(a_ptrs + nxt)
                w_nx = tl.load(w_ptrs + nxt)
                if ACT == 2:
                    w3_nx = tl.load(w_ptrs + w3_off + nxt)
            else:
                nx_ok = (k + BLOCK_K + kk) < K  # all false after the last slab: nothing is read
                a_nx = tl.load(a_ptrs + (k + BLOCK_K), mask=nx_ok, other=0.0)
                w_nx = tl.load(w_ptrs + (k + BLOCK_K), mask=nx_ok, other=0.0)
                if ACT == 2:
                    w3_nx = tl.load(w_ptrs + w3_off + (k + BLOCK_K), mask=nx_ok, other=0.0)
        else:  # BM = 8: the rows' vectors alone fill the registers a second slab would need
            ok = (k + kk) < K
            a = tl.load(a_ptrs + k, mask=ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptrs + k, mask=ok, other=0.0).to(tl.float32)
            w3 = w
            if ACT == 2:
                w3 = tl.load(w_ptrs + w3_off + k, mask=ok, other=0.0).to(tl.float32)
        if HAS_LN:
            cur = (k + kk) < K
            g = tl.load(LNW + k + kk, mask=cur, other=0.0).to(tl.float32)
            b = tl.load(LNB + k + kk, mask=cur, other=0.0).to(tl.float32)
            a = ((a - mean0) - corr) * rstd * g + b
            a = cast_to(tl.where(cur, a, 0.0), W.dtype.element_ty).to(tl.float32)
        acc3d += a * w
        if ACT == 2:
            gate3d += a * w3
    acc = tl.sum(acc3d, axis=2)
    gate = tl.sum(gate3d, axis=2)
    _epilogue(acc, gate, BIAS, R, C, W, rm, rn, m_ok, n_ok, stride_rm, stride_cm, HAS_BIAS, HAS_RESIDUAL, ACT)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


GEMV_MIN_THREAD_COLUMNS = 2560  # N x warps per program: the weight bytes in flight that keep HBM busy (see below)


def gemv_config(BM: int, N: int, K: int, dtype: torch.dtype, *, swiglu: bool = False):
    """(BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) of the compiled decode GEMV for BM rows.

    A slab is one 16-byte vector per thread and column (BK = 32 x warps x 16 / element bytes: 256 fp16 or 128
    fp32 values per warp). BN: BM x BN x vector <= 32 fp32 accumulator values per thread (16 for each of SwiGLU's
    two), at least 1 (64 spilled at BM = 4 and 8). Each thread requests a slab's BN weight vectors back to back,
    so the grid has (N / BN) x 32 x warps x BN x 16 = N x warps x 512 bytes of weight loads in flight, whatever BN
    is; bandwidth x latency is about 2.3 MB on an H100 (3.35 TB/s x ~0.7 us). Warps start at 1 and double (up to
    4, while two slabs fit K) while N x warps < GEMV_MIN_THREAD_COLUMNS (2560 -> 1.3 MB per slab): c_attn and
    c_fc 1 warp, the two c_proj (N = 1280) 2. More warps per program spill 8 bytes on sm_86/89 (ptxas caps
    multi-warp programs at fewer registers), and so does BM = 8 beyond one warp.
    """
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    warps = 1
    while BM <= 4 and warps < 4 and N * warps < GEMV_MIN_THREAD_COLUMNS and 2 * 32 * vec * warps <= K:
        warps *= 2
    BK = 32 * vec * warps
    budget = 32 // (2 if swiglu else 1)
    BN = max(1, budget // (BM * vec))
    return BN, BK, 1, warps, 3  # num_stages: Triton's default, as the AOT table compiles (no tl.dot to pipeline)


def gemm_launch_config(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    *,
    swiglu: bool = False,
    residual: bool = False,
    precision: str = "ieee",
    num_sms: int = _H100_SMS,
    interpret: Optional[bool] = None,
) -> tuple[bool, int, int, int, int, int, int]:
    """(GEMV, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) for an [M, K] x [N, K]^T launch.

    Decode (M <= 8): one program owns every row and BLOCK_N output columns, one 16-byte vector per thread per K
    slab (``gemv_config``: 32 accumulator values per thread, half each for SwiGLU's two).
    Tensor-core regime: the big tile when it alone gives at least one tile per SM, else 64 x 64 (GPT prefill
    c_proj: 600 x 1280 is 50 big tiles but 200 small ones). fp16/bf16: 128 x 128 x 32 at 8 warps (with a
    residual, or SwiGLU's two accumulators: 128 x 64 x 32), small 64 x 64 x 32. fp32 on tensor cores (tf32, tf32x3): 128 x 64 x 16
    at 8 warps, small and SwiGLU 64 x 64 x 16. fp32 "ieee" (FMA): 64 x 64 x 16. Each choice is the largest
    that compiles without spills on sm_86/89/90 with every epilogue flag set (checked with the AOT tool;
    128 x 128 fp32 tiles spill). Shared memory stays under 48 KiB at 3 stages. num_stages is 3 everywhere,
    Triton's default, so the AOT table compiles exactly what runs. Under the interpreter one big-tile config.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    if M <= DECODE_MAX_M:
        BM = next_pow2(M)
        if is_interpreting() if interpret is None else interpret:
            return True, BM, min(256, next_pow2(N)), min(512, next_pow2(K)), 1, 4, 1
        return (True, BM, *gemv_config(BM, N, K, dtype, swiglu=swiglu))
    if is_interpreting() if interpret is None else interpret:
        return False, 64, 64, 64, 8, 4, 1
    if not half and precision == "ieee":
        return False, 64, 64, 16, 8, 4, 3
    if not half:  # tf32 / tf32x3: fp32 operands (and tf32x3's split halves) take registers; BLOCK_K 16
        if not swiglu and cdiv(M, 128) * cdiv(N, 64) >= num_sms:
            return False, 128, 64, 16, 8, 8, 3
        return False, 64, 64, 16, 8, 4, 3
    if swiglu:
        if cdiv(M, 128) * cdiv(N, 64) >= num_sms:
            return False, 128, 64, 32, 8, 8, 3
        return False, 64, 64, 32, 8, 4, 3
    BN = 64 if residual else 128  # a 128 x 128 residual tile on top of the accumulator spills
    if cdiv(M, 128) * cdiv(N, BN) >= num_sms:
        return False, 128, BN, 32, 8, 8, 3
    return False, 64, 64, 32, 8, 4, 3  # BLOCK_K 64 would spill with the gelu + residual epilogue


def _specialization(M: int, N: int, K: int, dtype: torch.dtype, *, interpret: Optional[bool] = None, **kw):
    """(kernel, constexprs, num_warps, num_stages) of one launch: the single place the launcher and the AOT table
    share. The kernel is the regime's (``_gemm_gemv_kernel`` for M <= DECODE_MAX_M, else ``_gemm_mma_kernel``).
    Memoized per shape and flags (the interpreter's choice resolved first, so it is part of the key)."""
    return _specialization_of(M, N, K, dtype, interpret=is_interpreting() if interpret is None else interpret, **kw)


@functools.lru_cache(maxsize=4096)
def _specialization_of(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    *,
    act: int,
    has_bias: bool,
    has_residual: bool,
    precision: Optional[str],
    num_sms: int,
    interpret: Optional[bool] = None,
    has_ln: bool = False,
) -> tuple:
    prec = (precision or "ieee") if dtype == torch.float32 else "tf32"  # no effect on fp16/bf16 operands
    gemv, BM, BN, BK, GM, warps, stages = gemm_launch_config(
        M, N, K, dtype, swiglu=act == ACT_SWIGLU, residual=has_residual, precision=prec, num_sms=num_sms,
        interpret=interpret,
    )  # fmt: skip
    if has_ln and not gemv:
        raise ValueError(f"the LayerNorm prologue is the decode regime's (M <= {DECODE_MAX_M}), got M = {M}")
    const = dict(HAS_BIAS=has_bias, HAS_RESIDUAL=has_residual, ACT=act, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                 EVEN_K=K % BK == 0)  # fmt: skip
    if gemv:  # no tl.dot: one compiled variant whatever ``precision`` says
        return _gemm_gemv_kernel, dict(const, HAS_LN=has_ln, PREFETCH=BM < 8), warps, stages
    return _gemm_mma_kernel, dict(const, INPUT_PRECISION=prec, GROUP_M=GM), warps, stages


def _prepare_out(op, out, shape, dtype, x, weight, bias, residual):
    if out is None:
        return torch.empty(shape, dtype=dtype, device=x.device)
    check_tensor("out", out, dtypes=(dtype,), device=x.device, shape=tuple(shape))
    check_out_buffer(op, "out", out, (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)),
                     in_place_ok=("residual",))  # fmt: skip
    return out


def _launch(op, x, weight, bias, residual, act, precision, out, *, checked=False, ln=None):
    """One GEMM launch. ``ln`` = (gain, bias, eps): x is the residual stream and LayerNorm(x), rounded to the
    weight's dtype, is the operand (GEMV regime only; the caller checked)."""
    if not checked:  # the feed-forward launchers validate the whole block once (ffn_args), then skip this
        validate_once(gemm_args, op, x, weight, bias=bias, residual=residual, swiglu=act == ACT_SWIGLU,
                      precision=precision)  # fmt: skip
    check_launchable(x, op)
    K = x.shape[-1]
    N = weight.shape[0] // 2 if act == ACT_SWIGLU else weight.shape[0]
    op_dtype = weight.dtype if ln is not None else x.dtype
    out_dtype = op_dtype if residual is None else torch.promote_types(op_dtype, residual.dtype)
    y = _prepare_out(op, out, tuple(x.shape[:-1]) + (N,), out_dtype, x, weight, bias, residual)
    M = x.numel() // K
    if M == 0 or N == 0:
        return y
    x2 = rows_view("x", x, K, copy_ok=True)
    y2 = rows_view("out", y, N)
    r2 = rows_view("residual", residual, N, copy_ok=True) if residual is not None else y2
    sms = _num_sms(x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda else 1
    kernel, const, warps, stages = _specialization(
        M, N, K, op_dtype, act=act, has_bias=bias is not None, has_residual=residual is not None,
        precision=precision, num_sms=sms, has_ln=ln is not None,
    )  # fmt: skip
    grid = (cdiv(M, const["BLOCK_M"]) * cdiv(N, const["BLOCK_N"]),)
    lnw, lnb, eps = ln if ln is not None else (weight, weight, 0.0)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        note_launch("gemm")
        kernel[grid](
            x2, weight, bias if bias is not None else weight, r2, y2, lnw, lnb, float(eps),
            M, N, K,
            x2.stride(0), weight.stride(0), r2.stride(0), y2.stride(0),
            **const, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return y


def linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``y = act(x @ weight.T + bias) + residual``; weight [N, K] (nn.Linear layout), activation None or "gelu_new".

    ``precision`` ("ieee" default, "tf32x3", "tf32") applies to fp32 inputs in the tensor-core regime.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"linear_fwd: activation must be None or 'gelu_new', got {activation!r}")
    return _launch("linear_fwd", x, weight, bias, residual, _ACTIVATIONS[activation], precision, out)


def ln_linear_fwd(
    x: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``act(LayerNorm(x) @ weight.T + bias) + residual``: GPT-2's ln_1 + c_attn and ln_2 + c_fc + gelu_new.

    x is the residual stream (fp32 under fp16 autocast, or the weights' dtype); the LayerNorm is computed in fp32
    and rounded to the weight's dtype, the GEMM operand (autocast's fp32 LayerNorm, then its cast). For up to
    8 rows (decode) the LayerNorm is the GEMV's prologue: one launch; beyond, layer_norm_fwd then linear_fwd.
    """
    op = "ln_linear_fwd"
    validate_once(ln_gemm_args, op, x, ln_weight, ln_bias, eps, weight, bias=bias, residual=residual,
                  activation=activation)  # fmt: skip
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    if M > DECODE_MAX_M:
        from .norm import layer_norm_fwd

        y = layer_norm_fwd(x, ln_weight, ln_bias, eps, out_dtype=weight.dtype)
        return _launch(op, y, weight, bias, residual, _ACTIVATIONS[activation], None, out)
    return _launch(op, x, weight, bias, residual, _ACTIVATIONS[activation], None, out, checked=True,
                   ln=(ln_weight, ln_bias, eps))  # fmt: skip


def swiglu_linear_fwd(
    x: torch.Tensor,
    w13: torch.Tensor,
    *,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``silu(x @ w1.T) * (x @ w3.T)`` with ``w13 = pack_w13(w1, w3)`` [2I, K]; returns [..., I]."""
    return _launch("swiglu_linear_fwd", x, w13, None, None, ACT_SWIGLU, precision, out)


def swiglu_feed_forward_fwd(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT FeedForward (+ the block's residual): ``residual + w2(silu(w1 x) * w3 x)``, two launches."""
    validate_once(ffn_args, "swiglu_feed_forward_fwd", x, w13, w2, residual=residual, swiglu=True, precision=precision)
    h = _launch("swiglu_feed_forward_fwd", x, w13, None, None, ACT_SWIGLU, precision, None, checked=True)
    return _launch("swiglu_feed_forward_fwd", h, w2, None, residual, ACT_NONE, precision, out, checked=True)


def gpt2_mlp_fwd(
    x: torch.Tensor,
    c_fc_weight: torch.Tensor,
    c_fc_bias: torch.Tensor,
    c_proj_weight: torch.Tensor,
    c_proj_bias: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """GPT-2 MLP (+ the block's residual): ``residual + c_proj(gelu_new(c_fc(x)))``; weights [out, in], two launches."""
    validate_once(
        ffn_args, "gpt2_mlp_fwd", x, c_fc_weight, c_proj_weight, b_in=c_fc_bias, b_out=c_proj_bias,
        residual=residual, swiglu=False, precision=precision,
    )  # fmt: skip
    h = _launch("gpt2_mlp_fwd", x, c_fc_weight, c_fc_bias, None, ACT_GELU_NEW, precision, None, checked=True)
    return _launch("gpt2_mlp_fwd", h, c_proj_weight, c_proj_bias, residual, ACT_NONE, precision, out, checked=True)


_ACT_NAMES = {None: ACT_NONE, "gelu_new": ACT_GELU_NEW, "swiglu": ACT_SWIGLU}
_TORCH_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _aot_args(kernel, const: dict, N: int, K: int, *, x: str, w: str, r: str) -> tuple[dict, list]:
    """The kernel's AOT signature (x rows of dtype ``x``; weight, bias and LayerNorm params ``w``; residual and
    output ``r``; the constexprs of ``const``) and the arguments a real launch specializes as 16-divisible: every
    pointer (torch allocations are 16-byte aligned, the rows contiguous), N, K and the row strides (K for x and the
    weight, N for the residual and output) where they are multiples of 16."""
    types = {"A": f"*{x}", "W": f"*{w}", "BIAS": f"*{w}", "R": f"*{r}", "C": f"*{r}", "LNW": f"*{w}", "LNB": f"*{w}",
             "ln_eps": "fp32"}  # fmt: skip
    sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in kernel.arg_names}
    by16 = {"N": N, "stride_rm": N, "stride_cm": N, "K": K, "stride_am": K, "stride_wn": K}
    divisible = [a for a, t in sig.items() if t.startswith("*") or (a in by16 and by16[a] % 16 == 0)]
    return sig, divisible


def _representative_rows(rows: range) -> list[int]:
    """Rows that reach every config of ``rows``: M picks the regime and BLOCK_M up to DECODE_MAX_M, beyond it
    only the tile count cdiv(M, 128) against the SM count matters, and compile_variants tries both extremes."""
    return sorted({m for m in rows if m <= DECODE_MAX_M} | {rows[-1]})


def compile_variants(gemms=(), ln_gemms=(), wavenets=()):
    """Every kernel specialization the launchers produce for the requested GEMMs, for the AOT compile check.

    ``gemms``: (tag, N, K, bias, residual, activation, dtypes, rows, precisions) per linear_fwd /
    swiglu_linear_fwd launch: weight [N, K] (SwiGLU: N is the output width I of the packed [2I, K] w13), flags
    ``bias`` and ``residual``, ``activation`` None, "gelu_new" or "swiglu"; ``dtypes`` the operand dtypes ("fp32",
    "fp16", "bf16"; "fp16+r32": fp16 operands with an fp32 residual and output); ``rows`` the range of M launched;
    ``precisions`` the fp32 ``precision`` values passed (None: the default, "ieee"; ignored for fp16/bf16).
    ``ln_gemms``: (tag, N, K, bias, activation, dtypes) per ln_linear_fwd in the decode regime (M <= 8), no
    residual; dtype "fp16+x32": an fp32 stream x, fp16 weights, operand and output.
    Yields (name, jit_fn, signature, constexprs, num_warps, divisible, grid). ``grid``: the programs of the
    representative launch (the entry's largest M; the GEMVs' any M). ``divisible`` names the arguments a real
    launch specializes as 16-divisible, so the table compiles the code that runs. Covers each entry at each of its
    dtypes and precisions, each row count and any SM count (the big/small tile choice is made against the device's
    SM count: 1 and an unbounded count give both). Identical constexprs are listed once.
    """
    requests = [(*g, False) for g in gemms]
    requests += [(tag, N, K, b, False, act, dts, range(1, DECODE_MAX_M + 1), (None,), True)
                 for tag, N, K, b, act, dts in ln_gemms]  # fmt: skip
    seen = set()
    for tag, N, K, has_b, has_r, act, dtypes, rows, precisions, has_ln in requests:
        for dtype_tag in dtypes:
            tname, _, wide = dtype_tag.partition("+")  # "fp16+r32": the residual's dtype, "fp16+x32": x's
            wide = f"fp{wide[1:]}" if wide else tname
            xname, rname = (wide, tname) if has_ln else (tname, wide)
            for prec in precisions if tname == "fp32" else (None,):
                for M in _representative_rows(rows):
                    for sms in (1, 1 << 30):
                        kernel, const, nw, _stages = _specialization(
                            M, N, K, _TORCH_DT[tname], act=_ACT_NAMES[act], has_bias=has_b, has_residual=has_r,
                            precision=prec, num_sms=sms, interpret=False, has_ln=has_ln,
                        )  # fmt: skip
                        key = (dtype_tag, kernel.__name__, tuple(const.items()), nw)
                        if key in seen:
                            continue
                        seen.add(key)
                        sig, divisible = _aot_args(kernel, const, N, K, x=xname, w=tname, r=rname)
                        bm, bn, bk = const["BLOCK_M"], const["BLOCK_N"], const["BLOCK_K"]
                        if kernel is _gemm_gemv_kernel:
                            regime = f"{dtype_tag}/gemv/BM{bm}xBN{bn}xBK{bk}"
                        else:
                            pname = f"/{const['INPUT_PRECISION']}" if tname == "fp32" else ""
                            regime = f"{dtype_tag}{pname}/mma/{bm}x{bn}x{bk}"
                        grid = cdiv(M, bm) * cdiv(N, bn)
                        yield f"gemm/{tag}/{regime}", kernel, sig, const, nw, divisible, grid
    yield from compile_wavenet_variants(wavenets)


# ----------------------------------------------------------------------------------------------------------------------
# WaveNet layer (WN of the s2mel DiT's head): two GEMMs per layer, nothing else
#
#   gate      acts = tanh(a[:H] + g[:H]) * sigmoid(a[H:] + g[H:]),  a = conv_k(x) + bias    (x [B, T, C] channel-last)
#             the k-tap, dilation-1 conv as a GEMM whose A tile is gathered in the load (implicit im2col, tap-major
#             weight [2H, k*C]) at frames reflected at the valid length (the official SConv1d's REFLECT padding);
#             both halves in one tile (two accumulators over weight rows j and H + j, as SwiGLU's), the per-batch
#             condition g [B, 2H] and the gated tanh * sigmoid in the epilogue
#   res_skip  rs = acts @ W^T + bias;  x = (x + rs[:H]) * mask  and  skip = skip + rs[H:]  (in place), or for the
#             last layer skip = (skip + rs) * mask; the first layer's skip is rs (the official zeros + rs)
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _tanh(x):
    """tanh through the sigmoid (no libdevice): 2 sigmoid(2x) - 1."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit(do_not_specialize=["M", "T"])
def _wavenet_gate_kernel(
    X,  # pointer to the layer input rows [B*T, C] (channel-last)
    W,  # pointer to the weight [2H, TAPS*C], tap-major (column j*C + c reads tap j of channel c)
    BIAS,  # pointer to the bias [2H]
    G,  # pointer to the per-batch condition [B, 2H] (row stride stride_gb, 0: one row for every batch row)
    VALID,  # pointer to the valid lengths (int [1] or [B], HAS_VALID): a row's taps reflect at its batch row's; frames
    # at or past it read zero
    OUT,  # pointer to the gated activations [B*T, H]
    M,  # B*T
    T,
    H,
    C,
    stride_xm,
    stride_wn,
    stride_gb,
    stride_om,
    stride_vb,  # the valid lengths' stride over batch rows (0: one length for every row)
    TAPS: tl.constexpr,
    HAS_VALID: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_C: tl.constexpr,  # C % BLOCK_K == 0: a K slab lies in one tap (its frame index is per row, its loads unmasked)
):
    rm, rn = _tile(M, H, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < H
    rows = rm % M
    b = rows // T
    t = rows % T
    if HAS_VALID:
        V = tl.load(VALID + b * stride_vb).to(tl.int32)  # [BLOCK_M]: each row's batch row's valid length
    else:
        V = tl.zeros([BLOCK_M], dtype=tl.int32) + T
    LEFT: tl.constexpr = TAPS - 1 - (TAPS - 1) // 2
    # reflect about frame 0 and about the last frame; a sequence shorter than the pad is zero-extended to LEFT + 1
    # frames first (the official pad1d), and those extra frames read zero
    last = tl.maximum(V - 1, LEFT)
    _am, wn, w3_off = _operand_rows(rm, rn, M, H, stride_wn)
    w_ptrs = W + wn[None, :] * stride_wn + rk[:, None]  # [BK, BN]
    x_row0 = (b * T).to(tl.int64)
    K = TAPS * C
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if EVEN_C:
        # the implicit GEMM's natural nest: per tap the rows' source frames once, then its C channels in
        # BLOCK_K slabs (a slab never spans two taps, its loads need no K mask)
        for j in range(TAPS):
            p = tl.abs(t + j - LEFT)
            p = tl.where(p > last, 2 * last - p, p)
            p_ok = p < V  # past the sequence (zero-extended) reads zero
            p = tl.minimum(tl.maximum(p, 0), T - 1)
            a_ptrs = X + (x_row0 + p)[:, None] * stride_xm + rk[None, :]
            for _c in range(0, C, BLOCK_K):
                a = tl.load(a_ptrs, mask=p_ok[:, None], other=0.0)
                w = tl.load(w_ptrs)
                w3 = tl.load(w_ptrs + w3_off)
                acc = dot_prec(a, w, acc, INPUT_PRECISION)
                gate = dot_prec(a, w3, gate, INPUT_PRECISION)
                a_ptrs += BLOCK_K
                w_ptrs += BLOCK_K
    else:
        for k in range(0, K, BLOCK_K):
            kk = k + rk
            k_ok = kk < K
            p = tl.abs(t[:, None] + (kk // C)[None, :] - LEFT)  # [BM, BK]: a slab may span taps
            p = tl.where(p > last[:, None], 2 * last[:, None] - p, p)
            a_ok = k_ok[None, :] & (p < V[:, None])  # past the sequence (zero-extended) reads zero
            p = tl.minimum(tl.maximum(p, 0), T - 1)
            a = tl.load(X + (x_row0[:, None] + p) * stride_xm + (kk % C)[None, :], mask=a_ok, other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            w3 = tl.load(w_ptrs + w3_off, mask=k_ok[:, None], other=0.0)
            acc = dot_prec(a, w, acc, INPUT_PRECISION)
            gate = dot_prec(a, w3, gate, INPUT_PRECISION)
            w_ptrs += BLOCK_K
    # a = conv(x) + bias (the conv's own output), then + g, in the official order
    acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    gate += tl.load(BIAS + H + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    g_ptrs = G + b.to(tl.int64)[:, None] * stride_gb + rn[None, :]
    acc += tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32)
    gate += tl.load(g_ptrs + H, mask=mask, other=0.0).to(tl.float32)
    y = _tanh(acc) * tl.sigmoid(gate)
    tl.store(OUT + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], cast_to(y, OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "T"])
def _wavenet_res_skip_kernel(
    A,  # pointer to the gated activations [B*T, H]
    W,  # pointer to the weight [2H, H] (rows j: residual, H + j: skip), the last layer's [H, H] (skip)
    BIAS,  # pointer to the bias [2H] (last layer [H])
    X,  # pointer to the residual stream [B*T, H], updated in place (not LAST)
    S,  # pointer to the skip sum [B*T, H], updated in place (written, not read, when FIRST)
    LENS,  # pointer to the per-row lengths [B] (int): frames t < LENS[b] are kept by the mask
    M,
    T,
    H,
    stride_am,
    stride_wn,
    stride_xm,
    stride_sm,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    rm, rn = _tile(M, H, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < H
    am, wn, w3_off = _operand_rows(rm, rn, M, H, stride_wn)
    a_ptrs = A + am[:, None] * stride_am + rk[None, :]
    w_ptrs = W + wn[None, :] * stride_wn + rk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    sk = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, H, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = (k + rk) < H
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = dot_prec(a, w, acc, INPUT_PRECISION)
        if not LAST:
            if EVEN_K:
                w3 = tl.load(w_ptrs + w3_off)
            else:
                w3 = tl.load(w_ptrs + w3_off, mask=k_ok[:, None], other=0.0)
            sk = dot_prec(a, w3, sk, INPUT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    rows = rm % M
    keep = (rows % T) < tl.load(LENS + rows // T, mask=m_ok, other=0)
    fmask = keep.to(tl.float32)[:, None]  # the official float mask, multiplied
    mask = m_ok[:, None] & n_ok[None, :]
    r64 = rm.to(tl.int64)[:, None]
    s_ptrs = S + r64 * stride_sm + rn[None, :]
    acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if LAST:
        s = acc
        if not FIRST:
            s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32) + s
        tl.store(s_ptrs, cast_to(s * fmask, S.dtype.element_ty), mask=mask)
    else:
        sk += tl.load(BIAS + H + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        x_ptrs = X + r64 * stride_xm + rn[None, :]
        xv = (tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32) + acc) * fmask
        tl.store(x_ptrs, cast_to(xv, X.dtype.element_ty), mask=mask)
        if not FIRST:
            sk = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32) + sk
        tl.store(s_ptrs, cast_to(sk, S.dtype.element_ty), mask=mask)


def _wavenet_config(M: int, N: int, K: int, dtype: torch.dtype, precision, num_sms: int, interpret=None) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, precision): the tensor-core regime's SwiGLU
    config (two accumulators) at any M (no GEMV regime: these GEMMs have B*T rows)."""
    prec = (precision or "ieee") if dtype == torch.float32 else "tf32"
    _, BM, BN, BK, GM, warps, stages = gemm_launch_config(
        max(M, DECODE_MAX_M + 1), N, K, dtype, swiglu=True, residual=True, precision=prec, num_sms=num_sms,
        interpret=interpret,
    )  # fmt: skip
    return BM, BN, BK, GM, warps, stages, prec


def _wavenet_gate_spec(M, H, C, taps, dtype, *, precision, has_valid, num_sms, interpret=None):
    BM, BN, BK, GM, warps, stages, prec = _wavenet_config(M, H, taps * C, dtype, precision, num_sms, interpret)
    if dtype == torch.float32 and prec != "tf32" and warps < 8:
        # the gathered A tile's row offsets on top of two fp32 accumulators (and tf32x3's split operands): at 4
        # warps the 64 x 64 x 16 tile spills 24-48 bytes on sm_86/89 (tf32x3), at 8 none; "tf32" is the other way
        # round (4 warps: none; 8: ptxas caps the registers at 128 and spills 8 bytes). The AOT table checks both.
        warps = 8
    const = dict(TAPS=taps, HAS_VALID=has_valid, INPUT_PRECISION=prec, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                 GROUP_M=GM, EVEN_C=C % BK == 0)  # fmt: skip
    return _wavenet_gate_kernel, const, warps, stages


def _wavenet_res_skip_spec(M, H, dtype, *, precision, first, last, num_sms, interpret=None):
    BM, BN, BK, GM, warps, stages, prec = _wavenet_config(M, H, H, dtype, precision, num_sms, interpret)
    const = dict(FIRST=first, LAST=last, INPUT_PRECISION=prec, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=GM,
                 EVEN_K=H % BK == 0)  # fmt: skip
    return _wavenet_res_skip_kernel, const, warps, stages


def _sms_of(x: torch.Tensor) -> int:
    return _num_sms(x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda else 1


def wavenet_gate_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    cond: torch.Tensor,
    *,
    taps: int,
    valid_len: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``tanh(a[..., :H] + cond[:, :H]) * sigmoid(a[..., H:] + cond[:, H:])`` with ``a`` the ``taps``-tap,
    dilation-1, same-length conv of x [B, T, C] (channel-last) with REFLECT padding (``weight`` [2H, taps*C]
    tap-major, ``bias`` [2H]); ``cond`` [B, 2H] (or [1, 2H]: every batch row) per batch row. ``valid_len`` (int
    tensor [1], or [B]: one per batch row): the taps reflect at that length instead of T (frames beyond it are
    padding). Returns [B, T, H]."""
    from ._validate import wavenet_gate_args

    validate_once(wavenet_gate_args, "wavenet_gate_fwd", x, weight, bias, cond, taps=taps, valid_len=valid_len,
                  precision=precision, out=out)  # fmt: skip
    check_launchable(x, "wavenet_gate_fwd")
    B, T, C = x.shape
    H = weight.shape[0] // 2
    y = _prepare_out("wavenet_gate_fwd", out, (B, T, H), x.dtype, x, weight, bias, None)
    M = B * T
    if M == 0 or H == 0:
        return y
    x2 = rows_view("x", x, C, copy_ok=True)
    y2 = rows_view("out", y, H)
    kernel, const, warps, stages = _wavenet_gate_spec(
        M, H, C, taps, x.dtype, precision=precision, has_valid=valid_len is not None, num_sms=_sms_of(x)
    )
    grid = (cdiv(M, const["BLOCK_M"]) * cdiv(H, const["BLOCK_N"]),)
    gstride = cond.stride(0) if cond.shape[0] > 1 else 0
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        note_launch("gemm")
        kernel[grid](
            x2, weight, bias, cond, valid_len if valid_len is not None else bias, y2,
            M, T, H, C, x2.stride(0), weight.stride(0), gstride, y2.stride(0),
            valid_len.stride(0) if valid_len is not None and valid_len.numel() > 1 else 0,
            **const, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return y


def wavenet_res_skip_fwd(
    acts: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    skip: torch.Tensor,
    lens: torch.Tensor,
    *,
    first: bool,
    last: bool,
    precision: Optional[str] = None,
) -> None:
    """One WaveNet layer's res_skip conv (k1) and its updates, in place: ``rs = acts @ weight.T + bias``; not
    ``last``: ``x = (x + rs[..., :H]) * mask``, ``skip = skip + rs[..., H:]`` (``first``: ``skip = rs[..., H:]``,
    skip's old content unread); ``last`` (weight [H, H]): ``skip = (skip + rs) * mask``, x untouched. acts, x,
    skip [B, T, H]; mask[b, t] = t < lens[b] (lens int [B])."""
    from ._validate import wavenet_res_skip_args

    validate_once(wavenet_res_skip_args, "wavenet_res_skip_fwd", acts, weight, bias, x, skip, lens, last=last,
                  precision=precision)  # fmt: skip
    check_launchable(acts, "wavenet_res_skip_fwd")
    B, T, H = acts.shape
    M = B * T
    if M == 0 or H == 0:
        return
    a2 = rows_view("acts", acts, H, copy_ok=True)
    x2 = rows_view("x", x, H)
    s2 = rows_view("skip", skip, H)
    kernel, const, warps, stages = _wavenet_res_skip_spec(
        M, H, acts.dtype, precision=precision, first=bool(first), last=bool(last), num_sms=_sms_of(acts)
    )
    grid = (cdiv(M, const["BLOCK_M"]) * cdiv(H, const["BLOCK_N"]),)
    with torch.cuda.device(acts.device) if acts.is_cuda else contextlib.nullcontext():
        note_launch("gemm")
        kernel[grid](
            a2, weight, bias, x2, s2, lens, M, T, H,
            a2.stride(0), weight.stride(0), x2.stride(0), s2.stride(0),
            **const, num_warps=warps, num_stages=stages,
        )  # fmt: skip


def compile_wavenet_variants(wavenets=()):
    """The WaveNet layer kernels' specializations: ``wavenets`` = (tag, H, C, taps, dtypes, precisions) per WN."""
    seen = set()
    for tag, H, C, taps, dtypes, precisions in wavenets:
        for dtype_tag in dtypes:
            dt = _TORCH_DT[dtype_tag]
            for prec, sms in ((p, n) for p in (precisions if dtype_tag == "fp32" else (None,)) for n in (1, 1 << 30)):
                # the tile choice is made against the SM count: 1 and an unbounded count give both
                specs = [("gate", _wavenet_gate_spec(4096, H, C, taps, dt, precision=prec, has_valid=v, num_sms=sms,
                                                     interpret=False)) for v in (False, True)]  # fmt: skip
                specs += [("res_skip", _wavenet_res_skip_spec(4096, H, dt, precision=prec, first=f, last=la,
                                                              num_sms=sms, interpret=False))
                          for f in (False, True) for la in (False, True)]  # fmt: skip
                for part, (kernel, const, nw, _stages) in specs:
                    key = (dtype_tag, kernel.__name__, tuple(const.items()), nw)
                    if key in seen:
                        continue
                    seen.add(key)
                    if part == "gate":
                        types = {"X": dtype_tag, "W": dtype_tag, "BIAS": dtype_tag, "G": dtype_tag, "VALID": "i64",
                                 "OUT": dtype_tag}  # fmt: skip
                        by16 = {"H": H, "C": C, "stride_xm": C, "stride_wn": taps * C, "stride_gb": 2 * H,
                                "stride_om": H}  # fmt: skip
                        flags = f"taps{taps}" + ("+valid" if const["HAS_VALID"] else "")
                    else:
                        types = {"A": dtype_tag, "W": dtype_tag, "BIAS": dtype_tag, "X": dtype_tag, "S": dtype_tag,
                                 "LENS": "i32"}  # fmt: skip
                        by16 = {"H": H, "stride_am": H, "stride_wn": H, "stride_xm": H, "stride_sm": H}
                        flags = ("first+" if const["FIRST"] else "") + ("last" if const["LAST"] else "mid")
                    sig = {a: "constexpr" if a in const else (f"*{types[a]}" if a in types else "i32")
                           for a in kernel.arg_names}  # fmt: skip
                    divisible = [a for a, ty in sig.items() if ty.startswith("*") or (a in by16 and by16[a] % 16 == 0)]
                    bm, bn, bk = const["BLOCK_M"], const["BLOCK_N"], const["BLOCK_K"]
                    pname = f"/{const['INPUT_PRECISION']}" if dtype_tag == "fp32" else ""
                    grid = cdiv(4096, bm) * cdiv(H, bn)
                    yield (f"gemm/{tag}_{part}+{flags}/{dtype_tag}{pname}/mma/{bm}x{bn}x{bk}", kernel, sig, const, nw,
                           divisible, grid)  # fmt: skip
