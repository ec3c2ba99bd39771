"""The GPT's conditioning encoders (conformers and perceivers), carried verbatim into the pack: each one present
must be complete, with shapes consistent with its own widths, the GPT's and config.yaml's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

import torch

from . import tables
from .config import _cond_config


def _check_carried(
    sd: Mapping[str, torch.Tensor], carried: list[str], dims: dict[str, int], config: Optional[dict]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, wrong shape, unknown) among the carried conditioning-encoder keys (tables.CARRY_*).

    Each encoder present must be complete (every block 0..n-1 with all its tensors) with shapes consistent with the
    widths read from its own anchors, the perceivers must match the GPT / emotion widths and their conformers'
    widths, and config.yaml (when given) fixes the conformer sizes, block counts and latent count."""
    missing: list[str] = []
    wrong: list[str] = []
    unknown: list[str] = []
    groups: dict[str, dict[str, str]] = {}
    for k in carried:
        prefix = k.split(".", 1)[0]
        if prefix in tables.CARRY_GROUPS:
            groups.setdefault(prefix, {})[k[len(prefix) + 1 :]] = k
        else:  # pragma: no cover - GPT_CARRY only admits these prefixes
            unknown.append(k)
    required, cfg_sizes = _cond_config(config)
    if required:
        missing += [f"{p}.* (config: conformer_perceiver)" for p in tables.CARRY_GROUPS if p not in groups]
    widths: dict[str, dict[str, int]] = {}
    for prefix, rest in groups.items():
        templates, block_re, section = tables.CARRY_GROUPS[prefix]
        n = max((int(m.group(1)) + 1 for r in rest if (m := re.match(block_re, r))), default=0)
        expected = {}
        for t, expr in templates.items():
            for i in range(n) if "{n}" in t else (None,):
                expected[t.replace("{n}", str(i))] = expr
        unknown += [f"{prefix}.{r}" for r in rest if r not in expected]
        missing += [f"{prefix}.{r}" for r in expected if r not in rest and r not in tables.CARRY_OPTIONAL]

        def dim(r, i, rest=rest, prefix=prefix):
            s = tuple(sd[f"{prefix}.{r}"].shape) if r in rest else ()
            return s[i] if len(s) > i else None

        if templates is tables.CARRY_CONFORMER:
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
        if templates is tables.CARRY_CONFORMER:
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
