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
from .dims import detect_version, model_dims, settle_heads
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


def expand_rules(
    kind: str, dims: dict[str, int], *, parts: Optional[tuple[str, ...]] = None, stack_adaln: bool = True
) -> list[Entry]:
    """Every table rule instantiated at these dimensions, in pack order; ``parts``: the s2mel groups (default all)."""
    out: list[Entry] = []
    base = {"n3": 3 * dims.get("N", 0)}
    rules = tables.GPT_RULES if kind == "gpt" else tables.s2mel_rules(parts or tables.S2MEL_PARTS, stack_adaln)
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
    heads_from: str = "config.yaml"  # or "module", or "width // 64" (settle_heads warned)

    @property
    def folded(self) -> list[str]:
        return [d for d, _, op in self.mapped if op.startswith("wn")]

    def summary(self) -> str:
        ops, whys = Counter(op for _, _, op in self.mapped), Counter(why for _, why in self.ignored)
        lines = [
            f"{self.kind} checkpoint (IndexTTS {self.version}), dims {self.dims}",
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


def select_parts(kind: str, parts: Optional[tuple[str, ...]], sd: Mapping[str, Any]) -> Optional[tuple[str, ...]]:
    """The s2mel groups a remap covers: ``parts``, else those of ``sd`` (gpt_layer is optional); None for the GPT."""
    if kind != "s2mel":
        if parts is not None:
            raise ValueError("parts= selects s2mel groups; a gpt remap has none")
        return None
    if parts is None:
        return tuple(p for p in tables.S2MEL_PARTS if p != "gpt_layer" or any(k.startswith("gpt_layer.") for k in sd))
    if not parts or set(parts) - set(tables.S2MEL_PARTS):
        raise ValueError(f"parts={tuple(parts)!r}: expected a non-empty subset of {tables.S2MEL_PARTS}")
    return tuple(parts)


def refuse_unsupported(kind: str, sd: Mapping[str, Any]) -> None:
    if kind == "gpt" and detect_version(kind, sd) == "2.5":
        markers = [k for k in sd if tables.full_match(tables.GPT_25_MARKERS, k)]
        raise CheckpointError(
            f"IndexTTS-2.5 gpt.pth detected ({fmt_keys(markers, 4)}): the reference module code has no 2.5 "
            "UnifiedVoice, so no verified key table exists for it"
        )


_LAYER_KEY = {
    "gpt": re.compile(r"gpt\.h\.(\d+)\."),
    "s2mel": re.compile(r"cfm\.estimator\.transformer\.layers\.(\d+)\."),
}
_LIVE_CARRY = "conditioning encoder: stays in the official module (not carried by remap_live)"


def ignored_why(kind: str, key: str, layers: Optional[int]) -> Optional[str]:
    """Why the ignore list drops ``key``; None when it is not on the list or belongs to a layer >= ``layers``."""
    ignore = tables.GPT_IGNORE if kind == "gpt" else tables.S2MEL_IGNORE
    why = next((w for p, w in ignore if re.fullmatch(p, key)), None)
    m = _LAYER_KEY[kind].match(key)
    return None if why is None or (layers is not None and m and int(m.group(1)) >= layers) else why


def classify(
    sd: Mapping[str, torch.Tensor], kind: str, entries: list[Entry], dims: dict[str, int],
    parts: Optional[tuple[str, ...]], *, carry: bool,
) -> tuple[list[str], list[str], list[tuple[str, str]], list[str]]:  # fmt: skip
    """Coverage: (missing, carried, ignored [(key, why)], unknown). Every entry's sources are present, each consumed
    by one entry; every other key is carried (the GPT's conditioning encoders, with ``carry``; without, they are
    ignored: they stay in the module), on the ignore list (of a layer the model has), outside ``parts``, or unknown."""
    used = [s for e in entries for s in e.srcs]
    seen, dup = set(used), sorted(k for k, n in Counter(used).items() if n > 1)
    if dup:  # a bug in tables.py, not in the file
        raise RuntimeError(f"the key tables consume these keys twice: {dup}")
    carried, ignored, unknown = [], [], []
    for k in sd:
        group = k.split(".", 1)[0]
        if k in seen:
            continue
        if parts is not None and group in tables.S2MEL_PARTS and group not in parts:
            ignored.append((k, f"outside parts={parts}"))
        elif kind == "gpt" and tables.full_match(tables.GPT_CARRY, k) and carry:
            carried.append(k)
        elif kind == "gpt" and tables.full_match(tables.GPT_CARRY, k):
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
      the other groups are listed as ignored); a CFM or a DiT alone defaults to ("cfm",);
    * the head count is the module's own when a module is given, else width // 64 with a CheckpointWarning
      (indextts_fast.checkpoint.remap_live takes it from config.yaml and checks the dimensions against it).

    Strictness is the converter's: unknown or missing keys, wrong shapes or dtypes, and non-finite values are
    CheckpointErrors naming them.
    """
    sd, parts, heads = live_source(module_or_state_dict, kind, parts)
    dims = settle_heads(kind, model_dims(kind, sd, heads, parts=parts), heads, stacklevel=2)
    heads_from = "module" if heads else "width // 64"
    return remap_live_at(sd, kind, dims, parts, heads_from, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite)


def live_source(
    module_or_state_dict: ModuleOrStateDict, kind: str, parts: Optional[tuple[str, ...]]
) -> tuple[dict[str, torch.Tensor], Optional[tuple[str, ...]], Optional[int]]:
    """(the detached state dict under the flattened s2mel names, the parts remapped, the module's head count)."""
    module = module_or_state_dict if isinstance(module_or_state_dict, torch.nn.Module) else None
    sd = module.state_dict() if module is not None else module_or_state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"remap_live: expected an nn.Module or a state dict, got {type(sd).__name__}")
    if kind not in ("gpt", "s2mel"):
        raise ValueError(f"remap_live: kind must be 'gpt' or 's2mel', got {kind!r}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"live {kind} state dict holds non-tensor entries {fmt_keys(bad, 8)}")
    prefix = _live_prefix(kind, sd)
    heads = _live_heads(module, kind, prefix) if module is not None else None
    sd = {prefix + k: v.detach() for k, v in sd.items()}
    parts = select_parts(kind, ("cfm",) if parts is None and prefix else parts, sd)
    refuse_unsupported(kind, sd)
    return sd, parts, heads


def _live_prefix(kind: str, sd: Mapping[str, Any]) -> str:
    """What turns a live module's keys into the flattened s2mel names: '' (MyModel.models), 'cfm.' (a CFM) or
    'cfm.estimator.' (a lone DiT)."""
    if kind == "gpt" or any(k.split(".", 1)[0] in tables.S2MEL_PARTS for k in sd):
        return ""
    if sd and all(k.startswith("models.") for k in sd):
        raise CheckpointError("live s2mel: the keys models.* are MyModel's own; pass MyModel.models")
    return "cfm." if sd and all(k.startswith("estimator.") for k in sd) else "cfm.estimator."


def _live_heads(module: torch.nn.Module, kind: str, prefix: str) -> Optional[int]:
    """The head count a live module was built with: UnifiedVoice.gpt.config.n_head (HF GPT2Config), the DiT's
    transformer.config.n_head (gpt_fast ModelArgs)."""
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
    heads_from: str, *, stack_adaln: bool = True, allow_nonfinite: bool = False,
) -> tuple[dict[str, torch.Tensor], RemapReport]:  # fmt: skip
    """The live remap at settled dimensions: coverage (aliases and the conditioning encoders ignored), shapes and
    dtypes, the transforms in the source dtype, finiteness."""
    entries = expand_rules(kind, dims, parts=parts, stack_adaln=stack_adaln)
    missing, _, ignored, unknown = classify(sd, kind, entries, dims, parts, carry=False)
    if unknown:  # the same tensor under a second name
        used = {s for e in entries for s in e.srcs}
        alias = _aliases(sd, [k for k in sd if k in used] + [k for k, _ in ignored])
        ignored += [(k, f"alias of {alias[k]} (the same tensor)") for k in unknown if k in alias]
        unknown = [k for k in unknown if k not in alias]
    reject(f"live {kind}", sd, entries, missing, unknown)
    out = {e.dst: transform(e, sd, None) for e in entries}
    report = RemapReport(kind, detect_version(kind, sd), dims, [(e.dst, e.srcs, e.op) for e in entries],
                         ignored=ignored, heads_from=heads_from)  # fmt: skip
    report.nonfinite = judge_finite(kind, [finite_flag(e, out[e.dst]) for e in entries], allow_nonfinite, 3)
    return out, report
