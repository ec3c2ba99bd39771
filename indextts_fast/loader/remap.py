"""Official state dict -> fast-pack tensors: the table rules instantiated at the model's dimensions, the transforms,
the steps of a strict remap (coverage, shapes and dtypes, transform and cast, finiteness) and the live remap they
compose. The file remap composes the same steps with a dtype policy and the carried conditioning encoders
(indextts_fast.checkpoint.remap)."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from . import tables
from .dims import model_dims, resolve_version, settle_heads, version_note, version_reason
from .errors import CheckpointError, CheckpointWarning

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ModuleOrStateDict = Union[torch.nn.Module, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Entry:
    dst: str
    srcs: tuple[str, ...]
    op: str
    cls: str
    src_shapes: tuple[tuple[int, ...], ...]


def _eval_shape(expr: str, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(eval(p, {"__builtins__": {}}, dims)) for p in expr.split(","))  # noqa: S307 - table constants


def _rules(kind: str, parts: Optional[tuple[str, ...]], stack_adaln: bool, version: str) -> tuple[tables.Rule, ...]:
    if kind == "gpt":
        return tables.gpt_rules(version)
    if kind == "codec":
        return tables.CODEC_RULES
    return tables.s2mel_rules(parts or tables.S2MEL_PARTS, stack_adaln)


def expand_rules(
    kind: str,
    dims: dict[str, int],
    *,
    parts: Optional[tuple[str, ...]] = None,
    stack_adaln: bool = True,
    version: str = "2.0",
) -> list[Entry]:
    """Every table rule instantiated at these dimensions, in pack order; ``parts``: the s2mel groups (default all);
    ``version``: the GPT's table (2.0 or 2.5)."""
    out: list[Entry] = []
    base = {"n3": 3 * dims.get("N", 0)}
    rules = _rules(kind, parts, stack_adaln, version)
    for r in rules:
        shapes = tuple(_eval_shape(s, dims) for s in r.shapes)
        if r.each:
            srcs, src_shapes = [], []
            for sub in tables.index_values(r.each, dims):
                srcs += [s.format(**sub) for s in r.srcs]
                src_shapes += list(shapes)
            srcs += list(r.tail)
            src_shapes += [_eval_shape(s, dims) for s in r.tail_shapes]
            out.append(Entry(r.dst, tuple(srcs), r.op, r.cls, tuple(src_shapes)))
        elif r.over:
            for sub in tables.index_values(r.over, dims):
                out.append(Entry(r.dst.format(**sub), tuple(s.format(**sub) for s in r.srcs), r.op, r.cls, shapes))
        else:
            out.append(Entry(r.dst, tuple(s.format(**base) for s in r.srcs), r.op, r.cls, shapes))
    return out


_UNFOLDED_OP = {"wn": "k1", "wn_taps": "taps"}


def resolve_folded(entries: list[Entry], sd: Mapping[str, Any]) -> list[Entry]:
    """The entries with each weight-norm pair that ``sd`` holds already folded, as ``<name>.weight`` and without
    ``weight_g`` / ``weight_v`` (module code that folds at load, e.g. indextts25-inference's), read from that
    tensor instead: the same pack tensor, by the transform that follows the fold (k1 or copy, taps)."""
    out = []
    for e in entries:
        base = e.srcs[0][: -len("_g")] if e.op in _UNFOLDED_OP else None
        if base is None or any(s in sd for s in e.srcs) or base not in sd:
            out.append(e)
            continue
        v_shape = e.src_shapes[1]
        op = "copy" if e.op == "wn" and len(v_shape) == 2 else _UNFOLDED_OP[e.op]
        out.append(Entry(e.dst, (base,), op, e.cls, (v_shape,)))
    return out


