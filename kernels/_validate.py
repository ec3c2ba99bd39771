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
