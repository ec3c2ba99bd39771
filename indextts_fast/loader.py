"""Strict checkpoint loader: official IndexTTS2 checkpoints -> fast-pack safetensors -> kernel-layout weights.

Two steps:
    convert_checkpoint(src, out)   gpt.pth / s2mel.pth (or .safetensors exports with the same names) -> one
                                   fast-pack .safetensors in kernel layout, every transform applied once, with
                                   metadata (format version, source sha256, config, dtype policy, layout, version);
                                   written atomically, never over its source, never over an existing pack unless
                                   ``overwrite=True``.
    load_pack(path, device)        the pack -> FastGPTWeights / FastS2MelWeights: one read of the whole file into
                                   memory (or one host-to-device copy), every tensor a view of it, no transform.

Kernel layouts (the contract the GEMM / attention / norm kernels are written against):
    * every GEMM weight is [N, K] row-major = nn.Linear's [out, in]; GPT-2 Conv1D [in, out] is transposed, so
      GPT qkv.w is [3C, C] with rows q | k | v (head h of q = rows h*64 .. h*64+63);
    * DiT wqkv stays [3C, C], rows q | k | v; SwiGLU w13 = cat([w1, w3], 0) [2I, C];
    * weight norm folded (torch._weight_norm: g * v / ||v||, norm over all dims but 0, no eps, the exact
      computation the official module runs at every forward); 1x1 convs squeezed to [out, in]; k-tap convs
      [out, in, k] -> [out, k*in], tap-major (column j*in + c = tap j of channel c);
    * DiT AdaLN project_layer weights (scale | shift) either per norm or stacked into one [(2L+1)*2C, C] GEMM
      (layer i attention_norm, layer i ffn_norm, ..., transformer.norm), ``stack_adaln``;
    * dtype per tensor class (``DEFAULT_POLICY``): the GPT all fp16, as IndexTTS2 runs it with ``use_fp16``
      (``gpt.half()`` rounds every tensor of UnifiedVoice, norms and embeddings included, so storing those in
      fp32 would not reproduce its tokens; ``gpt_policy("float32")`` reproduces the fp32 default); s2mel all
      fp32 (the official code runs it in fp32 either way).

Strictness: every table entry (checkpoint_tables.py) is matched by exactly one key of the expected shape and a
floating dtype; every key is mapped, carried (GPT conditioning encoders: each one present complete, with shapes
consistent with its own widths, the GPT's and config.yaml's, see CARRY_*) or on the explicit ignore list;
anything else raises CheckpointError naming the keys. Non-finite weights (also after the transform and the dtype
cast) are an error unless ``allow_nonfinite=True`` (then they are reported). Model dimensions are read from the
checkpoint's own shapes and checked against config.yaml (every field read is type-checked) when one is given;
head counts are in no shape, so without config.yaml they are assumed width // 64 with a CheckpointWarning, and a
width that is not a multiple of 64 needs the config. A torch.save zip is checked record by record (the size of
every storage's record, every record's CRC-32), which torch.load(mmap=True) does not do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import signal
import struct
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from . import checkpoint_tables as tables
from .checkpoint_tables import Rule

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ConversionInterrupted",
    "gpt_policy",
    "load_config",
    "check_checkpoint",
    "check_pack",
    "PACK_FORMAT",
    "PACK_VERSION",
    "DEFAULT_POLICY",
    "read_checkpoint",
    "detect_kind",
    "model_dims",
    "check_config",
    "expand_rules",
    "plan_checkpoint",
    "remap_state_dict",
    "inverse_remap",
    "convert_checkpoint",
    "read_pack",
    "load_pack",
    "FastGPTLayer",
    "FastGPTWeights",
    "FastDiTLayer",
    "FastDiTWeights",
    "FastLengthRegulatorWeights",
    "FastS2MelWeights",
]

PACK_FORMAT = "indextts_fast.pack"
PACK_VERSION = 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

DEFAULT_POLICY: dict[str, dict[str, str]] = {
    # use_fp16: the official code calls .half() on the whole UnifiedVoice (infer_v2.py)
    "gpt": {
        "gemm_w": "float16",
        "gemm_b": "float16",
        "norm": "float16",
        "embed": "float16",
        "other": "float16",
        "carry": "float16",
    },  # fmt: skip
    "s2mel": {"gemm_w": "float32", "gemm_b": "float32", "norm": "float32", "embed": "float32", "other": "float32"},
}

PathLike = Union[str, os.PathLike]


def gpt_policy(dtype: str) -> dict[str, str]:
    """A dtype policy with every GPT tensor class in one dtype, for ``policy=`` of convert_checkpoint /
    remap_state_dict: "float16" is DEFAULT_POLICY (the official use_fp16), "float32" reproduces the official fp32
    default, "bfloat16" halves the pack without fp16's range limit (not an official mode)."""
    return {k: dtype for k in DEFAULT_POLICY["gpt"]}


class CheckpointError(ValueError):
    """A checkpoint or pack that the loader refuses; the message names the file, the keys and the problem."""


class CheckpointWarning(UserWarning):
    """Something the loader accepted but a user should know: a head count assumed, non-finite weights allowed."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading the official containers
# ----------------------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _check_regular_file(path: Path) -> None:
    """Refuse what cannot be read as a file before opening it: missing, unreadable, a directory, a FIFO (opening
    one blocks until a writer appears), a device."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not os.access(path, os.R_OK) or not path.is_file():
        raise CheckpointError(f"{path}: unreadable (permission denied or not a regular file)")


