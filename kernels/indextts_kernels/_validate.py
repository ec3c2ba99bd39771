"""Argument validation shared by the Triton launchers and the dispatched torch fallback (no Triton import).

Every check raises a TypeError/ValueError whose message names the offending argument, so bad input never
turns into a silent wrong result on any backend.
"""

from __future__ import annotations

import torch

from ._utils import FLOAT_DTYPES, MAX_FUSED_ROW, check_inference, check_out_buffer, check_tensor

_VALIDATED: dict = {}
_MAX_VALIDATED = 4096  # signatures remembered (then forgotten all at once): a DiT of many lengths stays bounded


def _sig(v):
    if isinstance(v, torch.Tensor):
        return (tuple(v.shape), v.stride(), v.dtype, v.device, v.requires_grad)
    if isinstance(v, (tuple, list)):
        return (type(v), tuple(_sig(a) for a in v))
    return v


def validate_once(check, op: str, *args, **kwargs) -> None:
    """``check(op, *args, **kwargs)``, skipped when the same check already passed for the same signature: every
    tensor's shape, strides, dtype, device and requires_grad, every other argument's value, and the grad mode.
    The validators here read nothing else (no data, no data pointers), except the overlap checks of an ``out``
    buffer: with ``out`` given the check runs every call. A failing check raises every time (nothing is
    remembered), so bad input is refused as before; a launcher called every step with the same shapes (the
    decode engine, the CFM loop) pays the validation once."""
    if kwargs.get("out") is not None:
        check(op, *args, **kwargs)
        return
    try:
        key = (check, _sig(op), tuple(_sig(a) for a in args), tuple((k, _sig(v)) for k, v in kwargs.items()),
               torch.is_grad_enabled())  # fmt: skip
        seen = key in _VALIDATED
    except TypeError:  # an unhashable argument: no memo
        check(op, *args, **kwargs)
        return
    if seen:
        return
    check(op, *args, **kwargs)
    if len(_VALIDATED) >= _MAX_VALIDATED:
        _VALIDATED.clear()
    _VALIDATED[key] = True


