"""Pure-torch reference implementations of every op in indextts_kernels.

These are the no-GPU fallback and the test oracle. They follow the math and the cast points of the
official IndexTTS2 modules (see each function), and never import Triton.

Calling a reference with fp16/bf16 inputs reproduces what PyTorch computes at that precision;
calling it with inputs upcast to fp64 gives the high-precision oracle used by the tolerance rule.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "layer_norm_ref",
    "rms_norm_ref",
    "adaptive_rms_norm_ref",
    "final_layer_modulate_ref",
    "rope_table_ref",
    "rope_ref",
    "attention_ref",
    "dit_attention_ref",
    "gpt_prefill_attention_ref",
    "gpt_decode_attention_ref",
    "gelu_new_ref",
    "linear_ref",
    "pack_w13",
    "swiglu_linear_ref",
    "swiglu_feed_forward_ref",
    "gpt2_mlp_ref",
]


# ----------------------------------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------------------------------
def layer_norm_ref(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    residual: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """LayerNorm over the last dim (GPT-2 ln_1/ln_2/ln_f/final_norm, conformer norms, DiT norm_final).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, biased variance, computed in fp32 (or fp64 for fp64
    inputs) and rounded once to ``out_dtype`` (default ``x.dtype``). Under IndexTTS2's fp16 autocast
    ``layer_norm`` runs in fp32 and returns fp32: pass ``out_dtype=torch.float32`` for that case.

    With ``residual``: the new residual stream ``h = x + residual`` is formed first in the stream dtype
    (as HF GPT-2 does ``attn_output + residual``), then normalized. Returns ``(y, h)``.
    """
    h = None
    if residual is not None:
        h = x + residual
        x = h
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.layer_norm(
        x.to(compute),
        (x.shape[-1],),
        None if weight is None else weight.to(compute),
        None if bias is None else bias.to(compute),
        eps,
    ).to(out_dtype or x.dtype)
    return y if h is None else (y, h)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """gpt_fast ``RMSNorm``: ``(x.float() * rsqrt(mean(x^2) + eps)).type_as(x) * weight``.

    The cast back to ``x.dtype`` happens before the gain, exactly as the official module does; the product
    with ``weight`` then follows torch type promotion.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    normed = (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x)
    return normed * weight


def adaptive_rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """DiT ``AdaptiveLayerNorm(RMSNorm)``: ``scale * (RMSNorm(x) * g) + shift``; scale first, no ``1+``.

    ``scale``/``shift`` are the two halves of ``project_layer(c)`` (scale first), broadcast against ``x``:
    per batch row (``[B, 1, N]`` or ``[B, N]`` for ``x`` ``[B, T, N]``) or per token (same shape as ``x``).
    Without a condition (``scale is None``) this is the plain ``RMSNorm``.
    """
    y = rms_norm_ref(x, weight, eps)
    if scale is None and shift is None:
        return y
    if scale is None or shift is None:
        raise ValueError("adaptive_rms_norm_ref: pass both scale and shift, or neither")
    scale, shift = _broadcast_mod(x, scale), _broadcast_mod(x, shift)
    return scale * y + shift


def final_layer_modulate_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """DiT ``FinalLayer`` modulation: ``LayerNorm_noaffine(x, eps) * (1 + scale) + shift``.

    ``(shift, scale) = adaLN_modulation(c).chunk(2, dim=1)``: shift first. ``shift``/``scale`` are ``[B, N]``
    for ``x`` ``[B, T, N]`` (the official ``modulate`` unsqueezes dim 1), or broadcastable like
    :func:`adaptive_rms_norm_ref`.
    """
    n = F.layer_norm(x, (x.shape[-1],), None, None, eps)
    shift, scale = _broadcast_mod(x, shift), _broadcast_mod(x, scale)
    return n * (1 + scale) + shift


