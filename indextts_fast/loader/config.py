"""Model dimensions: read from the checkpoint's shapes, checked against config.yaml (read safely, every field
type-checked); the head count, which no shape holds."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from . import tables
from .containers import PathLike, _check_regular_file, _is_int
from .errors import CheckpointError, CheckpointWarning


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
    (None when C is not a multiple of 64); check_config settles it from config.yaml, warning or refusing.
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


_MAX_CONFIG = 16 << 20  # bytes; IndexTTS2's config.yaml is about 5 KB


class _Config(dict):
    """A parsed config.yaml that remembers its file, so that every message about it can name it."""

    source = "config.yaml"


def load_config(path: Optional[PathLike]) -> Optional[dict]:
    """Read config.yaml (yaml.safe_load). Unreadable, not YAML, or not a mapping: a CheckpointError naming the file;
    a tag that would construct a Python object (``!!python/...``) is refused. Field types are checked when used."""
    if path is None:
        return None
    path = Path(path)
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - a dependency of this package
        raise CheckpointError("reading config.yaml needs pyyaml (pip install pyyaml)") from e
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the config: {e}") from e
    if len(raw) > _MAX_CONFIG:
        raise CheckpointError(f"{path}: not a config.yaml (larger than {_MAX_CONFIG >> 20} MiB)")
    try:
        cfg = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark is not None else ""
        tag = re.match(r"could not determine a constructor for the tag ('[^']*')", problem)
        if tag and "python/" in tag.group(1):
            raise CheckpointError(
                f"{path}: a YAML tag that constructs a Python object is not accepted ({tag.group(1)}, {at})"
            ) from None
        where = f" ({at}, column {mark.column + 1})" if mark is not None else ""
        raise CheckpointError(f"{path}: not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a YAML mapping (a {type(cfg).__name__} at the top level)")
    out = _Config(cfg)
    out.source = str(path)
    return out


_EXPECTED = {
    "int": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "positive": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "flag": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "map": ("a mapping", lambda v: isinstance(v, dict)),
}


class _Section:
    """Typed reads from one mapping of config.yaml: a field of the wrong type is a CheckpointError naming the file
    and the field's full name (gpt.heads, s2mel.DiT.is_causal, ...). A field that is absent or null reads as the
    default."""

    def __init__(self, data: Mapping, source: str, name: str = ""):
        self.data, self.source, self.name = data, source, name

    @classmethod
    def root(cls, cfg: Mapping) -> _Section:
        return cls(cfg, getattr(cfg, "source", "config.yaml"))

    def field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, kind: str, default: Any = None) -> Any:
        v = self.data.get(key)
        if v is None:
            return default
        what, ok = _EXPECTED[kind]
        if not ok(v):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise CheckpointError(
                f"{self.source}: field {self.field(key)} is {shown} ({type(v).__name__}), expected {what}"
            )
        return v

    def section(self, key: str, required: bool = False) -> _Section:
        v = self.get(key, "map")
        if v is None and required:
            raise CheckpointError(f"{self.source}: no '{self.field(key)}' section")
        return _Section(v or {}, self.source, self.field(key))


def _cond_config(cfg: Optional[Mapping]) -> tuple[bool, dict[str, dict[str, Optional[int]]]]:
    """What config.yaml fixes about the GPT's conditioning encoders: (condition_type is conformer_perceiver,
    {encoder prefix: sizes}), the sizes in the letters of tables.CARRY_GROUPS."""
    if cfg is None:
        return False, {}
    g = _Section.root(cfg).section("gpt")
    required = g.get("condition_type", "str") == "conformer_perceiver"
    sizes: dict[str, dict[str, Optional[int]]] = {}
    for prefix, (templates, _, section) in tables.CARRY_GROUPS.items():
        sec = g.section(section)
        if templates is tables.CARRY_CONFORMER:
            sizes[prefix] = {
                "D": sec.get("output_size", "int"),
                "U": sec.get("linear_units", "int"),
                "h": sec.get("attention_heads", "int"),
                "blocks": sec.get("num_blocks", "int"),
            }
        else:
            n = 1 if prefix.startswith("emo_") else g.get("condition_num_latent", "int", 32) if g.data else None
            sizes[prefix] = {"N": n}
    return required, sizes


def config_dims(kind: str, cfg: Mapping) -> dict[str, Any]:
    """The dimensions (same letters as model_dims) that config.yaml states; refuses the structural variants the
    fast path does not implement and wrong-typed fields."""
    root = _Section.root(cfg)
    if kind == "gpt":
        g = root.section("gpt", required=True)
        _cond_config(cfg)  # the conditioning-encoder fields are type-checked here too, before any other message
        want = {"C": g.get("model_dim", "int"), "L": g.get("layers", "int"), "heads": g.get("heads", "positive"),
                "Vm": g.get("number_mel_codes", "int")}  # fmt: skip
        if (n := g.get("number_text_tokens", "int")) is not None:
            want["Vt"] = n * g.get("types", "positive", 1) + 1
        if (n := g.get("max_text_tokens", "int")) is not None:
            want["Pt"] = n + 2
        if (n := g.get("max_mel_tokens", "int")) is not None:
            want["Pm"] = n + 2 + g.get("max_conditioning_inputs", "int", 1)
        return {k: v for k, v in want.items() if v is not None}
    s = root.section("s2mel") if "s2mel" in cfg else root
    dit = s.section("DiT", required=True)
    wn, lr = s.section("wavenet"), s.section("length_regulator")
    unsupported = {
        "DiT.uvit_skip_connection": (dit.get("uvit_skip_connection", "flag"), True),
        "DiT.long_skip_connection": (dit.get("long_skip_connection", "flag"), True),
        "DiT.final_layer_type": (dit.get("final_layer_type", "str"), "wavenet"),
        "DiT.time_as_token": (dit.get("time_as_token", "flag", False), False),
        "DiT.style_as_token": (dit.get("style_as_token", "flag", False), False),
        "DiT.style_condition": (dit.get("style_condition", "flag"), True),
        "DiT.is_causal": (dit.get("is_causal", "flag", False), False),  # causal mask: same keys, other attention
        "wavenet.dilation_rate": (wn.get("dilation_rate", "int", 1), 1),  # dilated taps: same keys, other conv
        "length_regulator.is_discrete": (lr.get("is_discrete", "flag", False), False),
        "length_regulator.vector_quantize": (lr.get("vector_quantize", "flag", False), False),
        "length_regulator.f0_condition": (lr.get("f0_condition", "flag", False), False),
        "length_regulator.n_codebooks": (lr.get("n_codebooks", "int", 1), 1),
    }
    bad = {k: v for k, (v, ok) in unsupported.items() if v != ok}
    if bad:
        raise CheckpointError(f"{root.source} selects s2mel variants the fast path does not implement: {bad}")
    ratios = lr.get("sampling_ratios", "list")
    want = {
        "C": dit.get("hidden_dim", "int"),
        "L": dit.get("depth", "int"),
        "heads": dit.get("num_heads", "positive"),
        "F": dit.get("in_channels", "int"),
        "D": dit.get("content_dim", "int"),
        "S": s.section("style_encoder").get("dim", "int"),
        "H": wn.get("hidden_dim", "int"),
        "W": wn.get("num_layers", "int"),
        "K": wn.get("kernel_size", "int"),
        "R": lr.get("channels", "int"),
        "Q": lr.get("in_channels", "int"),
        "N": len(ratios) if ratios is not None else None,
    }
    return {k: v for k, v in want.items() if v is not None}


_HEADS_FIELD = {"gpt": "gpt.heads", "s2mel": "s2mel.DiT.num_heads"}


def check_config(
    kind: str, dims: dict[str, int], cfg: Optional[Mapping], *, heads: Optional[int] = None
) -> dict[str, int]:
    """Compare checkpoint dimensions with config.yaml; returns dims with the head count.

    Head counts are in no tensor shape: ``heads`` when known otherwise (a live module's own; config.yaml must
    agree), else config.yaml's; else width // 64 (IndexTTS2's head_dim), with a warning; a width that is not a
    multiple of 64 needs the config's head count. Only the dimensions in ``dims`` are compared."""
    want = config_dims(kind, cfg) if cfg is not None else {}
    src = getattr(cfg, "source", "config.yaml")
    cfg_heads = want.pop("heads", None)
    if heads is not None and cfg_heads is not None and heads != cfg_heads:
        raise CheckpointError(f"{src}: field {_HEADS_FIELD[kind]} = {cfg_heads}, but the module has {heads} heads")
    heads = heads or cfg_heads
    diff = {k: (dims[k], v) for k, v in want.items() if k in dims and dims[k] != v}
    if diff:
        raise CheckpointError(
            f"checkpoint shapes disagree with {src}: "
            + ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
        )
    out = dict(dims)
    if "C" not in dims:  # no transformer among the parts remapped
        return out
    C = dims["C"]
    if heads is not None:
        if C % heads:
            raise CheckpointError(f"{src}: field {_HEADS_FIELD[kind]} = {heads} does not divide the width {C}")
        out["heads"] = heads
        return out
    why = "no config.yaml" if cfg is None else f"{src} has no {_HEADS_FIELD[kind]}"
    if _heads_from_width(C) is None:
        raise CheckpointError(
            f"{kind} checkpoint: the width {C} is not a multiple of 64, so the head count cannot be derived from the "
            f"shapes; pass config.yaml (config=, --config)" + ("" if cfg is None else f" with {_HEADS_FIELD[kind]}")
        )
    warnings.warn(
        f"{why}: the head count is in no tensor shape; heads = width {C} // 64 = {C // 64} assumed (IndexTTS2's "
        "head_dim); pass config.yaml (config=, --config) to take it from there",
        CheckpointWarning,
        stacklevel=4,  # the caller of remap_state_dict / check_checkpoint / remap_live
    )
    out["heads"] = C // 64
    return out
