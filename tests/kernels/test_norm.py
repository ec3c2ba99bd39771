"""Normalization kernels (indextts_kernels.norm) against the torch references, under the tolerance rule.

On CPU these run the real @triton.jit kernels in the Triton interpreter at small odd shapes; on a CUDA
machine the same tests run compiled, with bigger shapes.
"""

import pytest
import torch

import indextts_kernels as K
from indextts_kernels import reference as ref

from ..helpers import DTYPES, INTERPRET, assert_close_rel, dtype_id, poisoned, randn, upcast

# hidden sizes of the hot path (DiT 512, w2v 1024, GPT 1280) and odd ones; (lead shape) x N
NS = [512, 1280, 1024, 100, 37]
LEAD = (2, 7) if INTERPRET else (3, 1721)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("N", NS)
def test_layer_norm(N, dtype, device):
    x = randn(*LEAD, N, dtype=dtype, device=device, mean=0.3, std=2.0)
    w = randn(N, dtype=dtype, device=device, mean=1.0, std=0.3)
    b = randn(N, dtype=dtype, device=device, std=0.5)
    out = poisoned(x.shape, dtype, device)
    y = K.layer_norm_fwd(x, w, b, 1e-5, out=out)
    assert y is out
    assert_close_rel(y, ref.layer_norm_ref(x, w, b, 1e-5), ref.layer_norm_ref(*upcast(x, w, b), 1e-5))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("N", [1280, 100])
def test_layer_norm_residual(N, dtype, device):
    """GPT-2 block: h = x + residual (stream dtype), then ln_2(h); one read of each input, two writes."""
    x = randn(*LEAD, N, dtype=dtype, device=device, std=3.0)
    r = randn(*LEAD, N, dtype=dtype, device=device, mean=-0.2)
    w = randn(N, dtype=dtype, device=device, mean=1.0, std=0.3)
    b = randn(N, dtype=dtype, device=device, std=0.5)
    out, res_out = poisoned(x.shape, dtype, device), poisoned(x.shape, dtype, device)
    y, h = K.layer_norm_fwd(x, w, b, 1e-5, residual=r, out=out, residual_out=res_out)
    assert y is out and h is res_out
    assert torch.equal(h, x + r), "the new residual stream must equal torch's x + residual exactly"
    low, _ = ref.layer_norm_ref(x, w, b, 1e-5, residual=r)
    high = ref.layer_norm_ref(*upcast(h, w, b), 1e-5)  # the normalized stream is the stored (rounded) one
    assert_close_rel(y, low, high)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_layer_norm_autocast_output(dtype, device):
    """Under fp16 autocast IndexTTS2's LayerNorms compute in fp32 and return fp32 from a half stream."""
    N = 1280
    x = randn(3, 5, N, dtype=dtype, device=device, std=2.0)
    r = randn(3, 5, N, dtype=dtype, device=device)
    w, b = randn(N, dtype=dtype, device=device, mean=1.0), randn(N, dtype=dtype, device=device)
    y, h = K.layer_norm_fwd(x, w, b, residual=r, out_dtype=torch.float32)
    assert y.dtype == torch.float32 and h.dtype == dtype
    low, _ = ref.layer_norm_ref(x, w, b, residual=r, out_dtype=torch.float32)
    assert_close_rel(y, low, ref.layer_norm_ref(*upcast(h, w, b)))


def test_layer_norm_no_affine_any_leading_shape(device):
    x = randn(2, 3, 2, 33, device=device, mean=1.0)
    y = K.layer_norm_fwd(x, None, None, 1e-6)
    assert_close_rel(y, ref.layer_norm_ref(x, None, None, 1e-6), ref.layer_norm_ref(x.double(), None, None, 1e-6))
    v = randn(77, device=device)  # a single 1-D row
    assert_close_rel(
        K.layer_norm_fwd(v, None, None), ref.layer_norm_ref(v, None, None), ref.layer_norm_ref(v.double(), None, None)
    )


