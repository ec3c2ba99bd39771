"""Row normalization kernels: LayerNorm (+ fused residual add), DiT adaptive RMSNorm, DiT FinalLayer modulation.

One Triton kernel serves all three ops through constexpr flags; each op has its own launcher.

Math (per row of N, accumulation in fp32):
    LayerNorm          y = (x - mean) * rstd * w + b                 rstd = rsqrt(var + eps), biased var
    + residual         h = x + r  (rounded to the stream dtype, stored), then y = LayerNorm(h)
    AdaptiveRMSNorm    n = (x * rsqrt(mean(x^2) + eps)) rounded to x.dtype;  y = scale * (n * g) + shift
                       (no condition: y = n * g, the plain gpt_fast RMSNorm)
    FinalLayer         n = LayerNorm_noaffine(x, eps=1e-6) rounded to x.dtype;  y = n * (1 + scale) + shift
Contract:   x [..., N] with a contiguous last dim; w, b [N]; scale/shift per batch row ([B, 1, N] or [B, N] for
            x [B, T, N]) or per token (x's shape), any row stride (the halves of a projection output work as
            views, no copy). fp32 / fp16 / bf16, mixed between x and the parameters.
Numerics:   loads upcast to fp32 at once; all math in fp32; one rounding at each store, plus the official cast
            point after the normalization where the upstream module has one (``.type_as(x)`` in RMSNorm, the
            separate LayerNorm in FinalLayer). The elementwise tail of the upstream modules rounds after every
            op in low precision; this kernel does not (it is closer to the fp32 result).
Matches:    indextts_kernels.reference.{layer_norm_ref, adaptive_rms_norm_ref, final_layer_modulate_ref}
Limits:     N <= 16384 (one register-resident row block); forward only; no .item() or host sync (graph safe).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from ._jit import cast_to
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
from ._validate import mod_layout, norm_args, norm_out_dtype, validate_once

__all__ = ["layer_norm_fwd", "adaptive_rms_norm_fwd", "final_layer_modulate_fwd", "norm_launch_config"]

MOD_NONE, MOD_SCALE_SHIFT, MOD_ONE_PLUS_SCALE = 0, 1, 2


@triton.jit(do_not_specialize=["M", "T", "eps"])
def _norm_fwd_kernel(
    X,  # pointer to x rows [M, N]
    R,  # pointer to residual rows [M, N] (HAS_RESIDUAL)
    W,  # pointer to weight [N] (HAS_WEIGHT)
    B,  # pointer to bias [N] (HAS_BIAS)
    SCALE,  # pointer to scale, addressed as [Bm, Tm, N] (MOD != 0)
    SHIFT,  # pointer to shift, same addressing as SCALE
    Y,  # pointer to output rows [M, N]
    H,  # pointer to new residual-stream rows [M, N] (HAS_RESIDUAL)
    M,
    N,
    T,  # rows per batch element of x: row r belongs to batch r // T, token r % T
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    stride_scale_b,
    stride_scale_t,  # 0 for per-batch modulation
    stride_shift_b,
    stride_shift_t,
    eps,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MOD: tl.constexpr,  # 0 none, 1 scale * y + shift, 2 y * (1 + scale) + shift
    ROUND_NORM: tl.constexpr,  # round the normalized row to x's dtype before the affine/modulation
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]

    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = cast_to(x + r, H.dtype.element_ty)
        tl.store(H + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
        x = h.to(tl.float32)  # normalize the stream value as stored, as the unfused ops do

    if IS_RMS:
        mean_sq = tl.sum(x * x, axis=1) / N
        xhat = x * tl.math.rsqrt(mean_sq + eps)[:, None]
    else:
        # corrected two-pass mean for rows far from zero (mean 100, std 1e-3): the fp32 mean itself is only known
        # to half an ulp at the scale of the mean, which is large against the deviations. x - mean0 is exact
        # (x and mean0 are close); the small correction (the mean of those deviations) is subtracted from it
        # instead of being folded back into a rounded mean
        mean0 = tl.sum(x, axis=1) / N
        d = tl.where(mask, x - mean0[:, None], 0.0)
        corr = tl.sum(d, axis=1) / N
        xc = tl.where(mask, d - corr[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / N
        xhat = xc * tl.math.rsqrt(var + eps)[:, None]
    if ROUND_NORM:
        xhat = cast_to(xhat, X.dtype.element_ty).to(tl.float32)

    y = xhat
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    if MOD != 0:
        bi = rows // T
        ti = rows % T
        s_off = bi * stride_scale_b + ti * stride_scale_t
        h_off = bi * stride_shift_b + ti * stride_shift_t
        scale = tl.load(SCALE + s_off[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(SHIFT + h_off[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if MOD == 1:
            y = scale * y + shift
        else:
            y = y * (1.0 + scale) + shift
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], cast_to(y, Y.dtype.element_ty), mask=mask)


def norm_launch_config(M: int, N: int, interpret: Optional[bool] = None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for an [M, N] launch.

    One program owns BLOCK_M whole rows. Compiled, a program holds about 2K fp32 values (16 per thread at
    4 warps): N=512 gives 4 rows per program, N=1024 two, N=1280 one; tiny M keeps one row per program so a
    3-row decode step still spreads over 3 SMs. Under the interpreter each program costs milliseconds of
    Python, so programs are made as large as the row count allows.
    """
    BLOCK_N = next_pow2(N)
    if is_interpreting() if interpret is None else interpret:
        BLOCK_M = max(1, min(next_pow2(M), 16384 // BLOCK_N))
        return BLOCK_M, BLOCK_N, 4
    BLOCK_M = 1 if M < 1024 else max(1, min(16, 2048 // BLOCK_N))
    num_warps = max(1, min(8, (BLOCK_M * BLOCK_N) // 512))
    return BLOCK_M, BLOCK_N, num_warps


def _prepare_out(op: str, name: str, out: Optional[torch.Tensor], x: torch.Tensor, dtype: torch.dtype, inputs,
                 in_place_ok=()) -> torch.Tensor:  # fmt: skip
    if out is None:
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    check_tensor(name, out, dtypes=(dtype,), device=x.device, shape=tuple(x.shape))
    check_out_buffer(op, name, out, inputs, in_place_ok=in_place_ok)
    return out


def _launch(
    op: str,
    x: torch.Tensor,
    *,
    weight=None,
    bias=None,
    residual=None,
    scale=None,
    shift=None,
    eps: float,
    is_rms: bool,
    mod: int,
    round_norm: bool,
    out_dtype: Optional[torch.dtype] = None,
    out=None,
    residual_out=None,
):
    validate_once(norm_args, op, x, weight=weight, bias=bias, residual=residual, scale=scale, shift=shift, eps=eps,
                  out_dtype=out_dtype)  # fmt: skip
    check_launchable(x, op)
    if out_dtype is None:
        out_dtype = norm_out_dtype(x, weight, bias, residual, scale, shift, promote_params=mod != MOD_NONE or is_rms)
    N = x.shape[-1]
    T = x.shape[-2] if x.dim() >= 2 else 1
    scale3 = shift3 = x  # dummies, never read when MOD == 0
    ssb = sst = hsb = hst = 0
    if mod != MOD_NONE:
        if scale is None:
            raise ValueError(f"{op}: scale and shift are required")  # norm_args checked they come together
        scale3, ssb, sst = mod_layout("scale", scale, x)
        shift3, hsb, hst = mod_layout("shift", shift, x)

    inputs = (("x", x), ("weight", weight), ("bias", bias), ("residual", residual), ("scale", scale), ("shift", shift))
    # each program reads its whole rows before it writes them: out=x and residual_out=residual may run in place
    y = _prepare_out(op, "out", out, x, out_dtype, inputs, in_place_ok=("x",))
    h = None
    if residual is not None:
        h = _prepare_out(op, "residual_out", residual_out, x, torch.promote_types(x.dtype, residual.dtype),
                         inputs + (("out", y),), in_place_ok=("residual",))  # fmt: skip
    M = x.numel() // N
    if M == 0:
        return y if h is None else (y, h)

    x2 = rows_view("x", x, N, copy_ok=True)
    y2 = rows_view("out", y, N)
    r2 = rows_view("residual", residual, N, copy_ok=True) if residual is not None else x2
    h2 = rows_view("residual_out", h, N) if h is not None else y2
    BLOCK_M, BLOCK_N, num_warps = norm_launch_config(M, N)
    grid = (cdiv(M, BLOCK_M),)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        note_launch("norm")
        _norm_fwd_kernel[grid](
            x2, r2, weight if weight is not None else x2, bias if bias is not None else x2,
            scale3, shift3, y2, h2,
            M, N, T,
            x2.stride(0), r2.stride(0), y2.stride(0), h2.stride(0),
            ssb, sst, hsb, hst,
            float(eps),
            IS_RMS=is_rms, HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, MOD=mod, ROUND_NORM=round_norm,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )  # fmt: skip
    return y if h is None else (y, h)


def layer_norm_fwd(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    *,
    residual: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
    out: Optional[torch.Tensor] = None,
    residual_out: Optional[torch.Tensor] = None,
):
    """LayerNorm over the last dim; with ``residual``, returns ``(LayerNorm(x + residual), x + residual)``.

    One read of x and residual, two writes. ``out_dtype`` defaults to ``x.dtype`` (pass ``torch.float32``
    to reproduce fp16 autocast, where layer_norm returns fp32). weight/bias may be None (no affine).
    """
    if residual is None and residual_out is not None:
        raise ValueError("layer_norm_fwd: residual_out given without residual")
    return _launch(
        "layer_norm_fwd", x, weight=weight, bias=bias, residual=residual, eps=eps, is_rms=False,
        mod=MOD_NONE, round_norm=False, out_dtype=out_dtype, out=out, residual_out=residual_out,
    )  # fmt: skip


def adaptive_rms_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT AdaptiveLayerNorm: ``scale * (RMSNorm(x) * weight) + shift``; plain RMSNorm when scale is None.

    The output dtype follows torch promotion of (x, weight, scale, shift), as the upstream module's does.
    """
    return _launch(
        "adaptive_rms_norm_fwd", x, weight=weight, scale=scale, shift=shift, eps=eps, is_rms=True,
        mod=MOD_NONE if scale is None else MOD_SCALE_SHIFT, round_norm=True, out=out,
    )  # fmt: skip


def final_layer_modulate_fwd(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT FinalLayer: ``LayerNorm_noaffine(x, eps) * (1 + scale) + shift`` (argument order as ``modulate``)."""
    return _launch(
        "final_layer_modulate_fwd", x, scale=scale, shift=shift, eps=eps, is_rms=False, mod=MOD_ONE_PLUS_SCALE,
        round_norm=True, out=out,
    )  # fmt: skip


def compile_variants(widths=None):
    """Every kernel specialization the launchers above produce at the requested sizes, for the AOT compile check.

    ``widths``: {N: a representative row count M} (the launch config depends on both). Every op at every width,
    fp32/fp16/bf16. Yields (name, jit_fn, signature, constexprs, num_warps).
    """
    widths = widths or {}
    ops = [
        # name, IS_RMS, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS, MOD, ROUND_NORM, output dtype (None: x's)
        ("layer_norm", False, False, True, True, MOD_NONE, False, None),
        ("layer_norm+residual", False, True, True, True, MOD_NONE, False, None),
        ("layer_norm+residual->fp32", False, True, True, True, MOD_NONE, False, "fp32"),  # fp16 autocast GPT
        ("rms_norm", True, False, True, False, MOD_NONE, True, None),
        ("adaptive_rms_norm", True, False, True, False, MOD_SCALE_SHIFT, True, None),
        ("final_layer_modulate", False, False, False, False, MOD_ONE_PLUS_SCALE, True, None),
    ]
    for name, is_rms, has_res, has_w, has_b, mod, rnd, y_dtype in ops:
        for tname in ("fp32", "fp16", "bf16"):
            if y_dtype is not None and y_dtype == tname:
                continue
            for N, M in widths.items():
                bm, bn, nw = norm_launch_config(M, N, interpret=False)
                p, py = f"*{tname}", f"*{y_dtype or tname}"
                sig = {
                    "X": p, "R": p, "W": p, "B": p, "SCALE": p, "SHIFT": p, "Y": py, "H": p,
                    "M": "i32", "N": "i32", "T": "i32",
                    "stride_x": "i32", "stride_r": "i32", "stride_y": "i32", "stride_h": "i32",
                    "stride_scale_b": "i32", "stride_scale_t": "i32", "stride_shift_b": "i32",
                    "stride_shift_t": "i32", "eps": "fp32",
                }  # fmt: skip
                const = dict(
                    IS_RMS=is_rms,
                    HAS_RESIDUAL=has_res,
                    HAS_WEIGHT=has_w,
                    HAS_BIAS=has_b,
                    MOD=mod,
                    ROUND_NORM=rnd,
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                )
                for k in const:
                    sig[k] = "constexpr"
                yield f"norm/{name}/{tname}/N{N}/BM{bm}", _norm_fwd_kernel, sig, const, nw
