"""FastDiT: the s2mel DiT estimator (``indextts.s2mel.modules.diffusion_transformer.DiT``) on our ops.

Called exactly as the official module, ``(x [B,F,T], prompt_x [B,F,T], x_lens, t [B], style [B,S], cond [B,T,D])``
-> ``[B,F,T]``, and computing the same thing (../shared/docs/indextts2-hot-path.md section 2.5):

    time embeddings t1, t2      torch (two [B, 256] MLPs; cos first, 1000 * t * freqs)
    cond_projection, merge      our GEMM over cat(x^T, prompt_x^T, cond, style repeated over T)
    AdaLN modulation            one GEMM for all 2L+1 AdaptiveLayerNorms (the loader's stacked adaln weight)
    13 blocks                   adaptive RMSNorm -> wqkv -> RoPE attention (keys < x_lens) -> wo + residual ->
                                adaptive RMSNorm -> SwiGLU feed-forward + residual; UViT skips 7<-5 ... 12<-0
    final transformer.norm      adaptive RMSNorm
    long skip, conv1            our GEMMs
    WaveNet head                REFLECT-padded k-tap convs as im2col GEMMs (channel-last, tap-major weights), the
                                gated tanh*sigmoid and the masks in torch; res_projection with the WN output as its
                                residual epilogue
    FinalLayer                  LayerNorm(no affine, eps 1e-6) * (1 + scale) + shift (shift first), weight-normed
                                linear (folded by the loader), conv2 (k1) as a GEMM

The official s2mel runs in fp32, and so does this module. ``precision`` selects the fp32 products of our GEMMs and
attention: "tf32x3" (three TF32 tensor-core products, about fp32 accuracy: what the official fp32 SDPA computes
on sm80+ GPUs), "ieee" (exact fp32 FMAs) or "tf32" (one TF32 product, opt-in, outside the tolerance rule).
bench/NOTES.md gives the decision and its evidence. The torch backend always computes exact fp32.

"bf16" and "fp16" (opt-in, outside the fp32 tolerance rule) run the estimator in that dtype: a copy of the weights
in it, the activations and the residual stream in it (the products accumulate in fp32), the inputs cast on entry
and the output returned in fp32, so the CFM loop's Euler state stays fp32. The two time embedders (1000 * t *
freqs, cos / sin and their MLPs) stay fp32, their outputs cast. The tests bound the mel error by the rule applied
to PyTorch's own run at that dtype (autocast on the official module), and the demo reports it.

``x_lens`` may hold one length for the whole batch (infer_v2 passes ``[T]`` at batch 2), or one per row.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from indextts_kernels._validate import ATTN_HEAD_DIMS
from indextts_kernels.reference import rope_table_ref

from .. import ops
from ..loader import FastDiTWeights

__all__ = ["FastDiT", "PRECISIONS", "LOW_PRECISIONS", "DEFAULT_PRECISION", "unsupported_reason", "reflect_index"]

PRECISIONS = ("tf32x3", "ieee", "tf32", "bf16", "fp16")
LOW_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRECISION = "tf32x3"
ROPE_POSITIONS = 16384  # the official block_size: freqs_cis covers positions 0..16383


def _t_embedding(te: dict, t: torch.Tensor, precision: str) -> torch.Tensor:
    """TimestepEmbedder: Linear(SiLU(Linear(cat(cos, sin)(1000 * t * freqs))))."""
    args = 1000 * t[:, None].float() * te["freqs"][None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    h = F.silu(ops.linear(emb, te["w0"], te["b0"], precision=precision))
    return ops.linear(h, te["w2"], te["b2"], precision=precision)


def _reflect_pad_time(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding of x [B, C, T] along T, as the official SConv1d's pad1d (zeros first when T <= the pad)."""
    length = x.shape[-1]
    extra = 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


