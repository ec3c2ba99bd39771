"""Dispatched ops: the Triton kernel where a backend for it exists, else the torch reference.

Every op takes the same arguments as its launcher in ``indextts_kernels`` and returns the same result on
every backend; ``backend_for(x.device)`` (see ``_dispatch``) decides which implementation runs.
"""

from __future__ import annotations

from typing import Optional

import torch

import indextts_kernels
from indextts_kernels import reference
from indextts_kernels._validate import ffn_args, gemm_args, norm_args

from ._dispatch import TORCH, backend_for

__all__ = [
    "layer_norm",
    "adaptive_rms_norm",
    "final_layer_modulate",
    "linear",
    "swiglu_linear",
    "swiglu_feed_forward",
    "gpt2_mlp",
]


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


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias) + residual``; weight [out, in] (GPT-2 Conv1D weights transposed first)."""
    if backend_for(x.device) == TORCH:
        if activation not in (None, "gelu_new"):
            raise ValueError(f"linear: activation must be None or 'gelu_new', got {activation!r}")
        gemm_args("linear", x, weight, bias=bias, residual=residual, precision=precision)
        return reference.linear_ref(x, weight, bias, residual=residual, activation=activation)
    return _kernel("linear_fwd")(x, weight, bias, residual=residual, activation=activation, precision=precision)


def swiglu_linear(x: torch.Tensor, w13: torch.Tensor, *, precision: Optional[str] = None) -> torch.Tensor:
    """``silu(x @ w1.T) * (x @ w3.T)`` over the packed ``w13 = cat([w1, w3])`` [2I, K]."""
    if backend_for(x.device) == TORCH:
        gemm_args("swiglu_linear", x, w13, swiglu=True, precision=precision)
        return reference.swiglu_linear_ref(x, w13)
    return _kernel("swiglu_linear_fwd")(x, w13, precision=precision)


def swiglu_feed_forward(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """DiT FeedForward plus the block's residual: ``residual + w2(silu(w1 x) * w3 x)``."""
    if backend_for(x.device) == TORCH:
        ffn_args("swiglu_feed_forward", x, w13, w2, residual=residual, swiglu=True, precision=precision)
        return reference.swiglu_feed_forward_ref(x, w13, w2, residual=residual)
    return _kernel("swiglu_feed_forward_fwd")(x, w13, w2, residual=residual, precision=precision)


def gpt2_mlp(
    x: torch.Tensor,
    c_fc_weight: torch.Tensor,
    c_fc_bias: torch.Tensor,
    c_proj_weight: torch.Tensor,
    c_proj_bias: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """GPT-2 MLP plus the block's residual: ``residual + c_proj(gelu_new(c_fc(x)))``; weights [out, in]."""
    if backend_for(x.device) == TORCH:
        ffn_args(
            "gpt2_mlp", x, c_fc_weight, c_proj_weight, b_in=c_fc_bias, b_out=c_proj_bias, residual=residual,
            swiglu=False, precision=precision,
        )  # fmt: skip
        return reference.gpt2_mlp_ref(x, c_fc_weight, c_fc_bias, c_proj_weight, c_proj_bias, residual=residual)
    return _kernel("gpt2_mlp_fwd")(
        x, c_fc_weight, c_fc_bias, c_proj_weight, c_proj_bias, residual=residual, precision=precision
    )
