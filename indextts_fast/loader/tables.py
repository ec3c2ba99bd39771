"""Key tables: official IndexTTS2 checkpoint names -> fast-pack names in kernel layout.

Every name and shape here is read off the official module code (indextts2-inference 2.1.1):
``indextts/gpt/model_v2.py::UnifiedVoice`` with HF ``transformers.GPT2Model`` as its backbone, and
``indextts/s2mel/modules/commons.py::MyModel`` = {'cfm': CFM -> ``estimator`` = ``diffusion_transformer.DiT``
(``gpt_fast/model.py::Transformer``, ``wavenet.py::WN`` built from ``encodec.py::SConv1d``),
'length_regulator': ``length_regulator.py::InterpolateRegulator``, 'gpt_layer': Sequential of 3 Linear}.
IndexTTS-2.5 (module code of indextts25-inference 0.2.0): the campplus-only ``gpt/model_v2.py::UnifiedVoice``
(GPT_RULES_25) and ``codec/models.py::EnhancedCodec``, whose decoding half is CODEC_RULES; its s2mel is the 2.0
code without gpt_layer. tests/loader/test_loader.py and test_loader_25.py enumerate the official modules' state
dicts and check that these tables cover every key exactly once (mapped, carried or ignored), with the shapes
given here.

A rule is ``Rule(dst, srcs, op, cls, shapes, over)``:
    dst     fast-pack name template ({i}: layer index)
    srcs    checkpoint key templates, in the order ``op`` consumes them ({i}: layer index; {a}, {b}: derived
            indices, see ``index_values``)
    op      the transform (remap.py; each has an exact inverse in indextts_fast.checkpoint.remap):
              copy        w -> w
              t           GPT-2 Conv1D [in, out] -> [out, in] (nn.Linear layout, GEMM [N, K])
              cat0        cat(srcs, dim=0): w1|w3 -> w13 [2I, K]; stacked AdaLN projections
              wn          weight norm folded: g * v / ||v|| (norm over all dims but 0, no eps); 1x1 convs
                          are squeezed to [out, in]
              wn_taps     weight norm folded, then a k-tap Conv1d [out, in, k] -> [out, k*in] (tap-major:
                          column j*in + c holds tap j of input channel c, the im2col order for channel-last
                          activations [B, T, C])
              taps        Conv1d [out, in, k] -> [out, k*in], same order as wn_taps
              k1          Conv1d [out, in, 1] -> [out, in]
              dw          depthwise Conv1d [C, 1, k] -> [C, k]
    cls     dtype class, looked up in the dtype policy: gemm_w, gemm_b, norm, embed, other
    shapes  the source shapes as expressions over the model dimensions (see ``dims.model_dims``)
    over    the index set {i} runs over (None: a single tensor); for ``cat0`` with ``each``, srcs are expanded
            over ``each`` and concatenated in that order, then ``tail`` is appended
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

__all__ = [
    "Rule",
    "GPT_RULES",
    "GPT_IGNORE",
    "GPT_CARRY",
    "GPT_RULES_25",
    "GPT_CARRY_25",
    "GPT_25_MARKERS",
    "GPT_20_MARKERS",
    "TEXT_ROWS",
    "CODEC_RULES",
    "CODEC_IGNORE",
    "S2MEL_25_IGNORE",
    "gpt_rules",
    "gpt_carry",
    "DIT_RULES",
    "DIT_ADALN_SPLIT",
    "DIT_ADALN_STACKED",
    "LR_RULES",
    "GPT_LAYER_RULES",
    "S2MEL_IGNORE",
    "S2MEL_GROUPS",
    "S2MEL_PARTS",
    "s2mel_rules",
    "index_values",
]


@dataclass(frozen=True)
class Rule:
    dst: str
    srcs: tuple[str, ...]
    op: str
    cls: str
    shapes: tuple[str, ...]
    over: Optional[str] = None
    each: Optional[str] = None
    tail: tuple[str, ...] = field(default=())
    tail_shapes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------------------------------------------
# gpt.pth (UnifiedVoice). Dimensions: C model_dim, L layers, Vt text vocab (number_text_tokens*types+1),
# Vm mel vocab (number_mel_codes), Pt text positions (max_text_tokens+2), Pm mel positions (max_mel_tokens+3),
# E emotion input (1024).
# ----------------------------------------------------------------------------------------------------------------------
_GPT_EMBED: tuple[Rule, ...] = (
    Rule("text_embedding", ("text_embedding.weight",), "copy", "embed", ("Vt,C",)),
    Rule("mel_embedding", ("mel_embedding.weight",), "copy", "embed", ("Vm,C",)),
    Rule("text_pos", ("text_pos_embedding.emb.weight",), "copy", "embed", ("Pt,C",)),
    Rule("mel_pos", ("mel_pos_embedding.emb.weight",), "copy", "embed", ("Pm,C",)),
    Rule("speed_emb", ("speed_emb.weight",), "copy", "embed", ("2,C",)),
)
_GPT_STACK: tuple[Rule, ...] = (
    Rule("emovec.w", ("emovec_layer.weight",), "copy", "gemm_w", ("C,E",)),
    Rule("emovec.b", ("emovec_layer.bias",), "copy", "gemm_b", ("C",)),
    Rule("emo.w", ("emo_layer.weight",), "copy", "gemm_w", ("C,C",)),
    Rule("emo.b", ("emo_layer.bias",), "copy", "gemm_b", ("C",)),
    Rule("h.{i}.ln1.w", ("gpt.h.{i}.ln_1.weight",), "copy", "norm", ("C",), over="L"),
    Rule("h.{i}.ln1.b", ("gpt.h.{i}.ln_1.bias",), "copy", "norm", ("C",), over="L"),
    # c_attn Conv1D [C, 3C]: output columns q | k | v -> rows q | k | v of the [3C, C] GEMM weight
    Rule("h.{i}.qkv.w", ("gpt.h.{i}.attn.c_attn.weight",), "t", "gemm_w", ("C,3*C",), over="L"),
    Rule("h.{i}.qkv.b", ("gpt.h.{i}.attn.c_attn.bias",), "copy", "gemm_b", ("3*C",), over="L"),
    Rule("h.{i}.attn_out.w", ("gpt.h.{i}.attn.c_proj.weight",), "t", "gemm_w", ("C,C",), over="L"),
    Rule("h.{i}.attn_out.b", ("gpt.h.{i}.attn.c_proj.bias",), "copy", "gemm_b", ("C",), over="L"),
    Rule("h.{i}.ln2.w", ("gpt.h.{i}.ln_2.weight",), "copy", "norm", ("C",), over="L"),
    Rule("h.{i}.ln2.b", ("gpt.h.{i}.ln_2.bias",), "copy", "norm", ("C",), over="L"),
    Rule("h.{i}.fc.w", ("gpt.h.{i}.mlp.c_fc.weight",), "t", "gemm_w", ("C,4*C",), over="L"),
    Rule("h.{i}.fc.b", ("gpt.h.{i}.mlp.c_fc.bias",), "copy", "gemm_b", ("4*C",), over="L"),
    Rule("h.{i}.proj.w", ("gpt.h.{i}.mlp.c_proj.weight",), "t", "gemm_w", ("4*C,C",), over="L"),
    Rule("h.{i}.proj.b", ("gpt.h.{i}.mlp.c_proj.bias",), "copy", "gemm_b", ("C",), over="L"),
    Rule("ln_f.w", ("gpt.ln_f.weight",), "copy", "norm", ("C",)),
    Rule("ln_f.b", ("gpt.ln_f.bias",), "copy", "norm", ("C",)),
    Rule("final_norm.w", ("final_norm.weight",), "copy", "norm", ("C",)),
    Rule("final_norm.b", ("final_norm.bias",), "copy", "norm", ("C",)),
    Rule("mel_head.w", ("mel_head.weight",), "copy", "gemm_w", ("Vm,C",)),
    Rule("mel_head.b", ("mel_head.bias",), "copy", "gemm_b", ("Vm",)),
)

GPT_RULES: tuple[Rule, ...] = _GPT_EMBED + _GPT_STACK  # IndexTTS-2.0

# IndexTTS-2.5 (spk_cond_mode "campplus"): no speed_emb; the CAMPPlus style projection (nn.Linear(192, model_dim),
# 192 literal in UnifiedVoice) and the language table (len(LANGUAGE_DICT) + 1 = 107 rows, a tokenizer constant).
GPT_RULES_25: tuple[Rule, ...] = (
    *(r for r in _GPT_EMBED if r.dst != "speed_emb"),
    Rule("spk_emb_proj.w", ("spk_emb_proj.weight",), "copy", "gemm_w", ("C,192",)),
    Rule("spk_emb_proj.b", ("spk_emb_proj.bias",), "copy", "gemm_b", ("C",)),
    Rule("lang_embedding", ("lang_embedding.weight",), "copy", "embed", ("107,C",)),
    *_GPT_STACK,
)

# Keys present in (some) gpt.pth files that the fast path must not use. Full-match regexes.
GPT_IGNORE: tuple[tuple[str, str], ...] = (
    (r"gpt\.h\.\d+\.attn\.(bias|masked_bias)", "causal-mask buffers of older transformers GPT2Attention"),
    (r"gpt\.wte\.weight", "alias of mel_embedding (re-pointed after post_init)"),
    (r"text_head\.(weight|bias)", "text logits head, unused at inference"),
)

# Conditioning encoders (run once per reference, not the hot path): carried verbatim under "cond.<official key>"
# in the policy's 'carry' dtype, names checked against these full-match regexes (ConformerEncoder with
# input_layer conv2d2 and LayerNorm conv-module norm; PerceiverResampler), completeness and shapes against the
# tables of indextts_fast.checkpoint.conditioning (a conversion's check: the live remap leaves them in the module).
GPT_CARRY: tuple[str, ...] = (
    r"(emo_)?conditioning_encoder\.embed\.(conv|out)\.0\.(weight|bias)",
    r"(emo_)?conditioning_encoder\.embed\.pos_enc\.pe",
    r"(emo_)?conditioning_encoder\.after_norm\.(weight|bias)",
    r"(emo_)?conditioning_encoder\.encoders\.\d+\.self_attn\.(pos_bias_u|pos_bias_v|linear_pos\.weight)",
    r"(emo_)?conditioning_encoder\.encoders\.\d+\.self_attn\.linear_(q|k|v|out)\.(weight|bias)",
    r"(emo_)?conditioning_encoder\.encoders\.\d+\.feed_forward\.w_[12]\.(weight|bias)",
    r"(emo_)?conditioning_encoder\.encoders\.\d+\.conv_module\.(pointwise_conv1|depthwise_conv|norm|pointwise_conv2)"
    r"\.(weight|bias)",
    r"(emo_)?conditioning_encoder\.encoders\.\d+\.norm_(ff|mha|conv|final)\.(weight|bias)",
    r"(emo_)?perceiver_encoder\.(latents|norm\.gamma|proj_context\.(weight|bias))",
    r"(emo_)?perceiver_encoder\.layers\.\d+\.0\.to_(q|kv|out)\.weight",
    r"(emo_)?perceiver_encoder\.layers\.\d+\.1\.[02]\.(weight|bias)",
)

# IndexTTS-2.5 carries the emotion encoders only (no speaker conformer / perceiver).
GPT_CARRY_25: tuple[str, ...] = tuple(p.replace("(emo_)?", "emo_") for p in GPT_CARRY)

# What tells the versions' gpt.pth apart, by structure (config.yaml's version field and condition_type do not):
# keys only one of them has (full-match regexes), and text_embedding's row count at the released sizes.
GPT_25_MARKERS: tuple[str, ...] = (r"spk_emb_proj\..*", r"lang_embedding\..*")
GPT_20_MARKERS: tuple[str, ...] = (r"conditioning_encoder\..*", r"perceiver_encoder\..*", r"speed_emb\..*")
TEXT_ROWS: dict[str, int] = {"2.0": 12001, "2.5": 60510}


def gpt_rules(version: str) -> tuple[Rule, ...]:
    return GPT_RULES_25 if version == "2.5" else GPT_RULES


def gpt_carry(version: str) -> tuple[str, ...]:
    return GPT_CARRY_25 if version == "2.5" else GPT_CARRY


# ----------------------------------------------------------------------------------------------------------------------
# s2mel.pth: state['net'] -> {'cfm', 'length_regulator', 'gpt_layer'}; flattened here as '<module>.<key>'.
# Dimensions: C hidden_dim, L depth, I SwiGLU intermediate, F in_channels (mel bins), D content_dim,
# S style dim, H wavenet hidden, W wavenet layers, K wavenet kernel, R length-regulator channels,
# Q length-regulator in_channels, N length-regulator conv blocks (len(sampling_ratios)).
# Index sets: L (all DiT layers), Lskip (layers that pop a UViT skip: i > L // 2), W1 (wavenet layers 0..W-2),
# Wlast (W-1), N (length-regulator blocks); for N, {a} = 3*i (Conv1d) and {b} = 3*i + 1 (GroupNorm).
# ----------------------------------------------------------------------------------------------------------------------
_E = "cfm.estimator."
_T = _E + "transformer."

DIT_RULES: tuple[Rule, ...] = (  # cfm.estimator: the DiT, but for its AdaLN projections (below)
    # time embeddings (t_embedder for AdaLN / FinalLayer, t_embedder2 for the WaveNet condition)
    Rule("dit.t_embed.freqs", (_E + "t_embedder.freqs",), "copy", "other", ("128",)),
    Rule("dit.t_embed.w0", (_E + "t_embedder.mlp.0.weight",), "copy", "gemm_w", ("C,256",)),
    Rule("dit.t_embed.b0", (_E + "t_embedder.mlp.0.bias",), "copy", "gemm_b", ("C",)),
    Rule("dit.t_embed.w2", (_E + "t_embedder.mlp.2.weight",), "copy", "gemm_w", ("C,C",)),
    Rule("dit.t_embed.b2", (_E + "t_embedder.mlp.2.bias",), "copy", "gemm_b", ("C",)),
    Rule("dit.t_embed2.freqs", (_E + "t_embedder2.freqs",), "copy", "other", ("128",)),
    Rule("dit.t_embed2.w0", (_E + "t_embedder2.mlp.0.weight",), "copy", "gemm_w", ("H,256",)),
    Rule("dit.t_embed2.b0", (_E + "t_embedder2.mlp.0.bias",), "copy", "gemm_b", ("H",)),
    Rule("dit.t_embed2.w2", (_E + "t_embedder2.mlp.2.weight",), "copy", "gemm_w", ("H,H",)),
    Rule("dit.t_embed2.b2", (_E + "t_embedder2.mlp.2.bias",), "copy", "gemm_b", ("H",)),
    # input merge: cond_projection(mu), then cond_x_merge_linear(cat(x, prompt_x, cond, style))
    Rule("dit.cond_proj.w", (_E + "cond_projection.weight",), "copy", "gemm_w", ("C,D",)),
    Rule("dit.cond_proj.b", (_E + "cond_projection.bias",), "copy", "gemm_b", ("C",)),
    Rule("dit.merge.w", (_E + "cond_x_merge_linear.weight",), "copy", "gemm_w", ("C,C+2*F+S",)),
    Rule("dit.merge.b", (_E + "cond_x_merge_linear.bias",), "copy", "gemm_b", ("C",)),
    # transformer blocks
    Rule("dit.layers.{i}.wqkv", (_T + "layers.{i}.attention.wqkv.weight",), "copy", "gemm_w", ("3*C,C",), over="L"),
    Rule("dit.layers.{i}.wo", (_T + "layers.{i}.attention.wo.weight",), "copy", "gemm_w", ("C,C",), over="L"),
    Rule(
        "dit.layers.{i}.w13",
        (_T + "layers.{i}.feed_forward.w1.weight", _T + "layers.{i}.feed_forward.w3.weight"),
        "cat0",
        "gemm_w",
        ("I,C", "I,C"),
        over="L",
    ),
    Rule("dit.layers.{i}.w2", (_T + "layers.{i}.feed_forward.w2.weight",), "copy", "gemm_w", ("C,I",), over="L"),
    Rule("dit.layers.{i}.attn_norm.g", (_T + "layers.{i}.attention_norm.norm.weight",), "copy", "norm", ("C",), "L"),
    Rule("dit.layers.{i}.ffn_norm.g", (_T + "layers.{i}.ffn_norm.norm.weight",), "copy", "norm", ("C",), over="L"),
    Rule("dit.layers.{i}.skip_in.w", (_T + "layers.{i}.skip_in_linear.weight",), "copy", "gemm_w", ("C,2*C",), "Lskip"),
    Rule("dit.layers.{i}.skip_in.b", (_T + "layers.{i}.skip_in_linear.bias",), "copy", "gemm_b", ("C",), "Lskip"),
    Rule("dit.norm.g", (_T + "norm.norm.weight",), "copy", "norm", ("C",)),
    # long skip and the WaveNet head
    Rule("dit.skip_linear.w", (_E + "skip_linear.weight",), "copy", "gemm_w", ("C,C+F",)),
    Rule("dit.skip_linear.b", (_E + "skip_linear.bias",), "copy", "gemm_b", ("C",)),
    Rule("dit.conv1.w", (_E + "conv1.weight",), "copy", "gemm_w", ("H,C",)),
    Rule("dit.conv1.b", (_E + "conv1.bias",), "copy", "gemm_b", ("H",)),
    Rule("dit.res_proj.w", (_E + "res_projection.weight",), "copy", "gemm_w", ("H,C",)),
    Rule("dit.res_proj.b", (_E + "res_projection.bias",), "copy", "gemm_b", ("H",)),
    Rule(
        "dit.wn.cond.w",
        (_E + "wavenet.cond_layer.conv.conv.weight_g", _E + "wavenet.cond_layer.conv.conv.weight_v"),
        "wn",
        "gemm_w",
        ("2*H*W,1,1", "2*H*W,H,1"),
    ),
    Rule("dit.wn.cond.b", (_E + "wavenet.cond_layer.conv.conv.bias",), "copy", "gemm_b", ("2*H*W",)),
    Rule(
        "dit.wn.in.{i}.w",
        (_E + "wavenet.in_layers.{i}.conv.conv.weight_g", _E + "wavenet.in_layers.{i}.conv.conv.weight_v"),
        "wn_taps",
        "gemm_w",
        ("2*H,1,1", "2*H,H,K"),
        over="W",
    ),
    Rule("dit.wn.in.{i}.b", (_E + "wavenet.in_layers.{i}.conv.conv.bias",), "copy", "gemm_b", ("2*H",), over="W"),
    Rule(
        "dit.wn.res_skip.{i}.w",
        (_E + "wavenet.res_skip_layers.{i}.conv.conv.weight_g", _E + "wavenet.res_skip_layers.{i}.conv.conv.weight_v"),
        "wn",
        "gemm_w",
        ("2*H,1,1", "2*H,H,1"),
        over="W1",
    ),
    Rule(
        "dit.wn.res_skip.{i}.b", (_E + "wavenet.res_skip_layers.{i}.conv.conv.bias",), "copy", "gemm_b", ("2*H",), "W1"
    ),
    Rule(
        "dit.wn.res_skip.{i}.w",
        (_E + "wavenet.res_skip_layers.{i}.conv.conv.weight_g", _E + "wavenet.res_skip_layers.{i}.conv.conv.weight_v"),
        "wn",
        "gemm_w",
        ("H,1,1", "H,H,1"),
        over="Wlast",
    ),
    Rule(
        "dit.wn.res_skip.{i}.b", (_E + "wavenet.res_skip_layers.{i}.conv.conv.bias",), "copy", "gemm_b", ("H",), "Wlast"
    ),
    # FinalLayer: adaLN_modulation = Sequential(SiLU, Linear) -> [shift | scale]; linear is weight-normed
    Rule("dit.final.adaln.w", (_E + "final_layer.adaLN_modulation.1.weight",), "copy", "gemm_w", ("2*H,H",)),
    Rule("dit.final.adaln.b", (_E + "final_layer.adaLN_modulation.1.bias",), "copy", "gemm_b", ("2*H",)),
    Rule(
        "dit.final.linear.w",
        (_E + "final_layer.linear.weight_g", _E + "final_layer.linear.weight_v"),
        "wn",
        "gemm_w",
        ("H,1", "H,H"),
    ),
    Rule("dit.final.linear.b", (_E + "final_layer.linear.bias",), "copy", "gemm_b", ("H",)),
    Rule("dit.conv2.w", (_E + "conv2.weight",), "k1", "gemm_w", ("F,H,1",)),
    Rule("dit.conv2.b", (_E + "conv2.bias",), "copy", "gemm_b", ("F",)),
)

LR_RULES: tuple[Rule, ...] = (
    # length regulator (InterpolateRegulator, continuous input): model = [Conv1d k3, GroupNorm(1), Mish] x N,
    # then Conv1d k1 at index 3*N
    Rule("lr.in_proj.w", ("length_regulator.content_in_proj.weight",), "copy", "gemm_w", ("R,Q",)),
    Rule("lr.in_proj.b", ("length_regulator.content_in_proj.bias",), "copy", "gemm_b", ("R",)),
    Rule("lr.conv.{i}.w", ("length_regulator.model.{a}.weight",), "taps", "gemm_w", ("R,R,3",), over="N"),
    Rule("lr.conv.{i}.b", ("length_regulator.model.{a}.bias",), "copy", "gemm_b", ("R",), over="N"),
    Rule("lr.gn.{i}.w", ("length_regulator.model.{b}.weight",), "copy", "norm", ("R",), over="N"),
    Rule("lr.gn.{i}.b", ("length_regulator.model.{b}.bias",), "copy", "norm", ("R",), over="N"),
    Rule("lr.out.w", ("length_regulator.model.{n3}.weight",), "k1", "gemm_w", ("R,R,1",)),
    Rule("lr.out.b", ("length_regulator.model.{n3}.bias",), "copy", "gemm_b", ("R",)),
)

GPT_LAYER_RULES: tuple[Rule, ...] = (
    # gpt_layer: Linear 1280->256 -> Linear 256->128 -> Linear 128->1024, no activation (sizes literal in MyModel)
    Rule("gpt_layer.0.w", ("gpt_layer.0.weight",), "copy", "gemm_w", ("256,1280",)),
    Rule("gpt_layer.0.b", ("gpt_layer.0.bias",), "copy", "gemm_b", ("256",)),
    Rule("gpt_layer.1.w", ("gpt_layer.1.weight",), "copy", "gemm_w", ("128,256",)),
    Rule("gpt_layer.1.b", ("gpt_layer.1.bias",), "copy", "gemm_b", ("128",)),
    Rule("gpt_layer.2.w", ("gpt_layer.2.weight",), "copy", "gemm_w", ("1024,128",)),
    Rule("gpt_layer.2.b", ("gpt_layer.2.bias",), "copy", "gemm_b", ("1024",)),
)

# AdaLN projections (project_layer: Linear C -> 2C, output [scale | shift]), either one GEMM weight per norm ...
DIT_ADALN_SPLIT: tuple[Rule, ...] = (
    Rule(
        "dit.layers.{i}.attn_norm.w",
        (_T + "layers.{i}.attention_norm.project_layer.weight",),
        "copy",
        "gemm_w",
        ("2*C,C",),
        over="L",
    ),  # fmt: skip
    Rule(
        "dit.layers.{i}.attn_norm.b",
        (_T + "layers.{i}.attention_norm.project_layer.bias",),
        "copy",
        "gemm_b",
        ("2*C",),
        over="L",
    ),  # fmt: skip
    Rule(
        "dit.layers.{i}.ffn_norm.w",
        (_T + "layers.{i}.ffn_norm.project_layer.weight",),
        "copy",
        "gemm_w",
        ("2*C,C",),
        over="L",
    ),  # fmt: skip
    Rule(
        "dit.layers.{i}.ffn_norm.b",
        (_T + "layers.{i}.ffn_norm.project_layer.bias",),
        "copy",
        "gemm_b",
        ("2*C",),
        over="L",
    ),  # fmt: skip
    Rule("dit.norm.w", (_T + "norm.project_layer.weight",), "copy", "gemm_w", ("2*C,C",)),
    Rule("dit.norm.b", (_T + "norm.project_layer.bias",), "copy", "gemm_b", ("2*C",)),
)

# ... or all of them stacked into one [(2L+1)*2C, C] GEMM (every one sees the same c = t_embedder(t)):
# rows [4C*i, 4C*i+2C) = layer i attention_norm, [4C*i+2C, 4C*(i+1)) = layer i ffn_norm, last 2C = transformer.norm.
DIT_ADALN_STACKED: tuple[Rule, ...] = (
    Rule(
        "dit.adaln.w",
        (_T + "layers.{i}.attention_norm.project_layer.weight", _T + "layers.{i}.ffn_norm.project_layer.weight"),
        "cat0",
        "gemm_w",
        ("2*C,C", "2*C,C"),
        each="L",
        tail=(_T + "norm.project_layer.weight",),
        tail_shapes=("2*C,C",),
    ),  # fmt: skip
    Rule(
        "dit.adaln.b",
        (_T + "layers.{i}.attention_norm.project_layer.bias", _T + "layers.{i}.ffn_norm.project_layer.bias"),
        "cat0",
        "gemm_b",
        ("2*C", "2*C"),
        each="L",
        tail=(_T + "norm.project_layer.bias",),
        tail_shapes=("2*C",),
    ),  # fmt: skip
)

S2MEL_IGNORE: tuple[tuple[str, str], ...] = (
    (r"cfm\.estimator\.x_embedder\.(weight_g|weight_v|weight|bias)", "DiT.x_embedder: constructed, never called"),
    (r"cfm\.estimator\.cond_embedder\.weight", "DiT.cond_embedder: discrete content path, unused"),
    (r"cfm\.estimator\.content_mask_embedder\.weight", "DiT.content_mask_embedder: unused"),
    (r"cfm\.estimator\.input_pos", "buffer arange(16384); positions are 0..T-1"),
    (
        r"cfm\.estimator\.transformer\.layers\.\d+\.skip_in_linear\.(weight|bias)",
        "skip_in_linear of a layer that pops no UViT skip (i <= L // 2)",
    ),  # fmt: skip
    (r"length_regulator\.embedding\.weight", "discrete-code embedding, unused (is_discrete=False)"),
    (r"length_regulator\.mask_token", "unused parameter"),
)

# IndexTTS-2.5's s2mel.pth still holds gpt_layer; its s2mel model has none and never loads it.
S2MEL_25_IGNORE = "gpt_layer: IndexTTS-2.5 never loads it (its s2mel model has no gpt_layer)"

# s2mel.pth 'net' entries, in order, and whether each one is required.
S2MEL_GROUPS: tuple[tuple[str, bool], ...] = (("cfm", True), ("length_regulator", True), ("gpt_layer", False))
S2MEL_PARTS: tuple[str, ...] = tuple(g for g, _ in S2MEL_GROUPS)


# ----------------------------------------------------------------------------------------------------------------------
# codec.pth (IndexTTS-2.5): {'model': state dict, ...}; EnhancedCodec, of which decode reads the quantizer's codebook
# and out_project, decoder = [VocosBackbone, Linear] and up. Dimensions: V codebook_size, Q codebook_dim,
# H hidden_size, D vocos_dim, I vocos_intermediate_dim, L vocos_num_layers (ConvNeXt blocks). The kernel sizes
# (embed 7, dwconv 7, up 3) are literals of the module code.
# ----------------------------------------------------------------------------------------------------------------------
_Q = "quantizer.quantizers.0."
_V = "decoder.0."

CODEC_RULES: tuple[Rule, ...] = (
    Rule("codec.codebook", (_Q + "codebook.weight",), "copy", "embed", ("V,Q",)),
    # out_project: weight-normed Conv1d Q -> H, k1, applied to the raw codebook rows
    Rule(
        "codec.out_proj.w",
        (_Q + "out_project.weight_g", _Q + "out_project.weight_v"),
        "wn",
        "gemm_w",
        ("H,1,1", "H,Q,1"),
    ),
    Rule("codec.out_proj.b", (_Q + "out_project.bias",), "copy", "gemm_b", ("H",)),
    # VocosBackbone: embed Conv1d H -> D k7 (zero pad 3), LayerNorm (eps 1e-6), L ConvNeXt blocks, final LayerNorm
    Rule("codec.embed.w", (_V + "embed.weight",), "taps", "gemm_w", ("D,H,7",)),
    Rule("codec.embed.b", (_V + "embed.bias",), "copy", "gemm_b", ("D",)),
    Rule("codec.norm.w", (_V + "norm.weight",), "copy", "norm", ("D",)),
    Rule("codec.norm.b", (_V + "norm.bias",), "copy", "norm", ("D",)),
    Rule("codec.blocks.{i}.dw.w", (_V + "convnext.{i}.dwconv.weight",), "dw", "other", ("D,1,7",), over="L"),
    Rule("codec.blocks.{i}.dw.b", (_V + "convnext.{i}.dwconv.bias",), "copy", "other", ("D",), over="L"),
    Rule("codec.blocks.{i}.norm.w", (_V + "convnext.{i}.norm.weight",), "copy", "norm", ("D",), over="L"),
    Rule("codec.blocks.{i}.norm.b", (_V + "convnext.{i}.norm.bias",), "copy", "norm", ("D",), over="L"),
    Rule("codec.blocks.{i}.pw1.w", (_V + "convnext.{i}.pwconv1.weight",), "copy", "gemm_w", ("I,D",), over="L"),
    Rule("codec.blocks.{i}.pw1.b", (_V + "convnext.{i}.pwconv1.bias",), "copy", "gemm_b", ("I",), over="L"),
    Rule("codec.blocks.{i}.pw2.w", (_V + "convnext.{i}.pwconv2.weight",), "copy", "gemm_w", ("D,I",), over="L"),
    Rule("codec.blocks.{i}.pw2.b", (_V + "convnext.{i}.pwconv2.bias",), "copy", "gemm_b", ("D",), over="L"),
    Rule("codec.blocks.{i}.gamma", (_V + "convnext.{i}.gamma",), "copy", "other", ("D",), over="L"),
    Rule("codec.final_norm.w", (_V + "final_layer_norm.weight",), "copy", "norm", ("D",)),
    Rule("codec.final_norm.b", (_V + "final_layer_norm.bias",), "copy", "norm", ("D",)),
    # decoder.1: Linear D -> H; then nearest x2 in time and up: Conv1d H -> H, k3 (zero pad 1)
    Rule("codec.proj.w", ("decoder.1.weight",), "copy", "gemm_w", ("H,D",)),
    Rule("codec.proj.b", ("decoder.1.bias",), "copy", "gemm_b", ("H",)),
    Rule("codec.up.w", ("up.weight",), "taps", "gemm_w", ("H,H,3",)),
    Rule("codec.up.b", ("up.bias",), "copy", "gemm_b", ("H",)),
)

# The encoding half, which inference never runs.
CODEC_IGNORE: tuple[tuple[str, str], ...] = (
    (r"encoder\..*", "encoder: the encoding half, never run at inference"),
    (r"down\.(weight|bias|weight_g|weight_v)", "down: the encoder's downsampling conv, never run at inference"),
    (
        r"quantizer\.quantizers\.0\.in_project\.(weight_g|weight_v|weight|bias)",
        "quantizer in_project: encoding only (decode reads codebook rows)",
    ),
)


def s2mel_rules(parts: tuple[str, ...], stack_adaln: bool = True) -> tuple[Rule, ...]:
    """The rules of these s2mel groups in pack order: the DiT's AdaLN projections last (stacked or one GEMM per
    norm)."""
    per_part = {"cfm": DIT_RULES, "length_regulator": LR_RULES, "gpt_layer": GPT_LAYER_RULES}
    adaln = (DIT_ADALN_STACKED if stack_adaln else DIT_ADALN_SPLIT) if "cfm" in parts else ()
    return tuple(r for p in S2MEL_PARTS if p in parts for r in per_part[p]) + adaln


def index_values(over: str, dims: dict[str, int]) -> list[dict[str, int]]:
    """The {i} (and derived {a}, {b}, {n3}) substitutions for an index set."""
    L, W, N = dims.get("L", 0), dims.get("W", 0), dims.get("N", 0)
    if over == "L":
        idx = range(L)
    elif over == "Lskip":
        idx = range(L // 2 + 1, L)
    elif over == "W":
        idx = range(W)
    elif over == "W1":
        idx = range(W - 1)
    elif over == "Wlast":
        idx = range(W - 1, W)
    elif over == "N":
        idx = range(N)
    else:
        raise ValueError(f"unknown index set {over!r}")
    return [{"i": i, "a": 3 * i, "b": 3 * i + 1, "n3": 3 * N} for i in idx]


def full_match(patterns, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)
