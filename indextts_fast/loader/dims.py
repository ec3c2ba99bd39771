"""What a state dict's keys and shapes say: the model kind, the IndexTTS version (by structure, never by a
version field), the model dimensions; the head count, which no shape holds."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import torch

from . import tables
from .errors import CheckpointError, CheckpointWarning

HEADS_FIELD = {"gpt": "gpt.heads", "s2mel": "s2mel.DiT.num_heads"}  # where config.yaml states it


VERSIONS = ("2.0", "2.5")
NAMES = {"gpt": "gpt.pth", "s2mel": "s2mel.pth", "codec": "codec.pth"}


def detect_kind(sd: Mapping[str, Any]) -> Optional[str]:
    if any(k.startswith("cfm.estimator.") for k in sd):
        return "s2mel"
    if any(k.startswith("gpt.h.") for k in sd):
        return "gpt"
    if any(k.startswith(("quantizer.quantizers.", "decoder.0.convnext.")) for k in sd):
        return "codec"
    return None


def _rows(sd: Mapping[str, Any], key: str) -> Optional[int]:
    shape = getattr(sd.get(key), "shape", None)
    return int(shape[0]) if shape else None


def version_evidence(kind: str, sd: Mapping[str, Any]) -> dict[str, list[str]]:
    """{version: what in ``sd`` shows it} (a version without evidence is absent). gpt: the keys only one version
    has (2.5: spk_emb_proj, lang_embedding; 2.0: conditioning_encoder, perceiver_encoder, speed_emb) and
    text_embedding's rows at the released sizes; codec: the file itself (only 2.5 has one); s2mel: nothing (both
    versions' s2mel.pth hold the same groups, gpt_layer included)."""
    if kind == "codec":
        return {"2.5": ["a codec checkpoint: only IndexTTS-2.5 has one"]}
    if kind != "gpt":
        return {}
    found: dict[str, list[str]] = {}
    for version, markers in (("2.5", tables.GPT_25_MARKERS), ("2.0", tables.GPT_20_MARKERS)):
        for m in markers:
            hits = [k for k in sd if re.fullmatch(m, k)]
            if hits:
                name = m.split("\\", 1)[0]
                found.setdefault(version, []).append(f"{name} present" if len(hits) <= 2 else f"{name}.* present")
    rows = _rows(sd, "text_embedding.weight")
    for version, n in tables.TEXT_ROWS.items():
        if rows == n:
            found.setdefault(version, []).append(f"text_embedding {n} rows")
    return found


def detect_version(kind: str, sd: Mapping[str, Any]) -> str:
    """'2.0' or '2.5' from the structure (version_evidence; a gpt.pth with no evidence reads as 2.0); a gpt.pth
    with evidence of both reads as '2.5' here (resolve_version refuses it). s2mel: '2.0' with gpt_layer, else
    '2.5 (no gpt_layer)' (a live 2.5 model has none; a 2.5 s2mel.pth has one, so a file alone reads as 2.0: the
    version it is loaded with is passed to resolve_version)."""
    if kind == "codec":
        return "2.5"
    if kind == "gpt":
        return "2.5" if "2.5" in version_evidence(kind, sd) else "2.0"
    return "2.0" if any(k.startswith("gpt_layer.") for k in sd) else "2.5 (no gpt_layer)"


def version_reason(kind: str, sd: Mapping[str, Any], version: str) -> str:
    """Why ``sd`` reads as ``version``, for reports: the evidence, joined, plus what the 2.5 gpt.pth lacks."""
    ev = version_evidence(kind, sd)
    why = list(ev.get(version, []))
    if kind == "gpt" and version == "2.5" and "2.0" not in ev:
        why.append("no conditioning_encoder / perceiver_encoder / speed_emb")
    if kind == "gpt" and not ev:
        why.append("no IndexTTS-2.5 key (spk_emb_proj, lang_embedding)")
    if kind == "s2mel":
        has = any(k.startswith("gpt_layer.") for k in sd)
        if not has:
            why.append("no gpt_layer" if version in VERSIONS else "")
        elif version == "2.5":
            why.append("gpt_layer present and ignored: IndexTTS-2.5 never loads it")
        else:
            why.append("gpt_layer present (an s2mel.pth alone does not tell 2.0 from 2.5)")
    return ", ".join(w for w in why if w)


