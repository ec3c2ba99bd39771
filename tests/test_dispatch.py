"""Backend selection: CUDA -> compiled Triton, TRITON_INTERPRET=1 -> interpreter, else the torch reference."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import indextts_fast
from indextts_fast import _dispatch

from .helpers import INTERPRET


def _run(code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "INDEXTTS_FAST_BACKEND")}
    e.update(env)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e)
    assert res.returncode == 0, f"subprocess failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout.strip()


def test_unknown_override_is_an_error(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="INDEXTTS_FAST_BACKEND"):
        indextts_fast.requested_backend()


def test_torch_override_uses_reference(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    assert indextts_fast.backend_for(torch.device("cpu")) == "torch"
    assert indextts_fast.backend_for(torch.device("cuda")) == "torch"


@pytest.mark.skipif(not INTERPRET, reason="CPU-only machine check")
def test_interpreter_when_requested():
    assert indextts_fast.backend_for(torch.device("cpu")) == "interpret"
    assert indextts_fast.backend_for(torch.device("cuda")) == "cuda"  # CUDA tensors always run compiled


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machine check")
def test_plain_cpu_machine_falls_back_to_torch_and_computes():
    out = _run("""
        import torch, indextts_fast as F
        from indextts_kernels import reference as ref
        x = torch.randn(3, 5, 48); w = torch.randn(48); b = torch.randn(48)
        assert F.default_backend() == "torch", F.default_backend()
        assert torch.equal(F.layer_norm(x, w, b), ref.layer_norm_ref(x, w, b))
        import sys
        assert "indextts_kernels.norm" not in sys.modules  # no Triton kernel module was needed
        print("ok")
    """)
    assert out == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machine check")
def test_triton_override_on_cpu_turns_on_the_interpreter():
    out = _run(
        """
        import os, torch, indextts_fast as F
        from indextts_kernels import reference as ref
        x = torch.randn(2, 5, 40); g = torch.randn(40)
        y = F.adaptive_rms_norm(x, g)
        assert os.environ["TRITON_INTERPRET"] == "1"
        assert (y - ref.adaptive_rms_norm_ref(x, g)).abs().max() < 1e-5
        print(F.backend_for(x.device))
    """,
        INDEXTTS_FAST_BACKEND="triton",
    )
    assert out == "interpret"


def test_imports_and_computes_without_triton():
    """A machine without Triton (Windows, macOS): both packages import, ops run on the reference."""
    out = _run(
        """
        import sys
        sys.modules["triton"] = None          # makes `import triton` fail and find_spec("triton") return None
        import torch, indextts_kernels, indextts_fast as F
        assert not indextts_kernels.HAS_TRITON
        x = torch.randn(2, 4, 32); w = torch.randn(32); b = torch.randn(32)
        y, h = F.layer_norm(x, w, b, residual=x)
        assert F.default_backend() == "torch"
        try:
            indextts_kernels.layer_norm_fwd
        except ImportError as e:
            assert "Triton" in str(e)
        else:
            raise AssertionError("kernel launcher available without Triton")
        print("ok")
    """,
        TRITON_INTERPRET="1",
    )
    assert out == "ok"


def test_requested_triton_without_triton_is_an_error():
    out = _run(
        """
        import sys
        sys.modules["triton"] = None
        import torch, indextts_fast as F
        try:
            F.layer_norm(torch.randn(2, 8), None, None)
        except RuntimeError as e:
            print("error:", e)
    """,
        INDEXTTS_FAST_BACKEND="triton",
    )
    assert out.startswith("error:") and "Triton is not installed" in out


def test_default_backend_reports_a_known_name():
    assert _dispatch.default_backend() in ("cuda", "interpret", "torch")
