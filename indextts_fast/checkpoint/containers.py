"""Reading the official containers: gpt.pth / s2mel.pth / IndexTTS-2.5's codec.pth (torch.save zips, checked
record by record) and their .safetensors exports, into one flat state dict."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..loader import tables
from ..loader.dims import detect_kind
from ..loader.errors import CheckpointError

PathLike = Union[str, os.PathLike]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _check_regular_file(path: Path) -> int:
    """The size of a file that can be read: refuse before opening what is missing, unreadable, a directory, a FIFO
    (opening one blocks until a writer appears), a device, or a path the OS refuses (a name too long, a loop)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot access: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: unreadable (a directory, not a file)")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: unreadable (not a regular file)")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: unreadable (permission denied)")
    return st.st_size


_CANNOT_READ = "cannot read the checkpoint (truncated, corrupt, or not a weights-only torch/safetensors file)"


def _why(e: BaseException) -> str:
    """One line on a reading failure: a weights-only refusal by its reason, else the error's first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    reason = next((ln for ln in lines if ln.startswith("WeightsUnpickler error:")), None)
    if isinstance(e, pickle.UnpicklingError) and reason:
        reason = re.sub(r"\s*(was not an allowed global|\. Please).*", "", reason)
        return f"it holds pickled Python objects that a weights-only load refuses ({reason})"
    return f"{type(e).__name__}: {next((ln for ln in lines if ln), '')}"


def _load_flat(path: Path, verify: bool = True) -> dict[str, Any]:
    """torch.load (weights_only, mmap) or safetensors; any reading failure becomes a CheckpointError. ``verify``:
    every zip record checked (_check_zip_records); without, only what torch.load reads (the pickle), as a look at
    the keys and shapes needs."""
    if _check_regular_file(path) == 0:
        raise CheckpointError(f"{path}: {_CANNOT_READ}: the file is empty (0 bytes)")
    try:
        os.fsencode(str(path)).decode()
    except UnicodeDecodeError:  # torch and safetensors take UTF-8 names only
        raise CheckpointError(f"{path}: the file name is not valid UTF-8; rename the file") from None
    if not _is_safetensors(path) and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: {_CANNOT_READ}: not a torch.save zip archive")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        if verify:
            _check_zip_records(path)
        return obj
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, not a checkpoint, pickled objects refused by weights_only, ...
        raise CheckpointError(f"{path}: {_CANNOT_READ}: {_why(e)}") from e


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


def read_checkpoint(path: PathLike, *, verify: bool = True) -> tuple[str, dict[str, torch.Tensor]]:
    """Read gpt.pth / s2mel.pth / codec.pth (or a .safetensors export) into ('gpt' | 's2mel' | 'codec', flat state
    dict).

    gpt.pth: a flat state dict, or one under 'model'; codec.pth (IndexTTS-2.5): {'model': state dict, ...}.
    s2mel.pth: state['net'] = {'cfm', 'length_regulator', 'gpt_layer'}, each a flat state dict (a leading 'module.'
    is stripped); other top-level entries (optimizer, epoch, ...) are ignored. The s2mel result is flattened as
    '<module>.<key>'; a .safetensors export uses those flattened names directly. Tensors stay memory-mapped
    (torch.load mmap=True) until the remap touches them. ``verify=False`` skips the record-by-record check (for a
    look at the keys and shapes only).
    """
    path = Path(path)
    obj = _load_flat(path, verify)
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
            f"{path}: wrong container: neither a gpt.pth (no 'gpt.h.*' keys), nor an s2mel.pth (no state['net'] and "
            f"no 'cfm.estimator.*' keys), nor a codec.pth (no 'quantizer.quantizers.*' keys); first keys: "
            f"{sorted(sd)[:6]}"
        )
    return kind, sd


def file_sha256(path: PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