def _modulation(kind, B, T, N, dtype, device):
    """scale/shift as the official module makes them: the two halves of one projection output (views)."""
    if kind == "per_batch":
        proj = randn(B, 1, 2 * N, dtype=dtype, device=device, mean=0.5)
    else:
        proj = randn(B, T, 2 * N, dtype=dtype, device=device, mean=0.5)
    scale, shift = torch.split(proj, N, dim=-1)
    return scale, shift


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("N", [512, 1024, 1280, 100])
@pytest.mark.parametrize("mod", ["per_batch", "per_token", "none"])
def test_adaptive_rms_norm(mod, N, dtype, device):
    B, T = LEAD
    x = randn(B, T, N, dtype=dtype, device=device, mean=0.2, std=1.5)
    g = randn(N, dtype=dtype, device=device, mean=1.0, std=0.3)
    scale = shift = None
    if mod != "none":
        scale, shift = _modulation(mod, B, T, N, dtype, device)
        assert scale.stride(-2) == 2 * N or scale.shape[-2] == 1  # non-contiguous halves, no copy
    out = poisoned(x.shape, dtype, device)
    y = K.adaptive_rms_norm_fwd(x, g, scale, shift, 1e-5, out=out)
    assert y is out
    low = ref.adaptive_rms_norm_ref(x, g, scale, shift, 1e-5)
    high = ref.adaptive_rms_norm_ref(*upcast(x, g, scale, shift), 1e-5)
    assert_close_rel(y, low, high)


def test_adaptive_rms_norm_mixed_dtypes(device):
    """fp16 activations with fp32 parameters: the cast point and torch's type promotion are kept."""
    B, T, N = 2, 5, 512
    x = randn(B, T, N, dtype=torch.float16, device=device, std=2.0)
    g = randn(N, device=device, mean=1.0, std=0.3)
    scale, shift = _modulation("per_batch", B, T, N, torch.float32, device)
    y = K.adaptive_rms_norm_fwd(x, g, scale, shift)
    low = ref.adaptive_rms_norm_ref(x, g, scale, shift)
    assert y.dtype == low.dtype == torch.float32
    assert_close_rel(y, low, ref.adaptive_rms_norm_ref(*upcast(x, g, scale, shift)))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("N", [512, 100])
def test_final_layer_modulate(N, dtype, device):
    B, T = LEAD
    x = randn(B, T, N, dtype=dtype, device=device, mean=-0.4, std=1.7)
    c = randn(B, 2 * N, dtype=dtype, device=device, std=0.5)
    shift, scale = c.chunk(2, dim=1)  # as FinalLayer: shift first
    out = poisoned(x.shape, dtype, device)
    y = K.final_layer_modulate_fwd(x, shift, scale, 1e-6, out=out)
    assert y is out
    low = ref.final_layer_modulate_ref(x, shift, scale, 1e-6)
    high = ref.final_layer_modulate_ref(*upcast(x, shift, scale), 1e-6)
    assert_close_rel(y, low, high)


def test_empty_rows(device):
    x = torch.empty(0, 64, device=device)
    w = randn(64, device=device)
    assert K.adaptive_rms_norm_fwd(x, w).shape == (0, 64)


def test_tolerance_rule_catches_wrong_math(device):
    """The checks above can fail: swapping scale and shift, or FinalLayer's 1+scale for AdaLN's scale, is caught."""
    B, T, N = 2, 5, 100
    x = randn(B, T, N, device=device)
    g = randn(N, device=device, mean=1.0)
    scale, shift = _modulation("per_batch", B, T, N, torch.float32, device)
    y = K.adaptive_rms_norm_fwd(x, g, shift, scale)  # swapped
    low = ref.adaptive_rms_norm_ref(x, g, scale, shift)
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(y, low, ref.adaptive_rms_norm_ref(*upcast(x, g, scale, shift)))
    n = K.layer_norm_fwd(x, None, None, 1e-6)
    wrong = n * scale + shift  # AdaLN's convention where FinalLayer's (1 + scale) belongs
    low = ref.final_layer_modulate_ref(x, shift, scale)
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(wrong, low, ref.final_layer_modulate_ref(*upcast(x, shift, scale)))
    partial = K.layer_norm_fwd(x, None, None, out=poisoned(x.shape, x.dtype, device))
    partial[0, 0, 3] = float("nan")  # an element a kernel never wrote
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_rel(partial, ref.layer_norm_ref(x, None, None), ref.layer_norm_ref(x.double(), None, None))


