"""Bad input raises an error that names the argument, on the kernel launchers and on the torch fallback."""

import pytest
import torch

import indextts_fast as F
import indextts_kernels as K

from .helpers import randn

N = 48


def _args():
    x = randn(2, 5, N)
    return x, randn(N), randn(N), randn(2, 1, N), randn(2, 1, N)


CASES = [
    # (description, call(x, w, b, scale, shift), exception, message fragment)
    ("int x", lambda m, x, w, b, s, h: m.layer_norm(x.int(), w, b), TypeError, "x has dtype int32"),
    ("fp64 x", lambda m, x, w, b, s, h: m.adaptive_rms_norm(x.double(), w), TypeError, "x has dtype float64"),
    ("strided last dim", lambda m, x, w, b, s, h: m.layer_norm(randn(2, 5, 2 * N)[..., ::2], w, b), ValueError,
     "x must have a contiguous last dimension"),
    ("weight shape", lambda m, x, w, b, s, h: m.layer_norm(x, w[:-1], b), ValueError, "weight has shape"),
    ("bias dtype", lambda m, x, w, b, s, h: m.layer_norm(x, w, b.long()), TypeError, "bias has dtype"),
    ("weight device", lambda m, x, w, b, s, h: m.layer_norm(x, w.to("meta"), b), ValueError, "weight is on meta"),
    ("residual shape", lambda m, x, w, b, s, h: m.layer_norm(x, w, b, residual=x[:, :4]), ValueError,
     "residual has shape"),
    ("scale shape", lambda m, x, w, b, s, h: m.adaptive_rms_norm(x, w, randn(3, 1, N), h), ValueError,
     "scale has shape"),
    ("shift without scale", lambda m, x, w, b, s, h: m.adaptive_rms_norm(x, w, None, h), ValueError,
     "both scale and shift"),
    ("shift shape", lambda m, x, w, b, s, h: m.final_layer_modulate(x, randn(2, N + 1), s), ValueError,
     "shift has shape"),
    ("eps", lambda m, x, w, b, s, h: m.layer_norm(x, w, b, eps=-1.0), ValueError, "eps must be a positive"),
    ("row too wide", lambda m, x, w, b, s, h: m.layer_norm(randn(2, 20000), None, None), ValueError,
     r"x.shape\[-1\] = 20000"),
]  # fmt: skip


class _Launchers:
    """The kernel launchers under the dispatched ops' names."""

    layer_norm = staticmethod(lambda *a, **k: K.layer_norm_fwd(*a, **k))
    adaptive_rms_norm = staticmethod(lambda *a, **k: K.adaptive_rms_norm_fwd(*a, **k))
    final_layer_modulate = staticmethod(lambda *a, **k: K.final_layer_modulate_fwd(*a, **k))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("api", ["kernel", "torch-fallback"])
def test_bad_input_names_the_argument(api, case, monkeypatch):
    _, call, exc, fragment = case
    if api == "torch-fallback":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
        mod = F
    else:
        if not torch.cuda.is_available() and not K.HAS_TRITON:
            pytest.skip("no Triton")
        mod = _Launchers
    with pytest.raises(exc, match=fragment):
        call(mod, *_args())


def test_out_buffer_checked():
    x, w, b, _, _ = _args()
    with pytest.raises(TypeError, match="out has dtype"):
        K.layer_norm_fwd(x, w, b, out=torch.empty(x.shape, dtype=torch.float16))
    with pytest.raises(ValueError, match="out has shape"):
        K.layer_norm_fwd(x, w, b, out=torch.empty(2, 5, N + 1))


def test_inference_only(device):
    x, w, b, _, _ = (t.to(device) for t in _args())
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        K.layer_norm_fwd(x, w, b)
    with torch.no_grad():
        K.layer_norm_fwd(x, w, b)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machine check")
def test_cpu_tensor_to_compiled_kernel_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        K.layer_norm_fwd(*_args()[:3])


def test_validation_runs_once_per_signature(device):
    """The launchers validate a signature once: a repeat (the decode engine's, the CFM loop's every step) skips
    the check; another shape, stride, dtype, scalar or grad mode runs it again; a failure is never remembered;
    with an ``out`` buffer (its overlap check reads data pointers) it runs every call."""
    from indextts_kernels._validate import validate_once

    calls = []

    def check(op, x, *, eps, out=None):
        calls.append(op)
        if eps <= 0:
            raise ValueError(f"{op}: eps must be positive")

    x = torch.randn(3, 5)
    validate_once(check, "op", x, eps=1e-5)
    validate_once(check, "op", x.clone(), eps=1e-5)
    assert len(calls) == 1
    validate_once(check, "op", torch.randn(3, 6), eps=1e-5)
    validate_once(check, "op", torch.randn(5, 3).t(), eps=1e-5)
    validate_once(check, "op", x.double(), eps=1e-5)
    validate_once(check, "op", x, eps=1e-6)
    with torch.no_grad():
        validate_once(check, "op", x, eps=1e-5)
    assert len(calls) == 6
    for _ in range(2):
        with pytest.raises(ValueError, match="eps must be positive"):
            validate_once(check, "op", x, eps=0.0)
    out = torch.empty(3)
    validate_once(check, "op", x, eps=1e-5, out=out)
    validate_once(check, "op", x, eps=1e-5, out=out)
    assert len(calls) == 10
    xs, w, b, _, _ = (t.to(device) for t in _args())
    K.layer_norm_fwd(xs, w, b)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        K.layer_norm_fwd(xs, w, b, -1.0)