def _load_flat(path: Path) -> dict[str, Any]:
    """torch.load (weights_only, mmap) or safetensors; any reading failure becomes a CheckpointError."""
    _check_regular_file(path)
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        _check_zip_records(path)
        return obj
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, not a checkpoint, pickled objects refused by weights_only, ...
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (truncated, corrupt, or not a weights-only torch/safetensors file): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


class _Stub(dict):
    """Stands in for every global a checkpoint's pickle names: keeps its call arguments and items, runs nothing."""

    args: tuple = ()  # NEWOBJ builds an instance without calling __init__

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


@dataclass(frozen=True)
class _StorageRef:
    key: str
    nbytes: int


def _storage_itemsize(stype: Any) -> int:
    name = getattr(stype, "global_name", "")
    if name == "torch.UntypedStorage":
        return 1
    dt = None
    if name.startswith("torch.") and name.endswith("Storage") and name.count(".") == 1:
        with warnings.catch_warnings():  # the legacy typed-storage classes warn on access
            warnings.simplefilter("ignore")
            dt = getattr(getattr(torch, name[len("torch.") :], None), "dtype", None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"unknown storage type {name!r}")
    return dt.itemsize


class _StorageScan(pickle.Unpickler):
    """Reads data.pkl of a torch.save zip without importing or calling anything: every global is a _Stub class,
    every storage a _StorageRef (its record key and the byte size torch.load gives it)."""

    def find_class(self, module, name):
        return type(name, (_Stub,), {"global_name": f"{module}.{name}"})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and _is_int(pid[4])):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:80]}")
        return _StorageRef(str(pid[2]), pid[4] * _storage_itemsize(pid[1]))


def _storages(obj: Any) -> dict[str, tuple[str, int]]:
    """{storage key: (the path of the first tensor stored in it, e.g. 'net/cfm/estimator.conv1.bias', its byte
    size)} from the scanned pickle."""
    found: dict[str, tuple[str, int]] = {}
    seen: set[int] = set()
    todo: list[tuple[Any, str]] = [(obj, "")]
    while todo:
        o, where = todo.pop()
        if isinstance(o, _StorageRef):
            first, nbytes = found.get(o.key, (where or "the top level", 0))
            found[o.key] = (first, max(nbytes, o.nbytes))
            continue
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, dict):
            todo += [(v, f"{where}/{k}" if where else str(k)) for k, v in reversed(o.items())]
        if isinstance(o, (_Stub, list, tuple)):  # a tensor rebuild: _rebuild_tensor_v2(storage, ...)
            todo += [(a, where) for a in reversed(o.args if isinstance(o, _Stub) else o)]
    return found


