"""Kernel-layout weights: the Fast*Weights dataclasses (GPT, s2mel, IndexTTS-2.5 codec) over pack tensors
(remap_live's of a live module, or a fast pack's: indextts_fast.checkpoint.load_pack), every tensor taken as it
is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class FastGPTLayer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor  # [3C, C], rows q | k | v
    qkv_b: torch.Tensor
    attn_out_w: torch.Tensor  # [C, C]
    attn_out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor  # [4C, C]
    fc_b: torch.Tensor
    proj_w: torch.Tensor  # [C, 4C]
    proj_b: torch.Tensor


@dataclass
class FastGPTWeights:
    """UnifiedVoice's GPT-2 in kernel layout. logits = mel_head(final_norm(ln_f(h))); see the module docstring.
    IndexTTS-2.0 has speed_emb; IndexTTS-2.5 has none, but spk_emb_proj_w / _b and lang_embedding."""

    config: dict
    meta: dict
    text_embedding: torch.Tensor
    mel_embedding: torch.Tensor
    text_pos: torch.Tensor
    mel_pos: torch.Tensor
    speed_emb: Optional[torch.Tensor]  # None in IndexTTS-2.5
    emovec_w: torch.Tensor
    emovec_b: torch.Tensor
    emo_w: torch.Tensor
    emo_b: torch.Tensor
    layers: list[FastGPTLayer]
    ln_f_w: torch.Tensor
    ln_f_b: torch.Tensor
    final_norm_w: torch.Tensor
    final_norm_b: torch.Tensor
    mel_head_w: torch.Tensor
    mel_head_b: torch.Tensor
    cond: dict[str, torch.Tensor]  # conditioning encoders, official names, verbatim
    spk_emb_proj_w: Optional[torch.Tensor] = None  # IndexTTS-2.5: [C, 192] (CAMPPlus style -> width)
    spk_emb_proj_b: Optional[torch.Tensor] = None
    lang_embedding: Optional[torch.Tensor] = None  # IndexTTS-2.5: [107, C]
    version: str = "2.0"


@dataclass
class FastDiTLayer:
    wqkv: torch.Tensor  # [3C, C], rows q | k | v
    wo: torch.Tensor
    w13: torch.Tensor  # [2I, C] = cat(w1, w3)
    w2: torch.Tensor
    attn_norm_g: torch.Tensor  # RMSNorm gains
    ffn_norm_g: torch.Tensor
    attn_norm_w: torch.Tensor  # AdaLN project_layer [2C, C] (scale | shift); a view of adaln_w when stacked
    attn_norm_b: torch.Tensor
    ffn_norm_w: torch.Tensor
    ffn_norm_b: torch.Tensor
    skip_in_w: Optional[torch.Tensor]  # [C, 2C] for the layers that pop a UViT skip, else None
    skip_in_b: Optional[torch.Tensor]


@dataclass
class FastDiTWeights:
    t_embed: dict[str, torch.Tensor]  # freqs [128], w0 [C,256], b0, w2 [C,C], b2
    t_embed2: dict[str, torch.Tensor]
    cond_proj_w: torch.Tensor
    cond_proj_b: torch.Tensor
    merge_w: torch.Tensor
    merge_b: torch.Tensor
    layers: list[FastDiTLayer]
    norm_g: torch.Tensor
    norm_w: torch.Tensor  # transformer.norm project_layer [2C, C]
    norm_b: torch.Tensor
    adaln_w: Optional[torch.Tensor]  # stacked [(2L+1)*2C, C] when stack_adaln
    adaln_b: Optional[torch.Tensor]
    skip_linear_w: torch.Tensor
    skip_linear_b: torch.Tensor
    conv1_w: torch.Tensor
    conv1_b: torch.Tensor
    res_proj_w: torch.Tensor
    res_proj_b: torch.Tensor
    wn_cond_w: torch.Tensor  # [2H*W, H]
    wn_cond_b: torch.Tensor
    wn_in_w: list[torch.Tensor]  # [2H, K*H] tap-major
    wn_in_b: list[torch.Tensor]
    wn_res_skip_w: list[torch.Tensor]  # [2H, H] (last layer [H, H])
    wn_res_skip_b: list[torch.Tensor]
    final_adaln_w: torch.Tensor  # [2H, H] (shift | scale), applied after SiLU
    final_adaln_b: torch.Tensor
    final_linear_w: torch.Tensor
    final_linear_b: torch.Tensor
    conv2_w: torch.Tensor  # [F, H]
    conv2_b: torch.Tensor


@dataclass
class FastLengthRegulatorWeights:
    in_proj_w: torch.Tensor
    in_proj_b: torch.Tensor
    conv_w: list[torch.Tensor]  # [R, 3R] tap-major
    conv_b: list[torch.Tensor]
    gn_w: list[torch.Tensor]
    gn_b: list[torch.Tensor]
    out_w: torch.Tensor
    out_b: torch.Tensor


@dataclass
class FastCodecBlock:
    dw_w: torch.Tensor  # [D, 7] depthwise taps
    dw_b: torch.Tensor
    norm_w: torch.Tensor  # LayerNorm, eps 1e-6
    norm_b: torch.Tensor
    pw1_w: torch.Tensor  # [I, D]
    pw1_b: torch.Tensor
    pw2_w: torch.Tensor  # [D, I]
    pw2_b: torch.Tensor
    gamma: torch.Tensor  # [D] layer scale


@dataclass
class FastCodecWeights:
    """IndexTTS-2.5's EnhancedCodec decoding half in kernel layout: codebook [V, Q] -> out_proj (weight norm folded)
    [H, Q] -> embed [D, 7H] (tap-major) -> LayerNorm -> ConvNeXt blocks (erf-GELU) -> LayerNorm -> proj [H, D] ->
    nearest x2 in time -> up [H, 3H] (tap-major)."""

    config: dict
    meta: dict
    codebook: torch.Tensor
    out_proj_w: torch.Tensor
    out_proj_b: torch.Tensor
    embed_w: torch.Tensor
    embed_b: torch.Tensor
    norm_w: torch.Tensor
    norm_b: torch.Tensor
    blocks: list[FastCodecBlock]
    final_norm_w: torch.Tensor
    final_norm_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor


@dataclass
class FastS2MelWeights:
    config: dict
    meta: dict
    dit: FastDiTWeights
    length_regulator: FastLengthRegulatorWeights
    gpt_layer: Optional[list[tuple[torch.Tensor, torch.Tensor]]]


def _build_gpt(t: dict[str, torch.Tensor], dims: dict, meta: dict) -> FastGPTWeights:
    layers = [
        FastGPTLayer(
            *(
                t[f"h.{i}.{n}"]
                for n in (
                    "ln1.w",
                    "ln1.b",
                    "qkv.w",
                    "qkv.b",
                    "attn_out.w",
                    "attn_out.b",
                    "ln2.w",
                    "ln2.b",
                    "fc.w",
                    "fc.b",
                    "proj.w",
                    "proj.b",
                )
            )
        )  # fmt: skip
        for i in range(dims["L"])
    ]
    return FastGPTWeights(
        dims, meta, t["text_embedding"], t["mel_embedding"], t["text_pos"], t["mel_pos"], t.get("speed_emb"),
        t["emovec.w"], t["emovec.b"], t["emo.w"], t["emo.b"], layers, t["ln_f.w"], t["ln_f.b"], t["final_norm.w"],
        t["final_norm.b"], t["mel_head.w"], t["mel_head.b"],
        {k[len("cond.") :]: v for k, v in t.items() if k.startswith("cond.")},
        t.get("spk_emb_proj.w"), t.get("spk_emb_proj.b"), t.get("lang_embedding"),
        "2.5" if "spk_emb_proj.w" in t else "2.0",
    )  # fmt: skip


def gpt_weights(t: dict[str, torch.Tensor], dims: dict, meta: Optional[dict] = None) -> FastGPTWeights:
    """FastGPTWeights over pack tensors (load_pack's, or remap_live's of a live UnifiedVoice, 2.0 or 2.5)."""
    return _build_gpt(t, dims, meta or {})


def codec_weights(t: dict[str, torch.Tensor], dims: dict, meta: Optional[dict] = None) -> FastCodecWeights:
    """FastCodecWeights over the ``codec.*`` pack tensors (load_pack's, or remap_live's of a live EnhancedCodec)."""
    blocks = [
        FastCodecBlock(*(t[f"codec.blocks.{i}.{n}"] for n in ("dw.w", "dw.b", "norm.w", "norm.b", "pw1.w", "pw1.b",
                                                                "pw2.w", "pw2.b", "gamma")))
        for i in range(dims["L"])
    ]  # fmt: skip
    return FastCodecWeights(
        dims, meta or {}, t["codec.codebook"], t["codec.out_proj.w"], t["codec.out_proj.b"], t["codec.embed.w"],
        t["codec.embed.b"], t["codec.norm.w"], t["codec.norm.b"], blocks, t["codec.final_norm.w"],
        t["codec.final_norm.b"], t["codec.proj.w"], t["codec.proj.b"], t["codec.up.w"], t["codec.up.b"],
    )  # fmt: skip


def dit_weights(t: dict[str, torch.Tensor], dims: dict, stack_adaln: bool) -> FastDiTWeights:
    """FastDiTWeights over the ``dit.*`` pack tensors (load_pack's, or remap_live's of a live DiT or CFM)."""
    return _build_dit(t, dims, stack_adaln)


def _build_s2mel(t: dict[str, torch.Tensor], dims: dict, meta: dict, stack: bool) -> FastS2MelWeights:
    N = dims["N"]
    dit = _build_dit(t, dims, stack)
    lr = FastLengthRegulatorWeights(
        t["lr.in_proj.w"], t["lr.in_proj.b"], [t[f"lr.conv.{i}.w"] for i in range(N)],
        [t[f"lr.conv.{i}.b"] for i in range(N)], [t[f"lr.gn.{i}.w"] for i in range(N)],
        [t[f"lr.gn.{i}.b"] for i in range(N)], t["lr.out.w"], t["lr.out.b"],
    )  # fmt: skip
    gl = [(t[f"gpt_layer.{j}.w"], t[f"gpt_layer.{j}.b"]) for j in range(3)] if "gpt_layer.0.w" in t else None
    return FastS2MelWeights(dims, meta, dit, lr, gl)


def _build_dit(t: dict[str, torch.Tensor], dims: dict, stack: bool) -> FastDiTWeights:
    L, C, W = dims["L"], dims["C"], dims["W"]
    skip = set(range(L // 2 + 1, L))
    layers = []
    for i in range(L):
        p = f"dit.layers.{i}."
        if stack:
            r = 4 * C * i
            an_w, an_b = t["dit.adaln.w"][r : r + 2 * C], t["dit.adaln.b"][r : r + 2 * C]
            fn_w, fn_b = t["dit.adaln.w"][r + 2 * C : r + 4 * C], t["dit.adaln.b"][r + 2 * C : r + 4 * C]
        else:
            an_w, an_b, fn_w, fn_b = (
                t[p + "attn_norm.w"],
                t[p + "attn_norm.b"],
                t[p + "ffn_norm.w"],
                t[p + "ffn_norm.b"],
            )
        layers.append(FastDiTLayer(
            t[p + "wqkv"], t[p + "wo"], t[p + "w13"], t[p + "w2"], t[p + "attn_norm.g"], t[p + "ffn_norm.g"],
            an_w, an_b, fn_w, fn_b, t.get(p + "skip_in.w") if i in skip else None,
            t.get(p + "skip_in.b") if i in skip else None,
        ))  # fmt: skip
    if stack:
        nw, nb = t["dit.adaln.w"][4 * C * L :], t["dit.adaln.b"][4 * C * L :]
    else:
        nw, nb = t["dit.norm.w"], t["dit.norm.b"]
    te = lambda p: {k: t[f"{p}.{k}"] for k in ("freqs", "w0", "b0", "w2", "b2")}
    dit = FastDiTWeights(
        te("dit.t_embed"), te("dit.t_embed2"), t["dit.cond_proj.w"], t["dit.cond_proj.b"], t["dit.merge.w"],
        t["dit.merge.b"], layers, t["dit.norm.g"], nw, nb, t.get("dit.adaln.w"), t.get("dit.adaln.b"),
        t["dit.skip_linear.w"], t["dit.skip_linear.b"], t["dit.conv1.w"], t["dit.conv1.b"], t["dit.res_proj.w"],
        t["dit.res_proj.b"], t["dit.wn.cond.w"], t["dit.wn.cond.b"],
        [t[f"dit.wn.in.{i}.w"] for i in range(W)], [t[f"dit.wn.in.{i}.b"] for i in range(W)],
        [t[f"dit.wn.res_skip.{i}.w"] for i in range(W)], [t[f"dit.wn.res_skip.{i}.b"] for i in range(W)],
        t["dit.final.adaln.w"], t["dit.final.adaln.b"], t["dit.final.linear.w"], t["dit.final.linear.b"],
        t["dit.conv2.w"], t["dit.conv2.b"],
    )  # fmt: skip
    return dit
