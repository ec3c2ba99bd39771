"""The fast pack: written once from a checkpoint (atomically, never over its source), read back in one piece, its
untrusted header and metadata validated against its tensors, and built into the Fast*Weights (load_pack): the GPT
and s2mel of IndexTTS-2.0 and 2.5, and 2.5's codec."""

from __future__ import annotations

import json
import os
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional, Union

import torch

from ..loader import tables
from ..loader.dims import VERSIONS
from ..loader.errors import CheckpointError
from ..loader.remap import RemapReport, expand_rules, fmt_keys, select_parts
from ..loader.weights import (
    FastCodecWeights,
    FastGPTWeights,
    FastS2MelWeights,
    _build_s2mel,
    codec_weights,
    gpt_weights,
)
from .config import load_config
from .containers import PathLike, _check_regular_file, _is_int, file_sha256, read_checkpoint
from .policy import DEFAULT_POLICY, _policy
from .remap import dst_shape, remap_state_dict

PACK_FORMAT = "indextts_fast.pack"

PACK_VERSION = 1


class ConversionInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP arrived while a pack was being written; its temporary file has been removed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


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
    version: Optional[str] = None,
) -> RemapReport:
    """Convert one official checkpoint to a fast-pack .safetensors file; returns the remap report.

    The output is written to a temporary file in the same directory and renamed into place, so a failure never
    leaves a partial pack; it never overwrites the source, nor an existing file unless ``overwrite``. A write that
    fails (disk full, ...) is a CheckpointError; SIGTERM / SIGHUP during the write (in the main thread) removes the
    temporary file and raises ConversionInterrupted. ``config`` is the path of config.yaml. ``policy`` overrides
    dtype classes of DEFAULT_POLICY, either flat ({'gemm_w': 'bfloat16', ...}, ``gpt_policy("float32")``) or per
    model kind ({'gpt': {...}}). ``version`` ('2.0' / '2.5'): what the checkpoint must be (a gpt.pth or codec.pth
    of another version is refused), or is taken as (an s2mel.pth: 2.5 leaves gpt_layer out of the pack, ignored
    and reported); None: the structure's version (an s2mel.pth keeps its gpt_layer).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .. import __version__

    src, out = Path(src), Path(out)
    if _same_file(src, out):
        raise CheckpointError(f"output {out} is the source checkpoint itself; choose another output path")
    if out.suffix != ".safetensors":
        raise CheckpointError(f"output {out}: a fast pack is a .safetensors file")
    try:
        os.stat(out)
        if not overwrite:
            raise CheckpointError(f"output {out} already exists; pass overwrite=True (--overwrite) to replace it")
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:  # a name too long, a symlink loop, ...
        raise CheckpointError(f"output {out}: {e.strerror or e}") from None
    if not os.path.isdir(out.parent):
        raise CheckpointError(f"output directory {out.parent} does not exist")
    cfg = load_config(config)
    kind, sd = read_checkpoint(src)
    if policy and set(policy) <= {"gpt", "s2mel", "codec"}:  # a policy per model kind
        policy = policy.get(kind)
    tensors, report = remap_state_dict(
        sd, kind, config=cfg, policy=policy, stack_adaln=stack_adaln, allow_nonfinite=allow_nonfinite,
        progress=progress, version=version,
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
        "dtype_policy": json.dumps(_policy(kind, policy, report.version), sort_keys=True),
        "layout": json.dumps({"stack_adaln": bool(stack_adaln), "conv_taps": "tap-major", "gemm": "[N,K] row-major"}),
        "package": f"indextts_fast {__version__}",
        "nonfinite": json.dumps(report.nonfinite),
        "heads_from": report.heads_from if report.heads_from in ("config.yaml", "none") else
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


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}  # fmt: skip

_MAX_HEADER = 100 << 20  # the safetensors format's own limit on the JSON header


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
    _check_regular_file(path)
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
              "s2mel": ("C", "D", "F", "H", "S", "L", "I", "W", "K", "R", "Q", "N", "heads"),
              "codec": ("V", "Q", "H", "D", "I", "L")}  # fmt: skip


def check_pack(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[str, dict, dict, bool]:
    """What read_pack returned, checked as load_pack checks it: the metadata (untrusted: validated before use)
    against the tensors, every name, shape and dtype. Returns (kind, dims, dtype policy, stack_adaln)."""
    kind = meta.get("model")
    if kind not in _PACK_DIMS:
        raise CheckpointError(f"{path}: pack metadata names an unknown model {kind!r}")
    version = meta.get("indextts_version", "2.0")
    if kind == "gpt" and version not in VERSIONS:
        raise CheckpointError(f"{path}: corrupt pack metadata: indextts_version {version[:40]!r} (expected 2.0 or 2.5)")
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
        or ("heads" in need and (dims["heads"] < 1 or dims["C"] % dims["heads"]))
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
    parts = select_parts(kind, None, tensors)
    entries = expand_rules(kind, dims, parts=parts, stack_adaln=stack, version=version if kind == "gpt" else "2.0")
    want = {e.dst: (dst_shape(e), getattr(torch, pol[e.cls])) for e in entries}
    missing = [k for k in want if k not in tensors]
    cond = {k for k in tensors if kind == "gpt" and k.startswith("cond.")}
    extra = [k for k in tensors if k not in want and k not in cond]
    extra += [k for k in cond if not tables.full_match(tables.gpt_carry(version), k[len("cond.") :])]
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
            + "; ".join(f"{what} {fmt_keys(keys, 6)}" for what, keys in found.items() if keys)
        )
    return kind, dims, pol, stack


def load_pack(
    path: PathLike, device: Union[str, torch.device] = "cpu"
) -> Union[FastGPTWeights, FastS2MelWeights, FastCodecWeights]:
    """A fast pack -> FastGPTWeights / FastS2MelWeights / FastCodecWeights with every tensor resident on
    ``device``."""
    path = Path(path)
    tensors, meta = read_pack(path, device)
    kind, dims, _, stack = check_pack(path, tensors, meta)
    if kind == "gpt":
        return gpt_weights(tensors, dims, meta)
    if kind == "codec":
        return codec_weights(tensors, dims, meta)
    return _build_s2mel(tensors, dims, meta, stack)