def _check_zip_records(path: Path, chunk: int = 1 << 24) -> None:
    """The checks torch.load(mmap=True) skips: every storage the pickle references has a record of exactly its byte
    size (a shorter one would be read past its end), and every record matches its CRC-32 (streamed, ``chunk`` bytes
    at a time). Cost on a 2-core AMD EPYC VM: 0.07-0.08 s for a 105 MB checkpoint in the page cache (1.4 GB/s; the
    source's sha256 takes 0.12 s), 0.17-0.21 s from disk; bench/NOTES.md has the command."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        prefix = infos[0].filename.split("/", 1)[0] if infos else ""
        try:
            root = _StorageScan(io.BytesIO(zf.read(f"{prefix}/data.pkl"))).load()
        except CheckpointError as e:
            raise CheckpointError(f"{path}: corrupt: {prefix}/data.pkl: {e}") from None
        storages = _storages(root)
        by_name = {i.filename: i for i in infos}
        for key, (where, nbytes) in storages.items():
            rec = f"{prefix}/data/{key}"
            size = by_name[rec].file_size if rec in by_name else None
            if size != nbytes:
                held = "is missing" if size is None else f"holds {size} bytes"
                raise CheckpointError(
                    f"{path}: truncated or corrupt: record '{rec}' {held}, the storage of {where} needs {nbytes}"
                )
        tensor_of = {f"{prefix}/data/{k}": where for k, (where, _) in storages.items()}
        for info in infos:
            try:
                with zf.open(info) as f:
                    while f.read(chunk):
                        pass
            except zipfile.BadZipFile as e:
                what = f" ({tensor_of[info.filename]})" if info.filename in tensor_of else ""
                why = "fails its CRC-32 check" if "CRC" in str(e) else f"unreadable ({e})"
                raise CheckpointError(f"{path}: corrupt: record '{info.filename}'{what} {why}") from None


def _check_flat(path: Path, sd: Mapping, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: wrong container: {where} is a {type(sd).__name__}, expected a state dict")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: wrong container: {where} holds non-tensor entries {bad[:8]}"
            + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        )
    return dict(sd)


def _strip_module(sd: dict[str, torch.Tensor], path: Path, where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        if k2 in out:
            raise CheckpointError(f"{path}: {where}: key {k2!r} appears both with and without the 'module.' prefix")
        out[k2] = v
    return out


def read_checkpoint(path: PathLike) -> tuple[str, dict[str, torch.Tensor]]:
    """Read gpt.pth / s2mel.pth (or a .safetensors export) into ('gpt' | 's2mel', flat state dict).

    gpt.pth: a flat state dict, or one under 'model'. s2mel.pth: state['net'] = {'cfm', 'length_regulator',
    'gpt_layer'}, each a flat state dict (a leading 'module.' is stripped); other top-level entries (optimizer,
    epoch, ...) are ignored. The s2mel result is flattened as '<module>.<key>'; a .safetensors export uses those
    flattened names directly. Tensors stay memory-mapped (torch.load mmap=True) until the remap touches them.
    """
    path = Path(path)
    obj = _load_flat(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: wrong container: top level is a {type(obj).__name__}, expected a dict")
    if "net" in obj:
        net = obj["net"]
        if not isinstance(net, Mapping):
            raise CheckpointError(f"{path}: wrong container: state['net'] is a {type(net).__name__}, expected a dict")
        flat: dict[str, torch.Tensor] = {}
        for name, sub in net.items():
            if not isinstance(name, str):
                raise CheckpointError(f"{path}: wrong container: state['net'] has a non-string module name {name!r}")
            sub = _strip_module(_check_flat(path, sub, f"state['net'][{name!r}]"), path, f"net[{name!r}]")
            for k, v in sub.items():
                if f"{name}.{k}" in flat:  # e.g. net['cfm']['estimator.x'] and net['cfm.estimator']['x']
                    raise CheckpointError(f"{path}: state['net'] holds the key {name}.{k} twice (as {name!r}: {k!r})")
                flat[f"{name}.{k}"] = v
        missing = [g for g, req in tables.S2MEL_GROUPS if req and g not in net]
        if missing:
            raise CheckpointError(f"{path}: state['net'] lacks the module(s) {missing} (has {sorted(net)})")
        return "s2mel", flat
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    sd = _strip_module(_check_flat(path, obj, "the top level"), path, "state dict")
    kind = detect_kind(sd)
    if kind is None:
        raise CheckpointError(
            f"{path}: wrong container: neither a gpt.pth (no 'gpt.h.*' keys) nor an s2mel.pth (no state['net'] and "
            f"no 'cfm.estimator.*' keys); first keys: {sorted(sd)[:6]}"
        )
    return kind, sd


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


# ----------------------------------------------------------------------------------------------------------------------
# Dimensions: read from the checkpoint's shapes, checked against config.yaml
# ----------------------------------------------------------------------------------------------------------------------
def _shape(sd, key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r} (needed to read {what})")
    return tuple(sd[key].shape)


def _count(sd, pattern: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))]
    return max(idx) + 1 if idx else 0


def model_dims(kind: str, sd: Mapping[str, torch.Tensor], heads: Optional[int] = None) -> dict[str, int]:
    """Model dimensions from tensor shapes. Head counts are in no shape: ``heads``, else C // 64 provisionally
    (None when C is not a multiple of 64); check_config settles it from config.yaml, warning or refusing."""
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
    e = "cfm.estimator."
    C, D = _shape(sd, e + "cond_projection.weight", "the DiT width")
    F = _shape(sd, e + "conv2.weight", "the mel channels")[0]
    H = _shape(sd, e + "conv1.weight", "the WaveNet width")[0]
    merge_in = _shape(sd, e + "cond_x_merge_linear.weight", "the style width")[1]
    R, Q = _shape(sd, "length_regulator.content_in_proj.weight", "the length-regulator width")
    d = {
        "C": C,
        "D": D,
        "F": F,
        "H": H,
        "S": merge_in - C - 2 * F,
        "L": _count(sd, r"cfm\.estimator\.transformer\.layers\.(\d+)\.attention\.wqkv\.weight"),
        "I": _shape(sd, e + "transformer.layers.0.feed_forward.w1.weight", "the SwiGLU width")[0],
        "W": _count(sd, r"cfm\.estimator\.wavenet\.in_layers\.(\d+)\.conv\.conv\.weight_v"),
        "K": _shape(sd, e + "wavenet.in_layers.0.conv.conv.weight_v", "the WaveNet kernel")[-1],
        "R": R,
        "Q": Q,
        "N": max(_count(sd, r"length_regulator\.model\.(\d+)\.weight") - 1, 0) // 3,
    }
    d["heads"] = heads or _heads_from_width(C)
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
    {encoder prefix: sizes}), the sizes in the letters of checkpoint_tables.CARRY_GROUPS."""
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


def check_config(kind: str, dims: dict[str, int], cfg: Optional[Mapping]) -> dict[str, int]:
    """Compare checkpoint dimensions with config.yaml; returns dims with the head count.

    Head counts are in no tensor shape: config.yaml's when it gives one; else width // 64 (IndexTTS2's head_dim),
    with a warning; a width that is not a multiple of 64 needs the config's head count."""
    want = config_dims(kind, cfg) if cfg is not None else {}
    src = getattr(cfg, "source", "config.yaml")
    heads = want.pop("heads", None)
    diff = {k: (dims.get(k), v) for k, v in want.items() if dims.get(k) != v}
    if diff:
        raise CheckpointError(
            f"checkpoint shapes disagree with {src}: "
            + ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
        )
    out = dict(dims)
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
        stacklevel=4,  # the caller of remap_state_dict / check_checkpoint
    )
    out["heads"] = C // 64
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Rules -> concrete entries
# ----------------------------------------------------------------------------------------------------------------------
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


def expand_rules(kind: str, dims: dict[str, int], *, stack_adaln: bool = True,
                 with_gpt_layer: bool = True) -> list[Entry]:  # fmt: skip
    """Every table rule instantiated at these dimensions, in pack order."""
    out: list[Entry] = []
    base = {"n3": 3 * dims.get("N", 0)}
    for r in _rules(kind, stack_adaln):
        if not with_gpt_layer and r.dst.startswith("gpt_layer."):
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


