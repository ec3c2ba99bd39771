"""Fused feed-forward kernels against the official module classes.

The DiT SwiGLU block against IndexTTS2's gpt_fast ``FeedForward`` (through ``tests.helpers.official``), with the
block's residual; the GPT-2 MLP and the attention projections against HF ``GPT2MLP`` / ``Conv1D``, whose weights
are [in, out] and are transposed to our [out, in] layout here, as the loader does.

``low`` is the official module run at the test dtype, ``high`` the same module in fp64 (the tolerance rule).
"""

import copy

import pytest
import torch

import indextts_kernels as K

from .helpers import DTYPES, INTERPRET, assert_close_rel, dtype_id, official, poisoned, randn

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


def _low_high(module: torch.nn.Module, dtype: torch.dtype):
    return copy.deepcopy(module).to(dtype).eval(), copy.deepcopy(module).double().eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("T", [3, 37])
def test_swiglu_block_matches_official_feedforward(T, dtype, device):
    """out = h + FeedForward(x): w13 GEMM with the silu*mul epilogue, then w2 with the residual in its epilogue."""
    gm = official("s2mel.modules.gpt_fast.model")
    args = gm.ModelArgs(dim=64, n_head=4, n_layer=1)
    assert args.intermediate_size == 256  # find_multiple(int(2 * 4 * 64 / 3), 256), as for dim 512 -> 1536
    ff = gm.FeedForward(args)
    low_m, high_m = _low_high(ff, dtype)
    x = randn(2, T, 64, dtype=dtype, device=device)
    h = randn(2, T, 64, dtype=dtype, device=device, std=2.0)
    lm = low_m.to(device)
    w13 = K.pack_w13(lm.w1.weight.detach(), lm.w3.weight.detach())
    with torch.no_grad():
        out = K.swiglu_feed_forward_fwd(x, w13, lm.w2.weight.detach(), residual=h, out=poisoned(h.shape, dtype, device))
        low = h + lm(x)
        high = h.double() + high_m.to(device)(x.double())
    assert_close_rel(out, low, high)


def test_swiglu_block_official_dit_size(device):
    """The IndexTTS2 size: dim 512, intermediate 1536 (fp32, as the official DiT runs)."""
    gm = official("s2mel.modules.gpt_fast.model")
    args = gm.ModelArgs(dim=512, n_head=8, n_layer=1)
    assert args.intermediate_size == 1536
    ff = gm.FeedForward(args).to(device).eval()
    T = 19 if INTERPRET else 1721
    x = randn(2, T, 512, device=device)
    h = randn(2, T, 512, device=device, std=2.0)
    w13 = K.pack_w13(ff.w1.weight.detach(), ff.w3.weight.detach())
    with torch.no_grad():
        out = K.swiglu_feed_forward_fwd(x, w13, ff.w2.weight.detach(), residual=h)
        low = h + ff(x)
        high = h.double() + copy.deepcopy(ff).double()(x.double())
    assert_close_rel(out, low, high)


def _hf_gpt2():
    gpt2 = pytest.importorskip("transformers.models.gpt2.modeling_gpt2")
    from transformers import GPT2Config

    return gpt2, GPT2Config


def _t(w: torch.Tensor) -> torch.Tensor:
    """HF Conv1D weight [in, out] -> our [out, in] layout."""
    return w.detach().t().contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("M", [3, 37])  # decode (3 beams, GEMV regime) and prefill (tensor-core tiles)
def test_gpt2_mlp_matches_hf(M, dtype, device):
    gpt2, GPT2Config = _hf_gpt2()
    cfg = GPT2Config(n_embd=64, n_layer=1, n_head=4, activation_function="gelu_new")
    mlp = gpt2.GPT2MLP(4 * 64, cfg)
    with torch.no_grad():  # HF initializes biases to zero: give them values so the bias epilogue is tested
        mlp.c_fc.bias.normal_(0.0, 0.5)
        mlp.c_proj.bias.normal_(0.0, 0.5)
        mlp.c_fc.weight.normal_(0.0, 64**-0.5)
        mlp.c_proj.weight.normal_(0.0, 256**-0.5)
    assert mlp.c_fc.weight.shape == (64, 256)  # Conv1D: [in, out]
    low_m, high_m = _low_high(mlp, dtype)
    lm = low_m.to(device)
    x = randn(M, 64, dtype=dtype, device=device)
    r = randn(M, 64, dtype=dtype, device=device, std=2.0)
    with torch.no_grad():
        out = K.gpt2_mlp_fwd(
            x, _t(lm.c_fc.weight), lm.c_fc.bias.detach(), _t(lm.c_proj.weight), lm.c_proj.bias.detach(),
            residual=r, out=poisoned(r.shape, dtype, device),
        )  # fmt: skip
        low = r + lm(x)
        high = r.double() + high_m.to(device)(x.double())
    assert_close_rel(out, low, high)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("M", [3, 37])
def test_gpt2_attention_projections_match_hf_conv1d(M, dtype, device):
    """c_attn (1280 -> 3 x 1280 in IndexTTS2; q|k|v are column blocks of the [in, out] weight) and c_proj + residual."""
    gpt2, _ = _hf_gpt2()
    Conv1D = gpt2.Conv1D
    d = 64
    c_attn, c_proj = Conv1D(3 * d, d), Conv1D(d, d)
    with torch.no_grad():
        for m in (c_attn, c_proj):
            m.weight.normal_(0.0, d**-0.5)
            m.bias.normal_(0.0, 0.5)
    x = randn(M, d, dtype=dtype, device=device)
    r = randn(M, d, dtype=dtype, device=device)
    for mod, res in ((c_attn, None), (c_proj, r)):
        low_m, high_m = _low_high(mod, dtype)
        lm = low_m.to(device)
        with torch.no_grad():
            out = K.linear_fwd(x, _t(lm.weight), lm.bias.detach(), residual=res)
            low = lm(x) if res is None else res + lm(x)
            high = high_m.to(device)(x.double())
            high = high if res is None else res.double() + high
        assert_close_rel(out, low, high)
    w = c_attn.weight.detach().to(device=device, dtype=dtype)  # [in, out]
    q = K.linear_fwd(x, _t(w), None)[:, :d]  # q = the first column block of the [in, out] weight
    assert_close_rel(q, x @ w[:, :d], x.double() @ w.double()[:, :d], what="q block")
