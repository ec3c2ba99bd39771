"""The GPT's conditioning encoders (conformers and perceivers), carried verbatim into the pack: each one present
must be complete, with shapes consistent with its own widths, the GPT's and config.yaml's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

import torch

# ----------------------------------------------------------------------------------------------------------------------
# The carried conditioning encoders' names and shapes (conformer_encoder.py::ConformerEncoder with input_layer conv2d2,
# perceiver.py::PerceiverResampler). The shapes are expressions over widths read from the file itself: D conformer
# width (after_norm), U its FFN width, h its heads (pos_bias_u rows), k its depthwise kernel; P perceiver width and
# N latents (latents), A attention inner width (to_q rows), G GEGLU width, Q context width (proj_context columns, or
# P when the context already has width P and proj_context is the identity); '*' is unconstrained. Templates with
# {n} must exist for every block 0..n-1.
# ----------------------------------------------------------------------------------------------------------------------
CARRY_CONFORMER: dict[str, str] = {
    "embed.conv.0.weight": "D,1,3,3",
    "embed.conv.0.bias": "D",
    "embed.out.0.weight": "D,*",
    "embed.out.0.bias": "D",
    "embed.pos_enc.pe": "1,*,D",
    "after_norm.weight": "D",
    "after_norm.bias": "D",
    **{
        f"encoders.{{n}}.self_attn.linear_{p}.{w}": ("D,D" if w == "weight" else "D")
        for p in ("q", "k", "v", "out")
        for w in ("weight", "bias")
    },  # fmt: skip
    "encoders.{n}.self_attn.linear_pos.weight": "D,D",
    "encoders.{n}.self_attn.pos_bias_u": "h,D//h",
    "encoders.{n}.self_attn.pos_bias_v": "h,D//h",
    "encoders.{n}.feed_forward.w_1.weight": "U,D",
    "encoders.{n}.feed_forward.w_1.bias": "U",
    "encoders.{n}.feed_forward.w_2.weight": "D,U",
    "encoders.{n}.feed_forward.w_2.bias": "D",
    "encoders.{n}.conv_module.pointwise_conv1.weight": "2*D,D,1",
    "encoders.{n}.conv_module.pointwise_conv1.bias": "2*D",
    "encoders.{n}.conv_module.depthwise_conv.weight": "D,1,k",
    "encoders.{n}.conv_module.depthwise_conv.bias": "D",
    "encoders.{n}.conv_module.norm.weight": "D",
    "encoders.{n}.conv_module.norm.bias": "D",
    "encoders.{n}.conv_module.pointwise_conv2.weight": "D,D,1",
    "encoders.{n}.conv_module.pointwise_conv2.bias": "D",
    **{f"encoders.{{n}}.norm_{p}.{w}": "D" for p in ("ff", "mha", "conv", "final") for w in ("weight", "bias")},
}
CARRY_PERCEIVER: dict[str, str] = {
    "latents": "N,P",
    "norm.gamma": "P",
    "proj_context.weight": "P,Q",  # absent when the context width is already P (nn.Identity)
    "proj_context.bias": "P",
    "layers.{n}.0.to_q.weight": "A,P",
    "layers.{n}.0.to_kv.weight": "2*A,P",
    "layers.{n}.0.to_out.weight": "P,A",
    "layers.{n}.1.0.weight": "2*G,P",
    "layers.{n}.1.0.bias": "2*G",
    "layers.{n}.1.2.weight": "P,G",
    "layers.{n}.1.2.bias": "P",
}
CARRY_OPTIONAL = ("proj_context.weight", "proj_context.bias")
# prefix -> (templates, block-key regex, the config.yaml section giving its sizes)
CARRY_GROUPS: dict[str, tuple[dict[str, str], str, str]] = {
    "conditioning_encoder": (CARRY_CONFORMER, r"encoders\.(\d+)\.", "condition_module"),
    "emo_conditioning_encoder": (CARRY_CONFORMER, r"encoders\.(\d+)\.", "emo_condition_module"),
    "perceiver_encoder": (CARRY_PERCEIVER, r"layers\.(\d+)\.", "condition_module"),
    "emo_perceiver_encoder": (CARRY_PERCEIVER, r"layers\.(\d+)\.", "emo_condition_module"),
}


def _check_carried(
    sd: Mapping[str, torch.Tensor], carried: list[str], dims: dict[str, int], config: Optional[dict],
    version: str = "2.0",
) -> tuple[list[str], list[str], list[str]]:  # fmt: skip
    """(missing, wrong shape, unknown) among the carried conditioning-encoder keys (CARRY_*).

    Each encoder present must be complete (every block 0..n-1 with all its tensors) with shapes consistent with the
    widths read from its own anchors, the perceivers must match the GPT / emotion widths and their conformers'
    widths, and config.yaml (when given) fixes the conformer sizes, block counts and latent count. IndexTTS-2.5
    has the emotion encoders only (both required); its config's condition_type, if any, is ignored."""
    from .config import _cond_config  # config.py reads the tables above

    missing: list[str] = []
    wrong: list[str] = []
    unknown: list[str] = []
    groups: dict[str, dict[str, str]] = {}
    for k in carried:
        prefix = k.split(".", 1)[0]
        if prefix in CARRY_GROUPS:
            groups.setdefault(prefix, {})[k[len(prefix) + 1 :]] = k
        else:  # pragma: no cover - GPT_CARRY only admits these prefixes
            unknown.append(k)
    required, cfg_sizes = _cond_config(config)
    if version == "2.5":
        missing += [f"{p}.* (IndexTTS-2.5 emotion encoder)" for p in CARRY_GROUPS if p.startswith("emo_")
                    and p not in groups]  # fmt: skip
    elif required:
        missing += [f"{p}.* (config: conformer_perceiver)" for p in CARRY_GROUPS if p not in groups]
    widths: dict[str, dict[str, int]] = {}
    for prefix, rest in groups.items():
        templates, block_re, section = CARRY_GROUPS[prefix]
        n = max((int(m.group(1)) + 1 for r in rest if (m := re.match(block_re, r))), default=0)
        expected = {}
        for t, expr in templates.items():
            for i in range(n) if "{n}" in t else (None,):
                expected[t.replace("{n}", str(i))] = expr
        unknown += [f"{prefix}.{r}" for r in rest if r not in expected]
        missing += [f"{prefix}.{r}" for r in expected if r not in rest and r not in CARRY_OPTIONAL]

        def dim(r, i, rest=rest, prefix=prefix):
            s = tuple(sd[f"{prefix}.{r}"].shape) if r in rest else ()
            return s[i] if len(s) > i else None

        if templates is CARRY_CONFORMER:
            w = {"D": dim("after_norm.weight", 0), "U": dim("encoders.0.feed_forward.w_1.weight", 0),
                 "h": dim("encoders.0.self_attn.pos_bias_u", 0),
                 "k": dim("encoders.0.conv_module.depthwise_conv.weight", 2)}  # fmt: skip
        else:
            w = {"N": dim("latents", 0), "P": dim("latents", 1), "A": dim("layers.0.0.to_q.weight", 0),
                 "G": dim("layers.0.1.2.weight", 1)}  # fmt: skip
            # the perceivers' width is the GPT width (perceiver_encoder) or the emotion width (emo_perceiver_encoder)
            w["P"] = dims.get("E" if prefix.startswith("emo_") else "C", w["P"])
            w["Q"] = dim("proj_context.weight", 1) if "proj_context.weight" in rest else w["P"]
        if None in w.values() or not w.get("h", 1):
            continue  # an anchor is missing (reported above): shapes cannot be derived
        widths[prefix] = w
        for r, expr in expected.items():
            if r not in rest:
                continue
            got = tuple(sd[rest[r]].shape)
            want = [p if p == "*" else int(eval(p, {"__builtins__": {}}, dict(w))) for p in expr.split(",")]  # noqa: S307
            if len(got) != len(want) or any(p != "*" and p != s for p, s in zip(want, got, strict=True)):
                wrong.append(f"{rest[r]} {list(got)} (expected [{expr}] with {w})")
        if templates is CARRY_CONFORMER:
            w = dict(w, blocks=n)
        for key, v in cfg_sizes.get(prefix, {}).items():
            if v is not None and w[key] != v:
                wrong.append(f"{prefix}: {key} = {w[key]} in the checkpoint, {v} in config.yaml ({section})")
    for prefix, key, want, what in (
        ("perceiver_encoder", "Q", widths.get("conditioning_encoder", {}).get("D"), "the conformer width"),
        ("emo_perceiver_encoder", "Q", widths.get("emo_conditioning_encoder", {}).get("D"), "the conformer width"),
    ):
        if prefix in widths and want is not None and widths[prefix][key] != want:
            wrong.append(f"{prefix}: {key} = {widths[prefix][key]}, expected {want} ({what})")
    return missing, wrong, unknown