def mod_layout(name: str, m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Check a modulation tensor (scale/shift) against x [..., T, N].

    Accepted: per batch row ``[..., 1, N]`` or ``[..., N]`` (x's leading dims without T), or per token (x's
    shape). Any row stride is fine. Returns ``(m viewed as [B, Tm, N], batch stride, token stride)`` with
    zero strides where the axis broadcasts.
    """
    check_tensor(name, m, device=x.device)
    if x.dim() < 2:
        raise ValueError(f"x must be at least 2-D ([..., T, N]) when {name} is given, got shape {tuple(x.shape)}")
    N, T = x.shape[-1], x.shape[-2]
    lead = tuple(x.shape[:-2])
    if m.dim() == x.dim() and tuple(m.shape[:-2]) == lead and m.shape[-2] in (1, T) and m.shape[-1] == N:
        Tm = m.shape[-2]
    elif m.dim() == x.dim() - 1 and x.dim() >= 3 and tuple(m.shape[:-1]) == lead and m.shape[-1] == N:
        Tm = 1
    else:
        raise ValueError(
            f"{name} has shape {tuple(m.shape)}, which is neither per batch row ({lead + (1, N)} or {lead + (N,)}) "
            f"nor per token ({tuple(x.shape)}) for x of shape {tuple(x.shape)}"
        )
    B = 1
    for d in lead:
        B *= d
    m3 = m.reshape(B, Tm, N)  # a view whenever the leading dims allow it
    return m3, (m3.stride(0) if B > 1 else 0), (m3.stride(1) if Tm > 1 else 0)


def norm_args(
    op: str, x, *, weight=None, bias=None, residual=None, scale=None, shift=None, eps=1e-5, out_dtype=None
) -> None:
    """Validate the inputs of the normalization ops (layer_norm, adaptive_rms_norm, final_layer_modulate)."""
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be None, float32, float16 or bfloat16, got {out_dtype!r}")
    check_tensor("x", x, min_dim=1)
    N = x.shape[-1]
    if N == 0 or N > MAX_FUSED_ROW:
        raise ValueError(f"{op}: the normalized size x.shape[-1] = {N} must be in [1, {MAX_FUSED_ROW}]")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(pname, p, device=x.device, shape=(N,))
    if residual is not None:
        check_tensor("residual", residual, device=x.device, shape=tuple(x.shape))
    if (scale is None) != (shift is None):
        raise ValueError(f"{op}: pass both scale and shift, or neither")
    if scale is not None:
        mod_layout("scale", scale, x)
        mod_layout("shift", shift, x)
    check_inference(op, x, weight, bias, residual, scale, shift)


def norm_out_dtype(x, weight=None, bias=None, residual=None, scale=None, shift=None, *, promote_params: bool):
    """The output dtype a norm op returns by default, on every backend.

    The stream dtype (x's, or torch's promotion of x and residual: the new stream ``x + residual`` is what gets
    normalized); with ``promote_params`` (the RMSNorm and modulated forms, whose upstream elementwise tails follow
    torch promotion) also promoted over the parameters and the modulation. LayerNorm keeps its input's dtype, as
    ``F.layer_norm`` does.
    """
    dt = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    if promote_params:
        for t in (weight, bias, scale, shift):
            if t is not None:
                dt = torch.promote_types(dt, t.dtype)
    return dt


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------
ATTN_HEAD_DIMS = (64, 128)
INDEX_DTYPES = (torch.int32, torch.int64)


def _check_head_dim(op: str, D: int) -> None:
    if D not in ATTN_HEAD_DIMS:
        raise ValueError(f"{op}: unsupported head_dim {D}; the attention kernels support {ATTN_HEAD_DIMS}")


def qkv_heads(name: str, qkv, n_heads) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views q, k, v [B, T, H, D] of a fused projection output [B, T, 3*H*D] (q|k|v thirds, heads contiguous)."""
    check_tensor(name, qkv)
    if qkv.dim() != 3:
        raise ValueError(f"{name} must be [B, T, 3 * n_heads * head_dim], got shape {tuple(qkv.shape)}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
    C = qkv.shape[-1]
    if C % (3 * n_heads):
        raise ValueError(f"{name}.shape[-1] = {C} is not 3 * n_heads * head_dim for n_heads = {n_heads}")
    D = C // (3 * n_heads)
    HD = n_heads * D
    return tuple(qkv[..., i * HD : (i + 1) * HD].unflatten(-1, (n_heads, D)) for i in range(3))


def _check_cache(op: str, k_cache, v_cache, q, min_rows: int, min_len: int) -> None:
    if (k_cache is None) != (v_cache is None):
        raise ValueError(f"{op}: pass both k_cache and v_cache, or neither")
    if k_cache is None:
        return
    B, _, H, D = q.shape
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, c, dtypes=(q.dtype,), device=q.device)
        if c.dim() != 4 or c.shape[1] != H or c.shape[3] != D or c.shape[0] < min_rows:
            raise ValueError(
                f"{name} has shape {tuple(c.shape)}; expected [B_max >= {min_rows}, H = {H}, S_max, D = {D}]"
            )
        if c.shape[2] < min_len:
            raise ValueError(f"{op}: {min_len} tokens do not fit {name} with S_max = {c.shape[2]} positions")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")


def _check_out(op: str, out, shape, dtype, device, inputs) -> None:
    if out is None:
        return
    check_tensor("out", out, dtypes=(dtype,), device=device, shape=shape)
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    check_out_buffer(op, "out", out, inputs)  # every program reads keys and values that other programs' rows write


FP32_PRECISIONS = ("tf32x3", "ieee", "tf32")


def check_fp32_precision(op: str, fp32_precision) -> None:
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"{op}: fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")


