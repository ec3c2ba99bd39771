"""The official IndexTTS2 GPT-2 stack as a test reference, and the same stack composed from our dispatched ops.

``official_gpt2`` builds the backbone with the official ``build_hf_gpt_transformer`` (stock HF GPT2Model, its
``wpe`` replaced by the null position embedding, which returns fp32 zeros). Under IndexTTS2's ``use_fp16`` the
model is halved and run under fp16 autocast: ``inputs_embeds (fp16) + wpe (fp32 zeros)`` promotes, so the residual
stream is fp32 through every layer while the GEMMs and SDPA run in fp16 (tests/autocast_ref.py).
``ours_prefill_decode`` reproduces exactly that: an fp32 stream, LayerNorms reading it and writing the operand
dtype, GEMM epilogues adding fp16 projections to the fp32 stream.
"""

from __future__ import annotations

import torch

import indextts_fast as F

from ..autocast_ref import official_autocast
from ..helpers import official


def official_gpt2(n_layer, n_embd, n_head, *, dtype=torch.float32, device="cpu", seed=0):
    """The official backbone (``model_v2.build_hf_gpt_transformer``) with random weights of order one."""
    m = official("gpt.model_v2")
    gpt = m.build_hf_gpt_transformer(n_layer, n_embd, n_head, 64, 64, False)[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:  # Conv1D [in, out]: outputs of order one
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 * p.shape[0] ** -0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return gpt.eval().to(device=device, dtype=dtype)


def official_prefill_decode(gpt, xs, T, steps, *, autocast=None):
    """``gpt.ln_f`` outputs of a T-token prefill and ``steps`` cached decode steps, the official way (HF cache);
    ``autocast``: None, or the half dtype of use_fp16 / use_bf16 (the model halved to it, run under its autocast)."""
    from transformers import DynamicCache

    ctx = official_autocast(xs.device, autocast) if autocast else torch.autocast(xs.device.type, enabled=False)
    with ctx:
        kv = DynamicCache()
        res = [gpt(inputs_embeds=xs[:, :T], past_key_values=kv, use_cache=True).last_hidden_state]
        for s in range(steps):
            res.append(gpt(inputs_embeds=xs[:, T + s : T + s + 1], past_key_values=kv, use_cache=True)
                       .last_hidden_state)  # fmt: skip
    return torch.cat(res, dim=1)


def _t(w):  # Conv1D [in, out] -> [out, in]
    return w.t().contiguous()


def block_ours(blk, h, k_cache, v_cache, *, lengths=None):
    """One GPT2Block on the residual stream ``h`` from our ops: prefill (lengths None) or one decode step."""
    a, mlp = blk.attn, blk.mlp
    op = blk.ln_1.weight.dtype  # the GEMM operand dtype (fp16 under use_fp16)
    y = F.layer_norm(h, blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps, out_dtype=op)
    qkv = F.linear(y, _t(a.c_attn.weight), a.c_attn.bias)
    if lengths is None:
        o = F.gpt_prefill_attention(qkv, a.num_heads, k_cache, v_cache)
    else:
        o = F.gpt_decode_attention(qkv, a.num_heads, k_cache, v_cache, lengths)
    h = F.linear(o, _t(a.c_proj.weight), a.c_proj.bias, residual=h)
    y = F.layer_norm(h, blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps, out_dtype=op)
    return F.gpt2_mlp(y, _t(mlp.c_fc.weight), mlp.c_fc.bias, _t(mlp.c_proj.weight), mlp.c_proj.bias, residual=h)


def ours_prefill_decode(gpt, xs, T, steps, *, stream_dtype=None):
    """The same outputs from our ops. ``stream_dtype`` defaults to the official one: torch's promotion of the
    embeddings' dtype with the null position embedding's fp32 (fp32 for fp16 or fp32 inputs)."""
    B, C = xs.shape[0], xs.shape[-1]
    H = gpt.h[0].attn.num_heads
    op = gpt.h[0].ln_1.weight.dtype
    stream_dtype = stream_dtype or torch.promote_types(xs.dtype, torch.float32)
    cache = torch.zeros(len(gpt.h), 2, B, H, T + steps, C // H, dtype=op, device=xs.device)
    lengths = torch.full((B,), T, dtype=torch.int32, device=xs.device)
    ln_f = gpt.ln_f
    outs = []
    h = xs[:, :T].to(stream_dtype)
    for i, blk in enumerate(gpt.h):
        h = block_ours(blk, h, cache[i, 0], cache[i, 1])
    outs.append(F.layer_norm(h, ln_f.weight, ln_f.bias, ln_f.eps, out_dtype=stream_dtype))
    for s in range(steps):
        h = xs[:, T + s : T + s + 1].to(stream_dtype)
        for i, blk in enumerate(gpt.h):
            h = block_ours(blk, h, cache[i, 0], cache[i, 1], lengths=lengths)
        lengths += 1
        outs.append(F.layer_norm(h, ln_f.weight, ln_f.bias, ln_f.eps, out_dtype=stream_dtype))
    return torch.cat(outs, dim=1)
