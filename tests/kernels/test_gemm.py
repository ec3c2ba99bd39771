"""GEMM with fused epilogues (indextts_kernels.gemm) against the torch references, under the tolerance rule.

On CPU the real @triton.jit kernel runs in the Triton interpreter at small odd shapes (both regimes: M <= 8 is
the GEMV decode path, larger M the tensor-core tiles); on a CUDA machine the same tests run compiled, plus the
IndexTTS2 sizes.
"""

import pytest
import torch

import indextts_fast
import indextts_kernels as K
from indextts_kernels import reference as ref

from ..helpers import DTYPES, INTERPRET, assert_close_rel, dtype_id, poisoned, randn, upcast

# the interpreter's numpy sigmoid overflows exp() for large negative inputs; the result (0) is the right one
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

# (M, K, N): M in both regimes (1, 3: decode; 37, 70: tiles; SwiGLU adds 8), K a multiple of the interpreter's
# BLOCK_K (GEMV 512, tiles 64) or not and over several K slabs, N odd / not a power of two / more than one tile
SHAPES = [(1, 700, 300), (3, 96, 37), (37, 96, 100), (70, 128, 130)]
if not INTERPRET:  # one shape per regime, K off every compiled BLOCK_K (each case is a fresh compile)
    SHAPES = [(3, 100, 37), (70, 100, 130)]
# compiled only: the IndexTTS2 projections with their own epilogue and dtype (one compile each)
HOT_PATH = [
    ("gpt_c_attn_decode", (3, 1280, 3840), "bias", torch.float16),
    ("gpt_c_fc_decode", (3, 1280, 5120), "bias+gelu_new", torch.float16),
    ("gpt_c_proj_decode", (3, 5120, 1280), "bias+residual", torch.float16),
    ("gpt_c_fc_prefill", (600, 1280, 5120), "bias+gelu_new", torch.float16),
    ("gpt_c_proj_prefill", (600, 5120, 1280), "bias+residual", torch.float16),
    ("gpt_c_fc_decode_fp32", (3, 1280, 5120), "bias+gelu_new", torch.float32),
    ("dit_wqkv", (3442, 512, 1536), "plain", torch.float32),
    ("dit_wo", (3442, 512, 512), "residual", torch.float32),
    ("dit_skip_in", (3442, 1024, 512), "bias", torch.float32),
    ("dit_wqkv_bf16", (3442, 512, 1536), "plain", torch.bfloat16),
]
SWIGLU_SHAPES = [(1, 64, 48), (8, 96, 100), (37, 128, 100), (70, 96, 130)]
if not INTERPRET:
    SWIGLU_SHAPES += [(3442, 512, 1536)]
EPILOGUES = ["plain", "bias", "bias+residual", "bias+gelu_new", "residual"]


def _sid(s):
    return "M{}xK{}xN{}".format(*s)


def _operands(M, K, N, dtype, device):
    x = randn(M, K, dtype=dtype, device=device, std=1.0)
    w = randn(N, K, dtype=dtype, device=device, std=K**-0.5)  # outputs of order one
    b = randn(N, dtype=dtype, device=device, std=0.5)
    r = randn(M, N, dtype=dtype, device=device, mean=0.3)
    return x, w, b, r


def _check_linear(epilogue, shape, dtype, device):
    M, K_, N = shape
    x, w, b, r = _operands(M, K_, N, dtype, device)
    bias = b if "bias" in epilogue else None
    res = r if "residual" in epilogue else None
    act = "gelu_new" if "gelu" in epilogue else None
    out = poisoned((M, N), dtype, device)
    y = K.linear_fwd(x, w, bias, residual=res, activation=act, out=out)
    assert y is out
    low = ref.linear_ref(x, w, bias, residual=res, activation=act)
    high = ref.linear_ref(*upcast(x, w, bias, res), activation=act)
    assert_close_rel(y, low, high)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_linear(epilogue, shape, dtype, device):
    _check_linear(epilogue, shape, dtype, device)


if not INTERPRET:  # the IndexTTS2 sizes take minutes in the interpreter: defined only where they run compiled

    @pytest.mark.parametrize("case", HOT_PATH, ids=[c[0] for c in HOT_PATH])
    def test_linear_indextts2_sizes(case, device):
        _, shape, epilogue, dtype = case
        _check_linear(epilogue, shape, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SWIGLU_SHAPES, ids=_sid)
