"""Profiling helpers that cost nothing without CUDA: NVTX ranges and cudaProfilerApi capture ranges.

``nvtx_range`` uses the ``nvtx`` package when installed, else ``torch.cuda.nvtx`` when CUDA is available
(CPU builds of torch raise on it), else does nothing.
"""

from __future__ import annotations

import contextlib


def nvtx_range(name: str):
    """Context manager marking an NVTX range (visible in nsys and ``ncu --nvtx``)."""
    try:
        import nvtx  # type: ignore

        return nvtx.annotate(name)
    except ImportError:
        pass
    import torch

    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


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
