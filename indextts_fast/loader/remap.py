"""Official state dict <-> fast-pack tensors: the table rules instantiated at the model's dimensions, the
transforms and their exact inverses, the strict remap (from a file's state dict or a live module) and its
inverse."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from . import tables
from .conditioning import _check_carried
from .config import check_config, config_dims, model_dims
from .containers import detect_kind, detect_version
from .errors import CheckpointError, CheckpointWarning
from .policy import FLOAT_DTYPES, _policy
from .tables import Rule


@dataclass(frozen=True)
class Entry:
    dst: str
    srcs: tuple[str, ...]
    op: str
    cls: str
    src_shapes: tuple[tuple[int, ...], ...]


def _eval_shape(expr: str, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(eval(p, {"__builtins__": {}}, dims)) for p in expr.split(","))  # noqa: S307 - table constants


def _rules(kind: str, stack_adaln: bool) -> tuple[Rule, ...]:
    if kind == "gpt":
        return tables.GPT_RULES
    adaln = tables.S2MEL_RULES_ADALN_STACKED if stack_adaln else tables.S2MEL_RULES_ADALN_SPLIT
    return tables.S2MEL_RULES + adaln


def expand_rules(kind: str, dims: dict[str, int], *, stack_adaln: bool = True, with_gpt_layer: bool = True,
                 parts: Optional[tuple[str, ...]] = None) -> list[Entry]:  # fmt: skip
    """Every table rule instantiated at these dimensions, in pack order; ``parts``: only the rules reading those
    s2mel groups (cfm, length_regulator, gpt_layer)."""
    out: list[Entry] = []
    base = {"n3": 3 * dims.get("N", 0)}
    for r in _rules(kind, stack_adaln):
        if not with_gpt_layer and r.dst.startswith("gpt_layer."):
            continue
        if parts is not None and r.srcs[0].split(".", 1)[0] not in parts:
            continue
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


def _wn_norms(w: torch.Tensor, g_shape: tuple[int, ...]) -> torch.Tensor:
    """||w|| over all dims but 0, computed by the same kernel _weight_norm uses, so that _fold_wn(norms, w) == w."""
    if hasattr(torch, "_weight_norm_interface"):
        return torch._weight_norm_interface(w, torch.ones(g_shape, dtype=w.dtype), 0)[1].reshape(g_shape)
    return torch.norm_except_dim(w, 2, 0).reshape(g_shape)  # pragma: no cover


def _taps(w: torch.Tensor) -> torch.Tensor:  # [out, in, k] -> [out, k*in], column j*in + c = w[:, c, j]
    return w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()


def _untaps(w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    o, i, k = shape
    return w.reshape(o, k, i).permute(0, 2, 1).contiguous()


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


def _inverse_op(op: str, w: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
    if op == "copy":
        return [w]
    if op == "t":
        return [w.t().contiguous()]
    if op == "cat0":
        return [p.contiguous() for p in torch.split(w, [s[0] for s in shapes], dim=0)]
    if op in ("wn", "wn_taps"):
        v = _untaps(w, shapes[1]) if op == "wn_taps" else w.reshape(shapes[1])
        return [_wn_norms(v, shapes[0]), v.contiguous()]
    if op == "taps":
        return [_untaps(w, shapes[0])]
    if op == "k1":
        return [w.reshape(shapes[0])]
    raise ValueError(f"unknown op {op!r}")


def _dst_shape(e: Entry) -> tuple[int, ...]:
    s = e.src_shapes
    if e.op == "copy":
        return s[0]
    if e.op == "t":
        return (s[0][1], s[0][0])
    if e.op == "cat0":
        return (sum(x[0] for x in s), *s[0][1:])
    if e.op == "wn":
        return s[1][:2]
    if e.op in ("wn_taps", "taps"):
        v = s[-1]
        return (v[0], v[1] * v[2])
    if e.op == "k1":
        return s[0][:2]
    raise ValueError(e.op)


@dataclass
class RemapReport:
    kind: str
    version: str
    dims: dict[str, int]
    mapped: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)  # (dst, srcs, op)
    carried: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    nonfinite: list[str] = field(default_factory=list)
    heads_from: str = "config.yaml"  # or "width // 64" (check_config warned)

    @property
    def folded(self) -> list[str]:
        return [d for d, _, op in self.mapped if op.startswith("wn")]

    def summary(self) -> str:
        ops: dict[str, int] = {}
        for _, _, op in self.mapped:
            ops[op] = ops.get(op, 0) + 1
        srcs = sum(len(s) for _, s, _ in self.mapped)
        lines = [
            f"{self.kind} checkpoint (IndexTTS {self.version}), dims {self.dims}",
            f"  mapped:  {srcs} checkpoint tensors -> {len(self.mapped)} pack tensors, by transform {ops}",
            f"  folded:  {len(self.folded)} weight-norm pairs",
            f"  carried: {len(self.carried)} tensors verbatim (conditioning encoders)",
            f"  ignored: {len(self.ignored)} keys",
        ]
        whys: dict[str, int] = {}
        for _, why in self.ignored:
            whys[why] = whys.get(why, 0) + 1
        lines += [f"    {n} x {why}" for why, n in whys.items()]
        if self.nonfinite:
            lines.append(f"  NON-FINITE (allowed): {self.nonfinite}")
        return "\n".join(lines)


def _fmt_keys(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def plan_checkpoint(
    sd: Mapping[str, torch.Tensor], kind: Optional[str] = None, *, stack_adaln: bool = True
) -> dict[str, Any]:
    """What remap_state_dict would do with each key, without transforming or raising (for inspection).

    Returns {'kind', 'version', 'dims' (or None), 'error' (why dims could not be read, or None),
    'actions': {key: (action, target)}, 'missing': [...], 'problems': [...] (width mismatches between the
    conditioning encoders)}; action is one of mapped:<op>, carried, ignored, unknown, wrong-shape, wrong-dtype.
    """
    kind = kind or detect_kind(sd)
    res: dict[str, Any] = {"kind": kind, "version": None, "dims": None, "error": None, "actions": {}, "missing": []}
    if kind is None:
        res["error"] = "neither a gpt.pth nor an s2mel.pth"
        return res
    res["version"] = detect_version(kind, sd)
    try:
        dims = model_dims(kind, sd)
    except CheckpointError as e:
        res["error"] = str(e)
        dims = None
    res["dims"] = dims
    used: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    if dims is not None:
        with_gl = any(k.startswith("gpt_layer.") for k in sd)
        for e in expand_rules(kind, dims, stack_adaln=stack_adaln, with_gpt_layer=with_gl):
            for s, shp in zip(e.srcs, e.src_shapes, strict=True):
                used[s] = (e.op, e.dst, shp)
    res["missing"] = [s for s in used if s not in sd]
    ignore = tables.GPT_IGNORE if kind == "gpt" else tables.S2MEL_IGNORE
    for k, v in sd.items():
        if k in used:
            op, dst, shp = used[k]
            if tuple(v.shape) != shp:
                res["actions"][k] = ("wrong-shape", f"expected {list(shp)}")
            elif v.dtype not in FLOAT_DTYPES:
                res["actions"][k] = ("wrong-dtype", str(v.dtype))
            else:
                res["actions"][k] = (f"mapped:{op}", dst)
        elif kind == "gpt" and tables.full_match(tables.GPT_CARRY, k):
            res["actions"][k] = ("carried", "cond." + k) if v.dtype in FLOAT_DTYPES else ("wrong-dtype", str(v.dtype))
        elif (why := next((w for p, w in ignore if re.fullmatch(p, k)), None)) is not None and (
            dims is None or _layer_of(kind, k) < dims["L"]
        ):
            res["actions"][k] = ("ignored", why)
        elif kind == "gpt" and tables.full_match(tables.GPT_25_MARKERS, k):
            res["actions"][k] = ("unknown", "IndexTTS-2.5 key: no verified table")
        else:
            res["actions"][k] = ("unknown", "")
    res["problems"] = []
    if kind == "gpt" and dims is not None:  # the conditioning encoders' completeness and shapes
        carried = [k for k, (a, _) in res["actions"].items() if a == "carried"]
        c_missing, c_wrong, c_unknown = _check_carried(sd, carried, dims, None)
        res["missing"] += c_missing
        for k in c_unknown:
            res["actions"][k] = ("unknown", "")
        for msg in c_wrong:
            k, _, why = msg.partition(" ")
            if k in res["actions"]:
                res["actions"][k] = ("wrong-shape", why)
            else:
                res["problems"].append(msg)
    return res


_LAYER_KEY = {
    "gpt": re.compile(r"gpt\.h\.(\d+)\."),
    "s2mel": re.compile(r"cfm\.estimator\.transformer\.layers\.(\d+)\."),
}


def _layer_of(kind: str, key: str) -> int:
    """The transformer layer a key belongs to (-1 for keys outside the layers)."""
    m = _LAYER_KEY[kind].match(key)
    return int(m.group(1)) if m else -1


def remap_state_dict(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """Official flat state dict -> {pack name: tensor in kernel layout}, strictly validated.

    Raises CheckpointError naming every missing key, unknown key, wrong shape, wrong dtype and (unless
    allow_nonfinite) every tensor holding NaN or inf after its transform and dtype cast (a weight_v of zero norm
    folds to NaN; 1e6 overflows fp16).
    """
    return _remap(sd, kind, config=config, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
                  progress=progress)  # fmt: skip


def check_checkpoint(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
) -> RemapReport:
    """Every check of remap_state_dict, the values after transform and cast included, one tensor at a time and
    nothing kept: the report if the checkpoint would convert, else the CheckpointError conversion raises."""
    return _remap(sd, kind, config=config, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
                  keep=False)[1]  # fmt: skip


_S2MEL_PARTS = tuple(g for g, _ in tables.S2MEL_GROUPS)
_LIVE_CARRY = "conditioning encoder: stays in the official module (not carried by remap_live)"


def remap_live(
    module_or_state_dict: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
    kind: str,
    *,
    parts: Optional[tuple[str, ...]] = None,
    config: Optional[dict] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """A live official module (or its state dict) -> ({pack name: tensor}, report), as remap_state_dict, except:

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
    * the head count is the module's own when a module is given; for a state dict, config.yaml's or width // 64.

    Strictness is remap_state_dict's: unknown or missing keys, wrong shapes or dtypes, and non-finite values are
    CheckpointErrors naming them.
    """
    module = module_or_state_dict if isinstance(module_or_state_dict, torch.nn.Module) else None
    sd = module.state_dict() if module is not None else module_or_state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"remap_live: expected an nn.Module or a state dict, got {type(sd).__name__}")
    if kind not in ("gpt", "s2mel"):
        raise ValueError(f"remap_live: kind must be 'gpt' or 's2mel', got {kind!r}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"live {kind} state dict holds non-tensor entries {_fmt_keys(bad, 8)}")
    prefix = _live_prefix(kind, sd)
    if parts is None and prefix:
        parts = ("cfm",)
    heads = _live_heads(module, kind, prefix) if module is not None else None
    sd = {prefix + k: v.detach() for k, v in sd.items()}
    return _remap(sd, kind, config=config, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite, live=True,
                  parts=parts, heads=heads)  # fmt: skip


def _live_prefix(kind: str, sd: Mapping[str, Any]) -> str:
    """What turns a live module's keys into the flattened s2mel names: '' (MyModel.models), 'cfm.' (a CFM) or
    'cfm.estimator.' (a lone DiT)."""
    if kind == "gpt" or any(k.split(".", 1)[0] in _S2MEL_PARTS for k in sd):
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


def _select_parts(kind: str, parts: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
    if parts is None:
        return None
    if kind != "s2mel":
        raise ValueError("parts= selects s2mel groups; a gpt remap has none")
    parts = tuple(parts)
    unknown = [p for p in parts if p not in _S2MEL_PARTS]
    if not parts or unknown:
        raise ValueError(f"parts={parts!r}: expected a non-empty subset of {_S2MEL_PARTS}")
    return parts


def _transform(e: Entry, sd: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One entry's pack tensor: weight norm folded in fp32; cast to ``dtype``, or to the source's dtype when None
    (then an identity transform returns the source tensor itself)."""
    xs = [sd[s] for s in e.srcs]
    w = _forward_op(e.op, [x.float() for x in xs] if e.op.startswith("wn") else xs)
    return w.to(dtype or xs[-1].dtype).contiguous()


