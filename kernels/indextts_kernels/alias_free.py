"""BigVGAN's anti-aliased periodic activation in one pass, and the AMP blocks' merge, as Triton kernels.

``anti_alias_snake_fwd``: x2 upsampling by a K-tap windowed-sinc FIR, Snake / SnakeBeta, x2 downsampling by a
K-tap low-pass FIR, per channel row of x [B, C, T] (fp32), the upsampled signal never written to memory.

Math (what the alias-free ``Activation1d`` of BigVGAN v2 computes with ratio 2 and an even kernel size K = 2H, 12
in every BigVGAN v2 checkpoint; f the upsampling filter, g the downsampling filter, both [K]; n the row's length):

    upsample    xp[j] = x[clamp(j - P, 0, n-1)]             replicate pad by P = H - 1 on both sides
                y[m]  = sum_{j, k: 2j + k = m} xp[j] f[k]   transposed conv, stride 2 (length 2(n + 2P - 1) + K)
                u[p]  = 2 * y[p + L],  p in [0, 2n)         x ratio; crop L = 2P + (K - 2) / 2 = 3H - 3 each side
    activation  v[p]  = u[p] + inv_beta * sin(alpha * u[p])^2
                with alpha = exp(alpha_param) (log-scale parameters) or alpha_param, inv_beta = 1 / (beta + 1e-9)
                (beta likewise; Snake: beta = alpha), both per channel and fp32, computed by the caller
    downsample  out[i] = sum_k g[k] v[clamp(2i + k - (H - 1), 0, 2n-1)],  i in [0, n)
                replicate pad by H - 1 left and H right, conv with stride 2

Split by phase, with u_e[q] = u[2q] and u_o[q] = u[2q + 1], each is a 6-tap (H-tap) filter over x:

    u_e[q] = 2 * sum_{r<H} f[2r + KP0] x[clamp(q + A0 - r)],   u_o[q] = 2 * sum_{r<H} f[2r + KP1] x[clamp(q + A1 - r)]
    out[i] = sum_{s<H} g[2s + KE] v(2(i + s + DE))  +  g[2s + KO] v(2(i + s + DO) + 1)

(K = 12: KP0 = 1, A0 = 2, KP1 = 0, A1 = 3, KE = 1, DE = -2, KO = 0, DO = -3; ``_phases`` derives them for any even
K). The replicate pad of the downsampler reads v(p) at p < 0 as v(0) = v_e(0) and at p > 2n - 1 as v(2n-1) =
v_o(n-1): so an even-phase tap past the end takes the odd phase's last value and an odd-phase tap before the start
the even phase's first.

One program: one channel row, OUT = BLOCK - SPAN outputs (rounded down to a multiple of 4). It computes v_e and
v_o once for the BLOCK positions q0 + [0, BLOCK) the outputs need (x through L1, 2*H loads per position; 2 sines
per position), then forms the outputs from 2*H shifted copies of those (``tl.gather`` along the tile: shared
memory on the GPU). Per output: 2 sines (x BLOCK / OUT), 4H + 2H FMAs: the official CUDA extension's work
without its zero-stuffed taps.

Valid lengths (``lengths``, int32 [B] on the device, CUDA-graph safe): row b is treated as n = lengths[b]
samples long (clamped to [1, T]): every read is clamped at n, as the unpadded row's would be, and outputs at
i >= n are written as 0. A batch padded to a bucket with this gives, below each row's n, what the unpadded row
gives, and zeros beyond (what the next convolution's zero padding would read).

Contract:   x [B, C, T] fp32, last dim contiguous; filters fp32 [K] (any [1, 1, K] view flattened); alpha,
            inv_beta fp32 [C]; out [B, C, T] fp32, last dim contiguous, not overlapping x.
Matches:    indextts_kernels.reference.anti_alias_snake_ref; the official torch Activation1d (ratio 2, K taps,
            replicate padding) with SnakeBeta or Snake.
Limits:     fp32 only (as BigVGAN runs); ratio 2 and an even K only; forward only; no host sync.

``amp_merge_fwd``: out = ((a + b) + c) / divisor with outputs at t >= lengths[b] written as 0: the mean of an AMP
stage's resblock outputs (official: xs = r0; xs += r1; xs += r2; x = xs / num_kernels), or with one part and
divisor 1 the zero tail alone (the pre-convolution's output in a padded batch). The division is IEEE (div_rn).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from ._utils import cdiv, check_launchable, note_launch
from ._validate import amp_merge_args, anti_alias_snake_args, validate_once

__all__ = ["anti_alias_snake_fwd", "amp_merge_fwd"]


@triton.jit
def _snake(u, alpha, inv_beta):
    s = tl.sin(u * alpha)
    return u + inv_beta * (s * s)


@triton.jit
def _tile(x_row, UP, DOWN, alpha, inv_beta, i0, n, j, H: tl.constexpr, KP0: tl.constexpr, A0: tl.constexpr,
          KP1: tl.constexpr, A1: tl.constexpr, KE: tl.constexpr, DE: tl.constexpr, KO: tl.constexpr,
          DO: tl.constexpr, QOFF: tl.constexpr, BLOCK: tl.constexpr, EDGE: tl.constexpr):  # fmt: skip
    """The outputs i0 + j of one row (j < OUT are kept). EDGE: reads clamped into [0, n) and the downsampler's
    replicate pad applied (the first and last tiles of a row); else every read is inside the row."""
    q = i0 + QOFF + j
    qc = q
    if EDGE:
        qc = tl.minimum(tl.maximum(q, 0), n - 1)
    # the two phases of the upsampled row at the tile's positions
    ue = tl.zeros([BLOCK], dtype=tl.float32)
    uo = tl.zeros([BLOCK], dtype=tl.float32)
    for r in tl.static_range(H):
        if EDGE:
            xe = tl.load(x_row + tl.minimum(tl.maximum(qc + (A0 - r), 0), n - 1))
            xo = tl.load(x_row + tl.minimum(tl.maximum(qc + (A1 - r), 0), n - 1))
        else:
            xe = tl.load(x_row + q + (A0 - r))
            xo = tl.load(x_row + q + (A1 - r))
        ue += tl.load(UP + (2 * r + KP0)) * xe
        uo += tl.load(UP + (2 * r + KP1)) * xo
    e = _snake(2.0 * ue, alpha, inv_beta)
    o = _snake(2.0 * uo, alpha, inv_beta)
    if EDGE:
        # the downsampler's replicate pad: even positions past the end read v(2n-1) (the odd phase at n-1, which the
        # lane clamped to n-1 holds), odd positions before the start read v(0) (the even phase at 0, likewise)
        e, o = tl.where(q >= n, o, e), tl.where(q < 0, e, o)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(H):
        ie = tl.minimum(j + (s + DE - QOFF), BLOCK - 1)
        io = tl.minimum(j + (s + DO - QOFF), BLOCK - 1)
        acc += tl.load(DOWN + (2 * s + KE)) * tl.gather(e, ie, 0)
        acc += tl.load(DOWN + (2 * s + KO)) * tl.gather(o, io, 0)
    return acc


@triton.jit
def _anti_alias_snake_kernel(
    X,  # [B, C, T] fp32 (row strides stride_xb, stride_xc; last dim contiguous)
    Y,  # [B, C, T] fp32 (row strides stride_yb, stride_yc)
    UP,  # the upsampling filter f [K]
    DOWN,  # the downsampling filter g [K]
    ALPHA,  # [C] alpha (linear scale)
    INV_BETA,  # [C] 1 / (beta + 1e-9)
    LENS,  # [B] int32 valid lengths (HAS_LENS)
    T,
    stride_xb,
    stride_xc,
    stride_yb,
    stride_yc,
    HAS_LENS: tl.constexpr,
    H: tl.constexpr,  # taps per phase (K / 2)
    KP0: tl.constexpr,
    A0: tl.constexpr,
    KP1: tl.constexpr,
    A1: tl.constexpr,
    KE: tl.constexpr,
    DE: tl.constexpr,
    KO: tl.constexpr,
    DO: tl.constexpr,
    QOFF: tl.constexpr,  # min(DE, DO): the first position the tile's first output reads
    OUT: tl.constexpr,  # outputs per program (BLOCK - SPAN, rounded down to a multiple of 4)
    BLOCK: tl.constexpr,
):
    c = tl.program_id(1)
    b = tl.program_id(2)
    n = T
    if HAS_LENS:
        n = tl.minimum(tl.maximum(tl.load(LENS + b), 1), T)
    x_row = X + b.to(tl.int64) * stride_xb + c.to(tl.int64) * stride_xc
    alpha = tl.load(ALPHA + c)
    inv_beta = tl.load(INV_BETA + c)
    i0 = tl.program_id(0) * OUT
    j = tl.arange(0, BLOCK)
    lo = i0 + QOFF + tl.minimum(A0, A1) - (H - 1)  # the first and last x the tile reads, unclamped
    hi = i0 + QOFF + BLOCK - 1 + tl.maximum(A0, A1)
    if (lo >= 0) & (hi < n):  # an interior tile (all but the first and last of a row): no clamp, no pad
        acc = _tile(x_row, UP, DOWN, alpha, inv_beta, i0, n, j, H, KP0, A0, KP1, A1, KE, DE, KO, DO, QOFF, BLOCK, False)
    else:
        acc = _tile(x_row, UP, DOWN, alpha, inv_beta, i0, n, j, H, KP0, A0, KP1, A1, KE, DE, KO, DO, QOFF, BLOCK, True)
    i = i0 + j
    ok = (j < OUT) & (i < T)
    acc = tl.where(i < n, acc, 0.0)
    y_row = Y + b.to(tl.int64) * stride_yb + c.to(tl.int64) * stride_yc
    tl.store(y_row + i, acc, mask=ok)


def _phases(K: int) -> dict:
    """The per-phase offsets of the module docstring for an even kernel size K (ratio 2)."""
    H = K // 2
    P, L, DL = H - 1, 3 * H - 3, H - 1
    out = dict(H=H)
    for ph in (0, 1):  # upsampled phase ph: the up filter's taps of parity KP, x offset A
        kp = (ph + L) % 2
        out[f"KP{ph}"], out[f"A{ph}"] = kp, (ph + L - kp) // 2 - P
    for kq in (0, 1):  # downsampler taps of parity kq read the phase of (kq - DL) at i + s + offset
        d = kq - DL
        if d % 2 == 0:
            out["KE"], out["DE"] = kq, d // 2
        else:
            out["KO"], out["DO"] = kq, (d - 1) // 2
    out["QOFF"] = min(out["DE"], out["DO"])
    out["SPAN"] = H - 1 + max(out["DE"], out["DO"]) - out["QOFF"]
    return out


_BLOCK, _WARPS = 1024, 4


@functools.cache
def _config(K: int) -> tuple[dict, int]:
    ph = _phases(K)
    span = ph.pop("SPAN")
    # outputs per program: a multiple of 4, so that each program's first output is 16-byte aligned (vector stores)
    return dict(**ph, OUT=_BLOCK - 4 * cdiv(span, 4), BLOCK=_BLOCK), _WARPS


def anti_alias_snake_fwd(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor, alpha: torch.Tensor,
                         inv_beta: torch.Tensor, *, lengths: torch.Tensor | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The anti-aliased activation of x [B, C, T] (see the module docstring); ``out`` a buffer to write."""
    validate_once(anti_alias_snake_args, "anti_alias_snake_fwd", x, up_filter, down_filter, alpha, inv_beta,
                  lengths=lengths, out=out)  # fmt: skip
    check_launchable(x, "anti_alias_snake_fwd")
    B, C, T = x.shape
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if B * C * T == 0:
        return out
    const, warps = _config(up_filter.numel())
    lens = lengths if lengths is not None else x  # a placeholder pointer, never read
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        note_launch("anti_alias_snake")
        _anti_alias_snake_kernel[(cdiv(T, const["OUT"]), C, B)](
            x, out, up_filter.reshape(-1), down_filter.reshape(-1), alpha.reshape(-1), inv_beta.reshape(-1), lens, T,
            x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            HAS_LENS=lengths is not None, **const, num_warps=warps,
        )  # fmt: skip
    return out


