"""The WaveNet layer GEMMs (indextts_kernels.gemm: wavenet_gate_fwd, wavenet_res_skip_fwd) and the CFM Euler step
(indextts_kernels.euler.cfm_euler_fwd) against their torch references, under the tolerance rule.

On CPU the kernels run in the Triton interpreter at small odd shapes: channel counts off every BLOCK_K (the tap
boundaries inside a K slab), H odd and over several column tiles, sequences shorter than the pad (the official
zero-extended reflection), padded batches reflected at a valid length, per-batch and shared conditions.
"""

import pytest
import torch

import indextts_kernels as K
from indextts_kernels import reference as ref

from ..helpers import assert_close_rel, poisoned, randn, upcast

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

# (B, T, C, H, taps, valid): valid None = unpadded; T 1 and 2 are shorter than the 5-tap pad; C off the interpreter's
# BLOCK_K (64: slabs spanning taps) and on it (a slab in one tap)
GATE_CASES = [
    (2, 13, 20, 37, 5, None),
    (2, 13, 20, 37, 5, 9),
    (1, 2, 24, 16, 5, None),
    (1, 1, 8, 8, 3, None),
    (3, 70, 16, 70, 5, 66),
    (2, 9, 33, 5, 1, None),
    (2, 13, 64, 37, 5, 9),
    (1, 2, 128, 16, 5, None),
    (2, 40, 64, 70, 5, None),
]  # C a multiple of BLOCK_K
PRECISIONS = ["ieee", "tf32x3"]


def _gid(c):
    return "B{}xT{}xC{}xH{}_k{}_valid{}".format(*c)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", GATE_CASES, ids=_gid)
@pytest.mark.parametrize("shared_cond", [False, True], ids=["cond_per_row", "cond_shared"])
def test_wavenet_gate(case, precision, shared_cond, device):
    B, T, C, H, taps, valid = case
    x = randn(B, T, C, device=device)
    w = randn(2 * H, taps * C, device=device, std=(taps * C) ** -0.5)
    b = randn(2 * H, device=device, std=0.5)
    g = randn(1 if shared_cond else B, 2 * H, device=device, std=0.5)
    vl = None if valid is None else torch.tensor([valid], device=device)
    out = poisoned((B, T, H), torch.float32, device)
    K.wavenet_gate_fwd(x, w, b, g, taps=taps, valid_len=vl, precision=precision, out=out)
    low = ref.wavenet_gate_ref(x, w, b, g, taps=taps, valid_len=vl)
    high = ref.wavenet_gate_ref(*upcast(x, w, b, g), taps=taps, valid_len=vl)
    rows = T if valid is None else valid  # frames past the valid length are padding (values nobody reads)
    assert_close_rel(out[:, :rows], low[:, :rows], high[:, :rows].float(), "wavenet gate")
    assert torch.isfinite(out).all()


