"""indextts_fast: fast, faithful IndexTTS2 inference on hand-written Triton kernels.

Knows IndexTTS2; builds on the model-agnostic ``indextts_kernels``. The official ``indextts`` package is
only ever imported lazily.
"""

from __future__ import annotations

from ._dispatch import backend_for, default_backend, requested_backend
from .ops import (
    adaptive_rms_norm,
    alloc_kv_cache,
    dit_attention,
    final_layer_modulate,
    gpt2_mlp,
    gpt_decode_attention,
    gpt_prefill_attention,
    layer_norm,
    linear,
    reorder_kv_rows,
    swiglu_feed_forward,
    swiglu_linear,
)
from .patch import FastHandle, UnsupportedModel, enable, enabled

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "enable",
    "enabled",
    "FastHandle",
    "UnsupportedModel",
    "adaptive_rms_norm",
    "alloc_kv_cache",
    "dit_attention",
    "gpt_decode_attention",
    "gpt_prefill_attention",
    "reorder_kv_rows",
    "backend_for",
    "default_backend",
    "final_layer_modulate",
    "gpt2_mlp",
    "layer_norm",
    "linear",
    "requested_backend",
    "swiglu_feed_forward",
    "swiglu_linear",
]
