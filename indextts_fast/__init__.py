"""indextts_fast: fast, faithful IndexTTS2 inference on hand-written Triton kernels.

Knows IndexTTS2; builds on the model-agnostic ``indextts_kernels``. The official ``indextts`` package is
only ever imported lazily.
"""

from __future__ import annotations

from ._dispatch import backend_for, default_backend, requested_backend
from .errors import UnsupportedModel
from .ops import (
    adaptive_rms_norm,
    dit_attention,
    final_layer_modulate,
    gpt2_mlp,
    gpt_decode_attention,
    gpt_prefill_attention,
    layer_norm,
    linear,
    swiglu_feed_forward,
    swiglu_linear,
)
from .patch import FastHandle, enable, enabled

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "enable",
    "enabled",
    "FastHandle",
    "UnsupportedModel",
    "adaptive_rms_norm",
    "dit_attention",
    "gpt_decode_attention",
    "gpt_prefill_attention",
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