def test_swiglu_linear(shape, dtype, device):
    """silu(x w1) * (x w3) over the packed w13: output column j reads row j and row I + j."""
    M, K_, I = shape
    x = randn(M, K_, dtype=dtype, device=device)
    w1 = randn(I, K_, dtype=dtype, device=device, std=2 * K_**-0.5)
    w3 = randn(I, K_, dtype=dtype, device=device, std=K_**-0.5, mean=0.01)
    w13 = K.pack_w13(w1, w3)
    out = poisoned((M, I), dtype, device)
    h = K.swiglu_linear_fwd(x, w13, out=out)
    assert h is out
    assert_close_rel(h, ref.swiglu_linear_ref(x, w13), ref.swiglu_linear_ref(*upcast(x, w13)))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("M", [3, 37])
def test_swiglu_feed_forward_residual(M, dtype, device):
    """The DiT block's second half: h + w2(silu(w1 x) * w3 x), as [B, T, dim] with the leading dims kept."""
    dim, I = 64, 96
    x = randn(1, M, dim, dtype=dtype, device=device)
    h = randn(1, M, dim, dtype=dtype, device=device, std=2.0)
    w13 = randn(2 * I, dim, dtype=dtype, device=device, std=dim**-0.5)
    w2 = randn(dim, I, dtype=dtype, device=device, std=I**-0.5)
    out = poisoned((1, M, dim), dtype, device)
    y = K.swiglu_feed_forward_fwd(x, w13, w2, residual=h, out=out)
    assert y is out
    low = ref.swiglu_feed_forward_ref(x, w13, w2, residual=h)
    assert_close_rel(y, low, ref.swiglu_feed_forward_ref(*upcast(x, w13, w2), residual=h.double()))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("M", [3, 37])
