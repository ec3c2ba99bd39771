"""Tolerance rule, input factories and access to the official IndexTTS2 module code (its models and their inputs:
``indextts_fast.official``)."""

from __future__ import annotations

import os

import pytest
import torch

from indextts_fast.tolerance import judge

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dtype_id(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def upcast(*ts):
    """The high-precision oracle's inputs: every tensor in fp64 (None stays None)."""
    return [None if t is None else t.double() for t in ts]


def assert_close_rel(out: torch.Tensor, low: torch.Tensor, high: torch.Tensor, what: str = "output") -> None:
    """The tolerance rule (``indextts_fast.tolerance``): max|out - high| <= 2 * max|low - high| + floor(dtype).

    ``out`` is the kernel result, ``low`` PyTorch's result at the same dtype, ``high`` the fp64 reference.
    NaN anywhere in ``out`` (for example a poisoned element the kernel never wrote) fails.
    """
    assert out.shape == high.shape == low.shape, f"{what}: shapes {out.shape}, {low.shape}, {high.shape}"
    v = judge(out, low, high)
    o, h = out.detach().double().cpu(), high.detach().double().cpu()
    if v.nonfinite:
        idx = (~torch.isfinite(o)).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {v.nonfinite} non-finite elements (never written?), first at {idx}")
    if not v.ok:
        err = (o - h).abs()
        idx = (err > v.bound).nonzero()[:5].tolist()
        raise AssertionError(
            f"{what} ({dtype_id(out.dtype)}): max error {v.err:.3e} (mean {float(err.mean()):.3e}) "
            f"> 2 * torch error {v.torch_err:.3e} + floor {v.bound - 2 * v.torch_err:.3e}; first mismatches at {idx}"
        )


def assert_same_math(ours: torch.Tensor, official: torch.Tensor, what: str = "output") -> None:
    """Two pure-torch computations of the same formula at the same precision: a few units of rounding apart."""
    assert ours.shape == official.shape, f"{what}: shape {ours.shape} vs official {official.shape}"
    assert ours.dtype == official.dtype, f"{what}: dtype {ours.dtype} vs official {official.dtype}"
    o, r = ours.detach().double(), official.detach().double()
    tol = 4 * torch.finfo(ours.dtype).eps * max(1.0, float(r.abs().max()))
    err = float((o - r).abs().max())
    assert err <= tol, f"{what}: max difference from the official module {err:.3e} > {tol:.3e}"


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel fails to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def randn(*shape, dtype=torch.float32, device="cpu", mean=0.0, std=1.0) -> torch.Tensor:
    """Random test data (never zeros): N(mean, std) generated in fp32, then cast."""
    return (torch.randn(*shape, dtype=torch.float32) * std + mean).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------------
# The official IndexTTS2 module code (indextts2-inference, a test-only reference)
# ----------------------------------------------------------------------------------------------------------------------
ALLOW_MISSING_ENV = "INDEXTTS_FAST_ALLOW_MISSING_OFFICIAL"


def missing_official(e: Exception):
    """A test that needs the official code, which is not installed, fails (CI must run these), unless
    INDEXTTS_FAST_ALLOW_MISSING_OFFICIAL=1 asks to skip. tests/conftest.py applies this to every test whose setup or
    body raises ``OfficialCodeMissing`` (the harness in ``indextts_fast.official`` imports the official code)."""
    msg = str(e)
    if os.environ.get(ALLOW_MISSING_ENV) == "1":
        pytest.skip(msg)
    pytest.fail(msg + f" (or set {ALLOW_MISSING_ENV}=1 to skip)")


def official(module: str):
    """Import ``indextts.<module>`` from the official code without running ``indextts/__init__``.

    The package's ``__init__`` pulls librosa, torchaudio and hub downloads; a stub package object with the
    real ``__path__`` lets the pure-torch submodules import on their own. Without the official code: see
    ``missing_official``.
    """
    from indextts_fast.official import OfficialCodeMissing, import_official

    try:
        return import_official(module)
    except OfficialCodeMissing as e:
        missing_official(e)


def official_line() -> str:
    """Which official code line is installed: "repository" (the official repository's code with its vendored
    transformers 4.52 generation utilities: tts-webui-index-tts) or "refactor" (indextts2-inference, transformers 5)."""
    official("gpt.model_v2")
    from indextts_fast.official import official_line as line

    return line()
