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
    "ProcessConfig",
    "SelectConfig",
    "logits_process_ref",
    "penalty_min_length_ref",
    "sampling_warpers_ref",
    "multinomial_race_ref",
    "hypothesis_add_ref",
    "beam_step_ref",
    "hypothesis_worst_ref",
    "decode_select_ref",
    "wavenet_gate_ref",
    "wavenet_res_skip_ref",
    "cfm_euler_ref",
    "snake_params",
    "anti_alias_snake_ref",
    "amp_merge_ref",
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


# ----------------------------------------------------------------------------------------------------------------------
# Decode-loop sampling: logits processors, token selection, the beam step (the torch ops of the official generate)
# ----------------------------------------------------------------------------------------------------------------------
SAMPLING_MAX_ROWS, SAMPLING_MAX_VOCAB = 16, 65536  # what the sampling kernels take (rows = beams)


class ProcessConfig(tuple):
    """The logits-processor chain's settings (hashable: the kernels specialize on which processors run).

    Fields: log_softmax (beam methods process log-probs), penalty (repetition penalty, 1.0: off), min_length,
    min_new_tokens, eos, temperature (1.0: off; applied only with do_sample), top_k (0: off), top_p (1.0: off),
    min_keep, do_sample (temperature / top-k / top-p run only when sampling)."""

    __slots__ = ()
    _fields = ("log_softmax", "penalty", "min_length", "min_new_tokens", "eos", "temperature", "top_k", "top_p",
               "min_keep", "do_sample")  # fmt: skip

    def __new__(cls, *, log_softmax=False, penalty=1.0, min_length=0, min_new_tokens=0, eos=0, temperature=1.0,
                top_k=0, top_p=1.0, min_keep=1, do_sample=False):  # fmt: skip
        return tuple.__new__(cls, (bool(log_softmax), float(penalty), int(min_length), int(min_new_tokens), int(eos),
                                   float(temperature), int(top_k), float(top_p), int(min_keep), bool(do_sample)))  # fmt: skip

    def __getattr__(self, name):
        try:
            return self[ProcessConfig._fields.index(name)]
        except ValueError:
            raise AttributeError(name) from None


class SelectConfig(tuple):
    """The token selection's settings: num_beams (1: greedy / multinomial), do_sample, eos, pos_limit (the mel
    position table's rows), early_stopping (True, False or "never"), length_penalty."""

    __slots__ = ()
    _fields = ("num_beams", "do_sample", "eos", "pos_limit", "early_stopping", "length_penalty")

    def __new__(cls, *, num_beams=1, do_sample=False, eos=0, pos_limit=1, early_stopping=False, length_penalty=1.0):
        es = True if early_stopping is True else False if early_stopping is False else "never"
        vals = (int(num_beams), bool(do_sample), int(eos), int(pos_limit), es, float(length_penalty))
        return tuple.__new__(cls, vals)

    def __getattr__(self, name):
        try:
            return self[SelectConfig._fields.index(name)]
        except ValueError:
            raise AttributeError(name) from None


def penalty_min_length_ref(scores: torch.Tensor, cfg: ProcessConfig, seen: Optional[torch.Tensor] = None,
                           cur: Optional[torch.Tensor] = None,
                           prompt_len: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """The chain's first processors on ``scores`` [rows, V] fp32: the repetition penalty over the ids ``seen``
    [rows, V] bool marks (s < 0 ? s * p : s / p), then the minimum lengths (``cur``, ``prompt_len``: device int64
    scalars; the eos score -inf while short)."""
    if cfg.penalty != 1.0:
        p = cfg.penalty
        scores = torch.where(seen, torch.where(scores < 0, scores * p, scores / p), scores)
    if cfg.min_length > 0 or cfg.min_new_tokens > 0:
        short = (cur < cfg.min_length) | (cur - prompt_len < cfg.min_new_tokens)
        eos = torch.arange(scores.shape[-1], device=scores.device) == cfg.eos
        scores = torch.where(short & eos, -float("inf"), scores)
    return scores


def sampling_warpers_ref(scores: torch.Tensor, cfg: ProcessConfig) -> torch.Tensor:
    """The chain's sampling warpers on ``scores`` [rows, V] fp32 (nothing without ``do_sample``): temperature,
    top-k (k = max(top_k, min_keep)), top-p (ascending sort, softmax, cumsum <= 1 - top_p dropped, the last
    ``min_keep`` kept)."""
    if not cfg.do_sample:
        return scores
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    keep = cfg.min_keep
    if cfg.top_k != 0:
        k = min(max(cfg.top_k, keep), scores.size(-1))
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if cfg.top_p < 1.0:
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - cfg.top_p)
        drop[..., -keep:] = 0
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return scores