def _taps(x: torch.Tensor, k: int, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """im2col of a channel-last x [B, T, C] for a k-tap, dilation-1, same-length conv: [B, T, k*C], tap-major.

    With ``index`` (:func:`reflect_index`) the taps are gathered at frames reflected at the unpadded length instead
    of at T: the same values for every frame below that length, whatever the padding beyond it holds."""
    B, T, C = x.shape
    if index is not None:
        return x.gather(1, index.expand(B, T * k, C)).reshape(B, T, k * C)
    total = k - 1
    right = total // 2
    xp = _reflect_pad_time(x.transpose(1, 2), total - right, right)  # [B, C, T + k - 1]
    return xp.unfold(2, k, 1).permute(0, 2, 3, 1).reshape(B, T, k * C)


def reflect_index(valid_len: torch.Tensor, T: int, k: int) -> torch.Tensor:
    """Frame indices [1, T*k, 1] (int64) of the k taps of each frame of a batch padded to T frames beyond its
    ``valid_len`` (a device int tensor [1]): ``SConv1d``'s reflect padding at valid_len, computed on the device (a
    CUDA graph replays it for any valid_len). Exact for valid_len > k // 2; frames at or beyond valid_len get
    in-range indices whose values nothing valid reads."""
    right = (k - 1) // 2
    left = k - 1 - right
    dev = valid_len.device
    pos = torch.arange(T, device=dev)[:, None] + torch.arange(k, device=dev)[None, :] - left  # [T, k]
    last = valid_len.reshape(1, 1).long() - 1
    p = pos.abs()  # reflect at frame 0
    p = torch.where(p > last, 2 * last - p, p)  # reflect at the last valid frame
    return p.clamp(0, T - 1).reshape(1, T * k, 1)


def _cast(v, dtype: torch.dtype):
    """Every floating-point tensor of ``v`` (a tensor, list, dict or weights dataclass) in ``dtype``."""
    if isinstance(v, torch.Tensor):
        return v.to(dtype).contiguous() if v.is_floating_point() else v
    if isinstance(v, list):
        return [_cast(x, dtype) for x in v]
    if isinstance(v, dict):
        return {k: _cast(x, dtype) for k, x in v.items()}
    if dataclasses.is_dataclass(v):
        return dataclasses.replace(v, **{f.name: _cast(getattr(v, f.name), dtype) for f in dataclasses.fields(v)})
    return v


class FastDiT:
    """The DiT estimator over :class:`FastDiTWeights` (a live module's, via ``loader.remap_live``, or a pack's)."""

    def __init__(
        self,
        weights: FastDiTWeights,
        dims: dict,
        *,
        precision: str = DEFAULT_PRECISION,
        rms_eps: float = 1e-5,
        final_eps: float = 1e-6,
        rope_positions: int = ROPE_POSITIONS,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"FastDiT: precision must be one of {PRECISIONS}, got {precision!r}")
        self.act_dtype = LOW_PRECISIONS.get(precision)  # None: fp32
        w = weights
        if self.act_dtype is not None:  # the time embedders stay fp32 (1000 * t * freqs needs it)
            w = dataclasses.replace(_cast(w, self.act_dtype), t_embed=w.t_embed, t_embed2=w.t_embed2)
        self.w, self.dims, self.precision = w, dict(dims), precision
        self.width, self.depth, self.heads = dims["C"], dims["L"], dims["heads"]  # the transformer
        self.mel_channels, self.style_dim = dims["F"], dims["S"]
        self.wavenet_width, self.wavenet_layers, self.wavenet_kernel = dims["H"], dims["W"], dims["K"]
        if self.wavenet_kernel % 2 != 1:
            raise ValueError(f"FastDiT: the WaveNet kernel must be odd, got {self.wavenet_kernel}")
        self.rms_eps, self.final_eps = float(rms_eps), float(final_eps)
        ref = w.merge_w
        self.device, self.dtype = ref.device, ref.dtype
        if w.adaln_w is not None:
            self.adaln_w, self.adaln_b = w.adaln_w, w.adaln_b
        else:  # an unstacked pack: the same stacked layout, built once here
            parts_w = [m for lw in w.layers for m in (lw.attn_norm_w, lw.ffn_norm_w)] + [w.norm_w]
            parts_b = [m for lw in w.layers for m in (lw.attn_norm_b, lw.ffn_norm_b)] + [w.norm_b]
            self.adaln_w, self.adaln_b = torch.cat(parts_w).contiguous(), torch.cat(parts_b).contiguous()
        # built here, never inside a forward: nothing is allocated lazily on the first call (CUDA-graph friendly)
        self.freqs_cis = rope_table_ref(rope_positions, self.width // self.heads, device=self.device)
        self.emit = set(range(self.depth // 2))  # UViT: the first half's outputs are pushed, the second half pops
        self.receive = set(range(self.depth // 2 + 1, self.depth))

    def _lin(self, x, w, b=None, **kw):
        return ops.linear(x, w, b, precision=self.gemm_precision, **kw)

    @property
    def gemm_precision(self) -> Optional[str]:
        """The fp32 product mode of the GEMMs and attention (None for the bf16 / fp16 estimator)."""
        return None if self.act_dtype is not None else self.precision

    def _lens(self, x_lens: Optional[torch.Tensor], B: int, T: int) -> torch.Tensor:
        if x_lens is None:
            return torch.full((B,), T, dtype=torch.int32, device=self.device)
        x_lens = torch.as_tensor(x_lens, device=self.device).reshape(-1)
        if x_lens.dtype.is_floating_point or x_lens.dtype == torch.bool:
            raise ValueError(f"FastDiT: x_lens must be an integer tensor, got {x_lens.dtype}")
        if x_lens.numel() == 1 and B > 1:
            x_lens = x_lens.expand(B)
        if x_lens.numel() != B:
            raise ValueError(f"FastDiT: x_lens holds {x_lens.numel()} lengths for a batch of {B}")
        return x_lens.to(torch.int32).contiguous()

    def __call__(self, x, prompt_x, x_lens, t, style, cond, *, valid_len=None):
        return self.forward(x, prompt_x, x_lens, t, style, cond, valid_len=valid_len)

    def forward(self, x, prompt_x, x_lens, t, style, cond, *, valid_len: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``valid_len`` (a device int tensor [1], default None): the batch is padded beyond its first valid_len
        frames; every frame below it is computed as for the unpadded batch (keys and WaveNet frames masked at
        min(x_lens, valid_len), the WaveNet taps reflected at valid_len). The caller keeps valid_len above half the
        WaveNet kernel."""
        w, C, hidden = self.w, self.width, self.wavenet_width
        B, mels, T = x.shape
        if mels != self.mel_channels:
            raise ValueError(f"FastDiT: x has {mels} mel channels, the model {self.mel_channels}")
        if T > self.freqs_cis.shape[0]:
            raise ValueError(f"FastDiT: {T} frames exceed the {self.freqs_cis.shape[0]} RoPE positions of the model")
        lens = self._lens(x_lens, B, T)
        low = self.act_dtype
        if low is not None:
            x, prompt_x, style, cond = (a.to(low) for a in (x, prompt_x, style, cond))
        index = None
        if valid_len is not None:
            lens = torch.minimum(lens, valid_len.to(lens.dtype))
            index = reflect_index(valid_len, T, self.wavenet_kernel)
        prec = self.gemm_precision
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        t1 = _t_embedding(w.t_embed, t, prec or DEFAULT_PRECISION)  # [B, C], fp32
        if low is not None:
            t1 = t1.to(low)
        cond_p = self._lin(cond, w.cond_proj_w, w.cond_proj_b)  # [B, T, C]
        xt = x.transpose(1, 2)
        x_in = torch.cat([xt, prompt_x.transpose(1, 2), cond_p, style[:, None, :].expand(B, T, style.shape[-1])], -1)
        h = self._lin(x_in, w.merge_w, w.merge_b)  # [B, T, C]
        mod = self._lin(t1, self.adaln_w, self.adaln_b)  # [B, (2L+1) * 2C]: per norm (scale | shift)
        skips = []
        for i, lw in enumerate(w.layers):
            if i in self.receive:
                h = self._lin(torch.cat([h, skips.pop()], -1), lw.skip_in_w, lw.skip_in_b)
            r = 4 * C * i
            n = ops.adaptive_rms_norm(h, lw.attn_norm_g, mod[:, r : r + C], mod[:, r + C : r + 2 * C], self.rms_eps)
            qkv = self._lin(n, lw.wqkv)
            a = ops.dit_attention(qkv, self.heads, lens, self.freqs_cis, fp32_precision=prec or "ieee")
            h = self._lin(a, lw.wo, residual=h)
            n = ops.adaptive_rms_norm(
                h, lw.ffn_norm_g, mod[:, r + 2 * C : r + 3 * C], mod[:, r + 3 * C : r + 4 * C], self.rms_eps
            )
            h = ops.swiglu_feed_forward(n, lw.w13, lw.w2, residual=h, precision=prec)
            if i in self.emit:
                skips.append(h)
        r = 4 * C * self.depth
        h = ops.adaptive_rms_norm(h, w.norm_g, mod[:, r : r + C], mod[:, r + C : r + 2 * C], self.rms_eps)
        x_res = self._lin(torch.cat([h, xt], -1), w.skip_linear_w, w.skip_linear_b)  # long skip
        y = self._wavenet(self._lin(x_res, w.conv1_w, w.conv1_b), lens, t, prec, index)
        y = self._lin(x_res, w.res_proj_w, w.res_proj_b, residual=y)
        fm = self._lin(F.silu(t1), w.final_adaln_w, w.final_adaln_b)  # [B, 2 * hidden]: shift | scale
        y = ops.final_layer_modulate(y, fm[:, :hidden], fm[:, hidden:], self.final_eps)
        y = self._lin(y, w.final_linear_w, w.final_linear_b)
        y = self._lin(y, w.conv2_w, w.conv2_b)  # [B, T, F]
        return y.transpose(1, 2).to(torch.float32).contiguous()

    def _wavenet(self, x: torch.Tensor, lens: torch.Tensor, t: torch.Tensor, prec: str, index=None) -> torch.Tensor:
        """WN(x, mask, g = t_embedder2(t)) in channel-last layout [B, T, hidden]."""
        w, hidden, layers = self.w, self.wavenet_width, self.wavenet_layers
        B, T, _ = x.shape
        mask = (torch.arange(T, device=x.device)[None, :] < lens[:, None]).to(x.dtype)[..., None]  # [B, T, 1]
        t2 = _t_embedding(w.t_embed2, t, prec or DEFAULT_PRECISION).to(x.dtype)  # fp32, then the stream's dtype
        g = self._lin(t2, w.wn_cond_w, w.wn_cond_b)  # [B, 2 * hidden * layers]
        out = torch.zeros_like(x)
        for i in range(layers):
            a = self._lin(_taps(x, self.wavenet_kernel, index), w.wn_in_w[i], w.wn_in_b[i])  # [B, T, 2 * hidden]
            a = a + g[:, None, 2 * hidden * i : 2 * hidden * (i + 1)]
            acts = torch.tanh(a[..., :hidden]) * torch.sigmoid(a[..., hidden:])
            rs = self._lin(acts, w.wn_res_skip_w[i], w.wn_res_skip_b[i])
            if i < layers - 1:
                x = (x + rs[..., :hidden]) * mask
                out = out + rs[..., hidden:]
            else:
                out = out + rs
        return out * mask


def unsupported_reason(dit) -> Optional[str]:
    """None when ``dit`` is the DiT variant FastDiT implements (IndexTTS2's s2mel config), else what differs."""
    need = ("transformer", "cond_x_merge_linear", "cond_projection", "t_embedder", "skip_linear")
    missing = [a for a in need if not hasattr(dit, a)]
    if missing:
        return f"{type(dit).__name__} is not the s2mel DiT (no {', '.join(missing)})"
    flags = {
        "final_layer_type": (getattr(dit, "final_layer_type", None), "wavenet"),
        "long_skip_connection": (getattr(dit, "long_skip_connection", None), True),
        "uvit_skip_connection": (getattr(dit, "uvit_skip_connection", None), True),
        "time_as_token": (getattr(dit, "time_as_token", None), False),
        "style_as_token": (getattr(dit, "style_as_token", None), False),
        "style_condition": (getattr(dit, "transformer_style_condition", None), True),
        "is_causal": (getattr(dit, "is_causal", None), False),
    }
    bad = [f"{k}={v!r} (expected {want!r})" for k, (v, want) in flags.items() if v != want]
    if bad:
        return "DiT variant not implemented: " + ", ".join(bad)
    cfg = getattr(dit.transformer, "config", None)
    if cfg is None:
        return "DiT.transformer has no ModelArgs config"
    if getattr(cfg, "n_local_heads", cfg.n_head) != cfg.n_head:
        return f"grouped-query attention (n_local_heads={cfg.n_local_heads}, n_head={cfg.n_head}) is not implemented"
    if getattr(cfg, "has_cross_attention", False):
        return "DiT blocks with cross-attention are not implemented"
    if getattr(cfg, "rope_base", 10000) != 10000:
        return f"rope_base={cfg.rope_base} (expected 10000)"
    if cfg.dim // cfg.n_head not in ATTN_HEAD_DIMS:
        return f"head_dim {cfg.dim // cfg.n_head} (the attention kernels support {ATTN_HEAD_DIMS})"
    wn = getattr(dit, "wavenet", None)
    if wn is None or getattr(wn, "dilation_rate", None) != 1 or getattr(wn, "gin_channels", 0) == 0:
        return "the WaveNet head must have dilation_rate=1 and a time condition (gin_channels > 0)"
    dtypes = {p.dtype for p in dit.parameters()}
    if dtypes != {torch.float32}:
        return f"the DiT's parameters are {sorted(str(d) for d in dtypes)}; the fast DiT runs the official fp32 s2mel"
    if any(m.training for m in dit.modules()):
        return "the DiT is in training mode (class dropout, dropout layers); call .eval() first"
    return None