# ----------------------------------------------------------------------------------------------------------------------
# Transforms and their inverses
# ----------------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------------
# Remap (strict) and inverse
# ----------------------------------------------------------------------------------------------------------------------
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


def _policy(kind: str, policy: Optional[Mapping[str, str]]) -> dict[str, str]:
    p = dict(DEFAULT_POLICY[kind])
    if policy:
        unknown = set(policy) - set(p)
        if unknown:
            raise ValueError(f"policy: unknown tensor classes {sorted(unknown)} (known: {sorted(p)})")
        for k, v in policy.items():
            if not isinstance(getattr(torch, str(v), None), torch.dtype) or getattr(torch, v) not in FLOAT_DTYPES:
                raise ValueError(f"policy[{k!r}] = {v!r}: expected one of float32, float16, bfloat16")
        p.update(policy)
    return p


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


def _check_carried(
    sd: Mapping[str, torch.Tensor], carried: list[str], dims: dict[str, int], config: Optional[dict]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, wrong shape, unknown) among the carried conditioning-encoder keys (checkpoint_tables.CARRY_*).

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
    return _remap(sd, kind, config, policy, stack_adaln, allow_nonfinite, progress, keep=True)


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
    return _remap(sd, kind, config, policy, stack_adaln, allow_nonfinite, None, keep=False)[1]


def _remap(sd, kind, config, policy, stack_adaln, allow_nonfinite, progress, *, keep: bool):
    kind = kind or detect_kind(sd)
    if kind not in ("gpt", "s2mel"):
        raise CheckpointError("cannot tell a gpt.pth from an s2mel.pth: no 'gpt.h.*' and no 'cfm.estimator.*' keys")
    version = detect_version(kind, sd)
    if kind == "gpt" and version == "2.5":
        markers = [k for k in sd if tables.full_match(tables.GPT_25_MARKERS, k)]
        raise CheckpointError(
            f"IndexTTS-2.5 gpt.pth detected ({_fmt_keys(markers, 4)}): the reference module code has no 2.5 "
            "UnifiedVoice, so no verified key table exists for it"
        )
    dims = check_config(kind, model_dims(kind, sd), config)
    pol = _policy(kind, policy)
    entries = expand_rules(
        kind, dims, stack_adaln=stack_adaln, with_gpt_layer=any(k.startswith("gpt_layer.") for k in sd)
    )
    from_config = config is not None and "heads" in config_dims(kind, config)
    report = RemapReport(kind, version, dims, heads_from="config.yaml" if from_config else "width // 64")

    # 1. coverage: every entry's sources present exactly once, every key accounted for
    used: dict[str, str] = {}
    dup = []
    for e in entries:
        for s in e.srcs:
            if s in used:
                dup.append(s)
            used[s] = e.dst
    if dup:  # a bug in checkpoint_tables, not in the file
        raise RuntimeError(f"checkpoint_tables consume these keys twice: {dup}")
    missing = [s for s in used if s not in sd]
    carried, ignored, unknown = [], [], []
    for k in sd:
        if k in used:
            continue
        if kind == "gpt" and tables.full_match(tables.GPT_CARRY, k):
            carried.append(k)
            continue
        why = next((why for p, why in (tables.GPT_IGNORE if kind == "gpt" else tables.S2MEL_IGNORE)
                    if re.fullmatch(p, k)), None)  # fmt: skip
        if why is not None and _layer_of(kind, k) < dims["L"]:  # an ignored key of a layer the model has
            ignored.append((k, why))
        else:
            unknown.append(k)
    carry_wrong: list[str] = []
    if kind == "gpt":
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
        raise CheckpointError(f"{kind} checkpoint rejected: " + "; ".join(problems))

    # 3. transform, cast, finiteness
    out: dict[str, torch.Tensor] = {}
    total = len(entries) + len(carried)
    nonfinite = []
    for n, e in enumerate(entries):
        xs = [sd[s] if e.op in ("copy", "t", "cat0", "taps", "k1") else sd[s].float() for s in e.srcs]
        w = _forward_op(e.op, xs).to(getattr(torch, pol[e.cls])).contiguous()
        if keep and (w is sd[e.srcs[0]] or w.data_ptr() == sd[e.srcs[0]].data_ptr()):
            w = w.clone()  # never alias an mmap'd source
        if not bool(torch.isfinite(w).all()):
            nonfinite.append(f"{e.dst} (from {', '.join(e.srcs) if len(e.srcs) <= 2 else e.srcs[0] + ', ...'})")
        if keep:
            out[e.dst] = w
        report.mapped.append((e.dst, e.srcs, e.op))
        if progress:
            progress(n + 1, total, e.dst)
    for n, k in enumerate(sorted(carried)):
        dt = getattr(torch, pol["carry"]) if pol.get("carry") else sd[k].dtype
        w = sd[k].to(dt).clone().contiguous()
        if not bool(torch.isfinite(w).all()):
            nonfinite.append(k)
        if keep:
            out["cond." + k] = w
        report.carried.append(k)
        if progress:
            progress(len(entries) + n + 1, total, "cond." + k)
    report.ignored = ignored
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


