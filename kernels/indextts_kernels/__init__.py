"""indextts_kernels: hand-written Triton kernels for the IndexTTS2 hot path, and their torch references.

This package knows no model. ``reference`` (pure torch, no Triton) is imported eagerly; the Triton kernel
modules are imported on first use, so that ``import indextts_kernels`` works without Triton and without a
GPU, and so that ``TRITON_INTERPRET`` may still be set after this package is imported (Triton fixes the
interpreted/compiled choice when a kernel module is imported).
"""

from __future__ import annotations

import importlib
import importlib.util

from . import reference
from ._utils import count_launches

__version__ = "0.1.0"

HAS_TRITON = importlib.util.find_spec("triton") is not None

# public launcher name -> kernel module
_LAUNCHERS = {
    "layer_norm_fwd": "norm",
    "adaptive_rms_norm_fwd": "norm",
    "final_layer_modulate_fwd": "norm",
    "attention_fwd": "attention",
    "dit_attention_fwd": "attention",
    "gpt_prefill_attention_fwd": "attention",
    "gpt_decode_attention_fwd": "attention",
    "linear_fwd": "gemm",
    "ln_linear_fwd": "gemm",
    "swiglu_linear_fwd": "gemm",
    "swiglu_feed_forward_fwd": "gemm",
    "gpt2_mlp_fwd": "gemm",
    "pack_w13": "gemm",
    "wavenet_gate_fwd": "gemm",
    "wavenet_res_skip_fwd": "gemm",
    "cfm_euler_fwd": "euler",
    "anti_alias_snake_fwd": "alias_free",
    "amp_merge_fwd": "alias_free",
    "logits_process_fwd": "sampling",
    "decode_select_fwd": "sampling",
}

# kernel modules, for tools that walk every kernel (the AOT compile check)
KERNEL_MODULES = ("norm", "attention", "gemm", "euler", "sampling", "alias_free")

__all__ = ["HAS_TRITON", "KERNEL_MODULES", "reference", "load_kernel_module", "count_launches", *_LAUNCHERS]


def load_kernel_module(name: str):
    """Import ``indextts_kernels.<name>`` (needs Triton); raise a clear ImportError without it."""
    if not HAS_TRITON:
        raise ImportError(
            f"indextts_kernels.{name} needs Triton, which is not installed; use indextts_kernels.reference "
            "or the indextts_fast dispatch, which falls back to it"
        )
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str):
    if name in _LAUNCHERS:
        return getattr(load_kernel_module(_LAUNCHERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
