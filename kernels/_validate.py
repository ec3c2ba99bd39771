"""Argument validation shared by the Triton launchers and the dispatched torch fallback (no Triton import).

Every check raises a TypeError/ValueError whose message names the offending argument, so bad input never
turns into a silent wrong result on any backend.
"""

from __future__ import annotations

import torch

from ._utils import MAX_FUSED_ROW, check_inference, check_tensor


def mod_layout(name: str, m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Check a modulation tensor (scale/shift) against x [..., T, N].

    Accepted: per batch row ``[..., 1, N]`` or ``[..., N]`` (x's leading dims without T), or per token (x's
    shape). Any row stride is fine. Returns ``(m viewed as [B, Tm, N], batch stride, token stride)`` with
    zero strides where the axis broadcasts.
    """
    check_tensor(name, m, device=x.device)
    if x.dim() < 2:
        raise ValueError(f"x must be at least 2-D ([..., T, N]) when {name} is given, got shape {tuple(x.shape)}")
    N, T = x.shape[-1], x.shape[-2]
    lead = tuple(x.shape[:-2])
    if m.dim() == x.dim() and tuple(m.shape[:-2]) == lead and m.shape[-2] in (1, T) and m.shape[-1] == N:
        Tm = m.shape[-2]
    elif m.dim() == x.dim() - 1 and x.dim() >= 3 and tuple(m.shape[:-1]) == lead and m.shape[-1] == N:
        Tm = 1
    else:
        raise ValueError(
            f"{name} has shape {tuple(m.shape)}, which is neither per batch row ({lead + (1, N)} or {lead + (N,)}) "
            f"nor per token ({tuple(x.shape)}) for x of shape {tuple(x.shape)}"
        )
    B = 1
    for d in lead:
        B *= d
    m3 = m.reshape(B, Tm, N)  # a view whenever the leading dims allow it
    return m3, (m3.stride(0) if B > 1 else 0), (m3.stride(1) if Tm > 1 else 0)


def norm_args(op: str, x, *, weight=None, bias=None, residual=None, scale=None, shift=None, eps=1e-5) -> None:
    """Validate the inputs of the normalization ops (layer_norm, adaptive_rms_norm, final_layer_modulate)."""
    check_tensor("x", x, min_dim=1)
    N = x.shape[-1]
    if N == 0 or N > MAX_FUSED_ROW:
        raise ValueError(f"{op}: the normalized size x.shape[-1] = {N} must be in [1, {MAX_FUSED_ROW}]")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(pname, p, device=x.device, shape=(N,))
    if residual is not None:
        check_tensor("residual", residual, device=x.device, shape=tuple(x.shape))
    if (scale is None) != (shift is None):
        raise ValueError(f"{op}: pass both scale and shift, or neither")
    if scale is not None:
        mod_layout("scale", scale, x)
        mod_layout("shift", shift, x)
    check_inference(op, x, weight, bias, residual, scale, shift)


GEMM_PRECISIONS = ("ieee", "tf32x3", "tf32")


def gemm_args(op: str, x, weight, *, bias=None, residual=None, swiglu: bool = False, precision=None) -> None:
    """Validate a GEMM launch: x [..., K], weight [N, K] row-major (nn.Linear's [out, in]), one dtype throughout.

    For SwiGLU ``weight`` is the packed ``w13 = cat([w1, w3])`` [2I, K] and the output has I columns.
    """
    check_tensor("x", x, min_dim=1)
    K = x.shape[-1]
    if K == 0:
        raise ValueError(f"{op}: the reduction size x.shape[-1] must be at least 1, got shape {tuple(x.shape)}")
    wname = "w13" if swiglu else "weight"
    check_tensor(wname, weight, device=x.device, min_dim=2, last_dim_contiguous=False)
    if weight.dim() != 2:
        raise ValueError(f"{op}: {wname} must be 2-D [N, K] = [out, in], got shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(
            f"{op}: unsupported dtype mix: x is {str(x.dtype)[6:]} but {wname} is {str(weight.dtype)[6:]}; "
            "cast both to one of float32, float16, bfloat16"
        )
    if weight.shape[1] != K:
        hint = ""
        if weight.shape[0] == K:
            hint = " (it looks like [in, out], GPT-2 Conv1D's layout: pass weight.t().contiguous())"
        raise ValueError(
            f"{op}: mismatched K: {wname} has shape {tuple(weight.shape)} but x.shape[-1] = {K}; "
            f"expected [N, {K}] = [out, in]{hint}"
        )
    if weight.numel() > 1 and not weight.is_contiguous():
        raise ValueError(
            f"{op}: {wname} must be row-major [N, K] with K contiguous (nn.Linear's [out, in]); got strides "
            f"{tuple(weight.stride())} (a transposed view such as conv1d.weight.t() must be made .contiguous())"
        )
    if swiglu and weight.shape[0] % 2:
        raise ValueError(
            f"{op}: w13 has {weight.shape[0]} rows, an odd count; expected [2*I, K] = torch.cat([w1, w3], dim=0)"
        )
    N = weight.shape[0] // 2 if swiglu else weight.shape[0]
    if bias is not None:
        if swiglu:
            raise ValueError(f"{op}: the SwiGLU epilogue takes no bias (the DiT FeedForward has none)")
        check_tensor("bias", bias, dtypes=(x.dtype,), device=x.device, shape=(N,))
    if residual is not None:
        check_tensor("residual", residual, dtypes=(x.dtype,), device=x.device, shape=tuple(x.shape[:-1]) + (N,))
    if precision is not None and precision not in GEMM_PRECISIONS:
        raise ValueError(f"{op}: precision must be None or one of {GEMM_PRECISIONS}, got {precision!r}")
    check_inference(op, x, weight, bias, residual)


def ffn_args(op: str, x, w_in, w_out, *, b_in=None, b_out=None, residual=None, swiglu: bool, precision=None) -> None:
    """Validate a two-GEMM feed-forward (SwiGLU w13 -> w2, or GPT-2 c_fc -> c_proj) before either launch."""
    gemm_args(op, x, w_in, bias=b_in, swiglu=swiglu, precision=precision)
    hidden = w_in.shape[0] // 2 if swiglu else w_in.shape[0]
    # a stand-in for the hidden activations [..., hidden], without allocating them
    probe = x.new_empty((1,) * (x.dim() - 1) + (hidden,)).expand(*x.shape[:-1], hidden)
    try:
        gemm_args(op, probe, w_out, bias=b_out, residual=residual, precision=precision)
    except ValueError as e:
        raise ValueError(f"{e} (the second projection reads the {hidden}-wide hidden)") from None