def _fold_wn(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g * v / ||v|| over all dims but 0, no eps: the exact computation of torch.nn.utils.weight_norm's hook."""
    return torch._weight_norm(v.float(), g.float(), 0)


def _taps(w: torch.Tensor) -> torch.Tensor:  # [out, in, k] -> [out, k*in], column j*in + c = w[:, c, j]
    return w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()


def _forward_op(op: str, xs: list[torch.Tensor]) -> torch.Tensor:
    if op == "copy":
        return xs[0]
    if op == "t":
        return xs[0].t().contiguous()
    if op == "cat0":
        return torch.cat(xs, dim=0)
    if op == "wn":
        w = _fold_wn(xs[0], xs[1])
        return w.reshape(w.shape[0], w.shape[1]) if w.dim() == 3 else w
    if op == "wn_taps":
        return _taps(_fold_wn(xs[0], xs[1]))
    if op == "taps":
        return _taps(xs[0])
    if op == "k1":
        return xs[0].reshape(xs[0].shape[0], xs[0].shape[1])
    if op == "dw":
        return xs[0].reshape(xs[0].shape[0], xs[0].shape[2])
    raise ValueError(f"unknown op {op!r}")


def transform(e: Entry, sd: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One entry's pack tensor: weight norm folded in fp32; cast to ``dtype``, or to the source's dtype when None
    (then an identity transform returns the source tensor itself)."""
    xs = [sd[s] for s in e.srcs]
    w = _forward_op(e.op, [x.float() for x in xs] if e.op.startswith("wn") else xs)
    return w.to(dtype or xs[-1].dtype).contiguous()


@dataclass
class RemapReport:
    kind: str
    version: str
    dims: dict[str, int]
    mapped: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)  # (dst, srcs, op)
    carried: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    nonfinite: list[str] = field(default_factory=list)
    heads_from: str = "config.yaml"  # or "module", or "width // 64" (settle_heads warned), or "none" (the codec)
    version_reason: str = ""  # what in the checkpoint shows its version

    @property
    def folded(self) -> list[str]:
        return [d for d, _, op in self.mapped if op.startswith("wn")]

    def summary(self) -> str:
        ops, whys = Counter(op for _, _, op in self.mapped), Counter(why for _, why in self.ignored)
        why = f" ({self.version_reason})" if self.version_reason else ""
        lines = [
            f"{self.kind} checkpoint (IndexTTS {self.version}), dims {self.dims}",
            f"  version: IndexTTS-{self.version}{why}",
            f"  mapped:  {sum(len(s) for _, s, _ in self.mapped)} checkpoint tensors -> {len(self.mapped)} pack "
            f"tensors, by transform {dict(ops)}",
            f"  folded:  {len(self.folded)} weight-norm pairs",
            f"  carried: {len(self.carried)} tensors verbatim (conditioning encoders)",
            f"  ignored: {len(self.ignored)} keys",
            *(f"    {n} x {why}" for why, n in whys.items()),
        ]
        if self.nonfinite:
            lines.append(f"  NON-FINITE (allowed): {self.nonfinite}")
        return "\n".join(lines)


def fmt_keys(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ---- the steps of a strict remap -------------------------------------------------------------------------------------


def select_parts(
    kind: str, parts: Optional[tuple[str, ...]], sd: Mapping[str, Any], version: Optional[str] = None
) -> Optional[tuple[str, ...]]:
    """The s2mel groups a remap covers: ``parts``, else those of ``sd`` (gpt_layer is optional, and never part of
    an IndexTTS-2.5 remap); None for the GPT and the codec."""
    if kind != "s2mel":
        if parts is not None:
            raise ValueError(f"parts= selects s2mel groups; a {kind} remap has none")
        return None
    if parts is None:
        has_gpt_layer = version != "2.5" and any(k.startswith("gpt_layer.") for k in sd)
        return tuple(p for p in tables.S2MEL_PARTS if p != "gpt_layer" or has_gpt_layer)
    if not parts or set(parts) - set(tables.S2MEL_PARTS):
        raise ValueError(f"parts={tuple(parts)!r}: expected a non-empty subset of {tables.S2MEL_PARTS}")
    if version == "2.5" and "gpt_layer" in parts:
        raise ValueError(f"parts={tuple(parts)!r}: IndexTTS-2.5 has no gpt_layer")
    return tuple(parts)


_LAYER_KEY = {
    "gpt": re.compile(r"gpt\.h\.(\d+)\."),
    "s2mel": re.compile(r"cfm\.estimator\.transformer\.layers\.(\d+)\."),
    "codec": re.compile(r"decoder\.0\.convnext\.(\d+)\."),
}
_IGNORE = {"gpt": tables.GPT_IGNORE, "s2mel": tables.S2MEL_IGNORE, "codec": tables.CODEC_IGNORE}
_LIVE_CARRY = "conditioning encoder: stays in the official module (not carried by remap_live)"


def ignored_why(kind: str, key: str, layers: Optional[int]) -> Optional[str]:
    """Why the ignore list drops ``key``; None when it is not on the list or belongs to a layer >= ``layers``."""
    why = next((w for p, w in _IGNORE[kind] if re.fullmatch(p, key)), None)
    m = _LAYER_KEY[kind].match(key)
    return None if why is None or (layers is not None and m and int(m.group(1)) >= layers) else why


def classify(
    sd: Mapping[str, torch.Tensor], kind: str, entries: list[Entry], dims: dict[str, int],
    parts: Optional[tuple[str, ...]], *, carry: bool, version: str = "2.0",
) -> tuple[list[str], list[str], list[tuple[str, str]], list[str]]:  # fmt: skip
    """Coverage: (missing, carried, ignored [(key, why)], unknown). Every entry's sources are present, each consumed
    by one entry; every other key is carried (the GPT's conditioning encoders of ``version``, with ``carry``;
    without, they are ignored: they stay in the module), on the ignore list (of a layer the model has), an
    IndexTTS-2.5 s2mel's gpt_layer, outside ``parts``, or unknown."""
    used = [s for e in entries for s in e.srcs]
    seen, dup = set(used), sorted(k for k, n in Counter(used).items() if n > 1)
    if dup:  # a bug in tables.py, not in the file
        raise RuntimeError(f"the key tables consume these keys twice: {dup}")
    carried, ignored, unknown = [], [], []
    carry_list = tables.gpt_carry(version)
    for k in sd:
        group = k.split(".", 1)[0]
        if k in seen:
            continue
        if kind == "s2mel" and version == "2.5" and group == "gpt_layer":
            ignored.append((k, tables.S2MEL_25_IGNORE))
        elif parts is not None and group in tables.S2MEL_PARTS and group not in parts:
            ignored.append((k, f"outside parts={parts}"))
        elif kind == "gpt" and tables.full_match(carry_list, k) and carry:
            carried.append(k)
        elif kind == "gpt" and tables.full_match(carry_list, k):
            ignored.append((k, _LIVE_CARRY))
        elif (why := ignored_why(kind, k, dims.get("L", 0))) is not None:
            ignored.append((k, why))
        else:
            unknown.append(k)
    return [s for s in used if s not in sd], carried, ignored, unknown


def reject(
    what: str, sd: Mapping[str, torch.Tensor], entries: list[Entry], missing: list[str], unknown: list[str],
    carried: Sequence[str] = (), carry_wrong: Sequence[str] = (),
) -> None:  # fmt: skip
    """The CheckpointError ``<what> checkpoint rejected: ...`` naming every missing and unknown key and every wrong
    shape and dtype (of the entries' sources and the ``carried`` keys); nothing when all is well."""
    srcs = [(s, shp) for e in entries for s, shp in zip(e.srcs, e.src_shapes, strict=True) if s in sd]
    shape = [f"{s} {list(sd[s].shape)} (expected {list(shp)})" for s, shp in srcs if tuple(sd[s].shape) != shp]
    dtype = [k for k in [s for s, _ in srcs] + [k for k in carried if k in sd] if sd[k].dtype not in FLOAT_DTYPES]
    problems = {
        "missing keys": (missing, 12),
        "unknown keys (not in the tables, the carry list or the ignore list)": (unknown, 12),
        "wrong shape": (shape + list(carry_wrong), 8),
        "wrong dtype (expected float32/float16/bfloat16)": ([f"{k} {str(sd[k].dtype)[6:]}" for k in dtype], 8),
    }
    if any(keys for keys, _ in problems.values()):
        found = "; ".join(f"{msg}: {fmt_keys(keys, n)}" for msg, (keys, n) in problems.items() if keys)
        raise CheckpointError(f"{what} checkpoint rejected: {found}")


def finite_flag(e: Entry, w: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(the name judge_finite reports, a 0-d flag left on the device: all flags are judged with one sync)."""
    srcs = ", ".join(e.srcs) if len(e.srcs) <= 2 else e.srcs[0] + ", ..."
    return f"{e.dst} (from {srcs})", torch.isfinite(w).all()


def judge_finite(kind: str, flags: list[tuple[str, torch.Tensor]], allow: bool, stacklevel: int) -> list[str]:
    """The names whose tensor holds NaN or inf: a CheckpointError, or with ``allow`` a CheckpointWarning."""
    nonfinite = [name for name, ok in flags if not bool(ok)]
    if nonfinite and not allow:
        raise CheckpointError(
            f"{kind} checkpoint rejected: non-finite values (NaN or inf, possibly after the dtype cast) in "
            f"{fmt_keys(nonfinite, 8)}; pass allow_nonfinite=True (--allow-nonfinite) to convert anyway"
        )
    if nonfinite:
        warnings.warn(f"non-finite weights allowed in: {fmt_keys(nonfinite, 8)}", CheckpointWarning, stacklevel + 1)
    return nonfinite


# ---- the live remap --------------------------------------------------------------------------------------------------


def remap_live(
    module_or_state_dict: ModuleOrStateDict,
    kind: str,
    *,
    parts: Optional[tuple[str, ...]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    version: Optional[str] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """A live official module (or its state dict) -> ({pack name: tensor}, report), as the converter's remap
    (indextts_fast.checkpoint.remap_state_dict), except:

    * every tensor keeps its own dtype and device (no dtype policy; weight norm folds in fp32 as in a conversion
      and returns the source dtype); the identity transforms (copy, the k1 reshape) return views of the live
      tensors, the others new tensors;
    * the GPT's conditioning encoders are not carried (they stay in the module), and a key whose tensor is the
      very tensor of a mapped or ignored key (the inference_model.* and gpt.wte aliases post_init_gpt2_config
      adds) is ignored as an alias; both are listed in report.ignored;
    * gpt: UnifiedVoice or its state_dict(). s2mel: MyModel.models (keys cfm.estimator.*, length_regulator.*,
      gpt_layer.*), a CFM (estimator.*) or a lone DiT (its own keys), whose keys are prefixed to those names;
      ``parts`` restricts the remap and its coverage checks to some of cfm / length_regulator / gpt_layer (keys of
      the other groups are listed as ignored); a CFM or a DiT alone defaults to ("cfm",); codec: EnhancedCodec
      (IndexTTS-2.5) or its state_dict();
    * the head count is the module's own when a module is given, else width // 64 with a CheckpointWarning
      (indextts_fast.checkpoint.remap_live takes it from config.yaml and checks the dimensions against it).

    The version (IndexTTS-2.0 or 2.5) is read from the structure (dims.resolve_version): a 2.5 UnifiedVoice
    (spk_emb_proj, lang_embedding, no speaker conformer / perceiver / speed_emb) gives the same GPT-2 stack, final
    norms, mel head and mel tables as 2.0, plus its own spk_emb_proj / lang_embedding; ``version`` ('2.0' / '2.5'),
    when given, must be the module's (an s2mel takes it: 2.5 never has gpt_layer). Weight-norm pairs a module
    holds already folded (``<name>.weight``) are read as they are.

    Strictness is the converter's: unknown or missing keys, wrong shapes or dtypes, and non-finite values are
    CheckpointErrors naming them.
    """
    sd, parts, heads, version = live_source(module_or_state_dict, kind, parts, version)
    dims = settle_heads(kind, model_dims(kind, sd, heads, parts=parts), heads, stacklevel=2)
    heads_from = "none" if kind == "codec" else "module" if heads else "width // 64"
    return remap_live_at(sd, kind, dims, parts, heads_from, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
                         version=version)  # fmt: skip


def live_source(
    module_or_state_dict: ModuleOrStateDict, kind: str, parts: Optional[tuple[str, ...]], version: Optional[str] = None
) -> tuple[dict[str, torch.Tensor], Optional[tuple[str, ...]], Optional[int], str]:
    """(the detached state dict under the flattened s2mel names, the parts remapped, the module's head count, the
    IndexTTS version: the structure's, which must be ``version`` when that is given)."""
    module = module_or_state_dict if isinstance(module_or_state_dict, torch.nn.Module) else None
    sd = module.state_dict() if module is not None else module_or_state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"remap_live: expected an nn.Module or a state dict, got {type(sd).__name__}")
    if kind not in ("gpt", "s2mel", "codec"):
        raise ValueError(f"remap_live: kind must be 'gpt', 's2mel' or 'codec', got {kind!r}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"live {kind} state dict holds non-tensor entries {fmt_keys(bad, 8)}")
    prefix = _live_prefix(kind, sd)
    heads = _live_heads(module, kind, prefix) if module is not None else None
    sd = {prefix + k: v.detach() for k, v in sd.items()}
    version = resolve_version(kind, sd, version, f"live {kind}")
    parts = select_parts(kind, ("cfm",) if parts is None and prefix else parts, sd, version)
    return sd, parts, heads, version


def _live_prefix(kind: str, sd: Mapping[str, Any]) -> str:
    """What turns a live module's keys into the flattened s2mel names: '' (MyModel.models), 'cfm.' (a CFM) or
    'cfm.estimator.' (a lone DiT)."""
    if kind != "s2mel" or any(k.split(".", 1)[0] in tables.S2MEL_PARTS for k in sd):
        return ""
    if sd and all(k.startswith("models.") for k in sd):
        raise CheckpointError("live s2mel: the keys models.* are MyModel's own; pass MyModel.models")
    return "cfm." if sd and all(k.startswith("estimator.") for k in sd) else "cfm.estimator."


def _live_heads(module: torch.nn.Module, kind: str, prefix: str) -> Optional[int]:
    """The head count a live module was built with: UnifiedVoice.gpt.config.n_head (HF GPT2Config), the DiT's
    transformer.config.n_head (gpt_fast ModelArgs); the codec has none."""
    if kind == "codec":
        return None
    path = "gpt" if kind == "gpt" else "cfm.estimator.transformer"[len(prefix) :]
    try:
        n = module.get_submodule(path).config.n_head
    except AttributeError:
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _aliases(sd: Mapping[str, torch.Tensor], known: list[str]) -> dict[str, str]:
    """{key: the known key whose tensor it is (same storage, offset, shape, strides and dtype)}."""

    def ident(t):
        if t.device.type == "meta":
            return None
        return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())

    primary = {ident(sd[k]): k for k in reversed(known)}
    primary.pop(None, None)
    return {k: primary[i] for k in sd if k not in known and (i := ident(sd[k])) in primary}


def remap_live_at(
    sd: Mapping[str, torch.Tensor], kind: str, dims: dict[str, int], parts: Optional[tuple[str, ...]],
    heads_from: str, *, stack_adaln: bool = True, allow_nonfinite: bool = False, version: str = "2.0",
) -> tuple[dict[str, torch.Tensor], RemapReport]:  # fmt: skip
    """The live remap at settled dimensions: coverage (aliases and the conditioning encoders ignored), shapes and
    dtypes, the transforms in the source dtype, finiteness."""
    entries = resolve_folded(expand_rules(kind, dims, parts=parts, stack_adaln=stack_adaln, version=version), sd)
    missing, _, ignored, unknown = classify(sd, kind, entries, dims, parts, carry=False, version=version)
    if unknown:  # the same tensor under a second name
        used = {s for e in entries for s in e.srcs}
        alias = _aliases(sd, [k for k in sd if k in used] + [k for k, _ in ignored])
        ignored += [(k, f"alias of {alias[k]} (the same tensor)") for k in unknown if k in alias]
        unknown = [k for k in unknown if k not in alias]
    reject(f"live {kind}{version_note(kind, sd)}", sd, entries, missing, unknown)
    out = {e.dst: transform(e, sd, None) for e in entries}
    report = RemapReport(kind, version, dims, [(e.dst, e.srcs, e.op) for e in entries], ignored=ignored,
                         heads_from=heads_from, version_reason=version_reason(kind, sd, version))  # fmt: skip
    report.nonfinite = judge_finite(kind, [finite_flag(e, out[e.dst]) for e in entries], allow_nonfinite, 3)
    return out, report
