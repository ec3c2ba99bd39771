"""FastDiT: the s2mel DiT estimator (``indextts.s2mel.modules.diffusion_transformer.DiT``) on our ops.

Called exactly as the official module, ``(x [B,F,T], prompt_x [B,F,T], x_lens, t [B], style [B,S], cond [B,T,D])``
-> ``[B,F,T]``, and computing the same thing (../shared/docs/indextts2-hot-path.md section 2.5):

    time embeddings t1, t2      torch (two [B, 256] MLPs; cos first, 1000 * t * freqs)
    cond_projection, merge      our GEMM over cat(x^T, prompt_x^T, cond, style repeated over T), split by columns:
                                the constant inputs' part (and the bias) once, x^T's per step with it as residual
    AdaLN modulation            one GEMM for all 2L+1 AdaptiveLayerNorms (the loader's stacked adaln weight)
    13 blocks                   adaptive RMSNorm -> wqkv -> RoPE attention (keys < x_lens) -> wo + residual ->
                                adaptive RMSNorm -> SwiGLU feed-forward + residual; UViT skips 7<-5 ... 12<-0
                                (skip_in_linear reads one [B, T, 2C] buffer both producers wrote their halves of)
    final transformer.norm      adaptive RMSNorm, written into the long skip's cat(h, x^T) buffer
    long skip, conv1            our GEMMs
    WaveNet head                two GEMMs per layer: the REFLECT-padded k-tap conv with its taps gathered in the A
                                load (channel-last, tap-major weights; reflected at the valid length), the bias, the
                                condition g and the gated tanh * sigmoid in its epilogue; res_skip updating x and the
                                skip sum in place (masked); res_projection with the WN output as its residual
    FinalLayer                  LayerNorm(no affine, eps 1e-6) * (1 + scale) + shift (shift first), weight-normed
                                linear (folded by the loader), conv2 (k1) as a GEMM

Split in two for the CFM loop (``prepare`` once a call, ``step`` per Euler step; ``forward`` is one of each): what
depends only on t or on the call's constant inputs (both time embeddings of every step at once, the AdaLN, FinalLayer
and WaveNet-condition GEMMs, cond_projection and the merge of the constant inputs, the lengths) is computed once,
before the steps; a step is 121 launches of ours and no other op (13 depth, 8 WaveNet layers).

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

__all__ = [
    "FastDiT",
    "DiTCall",
    "PRECISIONS",
    "LOW_PRECISIONS",
    "DEFAULT_PRECISION",
    "unsupported_reason",
]

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
        # cond_x_merge_linear split by its input columns: x^T's (every step) and the constant inputs' (once a call)
        self.merge_x_w = w.merge_w[:, : self.mel_channels].contiguous()
        self.merge_rest_w = w.merge_w[:, self.mel_channels :].contiguous()
        self.emit = set(range(self.depth // 2))  # UViT: the first half's outputs are pushed, the second half pops
        self.receive = set(range(self.depth // 2 + 1, self.depth))
        # no concatenation in a step: skip_in_linear of layer j reads one [B, T, 2C] buffer whose halves the
        # producers wrote, layer j - 1's output (left) and the popped layer's (right, ``popped_by``: the stack)
        stack, self.popped_by = [], {}
        for i in range(self.depth):
            if i in self.receive:
                self.popped_by[stack.pop()] = i
            if i in self.emit:
                stack.append(i)

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
        WaveNet kernel. One :meth:`prepare` and one :meth:`step`."""
        B, mels, T = x.shape
        if mels != self.mel_channels:
            raise ValueError(f"FastDiT: x has {mels} mel channels, the model {self.mel_channels}")
        t = t.reshape(1, -1)
        if t.shape[1] not in (1, B):
            raise ValueError(f"FastDiT: t holds {t.shape[1]} times for a batch of {B}")
        call = self.prepare(prompt_x, x_lens, t, style, cond, valid_len=valid_len)
        call.xin.copy_(x.transpose(1, 2))
        return self.step(call, 0).transpose(1, 2).to(torch.float32).contiguous()

    def prepare(self, prompt_x, x_lens, t, style, cond, *, valid_len: Optional[torch.Tensor] = None) -> DiTCall:
        """Everything of a forward that does not depend on x, for S steps at once (a CFM call's constants): ``t``
        [S, 1] (one time per step, every batch row) or [S, B]. Returns the :class:`DiTCall` that :meth:`step` reads;
        its ``xin`` [B, T, F] (x channel-last, the estimator's dtype) is the caller's to fill before each step."""
        w, C = self.w, self.width
        B, mels, T = prompt_x.shape
        if mels != self.mel_channels:
            raise ValueError(f"FastDiT: prompt_x has {mels} mel channels, the model {self.mel_channels}")
        if T > self.freqs_cis.shape[0]:
            raise ValueError(f"FastDiT: {T} frames exceed the {self.freqs_cis.shape[0]} RoPE positions of the model")
        lens = self._lens(x_lens, B, T)
        low = self.act_dtype
        act = low if low is not None else torch.float32
        if low is not None:
            prompt_x, style, cond = (a.to(low) for a in (prompt_x, style, cond))
        if valid_len is not None:
            lens = torch.minimum(lens, valid_len.to(lens.dtype))
        prec = self.gemm_precision
        S, rows = t.shape
        tt = t.reshape(-1)
        t1 = _t_embedding(w.t_embed, tt, prec or DEFAULT_PRECISION)  # [S * rows, C], fp32
        t2 = _t_embedding(w.t_embed2, tt, prec or DEFAULT_PRECISION)
        if low is not None:
            t1, t2 = t1.to(low), t2.to(low)
        mod = self._lin(t1, self.adaln_w, self.adaln_b)  # [S * rows, (2L+1) * 2C]: per norm (scale | shift)
        fm = self._lin(F.silu(t1), w.final_adaln_w, w.final_adaln_b)  # [S * rows, 2 * hidden]: shift | scale
        g = self._lin(t2, w.wn_cond_w, w.wn_cond_b)  # [S * rows, 2 * hidden * layers]
        cond_p = self._lin(cond, w.cond_proj_w, w.cond_proj_b)  # [B, T, C]
        # cond_x_merge_linear over cat(x^T, prompt_x^T, cond, style): the constant columns' product (and the bias)
        # here, once; each step adds x^T's (the GEMM's K split in two, a reordered sum)
        rest = torch.cat([prompt_x.transpose(1, 2), cond_p, style[:, None, :].expand(B, T, style.shape[-1])], -1)
        base = self._lin(rest, self.merge_rest_w, w.merge_b)  # [B, T, C]
        # the long skip's input cat(h, x^T) as one buffer: the final norm writes h, the caller x^T (``xin``)
        xcat = torch.empty((B, T, C + mels), dtype=act, device=prompt_x.device)
        return DiTCall(
            lens=lens, valid_len=valid_len, mod=mod.reshape(S, rows, -1), fm=fm.reshape(S, rows, -1),
            g=g.reshape(S, rows, -1), base=base, xcat=xcat, xin=xcat[..., C:],
        )  # fmt: skip

    def step(self, call: DiTCall, s: int) -> torch.Tensor:
        """The estimator at step ``s`` of ``call`` on x = ``call.xin``: the velocity [B, T, F], channel-last, in the
        estimator's dtype."""
        w, C, hidden = self.w, self.width, self.wavenet_width
        prec = self.gemm_precision
        B = call.xin.shape[0]
        mod, lens = call.mod[s], call.lens

        def per_row(m):  # [rows, N] -> [B, N] (a stride-0 view when one row serves the batch)
            return m.expand(B, m.shape[-1])

        def norm(h, gain, r):
            return ops.adaptive_rms_norm(h, gain, per_row(mod[:, r : r + C]), per_row(mod[:, r + C : r + 2 * C]),
                                         self.rms_eps)  # fmt: skip

        T = call.xin.shape[1]
        cats = {j: torch.empty((B, T, 2 * C), dtype=call.xin.dtype, device=call.xin.device) for j in self.receive}
        h = self._lin(call.xin, self.merge_x_w, residual=call.base)  # [B, T, C]
        for i, lw in enumerate(w.layers):
            if i in self.receive:  # skip_in_linear(cat(h, popped skip)): both halves written by their producers
                h = self._lin(cats[i], lw.skip_in_w, lw.skip_in_b)
            r = 4 * C * i
            qkv = self._lin(norm(h, lw.attn_norm_g, r), lw.wqkv)
            a = ops.dit_attention(qkv, self.heads, lens, self.freqs_cis, fp32_precision=prec or "ieee")
            h = self._lin(a, lw.wo, residual=h)
            out = None
            if i in self.popped_by:
                out = cats[self.popped_by[i]][..., C:]
            elif i + 1 in self.receive:
                out = cats[i + 1][..., :C]
            h = ops.swiglu_feed_forward(norm(h, lw.ffn_norm_g, r + 2 * C), lw.w13, lw.w2, residual=h, precision=prec,
                                        out=out)  # fmt: skip
        r = 4 * C * self.depth
        ops.adaptive_rms_norm(h, w.norm_g, per_row(mod[:, r : r + C]), per_row(mod[:, r + C : r + 2 * C]),
                              self.rms_eps, out=call.xcat[..., :C])  # fmt: skip
        x_res = self._lin(call.xcat, w.skip_linear_w, w.skip_linear_b)  # long skip over cat(h, x^T)
        y = self._wavenet(self._lin(x_res, w.conv1_w, w.conv1_b), call, s, prec)
        y = self._lin(x_res, w.res_proj_w, w.res_proj_b, residual=y)
        fm = call.fm[s]
        y = ops.final_layer_modulate(y, per_row(fm[:, :hidden]), per_row(fm[:, hidden:]), self.final_eps)
        y = self._lin(y, w.final_linear_w, w.final_linear_b)
        return self._lin(y, w.conv2_w, w.conv2_b)  # [B, T, F]

    def _wavenet(self, x: torch.Tensor, call: DiTCall, s: int, prec) -> torch.Tensor:
        """WN(x, mask, g) in channel-last layout [B, T, hidden], two GEMMs per layer: the k-tap conv gathering
        its taps (reflected at the valid length) with the condition and the gated tanh * sigmoid in its epilogue,
        then res_skip updating x and the skip sum in place (masked as the official code masks them)."""
        w, hidden, layers = self.w, self.wavenet_width, self.wavenet_layers
        g = call.g[s]  # [rows, 2 * hidden * layers]
        skip = torch.empty_like(x)
        for i in range(layers):
            acts = ops.wavenet_gate(x, w.wn_in_w[i], w.wn_in_b[i], g[:, 2 * hidden * i : 2 * hidden * (i + 1)],
                                    taps=self.wavenet_kernel, valid_len=call.valid_len, precision=prec)  # fmt: skip
            ops.wavenet_res_skip(acts, w.wn_res_skip_w[i], w.wn_res_skip_b[i], x, skip, call.lens, first=i == 0,
                                 last=i == layers - 1, precision=prec)  # fmt: skip
        return skip


@dataclasses.dataclass
class DiTCall:
    """A forward's constants (:meth:`FastDiT.prepare`), for its S steps: what depends on t or the call's inputs,
    not on x. ``mod``, ``fm``, ``g`` are [S, rows, N] (rows 1: every batch row); ``xin`` is the step's input."""

    lens: torch.Tensor  # int32 [B]: key and WaveNet frame lengths (min(x_lens, valid_len))
    valid_len: Optional[torch.Tensor]  # int [1]: where the WaveNet taps reflect (None: T)
    mod: torch.Tensor  # the 2L+1 AdaptiveLayerNorms' (scale | shift)
    fm: torch.Tensor  # the FinalLayer's (shift | scale)
    g: torch.Tensor  # the WaveNet condition, every layer's
    base: torch.Tensor  # [B, T, C]: cond_x_merge_linear of the constant inputs, bias included
    xcat: torch.Tensor  # [B, T, C + F]: the long skip's input, cat(h, x^T)
    xin: torch.Tensor  # [B, T, F]: x channel-last (the view xcat[..., C:]), the caller's to fill


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
