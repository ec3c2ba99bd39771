"""The file remap: a checkpoint's state dict (gpt.pth, s2mel.pth, IndexTTS-2.5's codec.pth) -> fast-pack tensors
in the dtype policy, the GPT's conditioning encoders carried, checked against config.yaml (remap_state_dict,
check_checkpoint); the live remap checked against config.yaml too (remap_live); the plan for inspection; the
exact inverse of the transforms (inverse_remap). The IndexTTS version is the structure's (loader.dims), which must
be ``version`` when that is given; an s2mel.pth takes ``version`` (2.5: its gpt_layer is ignored)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch

from ..loader import remap as core
from ..loader import tables
from ..loader.dims import detect_kind, model_dims, resolve_version, version_evidence, version_note, version_reason
from ..loader.errors import CheckpointError
from ..loader.remap import (
    FLOAT_DTYPES,
    Entry,
    ModuleOrStateDict,
    RemapReport,
    expand_rules,
    resolve_folded,
    select_parts,
)
from .conditioning import _check_carried
from .config import check_config, heads_source
from .policy import _policy


def remap_state_dict(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    version: Optional[str] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """Official flat state dict -> {pack name: tensor in kernel layout}, strictly validated.

    Raises CheckpointError naming every missing key, unknown key, wrong shape, wrong dtype and (unless
    allow_nonfinite) every tensor holding NaN or inf after its transform and dtype cast (a weight_v of zero norm
    folds to NaN; 1e6 overflows fp16); and the version: a gpt.pth with structure of both IndexTTS-2.0 and 2.5,
    or of another version than ``version`` ('2.0' / '2.5'), a codec.pth where 2.0 is expected.
    """
    return _remap(sd, kind, config=config, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
                  progress=progress, version=version)  # fmt: skip


def check_checkpoint(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    version: Optional[str] = None,
) -> RemapReport:
    """Every check of remap_state_dict, the values after transform and cast included, one tensor at a time and
    nothing kept: the report if the checkpoint would convert, else the CheckpointError conversion raises."""
    return _remap(sd, kind, config=config, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
                  keep=False, version=version)[1]  # fmt: skip


def _remap(
    sd: Mapping[str, torch.Tensor], kind: Optional[str], *, config: Optional[dict], policy: Optional[Mapping[str, str]],
    stack_adaln: bool, allow_nonfinite: bool, progress: Optional[Callable[[int, int, str], None]] = None,
    keep: bool = True, version: Optional[str] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:  # fmt: skip
    """The file remap: the live remap's steps, plus config.yaml, the dtype policy and the carried encoders."""
    kind = kind or detect_kind(sd)
    if kind not in ("gpt", "s2mel", "codec"):
        raise CheckpointError(
            "cannot tell a gpt.pth from an s2mel.pth or a codec.pth: no 'gpt.h.*', no 'cfm.estimator.*' and no "
            "'quantizer.quantizers.*' keys"
        )
    version = resolve_version(kind, sd, version)
    dims = check_config(kind, model_dims(kind, sd), config, stacklevel=3)
    pol = _policy(kind, policy, version)
    parts = select_parts(kind, None, sd, version)
    entries = resolve_folded(expand_rules(kind, dims, parts=parts, stack_adaln=stack_adaln, version=version), sd)
    missing, carried, ignored, unknown = core.classify(sd, kind, entries, dims, parts, carry=True, version=version)
    c_missing, carry_wrong, c_unknown = (
        _check_carried(sd, carried, dims, config, version) if kind == "gpt" else ([], [], [])
    )
    core.reject(kind + version_note(kind, sd), sd, entries, missing + c_missing, unknown + c_unknown, carried,
                carry_wrong)  # fmt: skip
    report = RemapReport(kind, version, dims, ignored=ignored, heads_from=heads_source(kind, config),
                         version_reason=version_reason(kind, sd, version))  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    flags: list[tuple[str, torch.Tensor]] = []
    total = len(entries) + len(carried)
    for n, e in enumerate(entries):
        w = core.transform(e, sd, getattr(torch, pol[e.cls]))
        if keep and w.data_ptr() == sd[e.srcs[0]].data_ptr():
            w = w.clone()  # never alias an mmap'd source
        flags.append(core.finite_flag(e, w))
        if keep:
            out[e.dst] = w
        report.mapped.append((e.dst, e.srcs, e.op))
        if progress:
            progress(n + 1, total, e.dst)
    for n, k in enumerate(sorted(carried)):
        w = sd[k].to(getattr(torch, pol["carry"])).clone().contiguous()
        flags.append((k, torch.isfinite(w).all()))
        if keep:
            out["cond." + k] = w
        report.carried.append(k)
        if progress:
            progress(len(entries) + n + 1, total, "cond." + k)
    report.nonfinite = core.judge_finite(kind, flags, allow_nonfinite, stacklevel=3)
    return out, report


