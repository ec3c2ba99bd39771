#!/usr/bin/env python3
"""Inspect an IndexTTS2 checkpoint (gpt.pth / s2mel.pth / IndexTTS-2.5's codec.pth / .safetensors export), a
model directory holding them, or an indextts_fast fast pack.

For a checkpoint: the container, the detected model and version (IndexTTS-2.0 / 2.5, read from the structure, with
what shows it: e.g. "spk_emb_proj present, text_embedding 60510 rows"), the dimensions read from the shapes, and for
every key its shape, dtype and what the loader would do with it (mapped by which transform into which pack tensor,
carried, ignored and why, or refused: unknown / wrong shape / wrong dtype), plus the missing keys; then the verdict
of the converter's own checks (coverage, shapes, dtypes, and every value after its transform and dtype cast), with
the same config.yaml and GPT dtype as a conversion would use. For a fast pack: its metadata and tensors, checked as
load_pack checks them. For a model directory: the version of each of its gpt.pth / s2mel.pth / codec.pth and whether
they agree (files of two versions are refused), then each file as above, the s2mel.pth taken as the directory's
version (2.5: gpt_layer ignored).

    python tools/inspect_checkpoint.py checkpoints/s2mel.pth            # summary + refused keys
    python tools/inspect_checkpoint.py checkpoints/s2mel.pth --keys     # every key
    python tools/inspect_checkpoint.py checkpoints/gpt.pth --config checkpoints/config.yaml --gpt-dtype float32
    python tools/inspect_checkpoint.py checkpoints/                    # a model directory

Exit status 0 when the converter (or load_pack) would accept the file (every file of a directory), 1 when it would
refuse a checkpoint, 2 when an argument is wrong, the file or the config cannot be read or is refused as such, a
model directory mixes versions, or the pack is refused (one `error:` line on stderr), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from indextts_fast.checkpoint import (
        CheckpointError,
        CheckpointWarning,
        check_checkpoint,
        check_model_dir,
        check_pack,
        config_dims,
        gpt_policy,
        load_config,
        model_dir_files,
        plan_checkpoint,
        read_checkpoint,
        read_pack,
    )
    from indextts_fast.checkpoint.cli import ArgumentParser, run
except Exception as e:  # torch refuses to import: a broken install, or e.g. a TQDM_* value that tqdm cannot read
    env = "".join(f" ({k}={v!r})" for k, v in os.environ.items() if k.startswith("TQDM_"))
    print(f"error: cannot import indextts_fast: {type(e).__name__}: {e}{env}", file=sys.stderr)
    sys.exit(2)


def _dt(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _is_pack(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "indextts_fast.pack"
    except Exception:
        return False


def inspect_pack(path: Path, keys: bool) -> int:
    tensors, meta = read_pack(path)
    check_pack(path, tensors, meta)  # what load_pack refuses is refused here (a CheckpointError: exit 2)
    print(f"{path}: indextts_fast fast pack")
    for k, v in meta.items():
        print(f"  {k}: {v}")
    by_dtype = Counter(_dt(t) for t in tensors.values())
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"  {len(tensors)} tensors, {nbytes / 2**20:.1f} MiB, by dtype {dict(by_dtype)}")
    if keys:
        for k, t in tensors.items():
            print(f"    {k:<56} {list(t.shape)!s:<20} {_dt(t)}")
    return 0


def verdict(sd, kind: str, config, gpt_dtype, split_adaln: bool, version=None) -> tuple[str | None, list[str]]:
    """(the converter's refusal message, or None if it would convert; the warnings it would give)."""
    policy = gpt_policy(gpt_dtype) if gpt_dtype and kind == "gpt" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        try:
            check_checkpoint(sd, kind, config=config, policy=policy, stack_adaln=not split_adaln, version=version)
            refusal = None
        except CheckpointError as e:
            refusal = str(e)
    return refusal, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def inspect_checkpoint(path: Path, a, config, version=None) -> int:
    kind, sd = read_checkpoint(path)
    if config is not None:
        config_dims(kind, config)  # a config refused as such (not YAML, no gpt section, ...) is an error, not a verdict
    plan = plan_checkpoint(sd, kind, stack_adaln=not a.split_adaln, version=version)
    refusal, notes = verdict(sd, kind, config, a.gpt_dtype, a.split_adaln, version)
    if a.json:
        plan["shapes"] = {k: [list(t.shape), _dt(t)] for k, t in sd.items()}
        plan.update(accepted=refusal is None, refusal=refusal, warnings=notes)
        print(json.dumps(plan, indent=1))
        return 0 if refusal is None else 1
    print(f"{path}: {kind} checkpoint, IndexTTS {plan['version']}, {len(sd)} keys")
    if plan["version"] == "mixed":
        print(f"  version: IndexTTS-2.0 and IndexTTS-2.5 mixed: {plan['version_reason']}")
    else:
        why = f" ({plan['version_reason']})" if plan["version_reason"] else ""
        print(f"  version: IndexTTS-{plan['version']}{why}")
    if plan["error"]:
        print(f"  dimensions: cannot be read: {plan['error']}")
    else:
        print(f"  dimensions (from the shapes): {plan['dims']}")
    counts = Counter(act.split(":")[0] for act, _ in plan["actions"].values())
    ops = Counter(act.split(":")[1] for act, _ in plan["actions"].values() if act.startswith("mapped:"))
    print(f"  actions: {dict(counts)}; mapped by transform: {dict(ops)}")
    print(f"  dtypes: {dict(Counter(_dt(t) for t in sd.values()))}")
    refused = {k: v for k, v in plan["actions"].items() if v[0] in ("unknown", "wrong-shape", "wrong-dtype")}
    for k, t in sd.items():
        action, target = plan["actions"][k]
        if a.keys or k in refused:
            print(f"    {k:<64} {list(t.shape)!s:<20} {_dt(t):<9} {action:<14} {target}")
    for k in plan["missing"]:
        print(f"    MISSING {k}")
    for msg in plan.get("problems", []):
        print(f"    PROBLEM {msg}")
    for msg in notes:
        print(f"  warning: {msg}")
    if refusal is None:
        print("  the loader would accept this checkpoint")
        return 0
    print(f"  the loader would REFUSE this checkpoint: {refusal}")
    return 1


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--keys", action="store_true", help="list every key, not only the refused ones")
    ap.add_argument("--split-adaln", action="store_true", help="plan for the per-norm AdaLN layout")
    ap.add_argument("--config", type=Path, help="config.yaml, as convert_checkpoint.py --config")
    ap.add_argument(
        "--gpt-dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="the GPT dtype to check the values in, as convert_checkpoint.py --gpt-dtype (default float16)",
    )
    ap.add_argument("--json", action="store_true", help="print the plan and the verdict as JSON (checkpoints only)")
    ap.add_argument(
        "--version",
        choices=["2.0", "2.5"],
        default=None,
        help="the IndexTTS version the checkpoint must be (gpt.pth, codec.pth) or is taken as (s2mel.pth: 2.5 ignores "
        "gpt_layer), as convert_checkpoint.py --version; default: read from the structure",
    )
    a = ap.parse_args(argv)
    return run(lambda: _inspect(a), "error:")


def _inspect(a) -> int:
    if _is_pack(a.path):
        return inspect_pack(a.path, a.keys)
    if os.path.isdir(a.path) and model_dir_files(a.path):
        return inspect_model_dir(a.path, a)
    return inspect_checkpoint(a.path, a, load_config(a.config), a.version)


def inspect_model_dir(d: Path, a) -> int:
    """Each checkpoint of a model directory, at the version its files agree on (files of two versions: refused)."""
    if a.json:
        raise CheckpointError(f"{d}: --json takes one checkpoint file, not a model directory")
    version, files = check_model_dir(d, a.version)
    cfg = a.config or (d / "config.yaml" if (d / "config.yaml").is_file() else None)
    config = load_config(cfg)
    print(f"{d}: model directory, IndexTTS-{version or '2.0 or 2.5'}" + (f", config {cfg}" if cfg else ""))
    for name, why in files.items():
        print(f"  {name}: {why}")
    return max(inspect_checkpoint(path, a, config, version) for path in model_dir_files(d).values())


if __name__ == "__main__":
    sys.exit(main())
