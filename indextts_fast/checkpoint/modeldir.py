"""A model directory's checkpoints (gpt.pth, s2mel.pth and, for IndexTTS-2.5, codec.pth): the version each file
is, by structure, whether they belong together (check_model_dir), and their conversion in one go
(convert_model_dir)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

from ..loader.dims import NAMES, VERSIONS, resolve_version, version_reason
from ..loader.errors import CheckpointError
from ..loader.remap import RemapReport
from .containers import PathLike, read_checkpoint
from .pack import convert_checkpoint

__all__ = ["model_dir_files", "check_model_dir", "convert_model_dir"]


def model_dir_files(model_dir: PathLike) -> dict[str, Path]:
    """{kind: path} of the checkpoints ``model_dir`` holds, in the order gpt, s2mel, codec (empty: none)."""
    d = Path(model_dir)
    return {kind: d / name for kind, name in NAMES.items() if os.path.isfile(d / name)}


def check_model_dir(model_dir: PathLike, version: Optional[str] = None) -> tuple[Optional[str], dict[str, str]]:
    """(the IndexTTS version of ``model_dir``'s checkpoints, {file name: 'IndexTTS-<version> (what shows it)'}).

    Each file is read for its keys and shapes only, and must hold what its name says. gpt.pth tells its version
    by structure, codec.pth exists only for 2.5, s2mel.pth takes theirs (None: neither is there, and ``version`` is
    not given). A directory whose files disagree (a 2.0 gpt.pth beside a codec.pth), a 2.5 gpt.pth without a
    codec.pth, or a version other than ``version`` is a CheckpointError naming each file's version and what shows
    it."""
    d = Path(model_dir)
    files = model_dir_files(d)
    if not files:
        raise CheckpointError(f"{d}: no {', '.join(NAMES.values())} in this directory")
    if version is not None and version not in VERSIONS:
        raise ValueError(f"version={version!r}: expected one of {VERSIONS}")
    sds, found = {}, {}
    for kind, path in files.items():
        got, sd = read_checkpoint(path, verify=False)
        if got != kind:
            raise CheckpointError(f"{path}: holds a {got} checkpoint, not the {kind} checkpoint its name says")
        sds[kind] = sd
        if kind != "s2mel":
            found[kind] = resolve_version(kind, sd, None, str(path))
    why = {k: f"IndexTTS-{v} ({version_reason(k, sds[k], v)})" for k, v in found.items()}
    if len(set(found.values())) > 1:
        raise CheckpointError(
            f"{d}: checkpoints of two IndexTTS versions: " + "; ".join(f"{NAMES[k]} is {w}" for k, w in why.items())
        )
    dir_version = next(iter(found.values()), None)
    if dir_version == "2.5" and "gpt" in found and "codec" not in files:
        raise CheckpointError(
            f"{d}: gpt.pth is {why['gpt']}, but there is no codec.pth (2.5 decodes its codes with it)"
        )
    if version is not None and dir_version not in (None, version):
        raise CheckpointError(
            f"{d}: IndexTTS-{version} expected, but " + "; ".join(f"{NAMES[k]} is {w}" for k, w in why.items())
        )
    dir_version = dir_version or version
    if "s2mel" in sds:
        v = dir_version or resolve_version("s2mel", sds["s2mel"])
        shown = f"IndexTTS-{v}" if dir_version else "IndexTTS-2.0 or 2.5"
        reason = version_reason("s2mel", sds["s2mel"], v)
        why["s2mel"] = f"{shown} ({reason})" if reason else shown
    return dir_version, {NAMES[k]: why[k] for k in files}


def convert_model_dir(
    model_dir: PathLike,
    out_dir: Optional[PathLike] = None,
    *,
    config: Optional[PathLike] = None,
    overwrite: bool = False,
    policy: Optional[Mapping] = None,
    stack_adaln: bool = True,
    allow_nonfinite: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    version: Optional[str] = None,
) -> dict[Path, RemapReport]:
    """Convert every checkpoint of ``model_dir`` (check_model_dir first: one version) to ``<stem>.fast.safetensors``
    in ``out_dir`` (default: ``model_dir``), with its config.yaml unless ``config`` is given; an IndexTTS-2.5
    s2mel.pth leaves its gpt_layer out. {pack path: report}. A failure removes the packs this call created before
    it (each pack is written atomically, as convert_checkpoint writes it); packs it replaced (``overwrite``) stay."""
    d = Path(model_dir)
    dir_version, _ = check_model_dir(d, version)
    out_dir = Path(out_dir) if out_dir is not None else d
    if not out_dir.is_dir():
        raise CheckpointError(f"output directory {out_dir} does not exist")
    if config is None and (d / "config.yaml").is_file():
        config = d / "config.yaml"
    reports: dict[Path, RemapReport] = {}
    created: list[Path] = []
    try:
        for path in model_dir_files(d).values():
            out = out_dir / (path.stem + ".fast.safetensors")
            existed = os.path.lexists(out)
            reports[out] = convert_checkpoint(
                path, out, config=config, overwrite=overwrite, policy=policy, stack_adaln=stack_adaln,
                allow_nonfinite=allow_nonfinite, progress=progress, version=dir_version,
            )  # fmt: skip
            if not existed:
                created.append(out)
    except BaseException:
        for out in created:
            out.unlink(missing_ok=True)
        raise
    return reports