def test_wavenet_gate_reflects_like_the_unpadded_sequence(device):
    """Frames below valid_len of a padded batch equal the unpadded batch's (the padding beyond them is garbage)."""
    B, T, C, H, taps, L = 2, 16, 12, 10, 5, 11
    x = randn(B, T, C, device=device)
    x[:, L:] = 1e3
    w, b = randn(2 * H, taps * C, device=device, std=0.1), randn(2 * H, device=device)
    g = randn(B, 2 * H, device=device)
    padded = K.wavenet_gate_fwd(x, w, b, g, taps=taps, valid_len=torch.tensor([L], device=device), precision="ieee")
    plain = K.wavenet_gate_fwd(x[:, :L].contiguous(), w, b, g, taps=taps, precision="ieee")
    torch.testing.assert_close(padded[:, :L], plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("C", [12, 64], ids=["slabs_span_taps", "slab_in_one_tap"])
def test_wavenet_gate_valid_length_per_row(C, device):
    """valid_len [B]: each row reflects at its own length (one shorter than the 5-tap pad): below it, the row run
    alone, unpadded; the reference agrees."""
    B, T, H, taps = 3, 16, 10, 5
    L = [16, 11, 2]
    x = randn(B, T, C, device=device)
    for r, n in enumerate(L):
        x[r, n:] = 1e3
    w, b = randn(2 * H, taps * C, device=device, std=0.1), randn(2 * H, device=device)
    g = randn(B, 2 * H, device=device)
    vl = torch.tensor(L, device=device)
    padded = K.wavenet_gate_fwd(x, w, b, g, taps=taps, valid_len=vl, precision="ieee")
    want = ref.wavenet_gate_ref(x, w, b, g, taps=taps, valid_len=vl)
    for r, n in enumerate(L):
        plain = K.wavenet_gate_fwd(x[r : r + 1, :n].contiguous(), w, b, g[r : r + 1], taps=taps, precision="ieee")
        torch.testing.assert_close(padded[r : r + 1, :n], plain, rtol=0, atol=1e-6)
        torch.testing.assert_close(want[r : r + 1, :n], plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="valid_len must be"):
        K.wavenet_gate_fwd(x, w, b, g, taps=taps, valid_len=torch.tensor([3, 4], device=device))


RES_CASES = [(2, 13, 37), (1, 70, 64), (3, 5, 20)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", RES_CASES, ids=lambda c: "B{}xT{}xH{}".format(*c))
@pytest.mark.parametrize("first,last", [(False, False), (True, False), (False, True), (True, True)])
def test_wavenet_res_skip(case, precision, first, last, device):
    B, T, H = case
    n = H if last else 2 * H
    acts = randn(B, T, H, device=device)
    w = randn(n, H, device=device, std=H**-0.5)
    b = randn(n, device=device, std=0.5)
    x0, s0 = randn(B, T, H, device=device), randn(B, T, H, device=device, mean=0.3)
    lens = torch.tensor([T - 2, T][:B] + [1] * max(0, B - 2), dtype=torch.int32, device=device)
    x, s = x0.clone(), (poisoned((B, T, H), torch.float32, device) if first else s0.clone())
    K.wavenet_res_skip_fwd(acts, w, b, x, s, lens, first=first, last=last, precision=precision)
    x_low, s_low, x_high, s_high = x0.clone(), s0.clone(), x0.double(), s0.double()
    ref.wavenet_res_skip_ref(acts, w, b, x_low, s_low, lens, first=first, last=last)
    ref.wavenet_res_skip_ref(*upcast(acts, w, b), x_high, s_high, lens, first=first, last=last)
    assert_close_rel(s, s_low, s_high.float(), "skip")
    assert_close_rel(x, x_low, x_high.float(), "x")
    if last:
        assert torch.equal(x, x0)  # the last layer leaves the residual stream alone


@pytest.mark.parametrize("rate", [0.7, 0.0])
@pytest.mark.parametrize("shape", [(1, 80, 37), (2, 7, 100)], ids=lambda s: "B{}xF{}xT{}".format(*s))
@pytest.mark.parametrize("xin_dtype", [torch.float32, torch.bfloat16], ids=["xin_fp32", "xin_bf16"])
def test_cfm_euler(shape, rate, xin_dtype, device):
    B, F, T = shape
    R = 2 if rate > 0 else 1
    v = randn(R * B, T, F, device=device).to(xin_dtype)
    x0 = randn(B, F, T, device=device)
    keep = (torch.arange(T, device=device) >= 3).reshape(1, 1, T)
    dt = torch.tensor(0.04, device=device)
    x, xin = x0.clone(), poisoned((R * B, T, F), xin_dtype, device)
    K.cfm_euler_fwd(v, x, dt, keep, xin, rate=rate)
    x_low, xin_low = x0.clone(), torch.empty_like(xin)
    ref.cfm_euler_ref(v, x_low, dt, keep, xin_low, rate=rate)
    x_high, xin_high = x0.double(), torch.empty(xin.shape, dtype=torch.float64, device=device)
    ref.cfm_euler_ref(v.double(), x_high, dt.double(), keep, xin_high, rate=rate)
    assert_close_rel(x, x_low, x_high.float(), "x")
    for i in range(R):  # x^T rounded once to xin's dtype, in each half
        assert torch.equal(xin[i * B : (i + 1) * B], x.transpose(1, 2).to(xin_dtype))
    assert (x[..., :3] == 0).all()


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_dispatched_ops_agree(backend, device, monkeypatch):
    """indextts_fast.ops on either backend: the same results (the kernels' within the rule), the in-place updates
    included, and the Euler step writing into a slice of a wider buffer (the DiT's long-skip input)."""
    from indextts_fast import ops

    if backend == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    B, T, C, H, taps = 2, 11, 12, 10, 5
    x = randn(B, T, C, device=device)
    w, b, g = (
        randn(2 * H, taps * C, device=device, std=0.1),
        randn(2 * H, device=device),
        randn(1, 2 * H, device=device),
    )
    vl = torch.tensor([8], device=device)
    acts = ops.wavenet_gate(x, w, b, g, taps=taps, valid_len=vl, precision="ieee")
    want = ref.wavenet_gate_ref(*upcast(x, w, b, g), taps=taps, valid_len=vl)
    assert_close_rel(acts[:, :8], ref.wavenet_gate_ref(x, w, b, g, taps=taps, valid_len=vl)[:, :8],
                     want[:, :8].float(), "gate")  # fmt: skip
    h0, s0 = randn(B, T, H, device=device), randn(B, T, H, device=device)
    wr, br = randn(2 * H, H, device=device, std=H**-0.5), randn(2 * H, device=device)
    lens = torch.tensor([T, 6], dtype=torch.int32, device=device)
    h, s = h0.clone(), s0.clone()
    ops.wavenet_res_skip(acts, wr, br, h, s, lens, first=False, last=False, precision="ieee")
    h64, s64 = h0.double(), s0.double()
    ref.wavenet_res_skip_ref(*upcast(acts, wr, br), h64, s64, lens, first=False, last=False)
    torch.testing.assert_close(h, h64.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s64.float(), rtol=1e-5, atol=1e-5)
    F_ = 7
    v = randn(2 * B, T, F_, device=device)
    xs = randn(B, F_, T, device=device)
    wide = poisoned((2 * B, T, 5 + F_), torch.float32, device)
    keep = (torch.arange(T, device=device) >= 2).reshape(1, 1, T)
    x_new = xs.clone()
    ops.cfm_euler(v, x_new, torch.tensor(0.25, device=device), keep, wide[..., 5:], rate=0.5)
    want = torch.where(keep, xs + 0.25 * (1.5 * v[:B] - 0.5 * v[B:]).transpose(1, 2), 0.0)
    torch.testing.assert_close(x_new, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(wide[:B, :, 5:], x_new.transpose(1, 2)) and torch.equal(wide[B:, :, 5:], x_new.transpose(1, 2))
    assert torch.isnan(wide[..., :5]).all()  # nothing written outside the slice


def test_compile_variants_cover_every_launch():
    """Every specialization the WaveNet launchers produce at IndexTTS2 sizes (indextts_fast.shapes.WAVENETS: any row
    count, either tile choice, each dtype and fp32 precision, every flag) is in the AOT table; so is the Euler
    step's."""
    from indextts_fast import shapes
    from indextts_fast.aot import requests

    gemm = K.load_kernel_module("gemm")
    dts = {"fp32": torch.float32, "bf16": torch.bfloat16}
    listed = {(fn.__name__, sig["W"], tuple(c.items()), nw) for _, fn, sig, c, nw, *_ in
              gemm.compile_wavenet_variants(requests()["gemm"]["wavenets"])}  # fmt: skip
    missing = set()
    for _tag, H, C, taps, tnames, precisions in shapes.WAVENETS:
        for tname in tnames:
            for prec in {None, *precisions} if tname == "fp32" else (None,):
                for M in (9, 2 * 1721, 2 * 3870):
                    for sms in (1, 132, 1 << 30):
                        specs = [
                            gemm._wavenet_gate_spec(
                                M, H, C, taps, dts[tname], precision=prec, has_valid=v, num_sms=sms, interpret=False
                            )
                            for v in (False, True)
                        ]
                        specs += [gemm._wavenet_res_skip_spec(M, H, dts[tname], precision=prec, first=f, last=la,
                                                              num_sms=sms, interpret=False)
                                  for f in (False, True) for la in (False, True)]  # fmt: skip
                        for kernel, const, nw, _stages in specs:
                            if (kernel.__name__, f"*{tname}", tuple(const.items()), nw) not in listed:
                                missing.add((tname, prec, kernel.__name__, tuple(const.items()), nw))
    assert not missing, f"{len(missing)} launch specializations are not in compile_variants(): {sorted(missing)[:3]}"
    euler = K.load_kernel_module("euler")
    names = [n for n, *_ in euler.compile_variants(**requests()["euler"])]
    assert {n.split("/")[3] for n in names} == {"cfg", "nocfg"} and len(names) == 2 * len(shapes.CFM_EULERS[0][3])
