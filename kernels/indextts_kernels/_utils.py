"""Shared launcher utilities: input validation, launch heuristics, interpreter detection.

Everything here runs on the host before a launch. Nothing reads device memory, so every launcher
stays CUDA-graph safe: no ``.item()``, no host sync, no allocation whose size depends on data.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Rows wider than this do not fit one register-resident block; no IndexTTS2 op needs more.
MAX_FUSED_ROW = 16384


def is_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cdiv(a: int, b: int) -> int:
    """Ceiling division of host ints (``triton.cdiv`` is a constexpr function: slow to call from Python)."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
    device: torch.device | None = None,
    shape: tuple[int, ...] | None = None,
    min_dim: int = 1,
    last_dim_contiguous: bool = True,
) -> None:
    """Raise a TypeError/ValueError that names ``name`` when ``t`` does not meet the contract."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {_dtype_names(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, but x is on {device}: all tensors must be on one device")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} must have a contiguous last dimension (stride(-1) == 1), got strides {tuple(t.stride())}"
        )


def check_launchable(x: torch.Tensor, op: str) -> None:
    """The Triton path needs a CUDA tensor, or CPU tensors under the interpreter."""
    if x.is_cuda:
        return
    if x.device.type == "cpu" and is_interpreting():
        return
    raise RuntimeError(
        f"{op}: the Triton kernel needs a CUDA tensor (got {x.device}); on CPU use the indextts_fast dispatch "
        "(which falls back to the torch reference) or set TRITON_INTERPRET=1 before importing indextts_kernels"
    )


def check_inference(op: str, *tensors) -> None:
    """Kernels are forward-only: refuse silently dropping gradients."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{op} is inference-only (no backward); call it under torch.inference_mode() or torch.no_grad()"
        )


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte] that ``t``'s elements occupy in memory."""
    lo = t.data_ptr()
    return lo, lo + (sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) + 1) * t.element_size()


def check_out_buffer(op: str, name: str, out: torch.Tensor, inputs, *, in_place_ok=()) -> None:
    """Refuse an output buffer that aliases itself or overlaps an input in memory.

    ``inputs`` is ``(name, tensor or None)`` pairs. An output that overlaps an input would be written while
    other programs may still read that input. ``in_place_ok`` names the inputs that may be the very same view
    as ``out`` (same data pointer and strides): kernels whose programs read each such element before writing
    it, and nothing else reads it, may run in place there.
    """
    if out.numel() == 0:
        return
    extent = 1  # dims by stride: each must step past everything the smaller ones span, or elements alias
    for stride, n in sorted((st, n) for n, st in zip(out.shape, out.stride(), strict=True) if n > 1):
        if stride < extent:
            raise ValueError(
                f"{op}: {name} overlaps itself (strides {tuple(out.stride())} for shape {tuple(out.shape)}, an "
                "expanded view?): programs would race to write the shared elements"
            )
        extent += stride * (n - 1)
    lo, hi = _span(out)
    for iname, t in inputs:
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device != out.device:
            continue
        if iname in in_place_ok and t.data_ptr() == out.data_ptr() and t.stride() == out.stride():
            continue  # in place: each element is read, then written, by the same program
        tlo, thi = _span(t)
        if tlo < hi and lo < thi:
            allowed = ", ".join(f"{name}={n}" for n in in_place_ok)
            raise ValueError(
                f"{op}: {name} overlaps {iname} in memory; other programs may still read {iname} while {name} is "
                "written ("
                + (f"only {allowed}, the very same view, is allowed)" if allowed else "pass a separate buffer)")
            )


def rows_view(name: str, t: torch.Tensor, n: int, *, copy_ok: bool = False) -> torch.Tensor:
    """View ``t`` [..., n] as [M, n] with one row stride, without a copy.

    Where the leading dims do not flatten (a slice along T of a [B, T, n] tensor, say): an input
    (``copy_ok``) is copied once into contiguous rows; an output buffer raises, since the kernel must write
    into the caller's memory.
    """
    try:
        return t.view(-1, n)
    except RuntimeError as e:
        if copy_ok:
            return t.reshape(-1, n)
        raise ValueError(
            f"{name} with shape {tuple(t.shape)} and strides {tuple(t.stride())} cannot be viewed as rows of {n} "
            "elements; pass a tensor whose leading dimensions are contiguous"
        ) from e


# ----------------------------------------------------------------------------------------------------------------------
# Kernel launch counting (the launch-count tests and the audit): each launcher notes every kernel it launches
# ----------------------------------------------------------------------------------------------------------------------
_LAUNCH_COUNTER: collections.Counter | None = None


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as c: ...`` -> c[kernel name] = kernel launches made by our launchers in the block."""
    global _LAUNCH_COUNTER
    prev, counter = _LAUNCH_COUNTER, collections.Counter()
    _LAUNCH_COUNTER = counter
    try:
        yield counter
    finally:
        _LAUNCH_COUNTER = prev


def note_launch(kernel: str) -> None:
    if _LAUNCH_COUNTER is not None:
        _LAUNCH_COUNTER[kernel] += 1
