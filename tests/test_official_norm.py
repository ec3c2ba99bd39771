"""The norm references and the dispatched ops against the official IndexTTS2 / torch module classes.

Official classes: gpt_fast ``RMSNorm`` and ``AdaptiveLayerNorm`` (the DiT's blocks and final norm), the DiT
``FinalLayer``, and ``torch.nn.LayerNorm`` (GPT-2 ln_1/ln_2/ln_f/final_norm, conformer norms) inside HF GPT-2's
block. The dispatched ops run the Triton kernels here (interpreter on CPU, compiled on CUDA).
"""

import pytest
import torch

import indextts_fast as F
from indextts_kernels import reference as ref

from .helpers import assert_close_rel, assert_same_math, official, randn, upcast


@pytest.fixture(scope="module")
def gpt_fast():
    return official("s2mel.modules.gpt_fast.model")


@pytest.fixture(scope="module")
def dit_module():
    return official("s2mel.modules.diffusion_transformer")


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rms_norm_reference_is_official(gpt_fast, dtype):
    N = 100
    norm = _randomize(gpt_fast.RMSNorm(N, eps=1e-5))
    x = randn(2, 9, N, dtype=dtype, std=3.0)
    with torch.no_grad():
        expected = norm(x)  # fp32 weight: output promotes to fp32, after the fp16/bf16 rounding of the norm
        assert_same_math(ref.rms_norm_ref(x, norm.weight, norm.eps), expected, "rms_norm_ref")
        assert_same_math(ref.adaptive_rms_norm_ref(x, norm.weight, eps=norm.eps), expected, "adaptive_rms_norm_ref")


@pytest.mark.parametrize("cond", ["per_batch", "per_token", "none"])
def test_adaptive_layer_norm_reference_and_kernel_match_official(gpt_fast, cond):
    B, T, N = 2, 11, 64
    ada = _randomize(gpt_fast.AdaptiveLayerNorm(N, gpt_fast.RMSNorm(N, eps=1e-5)))
    x = randn(B, T, N, std=2.0, mean=0.3)
    c = {"per_batch": randn(B, 1, N), "per_token": randn(B, T, N), "none": None}[cond]
    with torch.no_grad():
        expected = ada(x, c)
        scale = shift = None
        if c is not None:
            scale, shift = torch.split(ada.project_layer(c), N, dim=-1)  # scale first, as the module splits
        ours_ref = ref.adaptive_rms_norm_ref(x, ada.norm.weight, scale, shift, ada.eps)
        ours = F.adaptive_rms_norm(x, ada.norm.weight, scale, shift, ada.eps)
    assert_same_math(ours_ref, expected, "adaptive_rms_norm_ref")
    high = ref.adaptive_rms_norm_ref(*upcast(x, ada.norm.weight, scale, shift), ada.eps)
    assert_close_rel(ours, expected, high, "adaptive_rms_norm (dispatched)")


def test_dit_final_layer_matches_official(dit_module):
    B, T, N = 2, 13, 64
    fl = _randomize(dit_module.FinalLayer(N, 1, N))
    x = randn(B, T, N, std=1.5, mean=-0.2)
    c = randn(B, N)
    with torch.no_grad():
        expected = fl(x, c)
        shift, scale = fl.adaLN_modulation(c).chunk(2, dim=1)  # shift first
        ours_ref = fl.linear(ref.final_layer_modulate_ref(x, shift, scale, 1e-6))
        mod = F.final_layer_modulate(x, shift, scale, 1e-6)
        mod_high = ref.final_layer_modulate_ref(*upcast(x, shift, scale), 1e-6)
        mod_low = ref.final_layer_modulate_ref(x, shift, scale, 1e-6)
    assert_same_math(ours_ref, expected, "FinalLayer through final_layer_modulate_ref")
    assert_close_rel(mod, mod_low, mod_high, "final_layer_modulate (dispatched)")
    with torch.no_grad():
        assert_close_rel(fl.linear(mod), expected, fl.double().linear(mod_high), "FinalLayer through the kernel")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_layer_norm_matches_torch_module(dtype):
    N = 80
    ln = _randomize(torch.nn.LayerNorm(N, eps=1e-5)).to(dtype)
    x = randn(3, 7, N, dtype=dtype, std=2.0, mean=1.0)
    with torch.no_grad():
        expected = ln(x)
        assert_same_math(ref.layer_norm_ref(x, ln.weight, ln.bias, ln.eps), expected, "layer_norm_ref")
        high = ref.layer_norm_ref(*upcast(x, ln.weight, ln.bias), ln.eps)
        assert_close_rel(F.layer_norm(x, ln.weight, ln.bias, ln.eps), expected, high, "layer_norm (dispatched)")


def test_gpt2_block_ln2_with_fused_residual_matches_hf():
    """In HF GPT-2's block, ln_2 sees attn_output + residual: the fused op gives both the stream and ln_2 of it."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    cfg = GPT2Config(n_embd=64, n_head=4, n_layer=1, n_positions=32, attn_implementation="eager")
    block = _randomize(GPT2Block(cfg))
    x = randn(2, 9, 64)
    with torch.no_grad():
        attn_out = block.attn(block.ln_1(x))[0]
        h_expected = attn_out + x
        ln2_expected = block.ln_2(h_expected)
        mlp_out = block.mlp(ln2_expected)
        y, h = F.layer_norm(attn_out, block.ln_2.weight, block.ln_2.bias, block.ln_2.eps, residual=x)
        out = block(x)
        block_expected = out[0] if isinstance(out, tuple) else out
    assert torch.equal(h, h_expected)
    high = ref.layer_norm_ref(*upcast(h, block.ln_2.weight, block.ln_2.bias), block.ln_2.eps)
    assert_close_rel(y, ln2_expected, high, "ln_2 with fused residual")
    assert_same_math(h_expected + mlp_out, block_expected, "GPT2Block decomposition")
