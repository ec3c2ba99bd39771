"""config.yaml: read safely, every field type-checked; the dimensions it states, the s2mel variants it selects,
and the check of a checkpoint's dimensions (read from its shapes) and head count against it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ..loader.dims import HEADS_FIELD, settle_heads
from ..loader.errors import CheckpointError
from ..loader.tables import TEXT_ROWS
from .conditioning import CARRY_CONFORMER, CARRY_GROUPS
from .containers import PathLike, _check_regular_file, _is_int

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
    {encoder prefix: sizes}), the sizes in the letters of CARRY_GROUPS."""
    if cfg is None:
        return False, {}
    g = _Section.root(cfg).section("gpt")
    required = g.get("condition_type", "str") == "conformer_perceiver"
    sizes: dict[str, dict[str, Optional[int]]] = {}
    for prefix, (templates, _, section) in CARRY_GROUPS.items():
        sec = g.section(section)
        if templates is CARRY_CONFORMER:
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
    fast path does not implement and wrong-typed fields. The codec's are its semantic_codec section (IndexTTS-2.5's
    EnhancedCodec arguments; 2.0's config has the same section for MaskGCT's codec)."""
    root = _Section.root(cfg)
    if kind == "codec":
        c = root.section("semantic_codec")
        unsupported = {
            "semantic_codec.num_quantizers": (c.get("num_quantizers", "int", 1), 1),
            "semantic_codec.downsample_scale": (c.get("downsample_scale", "int", 2), 2),  # decode upsamples x2
        }
        bad = {k: v for k, (v, ok) in unsupported.items() if v != ok}
        if bad:
            raise CheckpointError(f"{root.source} selects codec variants the fast path does not implement: {bad}")
        want = {"V": c.get("codebook_size", "int"), "Q": c.get("codebook_dim", "int"), "H": c.get("hidden_size", "int"),
                "D": c.get("vocos_dim", "int"), "I": c.get("vocos_intermediate_dim", "int"),
                "L": c.get("vocos_num_layers", "int")}  # fmt: skip
        return {k: v for k, v in want.items() if v is not None}
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


def check_config(
    kind: str, dims: dict[str, int], cfg: Optional[Mapping], *, heads: Optional[int] = None, stacklevel: int = 2
) -> dict[str, int]:
    """Compare checkpoint dimensions with config.yaml; returns dims with the head count.

    Head counts are in no tensor shape: ``heads`` when known otherwise (a live module's own; config.yaml must
    agree), else config.yaml's; else width // 64 (IndexTTS2's head_dim), with a warning (``stacklevel`` as for
    warnings.warn, counted from the caller); a width that is not a multiple of 64 needs the config's head count.
    Only the dimensions in ``dims`` are compared."""
    want = config_dims(kind, cfg) if cfg is not None else {}
    src = getattr(cfg, "source", "config.yaml")
    cfg_heads = want.pop("heads", None)
    if heads is not None and cfg_heads is not None and heads != cfg_heads:
        raise CheckpointError(f"{src}: field {HEADS_FIELD[kind]} = {cfg_heads}, but the module has {heads} heads")
    diff = {k: (dims[k], v) for k, v in want.items() if k in dims and dims[k] != v}
    if diff:
        rows = {n: f"IndexTTS-{v}'s" for v, n in TEXT_ROWS.items()}
        hint = ""
        if kind == "gpt" and "Vt" in diff and any(n in rows for n in diff["Vt"]):
            a, b = diff["Vt"]
            hint = f" (text_embedding rows: checkpoint {rows.get(a, a)}, config {rows.get(b, b)})"
        raise CheckpointError(
            f"checkpoint shapes disagree with {src}: "
            + ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
            + hint
        )
    return settle_heads(kind, dims, heads or cfg_heads, config=None if cfg is None else src, stacklevel=stacklevel + 1)


def heads_source(kind: str, cfg: Optional[Mapping], heads: Optional[int] = None) -> str:
    """Where check_config took the head count from: 'module', 'config.yaml' or 'width // 64' ('none': the codec)."""
    if kind == "codec":
        return "none"
    from_config = cfg is not None and "heads" in config_dims(kind, cfg)
    return "module" if heads else "config.yaml" if from_config else "width // 64"
