"""Whole blocks composed from the dispatched ops, against the official modules.

Each kernel is checked on its own elsewhere; this checks that their conventions compose: the AdaLN halves of a
projection feed the norm kernel as views, the attention kernel reads the GEMM's fused qkv output, the GEMM's
epilogues carry the residual stream, and the packed weights keep the official math. Ours runs on the Triton
kernels (the interpreter on CPU), fp32 as the official DiT runs; the GPT-2 block also in fp16.
Tolerance rule: low = the official module at the test dtype, high = the official module in fp64.
"""

import copy

import pytest
import torch

import indextts_fast as F
from indextts_kernels.reference import pack_w13

from .gpt import gpt_stack as gs
from .helpers import assert_close_rel, official, randn

DIM, HEADS, HEAD_DIM = 128, 2, 64


def _randomize(module):
    """Random weights at unit gain (matrices N(0, 1/fan_in), norm gains near 1, small biases): activations stay
    O(1) through the block, so the comparison is not dominated by a few ill-conditioned rows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return module.eval()


def _dit_block_ours(blk, x, c, skip=None):
    """One gpt_fast TransformerBlock of the DiT from our ops (c: the time embedding [B, 1, C])."""
    C = x.shape[-1]
    if skip is not None:  # UViT skip: skip_in_linear(cat(x, skip))
        x = F.linear(torch.cat([x, skip], dim=-1), blk.skip_in_linear.weight, blk.skip_in_linear.bias)
    an, fn, ff = blk.attention_norm, blk.ffn_norm, blk.feed_forward
    scale, shift = F.linear(c, an.project_layer.weight, an.project_layer.bias).split(C, dim=-1)
    qkv = F.linear(F.adaptive_rms_norm(x, an.norm.weight, scale, shift, an.eps), blk.attention.wqkv.weight)
    h = F.linear(F.dit_attention(qkv, blk.attention.n_head), blk.attention.wo.weight, residual=x)
    scale, shift = F.linear(c, fn.project_layer.weight, fn.project_layer.bias).split(C, dim=-1)
    f = F.adaptive_rms_norm(h, fn.norm.weight, scale, shift, fn.eps)
    return F.swiglu_feed_forward(f, pack_w13(ff.w1.weight, ff.w3.weight), ff.w2.weight, residual=h)


@pytest.mark.parametrize("with_skip", [False, True], ids=["plain", "uvit_skip"])
def test_dit_transformer_block_matches_official(with_skip):
    m = official("s2mel.modules.gpt_fast.model")
    args = m.ModelArgs(block_size=256, n_layer=1, n_head=HEADS, dim=DIM, head_dim=HEAD_DIM, uvit_skip_connection=True)
    blk = _randomize(m.TransformerBlock(args))
    blk64 = copy.deepcopy(blk).double()
    B, T = 2, 37
    x, c = randn(B, T, DIM, std=1.5), randn(B, 1, DIM)
    skip = randn(B, T, DIM) if with_skip else None
    pos = torch.arange(T)
    freqs = m.precompute_freqs_cis(256, HEAD_DIM, 10000, dtype=torch.float32)[pos]
    mask = torch.ones(1, 1, T, T, dtype=torch.bool)
    with torch.no_grad():
        low = blk(x, c, pos, freqs, mask, skip_in_x=skip)
        high = blk64(
            x.double(), c.double(), pos, freqs.double(), mask, skip_in_x=None if skip is None else skip.double()
        )
        ours = _dit_block_ours(blk, x, c, skip)
        # the Transformer's final norm is an AdaLN on the same c
        tn = _randomize(m.AdaptiveLayerNorm(DIM, m.RMSNorm(DIM)))
        final_low = tn(low, c)
        final_high = copy.deepcopy(tn).double()(high, c.double())
        scale, shift = F.linear(c, tn.project_layer.weight, tn.project_layer.bias).split(DIM, dim=-1)
        final_ours = F.adaptive_rms_norm(ours, tn.norm.weight, scale, shift, tn.eps)
    assert_close_rel(ours, low, high, "DiT TransformerBlock from our ops")
    assert_close_rel(final_ours, final_low, final_high, "DiT block + final AdaLN from our ops")


_GPT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", _GPT_DTYPES, ids=["float32", "float16", "bfloat16"])
def test_gpt2_model_prefill_and_decode_match_hf(dtype, device):
    """Two HF GPT2Blocks + ln_f: a 9-token prefill, then two cached decode steps, from our ops (the Triton kernels;
    the interpreter on CPU). fp16 runs as IndexTTS2's use_fp16 does (bf16 as IndexTTS-2.5's use_bf16): halved
    weights under half autocast, with the fp32 residual stream that the null position embedding's fp32 zeros start
    (see gpt_stack.official_gpt2)."""
    hf = gs.official_gpt2(n_layer=2, n_embd=DIM, n_head=HEADS, dtype=dtype, device=device, seed=1)
    hf64 = copy.deepcopy(hf).double()
    B, T, steps = 2, 9, 2
    xs = randn(B, T + steps, DIM, dtype=dtype, device=device)
    with torch.no_grad():
        ours = gs.ours_prefill_decode(hf, xs, T, steps)
        low = gs.official_prefill_decode(hf, xs, T, steps, autocast=dtype if dtype != torch.float32 else None)
        high = gs.official_prefill_decode(hf64, xs.double(), T, steps)
    assert ours.dtype == low.dtype == torch.float32  # the stream and ln_f's output are fp32 in both cases
    assert_close_rel(ours, low, high, f"GPT-2 prefill + decode from our ops ({dtype})")