def version_note(kind: str, sd: Mapping[str, Any]) -> str:
    """'' or, for a gpt.pth with no key of either version's speaker conditioning, the note that it was read as 2.0
    (for messages about its keys)."""
    if kind != "gpt" or version_evidence(kind, sd):
        return ""
    return " (read as IndexTTS-2.0: it has neither 2.5's spk_emb_proj / lang_embedding nor 2.0's speed_emb)"


def resolve_version(kind: str, sd: Mapping[str, Any], expected: Optional[str] = None, what: str = "") -> str:
    """The version of ``sd``: its structure's (a gpt.pth with evidence of both versions is a CheckpointError
    naming both), which must be ``expected`` when that is given ('2.0' / '2.5', e.g. from the code it is loaded
    with, or the other files of its model directory); an s2mel takes ``expected`` (default: detect_version).
    ``what`` names the source in messages (default: '<kind> checkpoint')."""
    what = what or f"{kind} checkpoint"
    if expected is not None and expected not in VERSIONS:
        raise ValueError(f"version={expected!r}: expected one of {VERSIONS}")
    ev = version_evidence(kind, sd)
    if "2.0" in ev and "2.5" in ev:
        raise CheckpointError(
            f"{what} mixes IndexTTS-2.0 and IndexTTS-2.5 structure: 2.5 by {', '.join(ev['2.5'])}; 2.0 by "
            f"{', '.join(ev['2.0'])}"
        )
    if kind == "s2mel":
        return expected or detect_version(kind, sd)
    found = detect_version(kind, sd)
    if expected is not None and found != expected:
        why = version_reason(kind, sd, found)
        raise CheckpointError(f"{what} is IndexTTS-{found} ({why}), but IndexTTS-{expected} was expected")
    return found


def _shape(sd, key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r} (needed to read {what})")
    return tuple(sd[key].shape)


def _wn_v(sd, base: str) -> str:
    """The key of a weight-norm conv's direction: ``weight_v``, or ``weight`` where the module holds it folded."""
    return base + "weight" if base + "weight_v" not in sd and base + "weight" in sd else base + "weight_v"


def _count(sd, pattern: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))]
    return max(idx) + 1 if idx else 0


def model_dims(
    kind: str, sd: Mapping[str, torch.Tensor], heads: Optional[int] = None, *, parts: Optional[tuple[str, ...]] = None
) -> dict[str, int]:
    """Model dimensions from tensor shapes. Head counts are in no shape: ``heads``, else C // 64 provisionally
    (None when C is not a multiple of 64); settle_heads (or the converter's check against config.yaml) settles it.
    ``parts`` (s2mel): only the dimensions of those groups (the DiT's from cfm, R / Q / N from length_regulator).
    The codec has no attention, hence no head count."""
    if kind == "codec":
        q, v = "quantizer.quantizers.0.", "decoder.0."
        V, Q = _shape(sd, q + "codebook.weight", "the codebook size")
        D, H = _shape(sd, v + "embed.weight", "the Vocos width")[:2]
        d = {
            "V": V,
            "Q": Q,
            "H": H,
            "D": D,
            "I": _shape(sd, v + "convnext.0.pwconv1.weight", "the ConvNeXt width")[0],
            "L": _count(sd, r"decoder\.0\.convnext\.(\d+)\.dwconv\.weight"),
        }
        if d["L"] == 0:
            raise CheckpointError("no 'decoder.0.convnext.{i}.dwconv.weight' keys: not an IndexTTS-2.5 codec.pth")
        return d
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
            "W": _count(sd, r"cfm\.estimator\.wavenet\.in_layers\.(\d+)\.conv\.conv\.weight(_v)?"),
            "K": _shape(sd, _wn_v(sd, e + "wavenet.in_layers.0.conv.conv."), "the WaveNet kernel")[-1],
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
    if kind == "codec" or "C" not in dims:  # no transformer among the parts remapped
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
