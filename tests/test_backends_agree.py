"""Every backend of a dispatched op gives the same answer, or the same error, on the same input.

The kernels (the Triton interpreter on CPU, compiled on CUDA) and the torch reference share one validation
(indextts_kernels._validate), so an input one backend refuses the other refuses with the same message, and an
edge case one backend handles (an empty sequence, a mixed-dtype stream) the other handles identically.
"""

import pytest
import torch

import indextts_fast as F
import indextts_kernels as K
from indextts_kernels import reference as ref

from .helpers import assert_close_rel, poisoned, randn

BACKENDS = ["kernel", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    elif not K.HAS_TRITON:
        pytest.skip("no Triton")
    return request.param


def test_dit_attention_of_an_empty_sequence(backend, device):
    """T = 0 gives an empty [B, 0, H*D] result on every backend (the torch path used to fail in a reshape)."""
    qkv = randn(2, 0, 3 * 128, device=device)
    y = F.dit_attention(qkv, 2)
    assert y.shape == (2, 0, 128) and y.dtype == qkv.dtype


def test_layer_norm_half_stream_with_fp32_residual(backend, device):
    """fp16 x + fp32 residual: the new stream is fp32 (torch promotion) and so is the normalized output."""
    N = 100
    x = randn(3, 5, N, dtype=torch.float16, device=device, std=2.0)
    r = randn(3, 5, N, device=device, mean=0.5)
    w, b = randn(N, device=device, mean=1.0, std=0.2), randn(N, device=device)
    y, h = F.layer_norm(x, w, b, residual=r)
    assert h.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.equal(h, x + r)
    low, _ = ref.layer_norm_ref(x, w, b, residual=r)
    assert_close_rel(y, low, ref.layer_norm_ref(h.double(), w.double(), b.double()))


@pytest.mark.parametrize(
    "call, exc, fragment",
    [
        (lambda x, w: F.layer_norm(x, w, w, out_dtype=torch.int32), TypeError, "out_dtype must be"),
        (lambda x, w: F.layer_norm(x, w, w, out_dtype=torch.float64), TypeError, "out_dtype must be"),
        (lambda x, w: F.dit_attention(randn(1, 5, 384), 2, fp32_precision="bogus"), ValueError, "fp32_precision"),
        (lambda x, w: F.linear(x, randn(7, 64), precision="bogus"), ValueError, "precision must be"),
    ],
    ids=["out_dtype int32", "out_dtype float64", "fp32_precision", "gemm precision"],
)
def test_one_validation_for_every_backend(backend, call, exc, fragment):
    x, w = randn(2, 64), randn(64)
    with pytest.raises(exc, match=fragment):
        call(x, w)


def _cache(B, S, H=2, D=64, device="cpu"):
    kc = randn(B, H, S, D, device=device)
    vc = randn(B, H, S, D, device=device, mean=0.5)
    return kc, vc


@pytest.mark.parametrize("bad", [3, -1, 1000], ids=["one past", "negative", "far"])
def test_decode_row_table_out_of_range_is_refused(backend, bad, device):
    """A table entry naming a physical row the cache does not have is refused on the host (CPU tensors) by both
    backends; the interpreter used to crash the process (far) or read the next rows of memory (one past)."""
    B, S = 3, 16
    kc, vc = _cache(B, S, device=device)
    table = torch.arange(B, dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous()
    table[1, 2] = bad
    lengths = torch.full((B,), 5, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=rf"row_table holds physical rows {min(bad, 0)}\.\.{max(bad, 2)}"):
        F.gpt_decode_attention(randn(B, 1, 3 * 128, device=device), 2, kc, vc, lengths, row_table=table)


def test_decode_row_table_out_of_range_on_the_device_is_nan(device, monkeypatch):
    """Where the host check cannot run (device tensors: it would need a sync), the kernel never follows an entry
    outside the cache and makes that row's output NaN; the other rows are unaffected. The host check is bypassed
    here to reach the kernel's guard under the interpreter."""
    from indextts_kernels import attention

    monkeypatch.setattr(attention, "decode_attention_args", lambda *a, **k: None)
    B, S = 3, 16
    big = randn(2 * B, 2, S, 64, device=device)  # the cache is the first B rows of a larger buffer
    kc, vc = big[:B], randn(B, 2, S, 64, device=device)
    table = torch.arange(B, dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous()
    good = table.clone()
    table[1, 2] = B  # one past: would read big[B], memory that is not this cache
    lengths = torch.full((B,), 5, dtype=torch.int32, device=device)
    qkv = randn(B, 1, 3 * 128, device=device)
    kr, vr = kc.clone(), vc.clone()
    y = K.gpt_decode_attention_fwd(qkv, 2, kc, vc, lengths, row_table=table)
    assert y[1].isnan().all(), "a row read through an out-of-range table entry must be NaN, not garbage"
    want = ref.gpt_decode_attention_ref(qkv, 2, kr, vr, lengths, good)
    assert_close_rel(y[[0, 2]], want[[0, 2]], ref.gpt_decode_attention_ref(
        qkv.double(), 2, kr.double(), vr.double(), lengths, good.clone())[[0, 2]])  # fmt: skip


def test_norm_out_overlapping_an_input_is_refused(device):
    x = randn(4, 64, device=device)
    w, b = randn(64, device=device, mean=1.0), randn(64, device=device)
    buf = randn(5, 64, device=device)
    with pytest.raises(ValueError, match="out overlaps x"):
        K.layer_norm_fwd(buf[:4], w, b, out=buf[1:])  # shifted by a row: row i is written before row i+1 is read
    with pytest.raises(ValueError, match="out overlaps weight"):
        K.layer_norm_fwd(randn(1, 64, device=device), w, b, out=w.view(1, 64))
    xs = randn(2, 3, 64, device=device)
    proj = randn(2, 3, 2 * 64, device=device)
    with pytest.raises(ValueError, match="out overlaps scale"):
        K.adaptive_rms_norm_fwd(xs, w, proj[..., :64], proj[..., 64:], out=proj[..., 64:])
    shift, scale = randn(2, 1, 64, device=device), randn(2, 64, device=device)
    with pytest.raises(ValueError, match="out overlaps shift"):
        K.final_layer_modulate_fwd(randn(2, 1, 64, device=device), shift.view(2, 64), scale, out=shift)
    r = randn(4, 64, device=device)
    with pytest.raises(ValueError, match="residual_out overlaps out"):
        K.layer_norm_fwd(x, w, b, residual=r, out=buf[:4], residual_out=buf[:4])
    with pytest.raises(ValueError, match="residual_out overlaps x"):
        K.layer_norm_fwd(x, w, b, residual=r, residual_out=x)


def test_norm_in_place_on_its_own_input(device):
    """out=x (the same view) and residual_out=residual are safe: each program reads its rows before writing."""
    x = randn(7, 100, device=device, std=2.0)
    r = randn(7, 100, device=device)
    w, b = randn(100, device=device, mean=1.0), randn(100, device=device)
    x0, r0 = x.clone(), r.clone()
    y, h = K.layer_norm_fwd(x, w, b, residual=r, out=x, residual_out=r)
    assert y is x and h is r and torch.equal(h, x0 + r0)
    low, _ = ref.layer_norm_ref(x0, w, b, residual=r0)
    assert_close_rel(y, low, ref.layer_norm_ref(h.double(), w.double(), b.double()))


def test_attention_out_overlapping_an_input_is_refused(device):
    qkv = randn(2, 9, 3 * 128, device=device)
    with pytest.raises(ValueError, match="out overlaps q"):
        K.dit_attention_fwd(qkv, 2, out=qkv.view(-1)[: 2 * 9 * 128].view(2, 9, 128))  # the first rows of qkv
    kc, vc = _cache(2, 16, device=device)
    with pytest.raises(ValueError, match="out overlaps k_cache"):
        K.gpt_prefill_attention_fwd(qkv, 2, kc, vc, out=kc.view(-1)[: 2 * 9 * 128].view(2, 9, 128))
    new = randn(2, 1, 3 * 128, device=device)
    lengths = torch.full((2,), 9, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="out overlaps qkv"):
        K.gpt_decode_attention_fwd(new, 2, kc, vc, lengths, out=new.view(-1)[:256].view(2, 1, 128))
    with pytest.raises(ValueError, match="out overlaps v_cache"):
        K.gpt_decode_attention_fwd(new, 2, kc, vc, lengths, out=vc.view(-1)[:256].view(2, 1, 128))
    out = poisoned((2, 9, 128), torch.float32, device)
    assert K.dit_attention_fwd(qkv, 2, out=out) is out  # a separate buffer is fine