@triton.jit(do_not_specialize=["divisor"])
def _amp_merge_kernel(
    A, B_, C_, Y, LENS,
    T,
    stride_ab, stride_ac, stride_bb, stride_bc, stride_cb, stride_cc, stride_yb, stride_yc,
    divisor,
    N_PARTS: tl.constexpr,
    HAS_LENS: tl.constexpr,
    DIVIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2)
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    b64 = b.to(tl.int64)
    s = tl.load(A + b64 * stride_ab + c * stride_ac + t, mask=ok, other=0.0)
    if N_PARTS > 1:
        s = s + tl.load(B_ + b64 * stride_bb + c * stride_bc + t, mask=ok, other=0.0)
    if N_PARTS > 2:
        s = s + tl.load(C_ + b64 * stride_cb + c * stride_cc + t, mask=ok, other=0.0)
    if DIVIDE:
        s = tl.div_rn(s, divisor)
    if HAS_LENS:
        n = tl.load(LENS + b)
        s = tl.where(t < n, s, 0.0)
    tl.store(Y + b64 * stride_yb + c * stride_yc + t, s, mask=ok)


_MERGE_BLOCK, _MERGE_WARPS = 1024, 4


def amp_merge_fwd(parts, *, divisor: float = 1.0, lengths: torch.Tensor | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """out = ((parts[0] + parts[1]) + parts[2]) / divisor (1 to 3 parts [B, C, T] fp32), zero at t >= lengths[b].
    ``out`` may be parts[0] itself (in place)."""
    parts = list(parts)
    validate_once(amp_merge_args, "amp_merge_fwd", parts, divisor=float(divisor), lengths=lengths, out=out)
    a = parts[0]
    check_launchable(a, "amp_merge_fwd")
    Bn, C, T = a.shape
    if out is None:
        out = torch.empty_like(a, memory_format=torch.contiguous_format)
    if Bn * C * T == 0:
        return out
    p = parts + [a] * (3 - len(parts))
    lens = lengths if lengths is not None else a
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        note_launch("amp_merge")
        _amp_merge_kernel[(cdiv(T, _MERGE_BLOCK), C, Bn)](
            p[0], p[1], p[2], out, lens, T, p[0].stride(0), p[0].stride(1), p[1].stride(0), p[1].stride(1),
            p[2].stride(0), p[2].stride(1), out.stride(0), out.stride(1), float(divisor),
            N_PARTS=len(parts), HAS_LENS=lengths is not None, DIVIDE=float(divisor) != 1.0, BLOCK=_MERGE_BLOCK,
            num_warps=_MERGE_WARPS,
        )  # fmt: skip
    return out


def compile_variants(snakes=(), merges=()):
    """``snakes``: (tag, K) of the vocoder's activations, each with and without valid lengths; ``merges``: (tag,
    number of parts, divide) of its merges, each with and without valid lengths. fp32 only."""
    for tag, K in snakes:
        const, warps = _config(K)
        for lens in (False, True):
            c = dict(HAS_LENS=lens, **const)
            sig = {"X": "*fp32", "Y": "*fp32", "UP": "*fp32", "DOWN": "*fp32", "ALPHA": "*fp32", "INV_BETA": "*fp32",
                   "LENS": "*i32", "T": "i32", "stride_xb": "i32", "stride_xc": "i32", "stride_yb": "i32",
                   "stride_yc": "i32", **{k: "constexpr" for k in c}}  # fmt: skip
            name = f"anti_alias_snake/{tag}/fp32/K{K}/{'lens' if lens else 'full'}/BLOCK{const['BLOCK']}"
            # the strides of a bucketed (16-divisible) length, as a graphed run has them
            divisible = ["X", "Y", "UP", "DOWN", "ALPHA", "INV_BETA", "LENS", "T", "stride_xb", "stride_xc",
                         "stride_yb", "stride_yc"]  # fmt: skip
            yield name, _anti_alias_snake_kernel, sig, c, warps, divisible
    for tag, n_parts, divide in merges:
        for lens in (False, True):
            c = dict(N_PARTS=n_parts, HAS_LENS=lens, DIVIDE=divide, BLOCK=_MERGE_BLOCK)
            sig = {"A": "*fp32", "B_": "*fp32", "C_": "*fp32", "Y": "*fp32", "LENS": "*i32", "T": "i32",
                   **{f"stride_{p}{d}": "i32" for p in "abcy" for d in "bc"}, "divisor": "fp32",
                   **{k: "constexpr" for k in c}}  # fmt: skip
            name = f"amp_merge/{tag}/fp32/parts{n_parts}/{'div' if divide else 'nodiv'}/{'lens' if lens else 'full'}"
            strides = [f"stride_{p}{d}" for p in "abcy" for d in "bc"]
            yield name, _amp_merge_kernel, sig, c, _MERGE_WARPS, ["A", "B_", "C_", "Y", "LENS", "T", *strides]