def attention_args(
    op: str, q, k, v, *, causal=False, x_lens=None, k_cache=None, v_cache=None, out=None, fp32_precision="ieee",
    freqs_cis=None,
) -> None:  # fmt: skip
    """Validate attention inputs: q, k, v [B, T, H, D] of one dtype and device, head_dim 64 or 128."""
    check_fp32_precision(op, fp32_precision)
    check_tensor("q", q)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D], got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, device=q.device)
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, but q has {q.dtype}: q, k and v must share one dtype")
        if tuple(t.shape) != tuple(q.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected q's {tuple(q.shape)}")
    B, T, H, D = q.shape
    _check_head_dim(op, D)
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    if x_lens is not None:
        check_tensor("x_lens", x_lens, dtypes=INDEX_DTYPES, device=q.device, shape=(B,))
    _check_cache(op, k_cache, v_cache, q, B, T)
    inputs = (("q", q), ("k", k), ("v", v), ("x_lens", x_lens), ("k_cache", k_cache), ("v_cache", v_cache),
              ("freqs_cis", freqs_cis))  # fmt: skip
    _check_out(op, out, (B, T, H * D), q.dtype, q.device, inputs)
    check_inference(op, q, k, v)


def rope_table_args(freqs_cis, T: int, D: int, device) -> None:
    """The RoPE table: official ``freqs_cis`` layout [S >= T, D/2, 2] (cos, sin)."""
    check_tensor("freqs_cis", freqs_cis, device=device)
    if freqs_cis.dim() != 3 or freqs_cis.shape[1] != D // 2 or freqs_cis.shape[2] != 2 or freqs_cis.shape[0] < T:
        raise ValueError(f"freqs_cis has shape {tuple(freqs_cis.shape)}; expected [S >= {T}, {D // 2}, 2]")


def decode_attention_args(op: str, q, k_cache, v_cache, lengths, *, row_table=None, out=None, qkv=None) -> None:
    """Validate a decode step: q [B, 1, H, D] views, caches [B_max >= B, H, S_max, D], lengths int [B].

    Lengths and the row table live on the device; checking their values would need a device sync, so only CPU
    tensors' values are checked here (lengths in [0, S_max), table entries in [0, B_max)). On the device the
    kernel writes nothing for a row whose length is >= S_max or < 0, reads nothing through a table entry
    outside [0, B_max), and stores NaN as that row's output.
    """
    check_tensor("qkv", q)
    B, T, H, D = q.shape
    if T != 1:
        raise ValueError(f"{op}: decode takes one new token per row (qkv [B, 1, 3*H*D]), got {T} tokens")
    _check_head_dim(op, D)
    if k_cache is None or v_cache is None:
        raise ValueError(f"{op}: k_cache and v_cache are required")
    _check_cache(op, k_cache, v_cache, q, B, 1)
    S = k_cache.shape[2]
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        span = sum((n - 1) * st for n, st in zip(c.shape, c.stride(), strict=True) if n > 0) + 1
        if span >= 2**31:
            raise ValueError(f"{name} spans {span} elements; one layer's cache must hold fewer than 2**31")
    check_tensor("lengths", lengths, dtypes=INDEX_DTYPES, device=q.device, shape=(B,))
    if lengths.device.type == "cpu" and B and int(lengths.max()) >= S:
        raise ValueError(f"{op}: lengths up to {int(lengths.max())} leave no room in a cache of S_max = {S}")
    if lengths.device.type == "cpu" and B and int(lengths.min()) < 0:
        raise ValueError(f"{op}: lengths must be >= 0")
    if row_table is not None:
        check_tensor("row_table", row_table, dtypes=(torch.int32,), device=q.device, shape=(B, S))
        if row_table.stride(-1) != 1 and S > 1:
            raise ValueError(f"{op}: row_table must have a contiguous last dimension")
        if row_table.device.type == "cpu" and row_table.numel():
            lo, hi = int(row_table.min()), int(row_table.max())
            if lo < 0 or hi >= k_cache.shape[0]:
                raise ValueError(
                    f"{op}: row_table holds physical rows {lo}..{hi}, outside the cache's rows 0..{k_cache.shape[0] - 1}"
                )
    inputs = (("qkv", q if qkv is None else qkv), ("k_cache", k_cache), ("v_cache", v_cache), ("lengths", lengths),
              ("row_table", row_table))  # fmt: skip
    _check_out(op, out, (B, 1, H * D), q.dtype, q.device, inputs)
    check_inference(op, q, k_cache, v_cache)


GEMM_PRECISIONS = ("ieee", "tf32x3", "tf32")


def gemm_args(
    op: str, x, weight, *, bias=None, residual=None, swiglu: bool = False, precision=None, operand_dtype=None
) -> None:
    """Validate a GEMM launch: x [..., K], weight [N, K] row-major (nn.Linear's [out, in]), one dtype throughout.

    For SwiGLU ``weight`` is the packed ``w13 = cat([w1, w3])`` [2I, K] and the output has I columns.
    ``operand_dtype``: the dtype x becomes before the product (the LayerNorm prologue's), when not x's own.
    """
    check_tensor("x", x, min_dim=1)
    K = x.shape[-1]
    if K == 0:
        raise ValueError(f"{op}: the reduction size x.shape[-1] must be at least 1, got shape {tuple(x.shape)}")
    wname = "w13" if swiglu else "weight"
    check_tensor(wname, weight, device=x.device, min_dim=2, last_dim_contiguous=False)
    if weight.dim() != 2:
        raise ValueError(f"{op}: {wname} must be 2-D [N, K] = [out, in], got shape {tuple(weight.shape)}")
    xdt = x.dtype if operand_dtype is None else operand_dtype
    if weight.dtype != xdt:
        raise TypeError(
            f"{op}: unsupported dtype mix: x is {str(xdt)[6:]} but {wname} is {str(weight.dtype)[6:]}; "
            "cast both to one of float32, float16, bfloat16"
        )
    if weight.shape[1] != K:
        hint = ""
        if weight.shape[0] == K:
            hint = " (it looks like [in, out], GPT-2 Conv1D's layout: pass weight.t().contiguous())"
        raise ValueError(
            f"{op}: mismatched K: {wname} has shape {tuple(weight.shape)} but x.shape[-1] = {K}; "
            f"expected [N, {K}] = [out, in]{hint}"
        )
    if weight.numel() > 1 and not weight.is_contiguous():
        raise ValueError(
            f"{op}: {wname} must be row-major [N, K] with K contiguous (nn.Linear's [out, in]); got strides "
            f"{tuple(weight.stride())} (a transposed view such as conv1d.weight.t() must be made .contiguous())"
        )
    if swiglu and weight.shape[0] % 2:
        raise ValueError(
            f"{op}: w13 has {weight.shape[0]} rows, an odd count; expected [2*I, K] = torch.cat([w1, w3], dim=0)"
        )
    N = weight.shape[0] // 2 if swiglu else weight.shape[0]
    if bias is not None:
        if swiglu:
            raise ValueError(f"{op}: the SwiGLU epilogue takes no bias (the DiT FeedForward has none)")
        check_tensor("bias", bias, dtypes=(xdt,), device=x.device, shape=(N,))
    if residual is not None:  # any float dtype: the output takes torch's promotion of (x, residual)
        check_tensor("residual", residual, device=x.device, shape=tuple(x.shape[:-1]) + (N,))
    if precision is not None and precision not in GEMM_PRECISIONS:
        raise ValueError(f"{op}: precision must be None or one of {GEMM_PRECISIONS}, got {precision!r}")
    check_inference(op, x, weight, bias, residual)


def ln_gemm_args(op: str, x, ln_weight, ln_bias, eps, weight, *, bias=None, residual=None, activation=None) -> None:
    """Validate LayerNorm + GEMM: x the stream [..., K] (the weight's dtype or float32), ln_weight / ln_bias [K]
    (any float dtype, contiguous), eps > 0, then the GEMM of LayerNorm(x) in the weight's dtype."""
    if activation not in (None, "gelu_new"):
        raise ValueError(f"{op}: activation must be None or 'gelu_new', got {activation!r}")
    check_tensor("x", x, min_dim=1)
    check_tensor("weight", weight, device=x.device, min_dim=2, last_dim_contiguous=False)
    if x.dtype not in (weight.dtype, torch.float32):
        raise TypeError(
            f"{op}: x (the residual stream) must be {str(weight.dtype)[6:]} like the weight, or float32; "
            f"got {str(x.dtype)[6:]}"
        )
    K = x.shape[-1]
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        check_tensor(name, t, device=x.device, shape=(K,))
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    gemm_args(op, x, weight, bias=bias, residual=residual, operand_dtype=weight.dtype)


def ffn_args(op: str, x, w_in, w_out, *, b_in=None, b_out=None, residual=None, swiglu: bool, precision=None) -> None:
    """Validate a two-GEMM feed-forward (SwiGLU w13 -> w2, or GPT-2 c_fc -> c_proj) before either launch."""
    gemm_args(op, x, w_in, bias=b_in, swiglu=swiglu, precision=precision)
    hidden = w_in.shape[0] // 2 if swiglu else w_in.shape[0]
    # a stand-in for the hidden activations [..., hidden], without allocating them
    probe = x.new_empty((1,) * (x.dim() - 1) + (hidden,)).expand(*x.shape[:-1], hidden)
    try:
        gemm_args(op, probe, w_out, bias=b_out, residual=residual, precision=precision)
    except ValueError as e:
        raise ValueError(f"{e} (the second projection reads the {hidden}-wide hidden)") from None


# ----------------------------------------------------------------------------------------------------------------------
# WaveNet layer GEMMs and the CFM Euler update
# ----------------------------------------------------------------------------------------------------------------------
def _check_precision(op: str, precision) -> None:
    if precision is not None and precision not in GEMM_PRECISIONS:
        raise ValueError(f"{op}: precision must be None or one of {GEMM_PRECISIONS}, got {precision!r}")


def wavenet_gate_args(op: str, x, weight, bias, cond, *, taps, valid_len=None, precision=None, out=None) -> None:
    """x [B, T, C] (rows contiguous), weight [2H, taps*C] contiguous, bias [2H], cond [B or 1, 2H] (last dim
    contiguous), one float dtype; valid_len an int tensor [1] or [B]; taps an odd positive int."""
    check_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, T, C], got shape {tuple(x.shape)}")
    B, T, C = x.shape
    if isinstance(taps, bool) or not isinstance(taps, int) or taps < 1 or taps % 2 == 0:
        raise ValueError(f"{op}: taps must be an odd positive int, got {taps!r}")
    check_tensor("weight", weight, dtypes=(x.dtype,), device=x.device, min_dim=2)
    if weight.dim() != 2 or weight.shape[1] != taps * C or weight.shape[0] % 2 or not weight.is_contiguous():
        raise ValueError(f"{op}: weight must be contiguous [2H, taps * C = {taps * C}], got {tuple(weight.shape)}")
    H2 = weight.shape[0]
    check_tensor("bias", bias, dtypes=(x.dtype,), device=x.device, shape=(H2,))
    check_tensor("cond", cond, dtypes=(x.dtype,), device=x.device)
    if cond.dim() != 2 or cond.shape[0] not in (1, B) or cond.shape[1] != H2:
        raise ValueError(f"{op}: cond must be [B = {B} or 1, {H2}], got {tuple(cond.shape)}")
    if valid_len is not None:
        check_tensor("valid_len", valid_len, dtypes=INDEX_DTYPES, device=x.device)
        if valid_len.dim() != 1 or valid_len.shape[0] not in (1, B):
            raise ValueError(f"{op}: valid_len must be [1] or [B = {B}], got {tuple(valid_len.shape)}")
    _check_precision(op, precision)
    if out is not None:
        check_tensor("out", out, dtypes=(x.dtype,), device=x.device, shape=(B, T, H2 // 2))
    check_inference(op, x, weight, bias, cond)


def wavenet_res_skip_args(op: str, acts, weight, bias, x, skip, lens, *, last, precision=None) -> None:
    """acts, x, skip [B, T, H] of one float dtype (x and skip rows contiguous: written in place), weight [2H, H]
    ([H, H] when last) contiguous, bias [2H] ([H]), lens int [B]."""
    check_tensor("acts", acts)
    if acts.dim() != 3:
        raise ValueError(f"{op}: acts must be [B, T, H], got shape {tuple(acts.shape)}")
    B, T, H = acts.shape
    n = H if last else 2 * H
    check_tensor("weight", weight, dtypes=(acts.dtype,), device=acts.device, shape=(n, H))
    if not weight.is_contiguous():
        raise ValueError(f"{op}: weight must be contiguous")
    check_tensor("bias", bias, dtypes=(acts.dtype,), device=acts.device, shape=(n,))
    for name, t in (("x", x), ("skip", skip)):
        check_tensor(name, t, dtypes=(acts.dtype,), device=acts.device, shape=(B, T, H))
        if t.stride(-1) != 1 or (T > 1 and t.stride(1) != H) or (B > 1 and t.stride(0) != T * H):
            raise ValueError(f"{op}: {name} is updated in place and must be contiguous")
    if x.data_ptr() == skip.data_ptr():
        raise ValueError(f"{op}: x and skip must be different buffers")
    check_tensor("lens", lens, dtypes=INDEX_DTYPES, device=acts.device, shape=(B,))
    _check_precision(op, precision)
    check_inference(op, acts, weight, bias, x, skip)


def cfm_euler_args(op: str, v, x, dt, keep, xin, *, rate) -> None:
    """v [R*B, T, F] (R = 2 with CFG, 1 without; rows contiguous), x [B, F, T] fp32 contiguous, dt a 1-element
    fp32 tensor, keep bool [1 or B, 1, T], xin [R*B, T, F] rows (the estimator's next input; any row stride)."""
    check_tensor("x", x, dtypes=(torch.float32,))
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError(f"{op}: x must be a contiguous [B, F, T], got {tuple(x.shape)}")
    B, F, T = x.shape
    R = 2 if rate > 0 else 1
    check_tensor("v", v, device=x.device, shape=(R * B, T, F))
    check_tensor("xin", xin, device=x.device, shape=(R * B, T, F))
    check_tensor("dt", dt, dtypes=(torch.float32,), device=x.device, min_dim=0)
    if dt.numel() != 1:
        raise ValueError(f"{op}: dt must hold one value, got shape {tuple(dt.shape)}")
    check_tensor("keep", keep, dtypes=(torch.bool,), device=x.device)
    if keep.dim() != 3 or keep.shape[0] not in (1, B) or keep.shape[1] != 1 or keep.shape[2] != T:
        raise ValueError(f"{op}: keep must be [1 or B, 1, T = {T}], got {tuple(keep.shape)}")
    check_inference(op, v, x, xin)


def _check_lengths(op: str, lengths, B: int, device) -> None:
    if lengths is not None:
        check_tensor("lengths", lengths, dtypes=INDEX_DTYPES, device=device, shape=(B,))


def anti_alias_snake_args(op: str, x, up_filter, down_filter, alpha, inv_beta, *, lengths=None, out=None) -> None:
    """x [B, C, T] fp32 (last dim contiguous); up_filter and down_filter fp32 with K elements (K even, >= 2, any
    [1, 1, K] view); alpha and inv_beta fp32 with C elements; lengths int [B]; out [B, C, T] fp32 (last dim
    contiguous), not overlapping x."""
    check_tensor("x", x, dtypes=(torch.float32,))
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, C, T], got shape {tuple(x.shape)}")
    B, C, T = x.shape
    for name, f in (("up_filter", up_filter), ("down_filter", down_filter)):
        check_tensor(name, f, dtypes=(torch.float32,), device=x.device)
        if not f.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous, got strides {tuple(f.stride())}")
    K = up_filter.numel()
    if K < 2 or K % 2:
        raise ValueError(f"{op}: the filters must have an even number of taps (ratio 2), got {K}")
    if down_filter.numel() != K:
        raise ValueError(f"{op}: up_filter has {K} taps and down_filter {down_filter.numel()}; both must match")
    for name, p in (("alpha", alpha), ("inv_beta", inv_beta)):
        check_tensor(name, p, dtypes=(torch.float32,), device=x.device)
        if p.numel() != C or not p.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous with C = {C} elements, got shape {tuple(p.shape)}")
    _check_lengths(op, lengths, B, x.device)
    if out is not None:
        check_tensor("out", out, dtypes=(torch.float32,), device=x.device, shape=(B, C, T))
        check_out_buffer(op, "out", out, [("x", x)])  # programs read x around their own outputs
    check_inference(op, x, up_filter, down_filter, alpha, inv_beta)


def amp_merge_args(op: str, parts, *, divisor, lengths=None, out=None) -> None:
    """1 to 3 parts of one shape [B, C, T], fp32, last dim contiguous; divisor a positive finite float; lengths
    int [B]; out [B, C, T] fp32 (last dim contiguous): a separate buffer or parts[0] itself."""
    if not isinstance(parts, (list, tuple)) or not 1 <= len(parts) <= 3:
        raise ValueError(f"{op}: parts must be a list of 1 to 3 tensors, got {type(parts).__name__}")
    a = parts[0]
    check_tensor("parts[0]", a, dtypes=(torch.float32,))
    if a.dim() != 3:
        raise ValueError(f"{op}: parts must be [B, C, T], got shape {tuple(a.shape)}")
    for i, p in enumerate(parts[1:], 1):
        check_tensor(f"parts[{i}]", p, dtypes=(torch.float32,), device=a.device, shape=tuple(a.shape))
    if not (divisor > 0 and divisor != float("inf")):
        raise ValueError(f"{op}: divisor must be a positive finite number, got {divisor!r}")
    _check_lengths(op, lengths, a.shape[0], a.device)
    if out is not None:
        check_tensor("out", out, dtypes=(torch.float32,), device=a.device, shape=tuple(a.shape))
        # elementwise: each element is read, then written, by the same program
        check_out_buffer(op, "out", out, [(f"parts[{i}]", p) for i, p in enumerate(parts)],
                         in_place_ok=tuple(f"parts[{i}]" for i in range(len(parts))))  # fmt: skip
    check_inference(op, *parts)