def test_input_slices_that_do_not_flatten(device):
    """x = a [B, T, N] slice along T has no single row stride: it is read through one copy, out stays exact."""
    base = randn(2, 9, 96, device=device, mean=0.5)
    x, r = base[:, :5], base[:, 4:]
    w, b = randn(96, device=device), randn(96, device=device)
    y, h = K.layer_norm_fwd(x, w, b, residual=r)
    assert torch.equal(h, x + r)
    assert_close_rel(y, ref.layer_norm_ref(x, w, b, residual=r)[0], ref.layer_norm_ref(*upcast(h, w, b)))
    with pytest.raises(ValueError, match="out with shape"):  # an output must be written in place
        K.layer_norm_fwd(x, w, b, out=torch.empty(2, 9, 96, device=device)[:, :5])


def _no_less_accurate_than_torch(out, low, high, what):
    """The tolerance rule, and on top: max error no larger than torch's own (plus the rule's floor)."""
    assert_close_rel(out, low, high, what)
    err, torch_err = float((out.double() - high).abs().max()), float((low.double() - high).abs().max())
    floor = torch.finfo(out.dtype).eps * max(1.0, float(high.abs().max()))
    assert err <= torch_err + floor, f"{what}: max error {err:.3e} > torch's {torch_err:.3e} + floor {floor:.3e}"


@pytest.mark.parametrize("N", [1280, 512, 100, 37])
def test_layer_norm_fp32_rows_far_from_zero(N, device):
    """fp32 rows with mean 100 and std 1e-3 (LayerNorm and the FinalLayer's no-affine eps-1e-6 form).

    The fp32 mean of such a row is only known to half an ulp of 100, which is large next to the deviations; a
    kernel that subtracts that rounded mean is about as inaccurate as torch's CPU LayerNorm here (0.7-1.9x its
    error under the interpreter, and up to 3x compiled on a GPU). Subtracting the exact deviation from a first
    mean estimate and then its small correction makes the result accurate to the output's own rounding, so it
    must be no less accurate than torch at all.
    """
    x = randn(*LEAD, N, device=device, mean=100.0, std=1e-3)
    y = K.layer_norm_fwd(x, None, None, 1e-5, out=poisoned(x.shape, torch.float32, device))
    _no_less_accurate_than_torch(y, ref.layer_norm_ref(x, None, None), ref.layer_norm_ref(x.double(), None, None),
                                 "layer_norm, mean 100")  # fmt: skip
    w = randn(N, device=device, mean=1.0, std=0.3)
    b = randn(N, device=device, std=0.5)
    y = K.layer_norm_fwd(x, w, b, 1e-5)
    _no_less_accurate_than_torch(y, ref.layer_norm_ref(x, w, b), ref.layer_norm_ref(*upcast(x, w, b)),
                                 "layer_norm affine, mean 100")  # fmt: skip
    B, T = LEAD
    shift, scale = randn(B, 2 * N, device=device, std=0.5).chunk(2, dim=1)
    y = K.final_layer_modulate_fwd(x, shift, scale)
    low = ref.final_layer_modulate_ref(x, shift, scale)
    _no_less_accurate_than_torch(y, low, ref.final_layer_modulate_ref(*upcast(x, shift, scale)), "final layer")
