"""Dispatched ops: the Triton kernel where a backend for it exists, else the torch reference.

Every op takes the same arguments as its launcher in ``indextts_kernels`` and returns the same result on
every backend; ``backend_for(x.device)`` (see ``_dispatch``) decides which implementation runs.
"""

from __future__ import annotations

from typing import Optional

import torch

import indextts_kernels
from indextts_kernels import reference
from indextts_kernels._validate import (
    attention_args,
    decode_attention_args,
    ffn_args,
    gemm_args,
    ln_gemm_args,
    norm_args,
    qkv_heads,
    rope_table_args,
)

from ._dispatch import TORCH, backend_for
from .nodes import launcher
from .profiling import op_range

__all__ = [
    "layer_norm",
    "adaptive_rms_norm",
    "final_layer_modulate",
    "dit_attention",
    "gpt_prefill_attention",
    "gpt_decode_attention",
    "linear",
    "ln_linear",
    "swiglu_linear",
    "swiglu_feed_forward",
    "gpt2_mlp",
    "wavenet_gate",
    "wavenet_res_skip",
    "cfm_euler",
    "anti_alias_snake",
    "amp_merge",
    "logits_process",
    "decode_select",
]


def _run(name: str, *args, **kwargs):
    """The Triton launcher ``name``, inside an NVTX range when per-op ranges are on (profiling.op_range)."""
    with op_range(name), launcher():
        return getattr(indextts_kernels, name)(*args, **kwargs)


def layer_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    *,
    residual: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """LayerNorm over the last dim; with ``residual`` returns ``(LayerNorm(x + residual), x + residual)``."""
    if backend_for(x.device) == TORCH:
        norm_args("layer_norm", x, weight=weight, bias=bias, residual=residual, eps=eps, out_dtype=out_dtype)
        return reference.layer_norm_ref(x, weight, bias, eps, residual=residual, out_dtype=out_dtype)
    return _run("layer_norm_fwd", x, weight, bias, eps, residual=residual, out_dtype=out_dtype)


def adaptive_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT AdaptiveLayerNorm: ``scale * (RMSNorm(x) * weight) + shift`` (plain RMSNorm without scale/shift).
    ``out``: a buffer to write (any row stride, e.g. one half of a concatenation's buffer)."""
    if backend_for(x.device) == TORCH:
        norm_args("adaptive_rms_norm", x, weight=weight, scale=scale, shift=shift, eps=eps)
        y = reference.adaptive_rms_norm_ref(x, weight, scale, shift, eps)
        return y if out is None else out.copy_(y)
    return _run("adaptive_rms_norm_fwd", x, weight, scale, shift, eps, out=out)


def final_layer_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DiT FinalLayer: ``LayerNorm_noaffine(x, eps) * (1 + scale) + shift``."""
    if backend_for(x.device) == TORCH:
        norm_args("final_layer_modulate", x, scale=scale, shift=shift, eps=eps)
        return reference.final_layer_modulate_ref(x, shift, scale, eps)
    return _run("final_layer_modulate_fwd", x, shift, scale, eps)


def dit_attention(
    qkv: torch.Tensor,
    n_heads: int,
    x_lens: Optional[torch.Tensor] = None,
    freqs_cis: Optional[torch.Tensor] = None,
    fp32_precision: str = "ieee",
) -> torch.Tensor:
    """DiT attention core: ``wqkv`` output [B, T, 3*H*D] -> [B, T, H*D] (RoPE, non-causal, keys < x_lens).

    ``fp32_precision`` ("ieee", "tf32x3", "tf32") selects the fp32 dot of the kernel; the torch fallback is
    always exact fp32 (SDPA, as the official module).
    """
    if backend_for(qkv.device) == TORCH:
        q, k, v = qkv_heads("qkv", qkv, n_heads)
        attention_args("dit_attention", q, k, v, x_lens=x_lens, fp32_precision=fp32_precision)
        if freqs_cis is not None:
            rope_table_args(freqs_cis, q.shape[1], q.shape[-1], q.device)
        return reference.dit_attention_ref(qkv, n_heads, x_lens, freqs_cis)
    return _run("dit_attention_fwd", qkv, n_heads, x_lens=x_lens, freqs_cis=freqs_cis, fp32_precision=fp32_precision)


def gpt_prefill_attention(
    qkv: torch.Tensor, n_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> torch.Tensor:
    """GPT-2 causal prefill: ``c_attn`` output [B, T, 3*H*D] -> [B, T, H*D]; fills cache positions 0..T-1."""
    if backend_for(qkv.device) == TORCH:
        q, k, v = qkv_heads("qkv", qkv, n_heads)
        attention_args("gpt_prefill_attention", q, k, v, causal=True, k_cache=k_cache, v_cache=v_cache)
        return reference.gpt_prefill_attention_ref(qkv, n_heads, k_cache, v_cache)
    return _run("gpt_prefill_attention_fwd", qkv, n_heads, k_cache, v_cache)


def gpt_decode_attention(
    qkv: torch.Tensor,
    n_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    row_table: Optional[torch.Tensor] = None,
    tickets: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One decode step [B, 1, 3*H*D] -> [B, 1, H*D]: appends k, v at ``lengths`` and attends positions 0..lengths.

    The caller advances ``lengths += 1`` afterwards. With ``row_table`` (int32 [B, S_max]) beams are reordered
    by permuting the table (``gpt.cache.KVCache.reorder``) instead of copying the cache. ``tickets`` (int32 zeros,
    >= B * H, owned by the caller): the split-K reduction folded into the one launch (the torch path needs none).
    """
    if backend_for(qkv.device) == TORCH:
        q, _, _ = qkv_heads("qkv", qkv, n_heads)
        decode_attention_args("gpt_decode_attention", q, k_cache, v_cache, lengths, row_table=row_table)
        return reference.gpt_decode_attention_ref(qkv, n_heads, k_cache, v_cache, lengths, row_table)
    return _run("gpt_decode_attention_fwd", qkv, n_heads, k_cache, v_cache, lengths, row_table=row_table,
                tickets=tickets)  # fmt: skip


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias) + residual``; weight [out, in] (GPT-2 Conv1D weights transposed first)."""
    if backend_for(x.device) == TORCH:
        if activation not in (None, "gelu_new"):
            raise ValueError(f"linear: activation must be None or 'gelu_new', got {activation!r}")
        gemm_args("linear", x, weight, bias=bias, residual=residual, precision=precision)
        return reference.linear_ref(x, weight, bias, residual=residual, activation=activation)
    return _run("linear_fwd", x, weight, bias, residual=residual, activation=activation, precision=precision)


def ln_linear(
    x: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``act(LayerNorm(x) @ weight.T + bias) + residual`` with x the residual stream (fp32 under fp16 autocast);
    the LayerNorm output is rounded to the weight's dtype. One launch for decode rows (the GEMV's prologue)."""
    if backend_for(x.device) == TORCH:
        ln_gemm_args("ln_linear", x, ln_weight, ln_bias, eps, weight, bias=bias, residual=residual,
                     activation=activation)  # fmt: skip
        return reference.ln_linear_ref(x, ln_weight, ln_bias, eps, weight, bias, residual=residual,
                                       activation=activation)  # fmt: skip
    return _run("ln_linear_fwd", x, ln_weight, ln_bias, eps, weight, bias, residual=residual, activation=activation)


