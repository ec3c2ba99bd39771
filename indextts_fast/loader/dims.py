"""What a state dict's keys and shapes say: the model kind, the IndexTTS version, the model dimensions; the head
count, which no shape holds."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import torch

from . import tables
from .errors import CheckpointError, CheckpointWarning

HEADS_FIELD = {"gpt": "gpt.heads", "s2mel": "s2mel.DiT.num_heads"}  # where config.yaml states it


def detect_kind(sd: Mapping[str, Any]) -> Optional[str]:
    if any(k.startswith("cfm.estimator.") for k in sd):
        return "s2mel"
    if any(k.startswith("gpt.h.") for k in sd):
        return "gpt"
    return None


def detect_version(kind: str, sd: Mapping[str, Any]) -> str:
    """'2.0' or '2.5' from the keys (2.5's gpt.pth has spk_emb_proj / lang_embedding; its s2mel has no gpt_layer)."""
    if kind == "gpt":
        return "2.5" if any(tables.full_match(tables.GPT_25_MARKERS, k) for k in sd) else "2.0"
    return "2.0" if any(k.startswith("gpt_layer.") for k in sd) else "2.5 (no gpt_layer)"


def _shape(sd, key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r} (needed to read {what})")
    return tuple(sd[key].shape)


def _count(sd, pattern: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))]
    return max(idx) + 1 if idx else 0


def model_dims(
    kind: str, sd: Mapping[str, torch.Tensor], heads: Optional[int] = None, *, parts: Optional[tuple[str, ...]] = None
) -> dict[str, int]:
    """Model dimensions from tensor shapes. Head counts are in no shape: ``heads``, else C // 64 provisionally
    (None when C is not a multiple of 64); settle_heads (or the converter's check against config.yaml) settles it.
    ``parts`` (s2mel): only the dimensions of those groups (the DiT's from cfm, R / Q / N from length_regulator)."""
    if kind == "gpt":
        C = _shape(sd, "gpt.ln_f.weight", "the model width")[0]
        d = {
            "C": C,
            "L": _count(sd, r"gpt\.h\.(\d+)\.ln_1\.weight"),
            "Vt": _shape(sd, "text_embedding.weight", "the text vocabulary")[0],
            "Vm": _shape(sd, "mel_embedding.weight", "the mel vocabulary")[0],
            "Pt": _shape(sd, "text_pos_embedding.emb.weight", "the text positions")[0],
            "Pm": _shape(sd, "mel_pos_embedding.emb.weight", "the mel positions")[0],
            "E": _shape(sd, "emovec_layer.weight", "the emotion width")[1],
        }
        d["heads"] = heads or _heads_from_width(C)
        if d["L"] == 0:
            raise CheckpointError("no 'gpt.h.{i}.ln_1.weight' keys: not an IndexTTS2 gpt.pth")
        return d
    d: dict[str, int] = {}
    if parts is None or "cfm" in parts:
        e = "cfm.estimator."
        C, D = _shape(sd, e + "cond_projection.weight", "the DiT width")
        F = _shape(sd, e + "conv2.weight", "the mel channels")[0]
        merge_in = _shape(sd, e + "cond_x_merge_linear.weight", "the style width")[1]
        d.update({
            "C": C,
            "D": D,
            "F": F,
            "H": _shape(sd, e + "conv1.weight", "the WaveNet width")[0],
            "S": merge_in - C - 2 * F,
            "L": _count(sd, r"cfm\.estimator\.transformer\.layers\.(\d+)\.attention\.wqkv\.weight"),
            "I": _shape(sd, e + "transformer.layers.0.feed_forward.w1.weight", "the SwiGLU width")[0],
            "W": _count(sd, r"cfm\.estimator\.wavenet\.in_layers\.(\d+)\.conv\.conv\.weight_v"),
            "K": _shape(sd, e + "wavenet.in_layers.0.conv.conv.weight_v", "the WaveNet kernel")[-1],
        })  # fmt: skip
    if parts is None or "length_regulator" in parts:
        R, Q = _shape(sd, "length_regulator.content_in_proj.weight", "the length-regulator width")
        d.update(R=R, Q=Q, N=max(_count(sd, r"length_regulator\.model\.(\d+)\.weight") - 1, 0) // 3)
    if "C" in d:
        d["heads"] = heads or _heads_from_width(d["C"])
    return d


def _heads_from_width(C: int) -> Optional[int]:
    return C // 64 if C % 64 == 0 else None


def settle_heads(
    kind: str, dims: dict[str, int], heads: Optional[int], *, config: Optional[str] = None, stacklevel: int = 2
) -> dict[str, int]:
    """dims with the head count: ``heads`` (a live module's, or config.yaml's, ``config`` naming that file), which
    must divide the width; else width // 64 (IndexTTS2's head_dim) with a CheckpointWarning (``stacklevel``: for
    warnings.warn, counted from the caller); a width that is not a multiple of 64 then needs the config's count."""
    out = dict(dims)
    if "C" not in dims:  # no transformer among the parts remapped
        return out
    C, field = dims["C"], HEADS_FIELD[kind]
    if heads is not None:
        if C % heads:
            raise CheckpointError(f"{config or 'config.yaml'}: field {field} = {heads} does not divide the width {C}")
        out["heads"] = heads
        return out
    if _heads_from_width(C) is None:
        raise CheckpointError(
            f"{kind} checkpoint: the width {C} is not a multiple of 64, so the head count cannot be derived from the "
            f"shapes; pass config.yaml (config=, --config)" + ("" if config is None else f" with {field}")
        )
    why = "no config.yaml" if config is None else f"{config} has no {field}"
    warnings.warn(
        f"{why}: the head count is in no tensor shape; heads = width {C} // 64 = {C // 64} assumed (IndexTTS2's "
        "head_dim); pass config.yaml (config=, --config) to take it from there",
        CheckpointWarning,
        stacklevel=stacklevel + 1,
    )
    out["heads"] = C // 64
    return out
