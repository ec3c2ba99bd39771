"""Pure-torch reference implementations of every op in indextts_kernels.

These are the no-GPU fallback and the test oracle. They follow the math and the cast points of the
official IndexTTS2 modules (see each function), and never import Triton.

Calling a reference with fp16/bf16 inputs reproduces what PyTorch computes at that precision;
calling it with inputs upcast to fp64 gives the high-precision oracle used by the tolerance rule.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "layer_norm_ref",
    "rms_norm_ref",
    "adaptive_rms_norm_ref",
    "final_layer_modulate_ref",
]


# ----------------------------------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------------------------------
def layer_norm_ref(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    residual: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """LayerNorm over the last dim (GPT-2 ln_1/ln_2/ln_f/final_norm, conformer norms, DiT norm_final).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, biased variance, computed in fp32 (or fp64 for fp64
    inputs) and rounded once to ``out_dtype`` (default ``x.dtype``). Under IndexTTS2's fp16 autocast
    ``layer_norm`` runs in fp32 and returns fp32: pass ``out_dtype=torch.float32`` for that case.

    With ``residual``: the new residual stream ``h = x + residual`` is formed first in the stream dtype
    (as HF GPT-2 does ``attn_output + residual``), then normalized. Returns ``(y, h)``.
    """
    h = None
    if residual is not None:
        h = x + residual
        x = h
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.layer_norm(
        x.to(compute),
        (x.shape[-1],),
        None if weight is None else weight.to(compute),
        None if bias is None else bias.to(compute),
        eps,
    ).to(out_dtype or x.dtype)
    return y if h is None else (y, h)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """gpt_fast ``RMSNorm``: ``(x.float() * rsqrt(mean(x^2) + eps)).type_as(x) * weight``.

    The cast back to ``x.dtype`` happens before the gain, exactly as the official module does; the product
    with ``weight`` then follows torch type promotion.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    normed = (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x)
    return normed * weight


def adaptive_rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """DiT ``AdaptiveLayerNorm(RMSNorm)``: ``scale * (RMSNorm(x) * g) + shift``; scale first, no ``1+``.

    ``scale``/``shift`` are the two halves of ``project_layer(c)`` (scale first), broadcast against ``x``:
    per batch row (``[B, 1, N]`` or ``[B, N]`` for ``x`` ``[B, T, N]``) or per token (same shape as ``x``).
    Without a condition (``scale is None``) this is the plain ``RMSNorm``.
    """
    y = rms_norm_ref(x, weight, eps)
    if scale is None and shift is None:
        return y
    if scale is None or shift is None:
        raise ValueError("adaptive_rms_norm_ref: pass both scale and shift, or neither")
    scale, shift = _broadcast_mod(x, scale), _broadcast_mod(x, shift)
    return scale * y + shift


def final_layer_modulate_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """DiT ``FinalLayer`` modulation: ``LayerNorm_noaffine(x, eps) * (1 + scale) + shift``.

    ``(shift, scale) = adaLN_modulation(c).chunk(2, dim=1)``: shift first. ``shift``/``scale`` are ``[B, N]``
    for ``x`` ``[B, T, N]`` (the official ``modulate`` unsqueezes dim 1), or broadcastable like
    :func:`adaptive_rms_norm_ref`.
    """
    n = F.layer_norm(x, (x.shape[-1],), None, None, eps)
    shift, scale = _broadcast_mod(x, shift), _broadcast_mod(x, scale)
    return n * (1 + scale) + shift


def _broadcast_mod(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B, N] per-batch modulation for x [B, T, N] gets its T axis; other shapes broadcast as given."""
    if m.dim() == x.dim() - 1 and x.dim() >= 3:
        return m.unsqueeze(-2)
    return m