def _aliases(sd: Mapping[str, torch.Tensor], known: list[str]) -> dict[str, str]:
    """{key: the known key whose tensor it is (same storage, offset, shape, strides and dtype)}."""

    def ident(t):
        if t.device.type == "meta":
            return None
        return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())

    primary = {ident(sd[k]): k for k in reversed(known)}
    primary.pop(None, None)
    return {k: primary[i] for k in sd if k not in known and (i := ident(sd[k])) in primary}


def _remap(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str],
    *,
    config: Optional[dict] = None,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    keep: bool = True,
    live: bool = False,
    parts: Optional[tuple[str, ...]] = None,
    heads: Optional[int] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """The one remap behind remap_state_dict (keep), check_checkpoint (not keep) and remap_live (live: source
    dtypes, no carry, aliases allowed; ``parts``, ``heads`` from the module)."""
    kind = kind or detect_kind(sd)
    if kind not in ("gpt", "s2mel"):
        raise CheckpointError("cannot tell a gpt.pth from an s2mel.pth: no 'gpt.h.*' and no 'cfm.estimator.*' keys")
    parts = _select_parts(kind, parts)
    version = detect_version(kind, sd)
    if kind == "gpt" and version == "2.5":
        markers = [k for k in sd if tables.full_match(tables.GPT_25_MARKERS, k)]
        raise CheckpointError(
            f"IndexTTS-2.5 gpt.pth detected ({_fmt_keys(markers, 4)}): the reference module code has no 2.5 "
            "UnifiedVoice, so no verified key table exists for it"
        )
    dims = check_config(kind, model_dims(kind, sd, heads, parts=parts), config, heads=heads)
    pol = None if live else _policy(kind, policy)
    with_gl = "gpt_layer" in parts if parts is not None else any(k.startswith("gpt_layer.") for k in sd)
    entries = expand_rules(kind, dims, stack_adaln=stack_adaln, with_gpt_layer=with_gl, parts=parts)
    from_config = config is not None and "heads" in config_dims(kind, config)
    heads_from = "module" if heads else "config.yaml" if from_config else "width // 64"
    report = RemapReport(kind, version, dims, heads_from=heads_from)

    # 1. coverage: every entry's sources present exactly once, every key accounted for
    used: dict[str, str] = {}
    dup = []
    for e in entries:
        for s in e.srcs:
            if s in used:
                dup.append(s)
            used[s] = e.dst
    if dup:  # a bug in tables.py, not in the file
        raise RuntimeError(f"the key tables consume these keys twice: {dup}")
    missing = [s for s in used if s not in sd]
    carried, ignored, unknown = [], [], []
    ignore = tables.GPT_IGNORE if kind == "gpt" else tables.S2MEL_IGNORE
    for k in sd:
        if k in used:
            continue
        if parts is not None and k.split(".", 1)[0] in _S2MEL_PARTS and k.split(".", 1)[0] not in parts:
            ignored.append((k, f"outside parts={parts}"))
        elif kind == "gpt" and tables.full_match(tables.GPT_CARRY, k) and live:
            ignored.append((k, _LIVE_CARRY))
        elif kind == "gpt" and tables.full_match(tables.GPT_CARRY, k):
            carried.append(k)
        elif (why := next((w for p, w in ignore if re.fullmatch(p, k)), None)) is not None and _layer_of(
            kind, k
        ) < dims.get("L", 0):  # an ignored key of a layer the model has
            ignored.append((k, why))
        else:
            unknown.append(k)
    if live and unknown:  # the same tensor under a second name
        alias = _aliases(sd, [k for k in sd if k in used] + [k for k, _ in ignored])
        ignored += [(k, f"alias of {alias[k]} (the same tensor)") for k in unknown if k in alias]
        unknown = [k for k in unknown if k not in alias]
    carry_wrong: list[str] = []
    if kind == "gpt" and not live:
        c_missing, carry_wrong, c_unknown = _check_carried(sd, carried, dims, config)
        missing += c_missing
        unknown += c_unknown
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_keys(missing)}")
    if unknown:
        problems.append(f"unknown keys (not in the tables, the carry list or the ignore list): {_fmt_keys(unknown)}")
    # 2. shapes and dtypes
    wrong_shape, wrong_dtype = [], []
    for e in entries:
        for s, shp in zip(e.srcs, e.src_shapes, strict=True):
            if s in sd and tuple(sd[s].shape) != shp:
                wrong_shape.append(f"{s} {list(sd[s].shape)} (expected {list(shp)})")
    for k in list(used) + carried:
        if k in sd and sd[k].dtype not in FLOAT_DTYPES:
            wrong_dtype.append(f"{k} {str(sd[k].dtype).replace('torch.', '')}")
    wrong_shape += carry_wrong
    if wrong_shape:
        problems.append(f"wrong shape: {_fmt_keys(wrong_shape, 8)}")
    if wrong_dtype:
        problems.append(f"wrong dtype (expected float32/float16/bfloat16): {_fmt_keys(wrong_dtype, 8)}")
    if problems:
        raise CheckpointError(f"{'live ' if live else ''}{kind} checkpoint rejected: " + "; ".join(problems))

    # 3. transform, cast, finiteness (judged once at the end: one device sync for live CUDA tensors)
    out: dict[str, torch.Tensor] = {}
    total = len(entries) + len(carried)
    finite: list[tuple[str, torch.Tensor]] = []
    for n, e in enumerate(entries):
        w = _transform(e, sd, None if pol is None else getattr(torch, pol[e.cls]))
        if keep and not live and w.data_ptr() == sd[e.srcs[0]].data_ptr():
            w = w.clone()  # never alias an mmap'd source
        srcs = ", ".join(e.srcs) if len(e.srcs) <= 2 else e.srcs[0] + ", ..."
        finite.append((f"{e.dst} (from {srcs})", torch.isfinite(w).all()))
        if keep:
            out[e.dst] = w
        report.mapped.append((e.dst, e.srcs, e.op))
        if progress:
            progress(n + 1, total, e.dst)
    for n, k in enumerate(sorted(carried)):
        w = sd[k].to(getattr(torch, pol["carry"])).clone().contiguous()
        finite.append((k, torch.isfinite(w).all()))
        if keep:
            out["cond." + k] = w
        report.carried.append(k)
        if progress:
            progress(len(entries) + n + 1, total, "cond." + k)
    report.ignored = ignored
    nonfinite = [name for name, ok in finite if not bool(ok)]
    if nonfinite:
        if not allow_nonfinite:
            raise CheckpointError(
                f"{kind} checkpoint rejected: non-finite values (NaN or inf, possibly after the dtype cast) in "
                f"{_fmt_keys(nonfinite, 8)}; pass allow_nonfinite=True (--allow-nonfinite) to convert anyway"
            )
        report.nonfinite = nonfinite
        warnings.warn(f"non-finite weights allowed in: {_fmt_keys(nonfinite, 8)}", CheckpointWarning, stacklevel=3)
    return out, report


def inverse_remap(
    pack: Mapping[str, torch.Tensor],
    kind: str,
    dims: dict[str, int],
    *,
    stack_adaln: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Fast-pack tensors -> official flat state dict (ignored keys are not recreated; weight-norm pairs come back
    as (g = ||w||, v = w), which fold to w again bit-exactly; values are cast to ``dtype``)."""
    with_gpt_layer = "gpt_layer.0.w" in pack
    out: dict[str, torch.Tensor] = {}
    for e in expand_rules(kind, dims, stack_adaln=stack_adaln, with_gpt_layer=with_gpt_layer):
        w = pack[e.dst]
        if e.op.startswith("wn"):
            w = w.float()
        for s, t in zip(e.srcs, _inverse_op(e.op, w, e.src_shapes), strict=True):
            out[s] = t.to(dtype)
    for k, v in pack.items():
        if k.startswith("cond."):
            out[k[len("cond.") :]] = v.to(dtype)
    return out