def logits_process_ref(logits: torch.Tensor, cfg: ProcessConfig, seen: Optional[torch.Tensor] = None,
                       cur: Optional[torch.Tensor] = None, prompt_len: Optional[torch.Tensor] = None,
                       beam_scores: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """The official logits-processor chain on ``logits`` [rows, V] fp32 (transformers 4.52's processors, op for op):
    log_softmax (beam methods), ``penalty_min_length_ref``, ``sampling_warpers_ref``; plus ``beam_scores`` [rows]
    (beam methods). Returns the scores [rows, V] fp32."""
    scores = torch.log_softmax(logits, dim=-1) if cfg.log_softmax else logits
    scores = sampling_warpers_ref(penalty_min_length_ref(scores, cfg, seen, cur, prompt_len), cfg)
    if beam_scores is not None:
        scores = scores + beam_scores[:, None]
    return scores


def multinomial_race_ref(probs: torch.Tensor, noise: torch.Tensor, n: int):
    """``torch.multinomial(probs, n)`` (n = 1, or without replacement) as its fast path computes it: argmax /
    top-n of probs / ``noise`` (Exp(1) draws of probs' shape), with its host-side validity checks as a device
    bool. Returns (samples [rows, n], valid)."""
    valid = (probs.max() < float("inf")) & (probs.min() >= 0) & (probs.sum(-1) != 0).all()
    q = torch.div(probs, noise)
    if n == 1:
        return torch.argmax(q, dim=-1, keepdim=True), valid
    return torch.topk(q, n)[1], valid


def hypothesis_worst_ref(t: dict) -> torch.Tensor:
    """The lowest kept hypothesis score (fp64), 1e9 while none is kept (``t``: the hyp_* state tensors)."""
    filled = t["hyp_seq"] >= 0
    return torch.where(filled.any(), torch.where(filled, t["hyp_scores"], float("inf")).min(),
                       torch.full((), 1e9, dtype=torch.float64, device=t["hyp_scores"].device))  # fmt: skip


def hypothesis_add_ref(t: dict, seq, seq_len, score, allowed) -> None:
    """Offer hypothesis ``seq`` with fp64 ``score``: room, or better than the worst kept (which then leaves: the
    lowest score, then the earliest inserted)."""
    K = t["hyp_seq"].shape[0]
    slots = torch.arange(K, device=seq.device)
    filled = t["hyp_seq"] >= 0
    full = t["count"] >= K
    accept = allowed & (~full | (score > hypothesis_worst_ref(t)))
    free_slot = torch.argmin(filled.to(torch.int8))
    key = torch.where(filled, t["hyp_scores"], float("inf"))
    tied = filled & (key == key.min())
    worst_slot = torch.argmin(torch.where(tied, t["hyp_seq"], torch.iinfo(torch.int64).max))
    slot = torch.where(full, worst_slot, free_slot)
    onehot = (slots == slot) & accept
    t["hyp_scores"].copy_(torch.where(onehot, score, t["hyp_scores"]))
    t["hyp_seq"].copy_(torch.where(onehot, t["inserted"], t["hyp_seq"]))
    t["hyp_len"].copy_(torch.where(onehot, seq_len, t["hyp_len"]))
    t["hyp_ids"].copy_(torch.where(onehot[:, None], seq[None, :], t["hyp_ids"]))
    t["count"].add_((accept & ~full).to(torch.int64))
    t["inserted"].add_(1)


def beam_step_ref(flat: torch.Tensor, noise: Optional[torch.Tensor], t: dict, cfg: SelectConfig, run: torch.Tensor):
    """The beam step of transformers 4.52's beam search / beam sample, in place on the hypotheses of ``t``.

    ``flat`` [1, K * V]: the processed log-probs plus the beam scores; ``noise`` (beam sample): Exp(1) draws of that
    shape. 2K candidates (top-k, or sampled by the exponential race without replacement, then sorted by score);
    the first K non-eos continue; eos candidates within the first K ranks are offered as hypotheses (score / gen_len
    ** length_penalty, fp64: ``t["powers"]``), while ``run``. ``t``: ids [K, L] (the sequences, first ``cur``
    tokens valid), cur / prompt_len i64 [], the hyp_* tensors, count / inserted i64 [], done bool [] (updated),
    powers f64 [L + 1], never_power f64 []. Returns (next scores [K] fp32, next tokens [K], source rows [K], the
    draw's validity: a device bool)."""
    K = t["ids"].shape[0]
    V = flat.shape[-1] // K
    ok = torch.ones((), dtype=torch.bool, device=flat.device)
    if cfg.do_sample:
        cand, ok = multinomial_race_ref(torch.softmax(flat, dim=-1), noise.view(1, -1), 2 * K)
        cand_scores = torch.gather(flat, -1, cand)
        cand_scores, order = torch.sort(cand_scores, descending=True, dim=1)
        cand = torch.gather(cand, -1, order)
    else:
        cand_scores, cand = torch.topk(flat, 2 * K, dim=1, largest=True, sorted=True)
    cand_scores, cand = cand_scores[0], cand[0]
    beam = torch.div(cand, V, rounding_mode="floor")
    token = cand % V
    is_eos = token == cfg.eos
    # the first K non-eos candidates continue, in rank order
    pick = torch.argsort(is_eos.to(torch.int64) * (2 * K) + torch.arange(2 * K, device=flat.device))[:K]
    cur, done = t["cur"], t["done"]
    # float(gen_len ** length_penalty), gen_len = cur + 1 - P, looked up with a device index (no host sync)
    denom = t["powers"].gather(0, (cur + 1 - t["prompt_len"]).reshape(1))[0]
    for r in range(K):  # eos candidates within the first K ranks close hypotheses, in rank order
        seq = t["ids"].index_select(0, beam[r : r + 1])[0]
        hypothesis_add_ref(t, seq, cur, cand_scores[r].double() / denom, is_eos[r] & ~done & run)
    best = cand_scores[0].double()
    if cfg.early_stopping is True:
        finished = torch.ones((), dtype=torch.bool, device=best.device)
    else:
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            attainable = best / t["never_power"]
        else:
            attainable = best / denom
        finished = hypothesis_worst_ref(t) >= attainable
    done.copy_(done | (run & (t["count"] >= K) & finished))
    return cand_scores[pick], token[pick], beam[pick], ok


def decode_select_ref(scores: torch.Tensor, noise: Optional[torch.Tensor], t: dict, cfg: SelectConfig,
                      process: Optional[ProcessConfig] = None) -> None:  # fmt: skip
    """One decode step after the processors, in place on the state tensors ``t`` (a dict; see
    ``indextts_kernels.sampling``): the choice (argmax, the exponential race with ``noise``, or the beam step with
    its hypotheses), the append, the stop condition, the next tokens' embedding and position, the row reorders.

    ``scores`` [rows, V] (processed; with ``process``, raw logits processed here first: one row, no noise).
    State: ids [rows, L] i64, cur / max_length / prompt_len / pos_base i64 [], running / overflow / valid bool [],
    tokens [rows] i64, pos [1] i64, seen [rows, V] bool or None, lengths / table int32 (the KV cache's, advanced by
    the previous step's ``pending`` int32 [] first), emb [rows, 1, C] out, tok_emb [Vt, C] and pos_emb [P, C] (the
    embedding tables); beams also beam_scores [rows] fp32 and the hypotheses (hyp_scores f64, hyp_seq / hyp_len
    i64 [rows], hyp_ids [rows, L], count / inserted i64 [], done bool [], powers f64 [L + 1], never_power f64 [])."""
    if process is not None:
        scores = logits_process_ref(scores, process, t["seen"], t["cur"], t["prompt_len"])
    K, L = t["ids"].shape
    run = t["running"].clone()
    t["lengths"].add_(t["pending"])
    if K == 1:
        if cfg.do_sample:
            tok, ok = multinomial_race_ref(torch.softmax(scores, dim=-1), noise, 1)
            tok = tok.squeeze(1)
            t["valid"].copy_(t["valid"] & (ok | ~run))
        else:
            tok = torch.argmax(scores, dim=-1)
        _append_ref(t, tok, run, L)
        still = run & (t["cur"] < t["max_length"]) & (tok[0] != cfg.eos)
        _feed_ref(t, tok, still, cfg)
        return
    nscores, ntok, nrows, ok = beam_step_ref(scores.reshape(1, -1), noise, t, cfg, run)
    t["valid"].copy_(t["valid"] & (ok | ~run))
    done = t["done"]
    rows = torch.where(run, nrows, torch.arange(K, device=scores.device))
    t["ids"].copy_(t["ids"].index_select(0, rows))
    if t["seen"] is not None:
        t["seen"].copy_(t["seen"].index_select(0, rows))
    t["beam_scores"].copy_(torch.where(run, nscores, t["beam_scores"]))
    _append_ref(t, ntok, run, L)
    t["table"].copy_(t["table"].index_select(0, rows))
    t["lengths"].copy_(t["lengths"].index_select(0, rows))
    _feed_ref(t, ntok, run & (t["cur"] < t["max_length"]) & ~done, cfg)


def _append_ref(t: dict, tokens, run, L) -> None:
    K = tokens.shape[0]
    idx = t["cur"].clamp(max=L - 1).view(1, 1).expand(K, 1)
    t["ids"].scatter_(1, idx, torch.where(run, tokens[:, None], t["ids"].gather(1, idx)))
    if t["seen"] is not None:
        s = tokens[:, None]
        t["seen"].scatter_(1, s, t["seen"].gather(1, s) | run)
    t["cur"].add_(run.to(torch.int64))


def _feed_ref(t: dict, tokens, still, cfg: SelectConfig) -> None:
    pos = t["cur"] - t["pos_base"]
    over = still & (pos >= cfg.pos_limit)
    t["overflow"].copy_(t["overflow"] | over)
    live = still & ~over
    t["running"].copy_(live)
    t["pos"].copy_(pos.clamp(0, cfg.pos_limit - 1).view(1))
    t["tokens"].copy_(tokens)
    t["pending"].copy_(live.to(torch.int32))
    e = F.embedding(t["tokens"][:, None], t["tok_emb"])
    p = F.embedding(t["pos"], t["pos_emb"])
    t["emb"].copy_(e + p)


# ----------------------------------------------------------------------------------------------------------------------
# WaveNet layer (the s2mel DiT's WN head) and the CFM Euler step
# ----------------------------------------------------------------------------------------------------------------------
def reflect_taps_index(T: int, taps: int, valid_len: Optional[torch.Tensor], device=None):
    """(frame index [V, T, taps] int64, readable [V, T, taps] bool) of a ``taps``-tap same-length conv's inputs with
    REFLECT padding at ``valid_len`` (int tensor [V]: 1, or one per batch row; None: T): the official pad1d, which
    zero-extends a sequence shorter than the pad to pad + 1 frames first (those frames read zero: ``readable``
    False)."""
    left = taps - 1 - (taps - 1) // 2
    pos = (torch.arange(T, device=device)[:, None] + torch.arange(taps, device=device)[None, :] - left)[None]
    V = torch.full((1, 1, 1), T, device=device) if valid_len is None else valid_len.reshape(-1, 1, 1).long()
    last = torch.clamp(V - 1, min=left)
    p = pos.abs()
    p = torch.where(p > last, 2 * last - p, p)
    return p.clamp(0, T - 1), p < V


def wavenet_gate_ref(x, weight, bias, cond, *, taps: int, valid_len=None):
    """``tanh(a[..., :H] + cond[:, :H]) * sigmoid(a[..., H:] + cond[:, H:])``, a = conv(x) + bias: the taps-tap
    REFLECT-padded conv of x [B, T, C] (channel-last) with the tap-major weight [2H, taps*C]; cond [B or 1, 2H]."""
    B, T, C = x.shape
    H = weight.shape[0] // 2
    p, ok = reflect_taps_index(T, taps, valid_len, x.device)  # [1 or B, T, taps]
    idx = p.reshape(p.shape[0], T * taps, 1).expand(B, T * taps, C)
    cols = x.gather(1, idx) * ok.reshape(ok.shape[0], -1, 1).to(x.dtype)  # [B, T*taps, C]
    a = cols.reshape(B, T, taps * C) @ weight.t() + bias
    a = a + cond[:, None, :]
    return torch.tanh(a[..., :H]) * torch.sigmoid(a[..., H:])


def wavenet_res_skip_ref(acts, weight, bias, x, skip, lens, *, first: bool, last: bool) -> None:
    """In place: rs = acts @ weight.T + bias; not last: x = (x + rs[..., :H]) * mask, skip = skip + rs[..., H:]
    (first: rs[..., H:]); last: skip = (skip + rs) * mask (first: rs * mask). mask[b, t] = t < lens[b]."""
    B, T, H = acts.shape
    rs = acts @ weight.t() + bias
    mask = (torch.arange(T, device=acts.device)[None, :] < lens[:, None]).to(acts.dtype)[..., None]
    if last:
        s = rs if first else skip + rs
        skip.copy_(s * mask)
        return
    x.copy_((x + rs[..., :H]) * mask)
    skip.copy_(rs[..., H:] if first else skip + rs[..., H:])


def cfm_euler_ref(v, x, dt, keep, xin, *, rate: float) -> None:
    """In place: one CFM Euler step (indextts_kernels.euler): x = where(keep, x + dt * cfg(v), 0) with v
    [R*B, T, F] channel-last, x [B, F, T]; xin [R*B, T, F] = x^T in each of its R halves."""
    B = x.shape[0]
    vt = v.transpose(1, 2).to(torch.float32)
    if rate > 0:
        v_c, v_u = vt[:B], vt[B:]
        vt = (1.0 + rate) * v_c - rate * v_u
    x.copy_(torch.where(keep, x + dt.reshape(()) * vt, 0.0))
    xt = x.transpose(1, 2)
    for i in range(xin.shape[0] // B):
        xin[i * B : (i + 1) * B].copy_(xt)


# ----------------------------------------------------------------------------------------------------------------------
# BigVGAN's anti-aliased activation (indextts_kernels.alias_free)
# ----------------------------------------------------------------------------------------------------------------------
SNAKE_EPS = 1e-9  # BigVGAN's no_div_by_zero


def snake_params(alpha: torch.Tensor, beta: Optional[torch.Tensor], logscale: bool):
    """(alpha, inv_beta) per channel as the Snake / SnakeBeta forward forms them: alpha = exp(alpha) and beta =
    exp(beta) for log-scale parameters, inv_beta = 1 / (beta + 1e-9); Snake (``beta`` None) uses alpha for both."""
    a = alpha.detach().reshape(-1)
    b = a if beta is None else beta.detach().reshape(-1)
    if logscale:
        a, b = torch.exp(a), torch.exp(b)
    return a.contiguous(), (1.0 / (b + SNAKE_EPS)).contiguous()


def _clamped(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, C, T] read at idx [B, N] (per row), on the last dim."""
    B, C, _ = x.shape
    return torch.gather(x, 2, idx[:, None, :].expand(B, C, idx.shape[1]))


def anti_alias_snake_ref(x, up_filter, down_filter, alpha, inv_beta, *, lengths=None) -> torch.Tensor:
    """x2 upsampling (replicate pad, transposed conv with the K-tap ``up_filter``, x2, cropped to 2n), Snake
    ``v = u + inv_beta * sin(alpha * u)^2`` per channel, x2 downsampling (replicate pad H - 1 / H, conv with
    ``down_filter``, stride 2) of x [B, C, T]; rows treated as ``lengths[b]`` long (clamped to [1, T]; every pad
    at n, outputs past n zero). No host sync."""
    B, C, T = x.shape
    K = up_filter.numel()
    H = K // 2
    dev = x.device
    n = torch.full((B,), T, device=dev) if lengths is None else lengths.to(dev).clamp(1, T)
    n = n.to(torch.int64)[:, None]
    # upsampling: the replicate pad of H - 1 is a clamped read at the row's end n
    xp = _clamped(x, torch.minimum(torch.arange(-(H - 1), T + H - 1, device=dev)[None, :].clamp(min=0), n - 1))
    f = up_filter.reshape(1, 1, K).to(x.dtype).expand(C, 1, K)
    y = F.conv_transpose1d(xp, f, stride=2, groups=C)
    crop = 3 * H - 3
    u = 2 * y[..., crop : crop + 2 * T]
    v = u + inv_beta.to(x.dtype).view(1, C, 1) * torch.sin(u * alpha.to(x.dtype).view(1, C, 1)) ** 2
    # downsampling: replicate pad H - 1 left, H right, at 2n
    pos = torch.arange(-(H - 1), 2 * T + H, device=dev)[None, :].clamp(min=0)
    vp = _clamped(v, torch.minimum(pos, 2 * n - 1))
    g = down_filter.reshape(1, 1, K).to(x.dtype).expand(C, 1, K)
    out = F.conv1d(vp, g, stride=2, groups=C)
    keep = torch.arange(T, device=dev)[None, None, :] < n[:, :, None]
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=dev))


def amp_merge_ref(parts, *, divisor: float = 1.0, lengths=None) -> torch.Tensor:
    """((parts[0] + parts[1]) + parts[2]) / divisor, zero at t >= lengths[b]."""
    s = parts[0]
    for p in parts[1:]:
        s = s + p
    if float(divisor) != 1.0:
        s = s / float(divisor)
    if lengths is None:
        return s.clone() if len(parts) == 1 else s
    T = s.shape[-1]
    keep = torch.arange(T, device=s.device)[None, None, :] < lengths.to(s.device)[:, None, None]
    return torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device))