def _broadcast_mod(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B, N] per-batch modulation for x [B, T, N] gets its T axis; other shapes broadcast as given."""
    if m.dim() == x.dim() - 1 and x.dim() >= 3:
        return m.unsqueeze(-2)
    return m


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------
def rope_table_ref(seq_len: int, head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE cos/sin table [seq_len, head_dim/2, 2] in fp32, computed as gpt_fast's ``precompute_freqs_cis``.

    Inverse frequencies ``1 / base**(arange(0, D, 2)/D)`` in fp32, the fp32 outer product with the positions
    0..seq_len-1, then (cos, sin) of the angle (via ``torch.polar``, as the official table). Row t does not depend
    on seq_len, so one long table serves every shorter sequence.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device), inv_freq)
    rot = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rot.real, rot.imag], dim=-1)


def rope_ref(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE on x [B, T, H, D] at positions 0..T-1: (x0, x1) -> (x0 c - x1 s, x1 c + x0 s).

    Computed in fp32 (fp64 for fp64 inputs) and cast back to ``x.dtype``, as the official ``apply_rotary_emb``.
    ``freqs_cis`` is the [S >= T, D/2, 2] table of :func:`rope_table_ref` (or the official one).
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    T = x.shape[1]
    xp = x.to(compute).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    f = freqs_cis[:T].to(compute).view(1, T, 1, xp.shape[-2], 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    out = torch.stack([x0 * f[..., 0] - x1 * f[..., 1], x1 * f[..., 0] + x0 * f[..., 1]], dim=-1)
    return out.flatten(-2).type_as(x)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    x_lens: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Softmax attention of q, k, v [B, T, H, D] -> [B, T, H*D] through ``F.scaled_dot_product_attention``.

    Key j of batch b is visible when j < x_lens[b] (and j <= i when causal). Rows with no visible key give zeros
    (SDPA gives NaN there). Default scale 1/sqrt(D), as SDPA's.
    """
    B, T, H, D = q.shape
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    mask = None
    if x_lens is not None:
        keys = torch.arange(T, device=q.device)
        mask = (keys[None, :] < x_lens[:, None].to(q.device)).view(B, 1, 1, T)
        if causal:
            mask = mask & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    if x_lens is not None:
        y = torch.where((x_lens.to(q.device) > 0).view(B, 1, 1, 1), y, torch.zeros((), dtype=y.dtype))
    return y.transpose(1, 2).reshape(B, T, H * D)


def _split_heads(qkv: torch.Tensor, n_heads: int):
    C = qkv.shape[-1]
    D = C // (3 * n_heads)
    return [t.unflatten(-1, (n_heads, D)) for t in qkv.split(n_heads * D, dim=-1)]


def dit_attention_ref(
    qkv: torch.Tensor,
    n_heads: int,
    x_lens: Optional[torch.Tensor] = None,
    freqs_cis: Optional[torch.Tensor] = None,
    rope_base: float = 10000.0,
) -> torch.Tensor:
    """gpt_fast ``Attention`` between ``wqkv`` and ``wo``: [B, T, 3*H*D] -> [B, T, H*D].

    q|k|v thirds, heads contiguous; interleaved RoPE on q and k (fp32, cast back); non-causal SDPA, scale
    1/sqrt(D), keys masked beyond ``x_lens``. ``freqs_cis`` defaults to :func:`rope_table_ref`.
    """
    q, k, v = _split_heads(qkv, n_heads)
    if freqs_cis is None:
        freqs_cis = rope_table_ref(qkv.shape[1], q.shape[-1], rope_base, device=qkv.device)
    return attention_ref(rope_ref(q, freqs_cis), rope_ref(k, freqs_cis), v, causal=False, x_lens=x_lens)


