"""Backend choice for every op: compiled Triton on CUDA, the Triton interpreter, or the torch reference.

``INDEXTTS_FAST_BACKEND`` overrides the choice:
    auto   (default) CUDA tensors -> compiled Triton; CPU tensors -> the Triton interpreter when
           TRITON_INTERPRET=1, else the torch reference. Without Triton installed: always the reference.
    triton force the Triton kernels; on a machine without CUDA this turns the interpreter on
           (TRITON_INTERPRET=1 is set before the kernel modules are imported). Errors if Triton is missing.
    torch  always the pure-torch reference (indextts_kernels.reference).

Resolved per call from the tensor's device, so a patched model moved between devices keeps working.
"""

from __future__ import annotations

import os

import indextts_kernels

ENV_VAR = "INDEXTTS_FAST_BACKEND"
CHOICES = ("auto", "triton", "torch")
# what an op actually ran on
CUDA, INTERPRET, TORCH = "cuda", "interpret", "torch"


def requested_backend() -> str:
    """The user's request from ``INDEXTTS_FAST_BACKEND`` (default ``auto``); raises on unknown values."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} is not one of {', '.join(CHOICES)}")
    return value


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def backend_for(device) -> str:
    """Which implementation an op on a tensor living on ``device`` runs: 'cuda', 'interpret' or 'torch'."""
    req = requested_backend()
    if req == "torch":
        return TORCH
    if not indextts_kernels.HAS_TRITON:
        if req == "triton":
            raise RuntimeError(f"{ENV_VAR}=triton but Triton is not installed")
        return TORCH
    dev_type = device.type if hasattr(device, "type") else str(device).split(":")[0]
    if dev_type == "cuda":
        return CUDA
    if dev_type == "cpu":
        if _interpreting():
            return INTERPRET
        if req == "triton":
            if _kernel_modules_loaded():
                raise RuntimeError(
                    f"{ENV_VAR}=triton on a CPU tensor needs the Triton interpreter, but the kernel modules were "
                    "already imported in compiled mode; set TRITON_INTERPRET=1 before the first kernel call"
                )
            os.environ["TRITON_INTERPRET"] = "1"
            return INTERPRET
        return TORCH
    if req == "triton":
        raise RuntimeError(f"{ENV_VAR}=triton: no Triton backend for device {device}")
    return TORCH


def default_backend() -> str:
    """The backend ops would use on this machine's default device (CUDA if present, else CPU)."""
    try:
        dev = "cuda" if indextts_kernels.HAS_TRITON and _cuda_available() else "cpu"
    except Exception:  # a broken CUDA setup must not break the import
        dev = "cpu"
    return backend_for(dev)


def _kernel_modules_loaded() -> bool:
    import sys

    return any(f"indextts_kernels.{m}" in sys.modules for m in indextts_kernels.KERNEL_MODULES)