def test_gpt2_mlp_residual(M, dtype, device):
    dim, hid = 80, 144
    x = randn(M, dim, dtype=dtype, device=device)
    r = randn(M, dim, dtype=dtype, device=device, std=2.0)
    wf, bf = randn(hid, dim, dtype=dtype, device=device, std=dim**-0.5), randn(hid, dtype=dtype, device=device)
    wp, bp = randn(dim, hid, dtype=dtype, device=device, std=hid**-0.5), randn(dim, dtype=dtype, device=device)
    y = K.gpt2_mlp_fwd(x, wf, bf, wp, bp, residual=r, out=poisoned((M, dim), dtype, device))
    low = ref.gpt2_mlp_ref(x, wf, bf, wp, bp, residual=r)
    assert_close_rel(y, low, ref.gpt2_mlp_ref(*upcast(x, wf, bf, wp, bp), residual=r.double()))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("M", [3, 37])
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
def test_gelu_new_extremes(M, dtype, device):
    """gelu_new through sigmoid at large |u|: u^3 and exp() overflow to inf, the result must still be u (u >> 0)
    or 0 (u << 0), never NaN; moderate u under the tolerance rule. Pre-activations u = x (K = 1, weight 1)."""
    big = torch.finfo(dtype).max / 2
    u = torch.tensor([big, -big, 1e4, -1e4, 300.0, -300.0, 41.0, -41.0])
    u = torch.cat([u, torch.linspace(-12.0, 12.0, 3 * M - len(u))]).reshape(M, 3)
    x = u.reshape(-1, 1).to(device=device, dtype=dtype)
    w, b = torch.ones(1, 1, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)
    y = K.linear_fwd(x, w, b, activation="gelu_new", out=poisoned((3 * M, 1), dtype, device)).flatten()
    high = ref.gelu_new_ref(x.double()).flatten()
    assert torch.equal(y[:8:2], x.flatten()[:8:2]) and torch.equal(y[1:8:2], torch.zeros_like(y[1:8:2]))
    assert_close_rel(y[8:], ref.gelu_new_ref(x.flatten()[8:]), high[8:])


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 cut to TF32 (10 explicit mantissa bits) by truncation: whether the tensor cores' operand conversion
    rounds to nearest or truncates, truncation is the larger error, so a bound built on it holds for both."""
    return (t.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
@pytest.mark.parametrize("op", ["linear", "swiglu"])
def test_fp32_precision(op, precision, device):
    """fp32 tensor-core regime at each precision. "tf32" is held to torch's error on TF32-cut inputs.

    Compiled, "ieee" is the FMA path and the two tf32 modes run on tensor cores; under the interpreter
    ``dot_prec`` emulates the tensor cores' operand rounding and Triton's tf32x3 split.
    """
    M, K_, N = (37, 96, 100) if INTERPRET else (3442, 512, 1536)
    x = randn(M, K_, device=device)
    b, r = randn(N, device=device, std=0.5), randn(M, N, device=device, mean=0.3)
    out = poisoned((M, N), torch.float32, device)
    if op == "swiglu":
        w = randn(2 * N, K_, device=device, std=K_**-0.5)
        y = K.swiglu_linear_fwd(x, w, precision=precision, out=out)

        def fn(x, w):
            return ref.swiglu_linear_ref(x, w)
    else:
        w = randn(N, K_, device=device, std=K_**-0.5)
        y = K.linear_fwd(x, w, b, residual=r, precision=precision, out=out)

        def fn(x, w):
            return ref.linear_ref(x, w, b.to(x.dtype), residual=r.to(x.dtype))

    high = fn(x.double(), w.double())
    low = fn(_tf32(x), _tf32(w)) if precision == "tf32" else fn(x, w)
    assert_close_rel(y, low, high)


def test_tf32_error_is_caught(device):
    """ "tf32" (10-bit operands) is measurably worse than fp32, so the fp32 bound above can tell the modes apart:
    on the GPU the tensor cores round, under the interpreter dot_prec emulates them."""
    M, K_, N = 37, 96, 100
    x, w = randn(M, K_, device=device), randn(N, K_, device=device, std=K_**-0.5)
    y = K.linear_fwd(x, w, precision="tf32")
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(y, ref.linear_ref(x, w), ref.linear_ref(*upcast(x, w)))


def test_regimes_and_configs():
    """M <= 8 runs the GEMV decode path, larger M the tensor-core tiles; compiled configs at IndexTTS2 sizes."""
    gemm = K.load_kernel_module("gemm")
    cfg = gemm.gemm_launch_config
    # fp32 defaults to exact products (FMA), as torch with allow_tf32=False; tf32x3 / tf32 only when asked
    for prec, want in ((None, "ieee"), ("tf32x3", "tf32x3"), ("tf32", "tf32")):
        _kernel, const, *_ = gemm._specialization(
            3442, 1536, 512, torch.float32, act=0, has_bias=False, has_residual=False, precision=prec, num_sms=132
        )
        assert const["INPUT_PRECISION"] == want
    for M in (1, 3, 8):
        assert cfg(M, 5120, 1280, torch.float16, interpret=False)[0]
        assert cfg(M, 100, 96, torch.float32, interpret=True)[0]
    for M in (9, 600, 3442):
        assert not cfg(M, 5120, 1280, torch.float16, interpret=False)[0]
    # decode streams the weight: one 16-byte vector per thread and column per slab, and enough of them in flight
    # over the grid (N x warps x 512 bytes) for every IndexTTS2 decode GEMV, at 1 and 3 beams, fp16 and fp32
    for M in (1, 3):
        for N, K_ in ((3840, 1280), (1280, 1280), (5120, 1280), (1280, 5120)):
            for dt in (torch.float16, torch.float32):
                gemv, bm, bn, bk, _gm, warps, _st = cfg(M, N, K_, dt, interpret=False)
                vec = 16 // torch.empty((), dtype=dt).element_size()
                assert gemv and bk == 32 * warps * vec and bm * bn * vec <= 32, (M, N, K_, dt)
                assert N * warps * 512 >= 1.3e6 and -(-N // bn) * warps >= 2 * 132, (M, N, K_, dt, warps, bn)
    # prefill c_proj (600 x 1280): small tiles so that the 132 SMs of an H100 all get work
    _, bm, bn, *_ = cfg(600, 1280, 5120, torch.float16, interpret=False)
    assert (600 + bm - 1) // bm * (1280 // bn) >= 132


# SM counts of sm_86 / sm_89 / sm_90 parts (A10, 3090, A40, L4, 4090, L40S, H100 PCIe / SXM, H20)
_SM_COUNTS = (72, 82, 84, 58, 128, 142, 114, 132, 78)


def test_compile_variants_cover_every_launch():
    """Every specialization the launcher produces at IndexTTS2 sizes (indextts_fast.shapes.GEMMS: every row count of
    each GEMM's regime, at each of its dtypes and fp32 precisions), on any target GPU, is in the AOT table."""
    from indextts_fast import shapes
    from indextts_fast.aot import requests

    gemm = K.load_kernel_module("gemm")
    dts = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    acts = {None: gemm.ACT_NONE, "gelu_new": gemm.ACT_GELU_NEW, "swiglu": gemm.ACT_SWIGLU}
    listed = {
        (fn.__name__, sig["A"][1:], sig["R"][1:], tuple(c.items()), nw)
        for _, fn, sig, c, nw, *_ in gemm.compile_variants(**requests()["gemm"])
        if fn in (gemm._gemm_mma_kernel, gemm._gemm_gemv_kernel)  # the WaveNet kernels: tests/kernels/test_wavenet.py
    }
    missing = set()
    for _tag, N, K_, has_b, has_r, act, tnames, rows, precisions in shapes.GEMMS:
        sampled = [m for m in rows if m <= 256 or (m - 257) % 37 == 0] + [rows[-1]]
        for dtype_tag in tnames:
            tname, _, rbits = dtype_tag.partition("+r")
            rname = f"fp{rbits}" if rbits else tname
            for prec in {None, *precisions} if tname == "fp32" else (None,):
                for M in sampled:
                    for sms in _SM_COUNTS:
                        kernel, const, nw, stages = gemm._specialization(
                            M, N, K_, dts[tname], act=acts[act], has_bias=has_b, has_residual=has_r,
                            precision=prec, num_sms=sms, interpret=False,
                        )  # fmt: skip
                        assert stages == 3  # the AOT tool compiles at Triton's default
                        if (kernel.__name__, tname, rname, tuple(const.items()), nw) not in listed:
                            missing.add((dtype_tag, N, K_, act, tuple(const.items())))
    assert not missing, f"{len(missing)} launch specializations are not in compile_variants(): {sorted(missing)[:3]}"


def test_grouped_tile_order_with_a_partial_group(device):
    """More row tiles than GROUP_M (8), their count not a multiple of it: every tile is computed exactly once."""
    gemm = K.load_kernel_module("gemm")
    M, K_, N = 9 * 64 + 13, 64, 130  # interpreter tiles 64 x 64: 10 row tiles = one group of 8 + a group of 2
    gemv, bm, *_ = gemm.gemm_launch_config(M, N, K_, torch.float32)
    assert not gemv and -(-M // bm) > 8 and -(-M // bm) % 8
    _check_linear("bias+residual", (M, K_, N), torch.float32, device)


def test_strided_rows_and_leading_dims(device):
    """x and residual as views of wider tensors (row stride != K), 3-D leading dims kept in the output."""
    B, T, K_, N = 2, 19, 64, 48
    x = randn(B, T, 2 * K_, device=device)[..., 5 : 5 + K_]
    r = randn(B * T, N + 7, device=device)[:, :N].view(B, T, N)
    w, b = randn(N, K_, device=device, std=0.2), randn(N, device=device)
    y = K.linear_fwd(x, w, b, residual=r)
    assert y.shape == (B, T, N)
    assert_close_rel(y, ref.linear_ref(x, w, b, residual=r), ref.linear_ref(*upcast(x, w, b, r)))


def test_torch_fallback_matches(device, monkeypatch):
    """The dispatched ops on the torch backend compute the references."""
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    x, w, b, r = _operands(5, 32, 24, torch.float32, device)
    w2 = randn(32, 24, device=device)
    assert indextts_fast.backend_for(x.device) == "torch"
    assert torch.equal(indextts_fast.linear(x, w, b, residual=r), ref.linear_ref(x, w, b, residual=r))
    w13 = randn(48, 32, device=device)
    assert torch.equal(indextts_fast.swiglu_feed_forward(x, w13, w2), ref.swiglu_feed_forward_ref(x, w13, w2))
    wf, bf = randn(48, 32, device=device), randn(48, device=device)
    wp, bp = randn(32, 48, device=device), randn(32, device=device)
    y = indextts_fast.gpt2_mlp(x, wf, bf, wp, bp, residual=x)
    assert torch.equal(y, ref.gpt2_mlp_ref(x, wf, bf, wp, bp, residual=x))


@pytest.mark.parametrize("shape", [(3, 1, 5), (37, 7, 1), (2, 5, 1), (9, 1, 1)], ids=_sid)
def test_degenerate_sizes(shape, device):
    """K = 1 and N = 1 (single-element strides and sizes), both regimes, every epilogue at once."""
    M, K_, N = shape
    x, w, b, r = _operands(M, K_, N, torch.float32, device)
    y = K.linear_fwd(x, w, b, residual=r, activation="gelu_new", out=poisoned((M, N), torch.float32, device))
    low = ref.linear_ref(x, w, b, residual=r, activation="gelu_new")
    assert_close_rel(y, low, ref.linear_ref(*upcast(x, w, b, r), activation="gelu_new"))
    w13 = randn(2 * N, K_, device=device)
    h = K.swiglu_linear_fwd(x, w13, out=poisoned((M, N), torch.float32, device))
    assert_close_rel(h, ref.swiglu_linear_ref(x, w13), ref.swiglu_linear_ref(*upcast(x, w13)))


def test_out_in_place_on_residual_and_overlap_refused(device):
    """out=residual (the same view) is the in-place residual add; any other overlap with an input is refused."""
    M, K_, N = 37, 64, 64
    x, w, b, r = _operands(M, K_, N, torch.float32, device)
    r0 = r.clone()
    y = K.linear_fwd(x, w, b, residual=r, out=r)
    assert y is r
    assert_close_rel(y, ref.linear_ref(x, w, b, residual=r0), ref.linear_ref(*upcast(x, w, b, r0)))
    with pytest.raises(ValueError, match="out overlaps x"):
        K.linear_fwd(x, w, out=x)
    buf = randn(M + 1, N, device=device)
    with pytest.raises(ValueError, match="out overlaps residual"):
        K.linear_fwd(x, w, residual=buf[:M], out=buf[1:])
    with pytest.raises(ValueError, match="out overlaps weight"):
        K.linear_fwd(x, w, out=w[:M])  # w is [64, 64]: its first rows have the output's shape
    with pytest.raises(ValueError, match="out overlaps itself"):  # every row would be written by its own program
        K.linear_fwd(x, w, out=torch.empty(1, N, device=device).expand(M, N))
    with pytest.raises(ValueError, match="out overlaps itself"):
        K.swiglu_linear_fwd(
            x, randn(2 * N, K_, device=device), out=torch.empty(M + N, device=device).as_strided((M, N), (1, 1))
        )  # rows 1 apart


def test_empty_rows(device):
    x = torch.empty(0, 64, device=device)
    assert K.linear_fwd(x, randn(32, 64, device=device)).shape == (0, 32)
    assert K.swiglu_linear_fwd(torch.empty(2, 0, 64, device=device), randn(64, 64, device=device)).shape == (2, 0, 32)


def test_pack_w13(device):
    w1, w3 = randn(6, 4, device=device), randn(6, 4, device=device)
    w13 = K.pack_w13(w1, w3)
    assert w13.shape == (12, 4) and w13.is_contiguous()
    assert torch.equal(w13[:6], w1) and torch.equal(w13[6:], w3)
    with pytest.raises(ValueError, match="must match"):
        K.pack_w13(w1, w3[:5])
    with pytest.raises(ValueError, match="2-D"):
        K.pack_w13(w1.flatten(), w3.flatten())


def _bad_inputs(device):
    x = randn(3, 64, device=device)
    w = randn(32, 64, device=device)
    conv1d = randn(64, 48, device=device)  # a GPT-2 Conv1D weight [in, out], not transposed
    yield "mismatched K", ValueError, lambda f: f(x, randn(32, 63, device=device))
    yield r"\[in, out\]", ValueError, lambda f: f(x, conv1d)
    yield "row-major", ValueError, lambda f: f(x, conv1d.t())  # [out, in] shape but a transposed view
    yield "dtype mix", TypeError, lambda f: f(x.half(), w)
    yield "dtype mix", TypeError, lambda f: f(x, w.bfloat16())
    yield "bias has shape", ValueError, lambda f: f(x, w, randn(31, device=device))
    yield "bias has dtype", TypeError, lambda f: f(x, w, randn(32, device=device).half())
    yield "residual has shape", ValueError, lambda f: f(x, w, residual=randn(3, 33, device=device))
    yield "2-D", ValueError, lambda f: f(x, w.view(2, 16, 64))
    yield "precision", ValueError, lambda f: f(x, w, precision="fp64")
    yield "activation", ValueError, lambda f: f(x, w, activation="gelu")
    yield "dtype int32", TypeError, lambda f: f(x.int(), w.int())


@pytest.mark.parametrize("backend", ["kernel", "dispatch", "torch"])
def test_bad_input_raises_clear_errors(backend, device, monkeypatch):
    """Every backend validates: the launcher, the dispatched op, and the dispatched op on the torch fallback."""
    if backend == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    f = K.linear_fwd if backend == "kernel" else indextts_fast.linear
    for match, exc, call in _bad_inputs(device):
        with pytest.raises(exc, match=match):
            call(f)
    swiglu = K.swiglu_linear_fwd if backend == "kernel" else indextts_fast.swiglu_linear
    with pytest.raises(ValueError, match="odd count"):
        swiglu(randn(3, 64, device=device), randn(33, 64, device=device))
    ffn = K.swiglu_feed_forward_fwd if backend == "kernel" else indextts_fast.swiglu_feed_forward
    with pytest.raises(ValueError, match="mismatched K.*hidden"):
        ffn(randn(3, 64, device=device), randn(64, 64, device=device), randn(64, 31, device=device))
    mlp = K.gpt2_mlp_fwd if backend == "kernel" else indextts_fast.gpt2_mlp
    x = randn(3, 64, device=device)
    with pytest.raises(ValueError, match=r"\[in, out\]"):  # c_fc passed as the Conv1D [in, out] checkpoint tensor
        mlp(x, randn(64, 128, device=device), randn(128, device=device), randn(64, 128, device=device),
            randn(64, device=device))  # fmt: skip
    with pytest.raises(RuntimeError, match="inference-only"):
        f(x, randn(32, 64, device=device).requires_grad_())
    with pytest.raises(ValueError, match="out has shape"):
        K.linear_fwd(x, randn(32, 64, device=device), out=torch.empty(3, 31, device=device))


def test_tolerance_rule_catches_wrong_math(device):
    """The checks above can fail: w1/w3 swapped in the packing, erf-GELU for gelu_new, an untransposed Conv1D."""
    M, K_, I = 37, 64, 48
    x = randn(M, K_, device=device)
    w1, w3 = randn(I, K_, device=device, std=0.3), randn(I, K_, device=device, std=0.3)
    w13 = K.pack_w13(w1, w3)
    swapped = K.swiglu_linear_fwd(x, K.pack_w13(w3, w1))
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(swapped, ref.swiglu_linear_ref(x, w13), ref.swiglu_linear_ref(*upcast(x, w13)))
    w, b = randn(80, K_, device=device, std=0.3), randn(80, device=device)
    erf_gelu = torch.nn.functional.gelu(K.linear_fwd(x, w, b))
    low = ref.linear_ref(x, w, b, activation="gelu_new")
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(erf_gelu, low, ref.linear_ref(*upcast(x, w, b), activation="gelu_new"))
    conv1d = randn(K_, K_, device=device, std=0.3)  # square [in, out]: the shape check cannot see the layout
    y = K.linear_fwd(x, conv1d)  # wrong: should be conv1d.t().contiguous()
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(y, x @ conv1d, x.double() @ conv1d.double())
    partial = K.linear_fwd(x, w, out=poisoned((M, 80), torch.float32, device))
    partial[5, 79] = float("nan")  # an element a kernel never wrote
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_rel(partial, ref.linear_ref(x, w), ref.linear_ref(*upcast(x, w)))


@pytest.mark.parametrize("M", [3, 37], ids=["decode", "tiles"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
def test_half_operands_with_an_fp32_residual_stream(M, dtype, device):
    """IndexTTS2's use_fp16 GPT: fp16 GEMMs on an fp32 residual stream. The projection is rounded to the operands'
    dtype (the official Conv1D output), added to the stream in fp32 and stored as fp32, in place on the stream."""
    K_, N = 96, 100
    x, w, b, _ = _operands(M, K_, N, dtype, device)
    stream = randn(M, N, device=device, mean=0.3, std=2.0)
    low = ref.linear_ref(x, w, b, residual=stream)  # torch: stream + (x @ w.T + b in half) -> fp32
    assert low.dtype == torch.float32
    high = ref.linear_ref(*upcast(x, w, b, stream))
    y = K.linear_fwd(x, w, b, residual=stream, out=poisoned((M, N), torch.float32, device))
    assert y.dtype == torch.float32
    assert_close_rel(y, low, high, "half GEMM + fp32 residual")
    # the exact cast point: the projection as the kernel rounds it, plus the stream, in fp32
    proj = K.linear_fwd(x, w, b)
    assert torch.equal(y, proj.float() + stream), "the projection must be rounded to x's dtype before the add"
    s0 = stream.clone()
    assert K.linear_fwd(x, w, b, residual=stream, out=stream) is stream  # in place on the fp32 stream
    assert torch.equal(stream, proj.float() + s0)
    h = K.gpt2_mlp_fwd(x[:, :96], randn(64, 96, dtype=dtype, device=device, std=0.1),
                       randn(64, dtype=dtype, device=device), randn(N, 64, dtype=dtype, device=device, std=0.1),
                       b, residual=s0)  # fmt: skip
    assert h.dtype == torch.float32


LN_CASES = [(1, torch.float16, torch.float32), (3, torch.float16, torch.float32), (8, torch.float32, torch.float32),
            (5, torch.bfloat16, torch.bfloat16), (11, torch.float16, torch.float32)]  # fmt: skip


@pytest.mark.parametrize(
    "M, wdtype, xdtype", LN_CASES, ids=[f"{m}-{dtype_id(w)}-x{dtype_id(x)}" for m, w, x in LN_CASES]
)
@pytest.mark.parametrize("epilogue", ["residual", "gelu_new"])
def test_ln_linear(M, wdtype, xdtype, epilogue, device):
    """GPT-2's ln_1 + c_attn / ln_2 + c_fc + gelu_new: the LayerNorm of the stream (rows far from zero, odd K) in
    the GEMV's prologue for M <= 8 (one launch), LayerNorm then GEMM beyond; output poisoned first."""
    K_, N = 301, 203
    x = randn(M, K_, dtype=xdtype, device=device, mean=3.0, std=2.0)
    g = randn(K_, dtype=wdtype, device=device, mean=1.0, std=0.3)
    b = randn(K_, dtype=wdtype, device=device, std=0.1)
    w = randn(N, K_, dtype=wdtype, device=device, std=K_**-0.5)
    bias = randn(N, dtype=wdtype, device=device, std=0.1)
    res = randn(M, N, dtype=xdtype, device=device) if epilogue == "residual" else None
    act = "gelu_new" if epilogue == "gelu_new" else None
    out_dtype = torch.promote_types(wdtype, xdtype) if res is not None else wdtype
    with K.count_launches() as launches:
        y = K.ln_linear_fwd(x, g, b, 1e-5, w, bias, residual=res, activation=act,
                            out=poisoned((M, N), out_dtype, device))  # fmt: skip
    assert y.dtype == out_dtype
    assert sum(launches.values()) == (1 if M <= 8 else 2), dict(launches)
    low = ref.ln_linear_ref(x, g, b, 1e-5, w, bias, residual=res, activation=act)
    high = ref.ln_linear_ref(*upcast(x, g, b), 1e-5, *upcast(w, bias), residual=None if res is None else res.double(),
                             activation=act)  # fmt: skip
    assert_close_rel(y, low, high, "LayerNorm + GEMM")


def test_ln_linear_bad_input(device):
    x = randn(3, 64, device=device)
    w = randn(32, 64, dtype=torch.float16, device=device)
    g = randn(64, dtype=torch.float16, device=device)
    with pytest.raises(TypeError, match=r"x \(the residual stream\) must be float16 like the weight, or float32"):
        K.ln_linear_fwd(x.bfloat16(), g, g, 1e-5, w)
    with pytest.raises(ValueError, match="ln_weight has shape"):
        K.ln_linear_fwd(x, g[:63], g, 1e-5, w)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        K.ln_linear_fwd(x, g, g, 0.0, w)
    with pytest.raises(ValueError, match="activation must be None or 'gelu_new'"):
        K.ln_linear_fwd(x, g, g, 1e-5, w, activation="relu")