# ----------------------------------------------------------------------------------------------------------------------
# Conversion: checkpoint -> fast-pack file (atomic)
# ----------------------------------------------------------------------------------------------------------------------
def file_sha256(path: PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, racy under threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def convert_checkpoint(
    src: PathLike,
    out: PathLike,
    *,
    config: Optional[PathLike] = None,
    overwrite: bool = False,
    policy: Optional[Mapping[str, str]] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> RemapReport:
    """Convert one official checkpoint to a fast-pack .safetensors file; returns the remap report.

    The output is written to a temporary file in the same directory and renamed into place, so a failure never
    leaves a partial pack; it never overwrites the source, nor an existing file unless ``overwrite``. A write that
    fails (disk full, ...) is a CheckpointError; SIGTERM / SIGHUP during the write (in the main thread) removes the
    temporary file and raises ConversionInterrupted. ``config`` is the path of config.yaml. ``policy`` overrides
    dtype classes of DEFAULT_POLICY, either flat ({'gemm_w': 'bfloat16', ...}, ``gpt_policy("float32")``) or per
    model kind ({'gpt': {...}}).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from . import __version__

    src, out = Path(src), Path(out)
    if _same_file(src, out):
        raise CheckpointError(f"output {out} is the source checkpoint itself; choose another output path")
    if out.suffix != ".safetensors":
        raise CheckpointError(f"output {out}: a fast pack is a .safetensors file")
    if out.exists() and not overwrite:
        raise CheckpointError(f"output {out} already exists; pass overwrite=True (--overwrite) to replace it")
    if not out.parent.is_dir():
        raise CheckpointError(f"output directory {out.parent} does not exist")
    cfg = load_config(config)
    kind, sd = read_checkpoint(src)
    if policy and set(policy) <= {"gpt", "s2mel"}:  # a policy per model kind
        policy = policy.get(kind)
    tensors, report = remap_state_dict(
        sd, kind, config=cfg, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
        progress=progress,
    )  # fmt: skip
    del sd
    meta = {
        "format": PACK_FORMAT,
        "format_version": str(PACK_VERSION),
        "model": kind,
        "indextts_version": report.version,
        "source_name": src.name,
        "source_sha256": file_sha256(src),
        "config": json.dumps(report.dims, sort_keys=True),
        "dtype_policy": json.dumps(_policy(kind, policy), sort_keys=True),
        "layout": json.dumps({"stack_adaln": bool(stack_adaln), "conv_taps": "tap-major", "gemm": "[N,K] row-major"}),
        "package": f"indextts_fast {__version__}",
        "nonfinite": json.dumps(report.nonfinite),
        "heads_from": "config.yaml" if report.heads_from == "config.yaml" else
                      "width // 64 (IndexTTS2's head_dim; no head count in config.yaml)",
    }  # fmt: skip
    exists = f"output {out} already exists; pass overwrite=True (--overwrite) to replace it"
    tmp = None
    with _TerminationGuard(out) as guard:
        try:
            fd, tmp = tempfile.mkstemp(dir=str(out.parent), prefix=f".{out.name}.", suffix=".tmp")
            os.close(fd)
            save_file(tensors, tmp, metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the pack ordinary file permissions
            if overwrite:
                os.replace(tmp, out)
            else:
                _commit_no_clobber(tmp, out, exists)
            guard.published = True
            _fsync_dir(out.parent)  # the rename itself survives a crash
        except FileExistsError as e:  # appeared while converting
            raise CheckpointError(exists) from e
        except (OSError, SafetensorError) as e:  # unwritable directory, disk full (safetensors: SafetensorError), ...
            raise CheckpointError(f"output {out}: cannot write the pack: {e}") from e
        finally:  # every exit, KeyboardInterrupt and SIGTERM included, removes the temporary file
            guard.hold()
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
    return report


class ConversionInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP arrived while a pack was being written; its temporary file has been removed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _TerminationGuard:
    """While a pack is written, SIGTERM and SIGHUP raise ConversionInterrupted (so the write's cleanup runs)
    instead of killing the process; the previous handlers are restored on exit. After hold() (the cleanup) a
    signal is only recorded, and raised once the handlers are restored. Only the main thread can install handlers;
    elsewhere this does nothing."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self, out: Path):
        self.out, self.published, self.held, self.pending, self.old = out, False, False, None, {}

    def _error(self, signum: int) -> ConversionInterrupted:
        done = "the pack had been written" if self.published else "no pack written"
        msg = f"terminated by {signal.Signals(signum).name} while writing {self.out}; its temporary file was removed"
        return ConversionInterrupted(f"{msg}, {done}", signum)

    def _on_signal(self, signum, frame):
        if self.held or self.pending is not None:
            self.pending = self.pending or signum
            return
        self.pending = signum
        raise self._error(signum)

    def hold(self) -> None:
        self.held = True

    def __enter__(self) -> _TerminationGuard:
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
        if self.pending is not None and not isinstance(exc, ConversionInterrupted):
            raise self._error(self.pending) from exc


def _commit_no_clobber(tmp: str, out: Path, exists: str) -> None:
    """Publish tmp as out only if out does not exist, atomically (a hard link fails if the name exists)."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename (a small race window remains)
        if os.path.lexists(out):
            raise CheckpointError(exists) from None
        os.replace(tmp, out)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------------
# Loading a fast pack: one read, every tensor a view, no transform
# ----------------------------------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}  # fmt: skip


_MAX_HEADER = 100 << 20  # the safetensors format's own limit on the JSON header


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_pack_header(path: Path, raw: bytes, nbytes: int) -> tuple[dict[str, tuple], dict[str, str]]:
    """Validate an untrusted safetensors header: {name: (dtype, shape, start, end)} and the str->str metadata.

    Every entry needs a known dtype, a shape of non-negative ints, two int offsets whose span holds exactly the
    shape's bytes, and the spans must tile the data area [0, nbytes) without gap or overlap (the format's rule).
    """
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise CheckpointError(f"{path}: not a safetensors file (bad header: {type(e).__name__})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is a {type(header).__name__}, not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: corrupt metadata (expected string keys and values)")
    entries: dict[str, tuple] = {}
    for name, info in header.items():
        dt = _ST_DTYPES.get(info.get("dtype")) if isinstance(info, dict) and isinstance(info.get("dtype"), str) \
            else None  # fmt: skip
        shape, offs = (info.get("shape"), info.get("data_offsets")) if isinstance(info, dict) else (None, None)
        if (
            dt is None
            or not isinstance(shape, list)
            or not all(_is_int(d) and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_int(o) for o in offs)
            or not 0 <= offs[0] <= offs[1]
        ):
            raise CheckpointError(f"{path}: corrupt entry {name!r}: {str(info)[:200]}")
        if offs[1] > nbytes:
            raise CheckpointError(f"{path}: truncated ({nbytes} data bytes, entry {name!r} ends at byte {offs[1]})")
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * dt.itemsize:
            raise CheckpointError(f"{path}: corrupt entry {name!r}: {offs[1] - offs[0]} bytes for shape {shape}")
        entries[name] = (dt, tuple(shape), offs[0], offs[1])
    pos = 0
    for name, (_, _, s, e) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if s != pos:
            raise CheckpointError(
                f"{path}: corrupt data offsets: {name!r} starts at byte {s}, expected {pos} (gap or overlap)"
            )
        pos = e
    if pos != nbytes:
        raise CheckpointError(f"{path}: truncated or trailing data ({nbytes} data bytes, the header describes {pos})")
    return entries, meta


def read_pack(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a fast pack fully into memory on ``device``: (tensors, metadata). No transform happens here.

    The file is untrusted: the header is validated (size, structure, dtypes, shapes, offsets) before any data is
    read, and every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header length {n} > file)")
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: not a fast pack (header length {n} > {_MAX_HEADER} bytes)")
            nbytes = size - 8 - n
            entries, meta = _parse_pack_header(path, f.read(n), nbytes)
            if meta.get("format") != PACK_FORMAT:
                raise CheckpointError(f"{path}: not an indextts_fast pack (metadata format {meta.get('format')!r})")
            if meta.get("format_version") != str(PACK_VERSION):
                raise CheckpointError(
                    f"{path}: pack format version {meta.get('format_version')} (this reader: {PACK_VERSION})"
                )
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=torch.device(device).type == "cuda")
            if f.readinto(memoryview(buf.numpy())) != nbytes:
                raise CheckpointError(f"{path}: truncated while reading")
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable: {e}") from e
    if torch.device(device).type != "cpu":
        buf = buf.to(device, non_blocking=True)
        if buf.is_cuda:
            torch.cuda.current_stream(buf.device).synchronize()  # resident on the device when this returns
    out = {}
    for name, (dt, shape, s, e) in entries.items():
        raw = buf[s:e]
        t = raw.view(dt) if s % dt.itemsize == 0 else raw.clone().view(dt)
        out[name] = t.view(shape)
    return out, meta


_PACK_DIMS = {"gpt": ("C", "L", "Vt", "Vm", "Pt", "Pm", "E", "heads"),
              "s2mel": ("C", "D", "F", "H", "S", "L", "I", "W", "K", "R", "Q", "N", "heads")}  # fmt: skip


def check_pack(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[str, dict, dict, bool]:
    """What read_pack returned, checked as load_pack checks it: the metadata (untrusted: validated before use)
    against the tensors, every name, shape and dtype. Returns (kind, dims, dtype policy, stack_adaln)."""
    kind = meta.get("model")
    if kind not in ("gpt", "s2mel"):
        raise CheckpointError(f"{path}: pack metadata names an unknown model {kind!r}")
    try:
        dims = json.loads(meta["config"])
        pol = json.loads(meta["dtype_policy"])
        layout = json.loads(meta.get("layout", "{}"))
    except (KeyError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: pack metadata incomplete or corrupt ({e!r})") from e
    need = _PACK_DIMS[kind]
    if (
        not isinstance(dims, dict)
        or set(dims) != set(need)
        or not all(_is_int(v) and 0 <= v < 2**31 for v in dims.values())
        or dims["heads"] < 1
        or dims["C"] % dims["heads"]
    ):
        raise CheckpointError(
            f"{path}: corrupt pack metadata: config {meta['config'][:200]!r} is not the integer dimensions {need}"
        )
    if max(dims["L"], dims.get("W", 0), dims.get("N", 0)) > len(tensors):  # every index needs its own tensors
        raise CheckpointError(f"{path}: corrupt pack metadata: config {dims} describes more layers than the pack has")
    if (
        not isinstance(pol, dict)
        or set(pol) != set(DEFAULT_POLICY[kind])
        or not all(v in ("float32", "float16", "bfloat16") for v in pol.values())
    ):
        raise CheckpointError(f"{path}: corrupt pack metadata: dtype_policy {meta['dtype_policy'][:200]!r}")
    if not isinstance(layout, dict) or not isinstance(layout.get("stack_adaln", False), bool):
        raise CheckpointError(f"{path}: corrupt pack metadata: layout {meta.get('layout', '')[:200]!r}")
    stack = layout.get("stack_adaln", False)
    entries = expand_rules(kind, dims, stack_adaln=stack, with_gpt_layer="gpt_layer.0.w" in tensors)
    want = {e.dst: (_dst_shape(e), getattr(torch, pol[e.cls])) for e in entries}
    missing = [k for k in want if k not in tensors]
    cond = {k for k in tensors if kind == "gpt" and k.startswith("cond.")}
    extra = [k for k in tensors if k not in want and k not in cond]
    extra += [k for k in cond if not tables.full_match(tables.GPT_CARRY, k[len("cond.") :])]
    bad = [
        f"{k} {list(t.shape)} {t.dtype} (expected {list(want[k][0])} {want[k][1]})"
        for k, t in tensors.items()
        if k in want and (tuple(t.shape) != want[k][0] or t.dtype != want[k][1])
    ]
    bad += [f"{k} {t.dtype} (expected {pol['carry']})" for k, t in tensors.items()
            if k in cond and t.dtype != getattr(torch, pol["carry"])]  # fmt: skip
    if missing or extra or bad:
        found = {"missing": missing, "extra": extra, "wrong": bad}
        raise CheckpointError(
            f"{path}: pack does not match its own metadata: "
            + "; ".join(f"{what} {_fmt_keys(keys, 6)}" for what, keys in found.items() if keys)
        )
    return kind, dims, pol, stack


@dataclass
class FastGPTLayer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor  # [3C, C], rows q | k | v
    qkv_b: torch.Tensor
    attn_out_w: torch.Tensor  # [C, C]
    attn_out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor  # [4C, C]
    fc_b: torch.Tensor
    proj_w: torch.Tensor  # [C, 4C]
    proj_b: torch.Tensor


@dataclass
class FastGPTWeights:
    """UnifiedVoice's GPT-2 in kernel layout. logits = mel_head(final_norm(ln_f(h))); see the module docstring."""

    config: dict
    meta: dict
    text_embedding: torch.Tensor
    mel_embedding: torch.Tensor
    text_pos: torch.Tensor
    mel_pos: torch.Tensor
    speed_emb: torch.Tensor
    emovec_w: torch.Tensor
    emovec_b: torch.Tensor
    emo_w: torch.Tensor
    emo_b: torch.Tensor
    layers: list[FastGPTLayer]
    ln_f_w: torch.Tensor
    ln_f_b: torch.Tensor
    final_norm_w: torch.Tensor
    final_norm_b: torch.Tensor
    mel_head_w: torch.Tensor
    mel_head_b: torch.Tensor
    cond: dict[str, torch.Tensor]  # conditioning encoders, official names, verbatim


@dataclass
class FastDiTLayer:
    wqkv: torch.Tensor  # [3C, C], rows q | k | v
    wo: torch.Tensor
    w13: torch.Tensor  # [2I, C] = cat(w1, w3)
    w2: torch.Tensor
    attn_norm_g: torch.Tensor  # RMSNorm gains
    ffn_norm_g: torch.Tensor
    attn_norm_w: torch.Tensor  # AdaLN project_layer [2C, C] (scale | shift); a view of adaln_w when stacked
    attn_norm_b: torch.Tensor
    ffn_norm_w: torch.Tensor
    ffn_norm_b: torch.Tensor
    skip_in_w: Optional[torch.Tensor]  # [C, 2C] for the layers that pop a UViT skip, else None
    skip_in_b: Optional[torch.Tensor]


@dataclass
class FastDiTWeights:
    t_embed: dict[str, torch.Tensor]  # freqs [128], w0 [C,256], b0, w2 [C,C], b2
    t_embed2: dict[str, torch.Tensor]
    cond_proj_w: torch.Tensor
    cond_proj_b: torch.Tensor
    merge_w: torch.Tensor
    merge_b: torch.Tensor
    layers: list[FastDiTLayer]
    norm_g: torch.Tensor
    norm_w: torch.Tensor  # transformer.norm project_layer [2C, C]
    norm_b: torch.Tensor
    adaln_w: Optional[torch.Tensor]  # stacked [(2L+1)*2C, C] when stack_adaln
    adaln_b: Optional[torch.Tensor]
    skip_linear_w: torch.Tensor
    skip_linear_b: torch.Tensor
    conv1_w: torch.Tensor
    conv1_b: torch.Tensor
    res_proj_w: torch.Tensor
    res_proj_b: torch.Tensor
    wn_cond_w: torch.Tensor  # [2H*W, H]
    wn_cond_b: torch.Tensor
    wn_in_w: list[torch.Tensor]  # [2H, K*H] tap-major
    wn_in_b: list[torch.Tensor]
    wn_res_skip_w: list[torch.Tensor]  # [2H, H] (last layer [H, H])
    wn_res_skip_b: list[torch.Tensor]
    final_adaln_w: torch.Tensor  # [2H, H] (shift | scale), applied after SiLU
    final_adaln_b: torch.Tensor
    final_linear_w: torch.Tensor
    final_linear_b: torch.Tensor
    conv2_w: torch.Tensor  # [F, H]
    conv2_b: torch.Tensor


@dataclass
class FastLengthRegulatorWeights:
    in_proj_w: torch.Tensor
    in_proj_b: torch.Tensor
    conv_w: list[torch.Tensor]  # [R, 3R] tap-major
    conv_b: list[torch.Tensor]
    gn_w: list[torch.Tensor]
    gn_b: list[torch.Tensor]
    out_w: torch.Tensor
    out_b: torch.Tensor


@dataclass
class FastS2MelWeights:
    config: dict
    meta: dict
    dit: FastDiTWeights
    length_regulator: FastLengthRegulatorWeights
    gpt_layer: Optional[list[tuple[torch.Tensor, torch.Tensor]]]


def _build_gpt(t: dict[str, torch.Tensor], dims: dict, meta: dict) -> FastGPTWeights:
    layers = [
        FastGPTLayer(
            *(
                t[f"h.{i}.{n}"]
                for n in (
                    "ln1.w",
                    "ln1.b",
                    "qkv.w",
                    "qkv.b",
                    "attn_out.w",
                    "attn_out.b",
                    "ln2.w",
                    "ln2.b",
                    "fc.w",
                    "fc.b",
                    "proj.w",
                    "proj.b",
                )
            )
        )  # fmt: skip
        for i in range(dims["L"])
    ]
    return FastGPTWeights(
        dims, meta, t["text_embedding"], t["mel_embedding"], t["text_pos"], t["mel_pos"], t["speed_emb"],
        t["emovec.w"], t["emovec.b"], t["emo.w"], t["emo.b"], layers, t["ln_f.w"], t["ln_f.b"], t["final_norm.w"],
        t["final_norm.b"], t["mel_head.w"], t["mel_head.b"],
        {k[len("cond.") :]: v for k, v in t.items() if k.startswith("cond.")},
    )  # fmt: skip


def _build_s2mel(t: dict[str, torch.Tensor], dims: dict, meta: dict, stack: bool) -> FastS2MelWeights:
    L, C, W, N = dims["L"], dims["C"], dims["W"], dims["N"]
    skip = set(range(L // 2 + 1, L))
    layers = []
    for i in range(L):
        p = f"dit.layers.{i}."
        if stack:
            r = 4 * C * i
            an_w, an_b = t["dit.adaln.w"][r : r + 2 * C], t["dit.adaln.b"][r : r + 2 * C]
            fn_w, fn_b = t["dit.adaln.w"][r + 2 * C : r + 4 * C], t["dit.adaln.b"][r + 2 * C : r + 4 * C]
        else:
            an_w, an_b, fn_w, fn_b = (
                t[p + "attn_norm.w"],
                t[p + "attn_norm.b"],
                t[p + "ffn_norm.w"],
                t[p + "ffn_norm.b"],
            )
        layers.append(FastDiTLayer(
            t[p + "wqkv"], t[p + "wo"], t[p + "w13"], t[p + "w2"], t[p + "attn_norm.g"], t[p + "ffn_norm.g"],
            an_w, an_b, fn_w, fn_b, t.get(p + "skip_in.w") if i in skip else None,
            t.get(p + "skip_in.b") if i in skip else None,
        ))  # fmt: skip
    if stack:
        nw, nb = t["dit.adaln.w"][4 * C * L :], t["dit.adaln.b"][4 * C * L :]
    else:
        nw, nb = t["dit.norm.w"], t["dit.norm.b"]
    te = lambda p: {k: t[f"{p}.{k}"] for k in ("freqs", "w0", "b0", "w2", "b2")}
    dit = FastDiTWeights(
        te("dit.t_embed"), te("dit.t_embed2"), t["dit.cond_proj.w"], t["dit.cond_proj.b"], t["dit.merge.w"],
        t["dit.merge.b"], layers, t["dit.norm.g"], nw, nb, t.get("dit.adaln.w"), t.get("dit.adaln.b"),
        t["dit.skip_linear.w"], t["dit.skip_linear.b"], t["dit.conv1.w"], t["dit.conv1.b"], t["dit.res_proj.w"],
        t["dit.res_proj.b"], t["dit.wn.cond.w"], t["dit.wn.cond.b"],
        [t[f"dit.wn.in.{i}.w"] for i in range(W)], [t[f"dit.wn.in.{i}.b"] for i in range(W)],
        [t[f"dit.wn.res_skip.{i}.w"] for i in range(W)], [t[f"dit.wn.res_skip.{i}.b"] for i in range(W)],
        t["dit.final.adaln.w"], t["dit.final.adaln.b"], t["dit.final.linear.w"], t["dit.final.linear.b"],
        t["dit.conv2.w"], t["dit.conv2.b"],
    )  # fmt: skip
    lr = FastLengthRegulatorWeights(
        t["lr.in_proj.w"], t["lr.in_proj.b"], [t[f"lr.conv.{i}.w"] for i in range(N)],
        [t[f"lr.conv.{i}.b"] for i in range(N)], [t[f"lr.gn.{i}.w"] for i in range(N)],
        [t[f"lr.gn.{i}.b"] for i in range(N)], t["lr.out.w"], t["lr.out.b"],
    )  # fmt: skip
    gl = [(t[f"gpt_layer.{j}.w"], t[f"gpt_layer.{j}.b"]) for j in range(3)] if "gpt_layer.0.w" in t else None
    return FastS2MelWeights(dims, meta, dit, lr, gl)


def load_pack(path: PathLike, device: Union[str, torch.device] = "cpu") -> Union[FastGPTWeights, FastS2MelWeights]:
    """A fast pack -> FastGPTWeights / FastS2MelWeights with every tensor resident on ``device``."""
    path = Path(path)
    tensors, meta = read_pack(path, device)
    kind, dims, _, stack = check_pack(path, tensors, meta)
    if kind == "gpt":
        return _build_gpt(tensors, dims, meta)
    return _build_s2mel(tensors, dims, meta, stack)
