"""Forward passes computed from kernel-layout weights (FastGPTWeights / FastS2MelWeights) with plain torch ops.

They read the weights exactly as the kernels will ([N, K] GEMM weights, w13, tap-major conv columns, folded
weight norm, stacked AdaLN), so agreement with the official modules proves the layouts. Every weight is cast to
the input's dtype (pass fp64 inputs for the high-precision oracle of the tolerance rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _lin(x, w, b=None):
    return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))


def _ln(x, w, b, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), None if w is None else w.to(x.dtype), None if b is None else b.to(x.dtype),
                        eps)  # fmt: skip


def gpt_forward(w, x: torch.Tensor) -> torch.Tensor:
    """mel logits = mel_head(final_norm(ln_f(GPT-2 blocks(x)))) for input embeddings x [B, T, C] (causal)."""
    B, T, C = x.shape
    H = w.config["heads"]
    for l in w.layers:
        a = _ln(x, l.ln1_w, l.ln1_b)
        q, k, v = _lin(a, l.qkv_w, l.qkv_b).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        h = x + _lin(y, l.attn_out_w, l.attn_out_b)
        m = F.gelu(_lin(_ln(h, l.ln2_w, l.ln2_b), l.fc_w, l.fc_b), approximate="tanh")
        x = h + _lin(m, l.proj_w, l.proj_b)
    x = _ln(_ln(x, w.ln_f_w, w.ln_f_b), w.final_norm_w, w.final_norm_b)
    return _lin(x, w.mel_head_w, w.mel_head_b)


def _t_embed(te, t):
    args = 1000 * t[:, None] * te["freqs"][None].to(t.dtype)
    e = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return _lin(F.silu(_lin(e, te["w0"], te["b0"])), te["w2"], te["b2"])


def _adaln(x, g, pw, pb, c):
    scale, shift = _lin(c, pw, pb).split(x.shape[-1], dim=-1)
    n = x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + 1e-5)
    return scale * (n * g.to(x.dtype)) + shift


def _rope(x):  # [B, T, H, D], interleaved pairs, base 10000, positions 0..T-1
    B, T, H, D = x.shape
    freqs = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32)[: D // 2] / D))
    ang = torch.outer(torch.arange(T, dtype=torch.float32), freqs).to(x.dtype)
    cos, sin = torch.cos(ang)[None, :, None], torch.sin(ang)[None, :, None]
    xr = x.reshape(B, T, H, D // 2, 2)
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(3)


def _conv_taps(x, w, b, k, mode):  # x [B, T, Cin] -> [B, T, Cout] with w [Cout, k*Cin] tap-major, 'same' padding
    p = (k - 1) // 2
    xp = F.pad(x.transpose(1, 2), (p, k - 1 - p), mode=mode).transpose(1, 2)
    T = x.shape[1]
    cols = torch.cat([xp[:, j : j + T] for j in range(k)], dim=-1)
    return _lin(cols, w, b)


def dit_forward(s, x, prompt_x, t, style, mu):
    """The DiT estimator: (x [B, F, T], prompt_x [B, F, T], t [B], style [B, S], mu [B, T, D]) -> [B, F, T]."""
    w = s.dit
    B, Fm, T = x.shape
    C, Hn = s.config["C"], s.config["heads"]
    t1 = _t_embed(w.t_embed, t)[:, None, :]
    xt = x.transpose(1, 2)
    h = _lin(torch.cat([xt, prompt_x.transpose(1, 2), _lin(mu, w.cond_proj_w, w.cond_proj_b),
                        style[:, None, :].expand(B, T, style.shape[-1])], dim=-1), w.merge_w, w.merge_b)  # fmt: skip
    L = len(w.layers)
    skips = []
    for i, l in enumerate(w.layers):
        if l.skip_in_w is not None:
            h = _lin(torch.cat([h, skips.pop()], dim=-1), l.skip_in_w, l.skip_in_b)
        a = _adaln(h, l.attn_norm_g, l.attn_norm_w, l.attn_norm_b, t1)
        q, k, v = _lin(a, l.wqkv).split(C, dim=-1)
        q, k, v = (u.view(B, T, Hn, C // Hn) for u in (q, k, v))
        q, k = _rope(q), _rope(k)
        y = F.scaled_dot_product_attention(*(u.transpose(1, 2) for u in (q, k, v))).transpose(1, 2).reshape(B, T, C)
        h = h + _lin(y, l.wo)
        g1, g3 = _lin(_adaln(h, l.ffn_norm_g, l.ffn_norm_w, l.ffn_norm_b, t1), l.w13).chunk(2, dim=-1)
        h = h + _lin(F.silu(g1) * g3, l.w2)
        if i < L // 2:
            skips.append(h)
    h = _adaln(h, w.norm_g, w.norm_w, w.norm_b, t1)
    x_res = _lin(torch.cat([h, xt], dim=-1), w.skip_linear_w, w.skip_linear_b)
    hw = _lin(x_res, w.conv1_w, w.conv1_b)
    Hw = hw.shape[-1]
    g = _lin(_t_embed(w.t_embed2, t), w.wn_cond_w, w.wn_cond_b)
    out = torch.zeros_like(hw)
    K = w.wn_in_w[0].shape[1] // Hw
    for i in range(len(w.wn_in_w)):
        a = _conv_taps(hw, w.wn_in_w[i], w.wn_in_b[i], K, "reflect") + g[:, None, 2 * Hw * i : 2 * Hw * (i + 1)]
        acts = torch.tanh(a[..., :Hw]) * torch.sigmoid(a[..., Hw:])
        rs = _lin(acts, w.wn_res_skip_w[i], w.wn_res_skip_b[i])
        if i < len(w.wn_in_w) - 1:
            hw = hw + rs[..., :Hw]
            out = out + rs[..., Hw:]
        else:
            out = out + rs
    y = out + _lin(x_res, w.res_proj_w, w.res_proj_b)
    shift, scale = _lin(F.silu(t1[:, 0]), w.final_adaln_w, w.final_adaln_b).chunk(2, dim=-1)
    y = _ln(y, None, None, 1e-6) * (1 + scale[:, None]) + shift[:, None]
    y = _lin(y, w.final_linear_w, w.final_linear_b)
    return _lin(y, w.conv2_w, w.conv2_b).transpose(1, 2)


def length_regulator_forward(s, x, T: int):
    """InterpolateRegulator (continuous): x [B, Tin, Q] -> [B, T, R] (all frames valid)."""
    r = s.length_regulator
    h = _lin(x, r.in_proj_w, r.in_proj_b)
    h = F.interpolate(h.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)
    for cw, cb, gw, gb in zip(r.conv_w, r.conv_b, r.gn_w, r.gn_b, strict=True):
        h = _conv_taps(h, cw, cb, 3, "constant")
        h = F.group_norm(h.transpose(1, 2), 1, gw.to(h.dtype), gb.to(h.dtype), 1e-5).transpose(1, 2)
        h = F.mish(h)
    return _lin(h, r.out_w, r.out_b)


def gpt_layer_forward(s, x):
    for wt, b in s.gpt_layer:
        x = _lin(x, wt, b)
    return x


def codec_decode(c, codes: torch.Tensor) -> torch.Tensor:
    """IndexTTS-2.5's codec decode from FastCodecWeights: codes [B, M] -> features [B, 2M, H] (channel-last)."""
    x = _lin(F.embedding(codes, c.codebook), c.out_proj_w, c.out_proj_b)  # out_project on the raw codebook rows
    x = _ln(_conv_taps(x, c.embed_w, c.embed_b, 7, "constant"), c.norm_w, c.norm_b, 1e-6)
    T = x.shape[1]
    for b in c.blocks:
        xp = F.pad(x, (0, 0, 3, 3))  # depthwise k7, zero pad 3: y[t, d] = sum_j x[t + j - 3, d] * dw[d, j]
        y = sum(xp[:, j : j + T] * b.dw_w[:, j].to(x.dtype) for j in range(7)) + b.dw_b.to(x.dtype)
        y = _lin(F.gelu(_lin(_ln(y, b.norm_w, b.norm_b, 1e-6), b.pw1_w, b.pw1_b)), b.pw2_w, b.pw2_b)
        x = x + b.gamma.to(x.dtype) * y
    x = _lin(_ln(x, c.final_norm_w, c.final_norm_b, 1e-6), c.proj_w, c.proj_b)
    return _conv_taps(x.repeat_interleave(2, dim=1), c.up_w, c.up_b, 3, "constant")  # nearest x2, then up


def upcast_weights(obj):
    """A copy of a Fast*Weights dataclass tree with every floating tensor in fp64 (the oracle's weights)."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(
            obj, **{f.name: upcast_weights(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    if isinstance(obj, list):
        return [upcast_weights(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(upcast_weights(v) for v in obj)
    if isinstance(obj, dict):
        return {k: upcast_weights(v) for k, v in obj.items()}
    return obj