def remap_live(
    module_or_state_dict: ModuleOrStateDict,
    kind: str,
    *,
    config: Optional[dict] = None,
    parts: Optional[tuple[str, ...]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    version: Optional[str] = None,
) -> tuple[dict[str, torch.Tensor], RemapReport]:
    """indextts_fast.loader.remap_live, with the dimensions also checked against config.yaml (``config``, as
    load_config returns it), which gives a state dict its head count (a module's own must agree with it)."""
    sd, parts, heads, version = core.live_source(module_or_state_dict, kind, parts, version)
    dims = check_config(kind, model_dims(kind, sd, heads, parts=parts), config, heads=heads, stacklevel=2)
    heads_from = heads_source(kind, config, heads)
    return core.remap_live_at(
        sd, kind, dims, parts, heads_from, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite, version=version
    )


def plan_checkpoint(
    sd: Mapping[str, torch.Tensor],
    kind: Optional[str] = None,
    *,
    stack_adaln: bool = True,
    version: Optional[str] = None,
) -> dict[str, Any]:
    """What remap_state_dict would do with each key, without transforming or raising (for inspection).

    Returns {'kind', 'version', 'version_reason', 'dims' (or None), 'error' (why dims could not be read, or None),
    'actions': {key: (action, target)}, 'missing': [...], 'problems': [...] (width mismatches between the
    conditioning encoders)}; action is one of mapped:<op>, carried, ignored, unknown, wrong-shape, wrong-dtype.
    The keys are planned against the table of the version the structure shows (a gpt.pth showing both: 'mixed',
    planned as 2.5); ``version`` is what an s2mel.pth is taken as.
    """
    kind = kind or detect_kind(sd)
    res: dict[str, Any] = {"kind": kind, "version": None, "version_reason": None, "dims": None, "error": None,
                           "actions": {}, "missing": []}  # fmt: skip
    if kind is None:
        res["error"] = "neither a gpt.pth, nor an s2mel.pth, nor a codec.pth"
        return res
    evidence = version_evidence(kind, sd)
    try:
        version = resolve_version(kind, sd, version if kind == "s2mel" else None)
        res["version"], res["version_reason"] = version, version_reason(kind, sd, version)
    except CheckpointError as e:  # both versions' structure
        version, res["version"], res["version_reason"] = "2.5", "mixed", str(e)
    try:
        dims = model_dims(kind, sd)
    except CheckpointError as e:
        res["error"] = str(e)
        dims = None
    res["dims"] = dims
    used: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    gpt_layer_ignored = kind == "s2mel" and version == "2.5"
    if dims is not None:
        parts = select_parts(kind, None, sd, version)
        for e in resolve_folded(expand_rules(kind, dims, parts=parts, stack_adaln=stack_adaln, version=version), sd):
            for s, shp in zip(e.srcs, e.src_shapes, strict=True):
                used[s] = (e.op, e.dst, shp)
    carry = tables.gpt_carry(version)
    other = {"2.0": ("2.5", tables.GPT_25_MARKERS), "2.5": ("2.0", tables.GPT_20_MARKERS)}.get(version)
    res["missing"] = [s for s in used if s not in sd]
    for k, v in sd.items():
        if k in used:
            op, dst, shp = used[k]
            if tuple(v.shape) != shp:
                res["actions"][k] = ("wrong-shape", f"expected {list(shp)}")
            elif v.dtype not in FLOAT_DTYPES:
                res["actions"][k] = ("wrong-dtype", str(v.dtype))
            else:
                res["actions"][k] = (f"mapped:{op}", dst)
        elif kind == "gpt" and tables.full_match(carry, k):
            res["actions"][k] = ("carried", "cond." + k) if v.dtype in FLOAT_DTYPES else ("wrong-dtype", str(v.dtype))
        elif gpt_layer_ignored and k.startswith("gpt_layer."):
            res["actions"][k] = ("ignored", tables.S2MEL_25_IGNORE)
        elif (why := core.ignored_why(kind, k, None if dims is None else dims["L"])) is not None:
            res["actions"][k] = ("ignored", why)
        elif kind == "gpt" and other and other[0] in evidence and tables.full_match(other[1], k):
            res["actions"][k] = ("unknown", f"an IndexTTS-{other[0]} key in an IndexTTS-{version} gpt.pth")
        else:
            res["actions"][k] = ("unknown", "")
    res["problems"] = []
    if kind == "gpt" and dims is not None:  # the conditioning encoders' completeness and shapes
        carried = [k for k, (a, _) in res["actions"].items() if a == "carried"]
        c_missing, c_wrong, c_unknown = _check_carried(sd, carried, dims, None, version)
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


# ---- the inverse -----------------------------------------------------------------------------------------------------


def _wn_norms(w: torch.Tensor, g_shape: tuple[int, ...]) -> torch.Tensor:
    """||w|| over all dims but 0, computed by the same kernel _weight_norm uses, so that folding (norms, w) gives w."""
    if hasattr(torch, "_weight_norm_interface"):
        ones = torch.ones(g_shape, dtype=w.dtype, device=w.device)
        return torch._weight_norm_interface(w, ones, 0)[1].reshape(g_shape)
    return torch.norm_except_dim(w, 2, 0).reshape(g_shape)  # pragma: no cover


def _untaps(w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    o, i, k = shape
    return w.reshape(o, k, i).permute(0, 2, 1).contiguous()


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
    if op in ("k1", "dw"):
        return [w.reshape(shapes[0])]
    raise ValueError(f"unknown op {op!r}")


def dst_shape(e: Entry) -> tuple[int, ...]:
    """The shape of an entry's pack tensor."""
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
    if e.op == "dw":
        return (s[0][0], s[0][2])
    raise ValueError(e.op)


def inverse_remap(
    pack: Mapping[str, torch.Tensor],
    kind: str,
    dims: dict[str, int],
    *,
    stack_adaln: bool = True,
    dtype: torch.dtype = torch.float32,
    version: str = "2.0",
) -> dict[str, torch.Tensor]:
    """Fast-pack tensors -> official flat state dict (ignored keys are not recreated; weight-norm pairs come back
    as (g = ||w||, v = w), which fold to w again bit-exactly; values are cast to ``dtype``). ``version``: the GPT
    table (2.0 or 2.5)."""
    out: dict[str, torch.Tensor] = {}
    parts = select_parts(kind, None, pack, version)
    for e in expand_rules(kind, dims, parts=parts, stack_adaln=stack_adaln, version=version):
        w = pack[e.dst]
        if e.op.startswith("wn"):
            w = w.float()
        for s, t in zip(e.srcs, _inverse_op(e.op, w, e.src_shapes), strict=True):
            out[s] = t.to(dtype)
    for k, v in pack.items():
        if k.startswith("cond."):
            out[k[len("cond.") :]] = v.to(dtype)
    return out