def swiglu_linear(x: torch.Tensor, w13: torch.Tensor, *, precision: Optional[str] = None) -> torch.Tensor:
    """``silu(x @ w1.T) * (x @ w3.T)`` over the packed ``w13 = cat([w1, w3])`` [2I, K]."""
    if backend_for(x.device) == TORCH:
        gemm_args("swiglu_linear", x, w13, swiglu=True, precision=precision)
        return reference.swiglu_linear_ref(x, w13)
    return _run("swiglu_linear_fwd", x, w13, precision=precision)


def swiglu_feed_forward(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DiT FeedForward plus the block's residual: ``residual + w2(silu(w1 x) * w3 x)``. ``out``: a buffer to
    write (any row stride, e.g. one half of a concatenation's buffer)."""
    if backend_for(x.device) == TORCH:
        ffn_args("swiglu_feed_forward", x, w13, w2, residual=residual, swiglu=True, precision=precision)
        y = reference.swiglu_feed_forward_ref(x, w13, w2, residual=residual)
        return y if out is None else out.copy_(y)
    return _run("swiglu_feed_forward_fwd", x, w13, w2, residual=residual, precision=precision, out=out)


def gpt2_mlp(
    x: torch.Tensor,
    c_fc_weight: torch.Tensor,
    c_fc_bias: torch.Tensor,
    c_proj_weight: torch.Tensor,
    c_proj_bias: torch.Tensor,
    *,
    residual: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """GPT-2 MLP plus the block's residual: ``residual + c_proj(gelu_new(c_fc(x)))``; weights [out, in]."""
    if backend_for(x.device) == TORCH:
        ffn_args(
            "gpt2_mlp", x, c_fc_weight, c_proj_weight, b_in=c_fc_bias, b_out=c_proj_bias, residual=residual,
            swiglu=False, precision=precision,
        )  # fmt: skip
        return reference.gpt2_mlp_ref(x, c_fc_weight, c_fc_bias, c_proj_weight, c_proj_bias, residual=residual)
    return _run(
        "gpt2_mlp_fwd", x, c_fc_weight, c_fc_bias, c_proj_weight, c_proj_bias, residual=residual, precision=precision
    )


def wavenet_gate(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    cond: torch.Tensor,
    *,
    taps: int,
    valid_len: Optional[torch.Tensor] = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """WaveNet in-layer: ``tanh(a[:H] + cond[:H]) * sigmoid(a[H:] + cond[H:])``, a the REFLECT-padded k-tap conv
    of x [B, T, C] (tap-major weight [2H, k*C]) plus bias, reflected at ``valid_len`` (default T); one GEMM."""
    if backend_for(x.device) == TORCH:
        from indextts_kernels._validate import wavenet_gate_args

        wavenet_gate_args("wavenet_gate", x, weight, bias, cond, taps=taps, valid_len=valid_len, precision=precision)
        return reference.wavenet_gate_ref(x, weight, bias, cond, taps=taps, valid_len=valid_len)
    return _run("wavenet_gate_fwd", x, weight, bias, cond, taps=taps, valid_len=valid_len, precision=precision)


def wavenet_res_skip(
    acts: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    skip: torch.Tensor,
    lens: torch.Tensor,
    *,
    first: bool,
    last: bool,
    precision: Optional[str] = None,
) -> None:
    """WaveNet res_skip conv and its updates, in place: x = (x + rs[:H]) * mask, skip += rs[H:] (the last layer:
    skip = (skip + rs) * mask); ``first``: the skip sum starts at rs. One GEMM."""
    if backend_for(acts.device) == TORCH:
        from indextts_kernels._validate import wavenet_res_skip_args

        wavenet_res_skip_args("wavenet_res_skip", acts, weight, bias, x, skip, lens, last=last, precision=precision)
        return reference.wavenet_res_skip_ref(acts, weight, bias, x, skip, lens, first=first, last=last)
    return _run("wavenet_res_skip_fwd", acts, weight, bias, x, skip, lens, first=first, last=last,
                precision=precision)  # fmt: skip


def cfm_euler(v: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, keep: torch.Tensor, xin: torch.Tensor, *,
              rate: float) -> None:  # fmt: skip
    """One CFM Euler step in place: CFG combine of v [R*B, T, F], x = where(keep, x + dt * v, 0) on x [B, F, T],
    and x^T into each half of the estimator's next input xin [R*B, T, F]. One launch."""
    if backend_for(x.device) == TORCH:
        from indextts_kernels._validate import cfm_euler_args

        cfm_euler_args("cfm_euler", v, x, dt, keep, xin, rate=float(rate))
        return reference.cfm_euler_ref(v, x, dt, keep, xin, rate=float(rate))
    return _run("cfm_euler_fwd", v, x, dt, keep, xin, rate=rate)


def anti_alias_snake(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor, alpha: torch.Tensor,
                     inv_beta: torch.Tensor, *, lengths: Optional[torch.Tensor] = None,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """BigVGAN's anti-aliased Snake/SnakeBeta of x [B, C, T] (indextts_kernels.alias_free): x2 up, activation,
    x2 down, rows treated as ``lengths[b]`` long (zeros past them)."""
    if backend_for(x.device) == TORCH:
        from indextts_kernels._validate import anti_alias_snake_args

        anti_alias_snake_args("anti_alias_snake", x, up_filter, down_filter, alpha, inv_beta, lengths=lengths, out=out)
        y = reference.anti_alias_snake_ref(x, up_filter, down_filter, alpha, inv_beta, lengths=lengths)
        return y if out is None else out.copy_(y)
    return _run("anti_alias_snake_fwd", x, up_filter, down_filter, alpha, inv_beta, lengths=lengths, out=out)


def amp_merge(parts, *, divisor: float = 1.0, lengths: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """((parts[0] + parts[1]) + parts[2]) / divisor, zero at t >= lengths[b] (``out`` may be parts[0])."""
    if backend_for(parts[0].device) == TORCH:
        from indextts_kernels._validate import amp_merge_args

        amp_merge_args("amp_merge", list(parts), divisor=float(divisor), lengths=lengths, out=out)
        y = reference.amp_merge_ref(list(parts), divisor=divisor, lengths=lengths)
        return y if out is None else out.copy_(y)
    return _run("amp_merge_fwd", list(parts), divisor=divisor, lengths=lengths, out=out)


def logits_process(
    logits: torch.Tensor,
    cfg: reference.ProcessConfig,
    seen: Optional[torch.Tensor] = None,
    cur: Optional[torch.Tensor] = None,
    prompt_len: Optional[torch.Tensor] = None,
    beam_scores: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The official logits-processor chain on ``logits`` [rows, V] fp32 (one launch; see ``logits_process_ref``)."""
    if backend_for(logits.device) == TORCH:
        return reference.logits_process_ref(logits, cfg, seen, cur, prompt_len, beam_scores)
    return _run("logits_process_fwd", logits, cfg, seen, cur, prompt_len, beam_scores)


def decode_select(
    scores: torch.Tensor,
    noise: Optional[torch.Tensor],
    state: dict,
    cfg: reference.SelectConfig,
    process: Optional[reference.ProcessConfig] = None,
) -> None:
    """One decode step's choice and bookkeeping, in place on ``state`` (one launch; see ``decode_select_ref``)."""
    if backend_for(scores.device) == TORCH:
        return reference.decode_select_ref(scores, noise, state, cfg, process)
    return _run("decode_select_fwd", scores, noise, state, cfg, process)
