"""Profiling helpers that cost nothing without CUDA: NVTX ranges and cudaProfilerApi capture ranges.

Stage ranges (``gpt.prefill``, ``gpt.decode``, ``gpt.latent``, ``s2mel.cfm``, ``vocoder``) are always marked;
per-op ranges (``op.linear``, ``op.layer_norm``, ...) only with ``INDEXTTS_FAST_NVTX=ops`` (each costs about a
microsecond of host time). The range implementation is chosen once: the ``nvtx`` package when installed, else
``torch.cuda.nvtx`` when CUDA is available (CPU builds of torch raise on it), else nothing at all.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["nvtx_range", "op_range", "cuda_profiler_range", "OPS_ENV"]

OPS_ENV = "INDEXTTS_FAST_NVTX"
_NULL = contextlib.nullcontext()
_impl = None


def _resolve():
    global _impl
    try:
        import nvtx  # type: ignore

        _impl = nvtx.annotate
        return _impl
    except ImportError:
        pass
    import torch

    if torch.cuda.is_available():
        _impl = torch.cuda.nvtx.range
    else:
        _impl = False
    return _impl


def nvtx_range(name: str):
    """Context manager marking an NVTX range (visible in nsys and ``ncu --nvtx``); a no-op without CUDA."""
    impl = _impl if _impl is not None else _resolve()
    return impl(name) if impl else _NULL


def op_range(name: str):
    """An NVTX range around one fused op, when ``INDEXTTS_FAST_NVTX=ops``."""
    if os.environ.get(OPS_ENV) != "ops":
        return _NULL
    return nvtx_range(f"op.{name}")


@contextlib.contextmanager
def cuda_profiler_range():
    """Start/stop the CUDA profiler around the steady state (``nsys --capture-range=cudaProfilerApi``)."""
    import torch

    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    try:
        yield
    finally:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