def gpt_prefill_attention_ref(
    qkv: torch.Tensor, n_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> torch.Tensor:
    """GPT-2 causal self-attention of a prompt, [B, T, 3*H*D] -> [B, T, H*D]; fills cache positions 0..T-1.

    ``k_cache``/``v_cache`` are [B_max, H, S_max, D] and are written in place (rows 0..B-1).
    """
    q, k, v = _split_heads(qkv, n_heads)
    B, T = qkv.shape[:2]
    k_cache[:B, :, :T] = k.transpose(1, 2)
    v_cache[:B, :, :T] = v.transpose(1, 2)
    return attention_ref(q, k, v, causal=True)


def gpt_decode_attention_ref(
    qkv: torch.Tensor,
    n_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    row_table: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """One GPT-2 decode step over a static cache: [B, 1, 3*H*D] -> [B, 1, H*D].

    Row b appends its new k, v at position L = lengths[b] of cache row b (and sets row_table[b, L] = b), then
    attends over positions 0..L, where position s is read from cache row ``row_table[b, s]`` (row b without a
    table). A row whose L does not fit the cache (L >= S_max or L < 0) writes nothing and gets NaN, as the kernel.
    """
    q, k, v = _split_heads(qkv, n_heads)
    B, _, H, D = q.shape
    S = k_cache.shape[2]
    out = torch.full((B, 1, H * D), float("nan"), dtype=qkv.dtype, device=qkv.device)
    for b in range(B):
        L = int(lengths[b])
        if L < 0 or L >= S:
            continue
        k_cache[b, :, L] = k[b, 0]
        v_cache[b, :, L] = v[b, 0]
        pos = torch.arange(L + 1, device=qkv.device)
        if row_table is not None:
            row_table[b, L] = b
            phys = row_table[b, : L + 1].long()
        else:
            phys = torch.full_like(pos, b)
        keys = k_cache[phys, :, pos].transpose(0, 1)  # [H, L+1, D]
        vals = v_cache[phys, :, pos].transpose(0, 1)
        y = F.scaled_dot_product_attention(q[b, 0][:, None, :], keys, vals, scale=scale)  # [H, 1, D]
        out[b, 0] = y.reshape(H * D)
    return out


# GEMM with epilogues: projections, DiT SwiGLU FeedForward, GPT-2 MLP (weights [N, K] = nn.Linear's [out, in])
# ----------------------------------------------------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_new_ref(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``gelu_new``: the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, not erf-GELU."""
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias) + residual`` as the unfused torch ops compute it (each op rounds at x's dtype).

    ``weight`` is [out, in] (nn.Linear); a GPT-2 ``Conv1D`` weight [in, out] must be transposed first. The
    residual is added after the projection, as HF GPT-2 and the DiT block do (``residual + proj(...)``).
    """
    y = F.linear(x, weight, bias)
    if activation == "gelu_new":
        y = gelu_new_ref(y)
    elif activation is not None:
        raise ValueError(f"linear_ref: activation must be None or 'gelu_new', got {activation!r}")
    return y if residual is None else residual + y


def ln_linear_ref(
    x: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``act(LayerNorm(x) @ weight.T + bias) + residual``: the LayerNorm of the stream x in fp32 (fp64 for fp64),
    rounded to the weight's dtype, then :func:`linear_ref` (GPT-2's ln_1 + c_attn, ln_2 + c_fc under autocast)."""
    y = layer_norm_ref(x, ln_weight, ln_bias, eps, out_dtype=weight.dtype)
    return linear_ref(y, weight, bias, residual=residual, activation=activation)


def pack_w13(w1: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """The packed SwiGLU weight ``cat([w1, w3], dim=0)`` [2I, K]: rows 0..I-1 are w1, rows I..2I-1 are w3."""
    for name, w in (("w1", w1), ("w3", w3)):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"pack_w13: {name} must be a 2-D [I, K] tensor (nn.Linear's [out, in])")
    if w1.shape != w3.shape or w1.dtype != w3.dtype or w1.device != w3.device:
        raise ValueError(
            f"pack_w13: w1 {tuple(w1.shape)} {w1.dtype} {w1.device} and w3 {tuple(w3.shape)} {w3.dtype} "
            f"{w3.device} must match in shape, dtype and device"
        )
    return torch.cat([w1, w3], dim=0).contiguous()


def swiglu_linear_ref(x: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    """``silu(x @ w1.T) * (x @ w3.T)`` for ``w13 = pack_w13(w1, w3)``: the hidden of the DiT FeedForward."""
    w1, w3 = w13.chunk(2, dim=0)
    return F.silu(F.linear(x, w1)) * F.linear(x, w3)


def swiglu_feed_forward_ref(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, residual: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """DiT ``FeedForward`` (gpt_fast, no biases) plus the block's residual: ``residual + w2(silu(w1 x) * w3 x)``."""
    return linear_ref(swiglu_linear_ref(x, w13), w2, residual=residual)


def gpt2_mlp_ref(
    x: torch.Tensor,
    c_fc_weight: torch.Tensor,
    c_fc_bias: torch.Tensor,
    c_proj_weight: torch.Tensor,
    c_proj_bias: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """HF ``GPT2MLP`` plus the block's residual: ``residual + c_proj(gelu_new(c_fc(x)))``; weights [out, in]."""
    h = linear_ref(x, c_fc_weight, c_fc_bias, activation="gelu_new")
    return linear_ref(h, c_proj_weight, c_proj_bias, residual=residual)
