"""Dispatched ops: the Triton kernel where a backend for it exists, else the torch reference.

Every op takes the same arguments as its launcher in ``indextts_kernels`` and returns the same result on
every backend; ``backend_for(x.device)`` (see ``_dispatch``) decides which implementation runs.
"""

from __future__ import annotations

from typing import Optional

import torch

import indextts_kernels
from indextts_kernels import reference
from indextts_kernels._validate import norm_args

from ._dispatch import TORCH, backend_for

__all__ = ["layer_norm", "adaptive_rms_norm", "final_layer_modulate"]


def _kernel(name: str):
    return getattr(indextts_kernels, name)


def layer_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    *,
    residual: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """LayerNorm over the last dim; with ``residual`` returns ``(LayerNorm(x + residual), x + residual)``."""
    if backend_for(x.device) == TORCH:
        norm_args("layer_norm", x, weight=weight, bias=bias, residual=residual, eps=eps)
        return reference.layer_norm_ref(x, weight, bias, eps, residual=residual, out_dtype=out_dtype)
    return _kernel("layer_norm_fwd")(x, weight, bias, eps, residual=residual, out_dtype=out_dtype)


def adaptive_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """DiT AdaptiveLayerNorm: ``scale * (RMSNorm(x) * weight) + shift`` (plain RMSNorm without scale/shift)."""
    if backend_for(x.device) == TORCH:
        norm_args("adaptive_rms_norm", x, weight=weight, scale=scale, shift=shift, eps=eps)
        return reference.adaptive_rms_norm_ref(x, weight, scale, shift, eps)
    return _kernel("adaptive_rms_norm_fwd")(x, weight, scale, shift, eps)


def final_layer_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DiT FinalLayer: ``LayerNorm_noaffine(x, eps) * (1 + scale) + shift``."""
    if backend_for(x.device) == TORCH:
        norm_args("final_layer_modulate", x, scale=scale, shift=shift, eps=eps)
        return reference.final_layer_modulate_ref(x, shift, scale, eps)
    return _kernel("final_layer_modulate_fwd")(x, shift, scale, eps)
