#!/usr/bin/env python3
"""Inspect an IndexTTS2 checkpoint (gpt.pth / s2mel.pth / .safetensors export) or an indextts_fast fast pack.

For a checkpoint: the container, the detected model and version (2.0 / 2.5), the dimensions read from the
shapes, and for every key its shape, dtype and what the loader would do with it (mapped by which transform into
which pack tensor, carried, ignored and why, or refused: unknown / wrong shape / wrong dtype), plus the missing
keys. For a fast pack: its metadata and tensors.

    python tools/inspect_checkpoint.py checkpoints/s2mel.pth            # summary + refused keys
    python tools/inspect_checkpoint.py checkpoints/s2mel.pth --keys     # every key
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indextts_fast.loader import CheckpointError, plan_checkpoint, read_checkpoint, read_pack  # noqa: E402


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


def inspect_checkpoint(path: Path, keys: bool, split_adaln: bool) -> int:
    kind, sd = read_checkpoint(path)
    plan = plan_checkpoint(sd, kind, stack_adaln=not split_adaln)
    print(f"{path}: {kind} checkpoint, IndexTTS {plan['version']}, {len(sd)} keys")
    if plan["error"]:
        print(f"  dimensions: cannot be read: {plan['error']}")
    else:
        print(f"  dimensions (from shapes; heads = width // 64 unless config.yaml says otherwise): {plan['dims']}")
    counts = Counter(a.split(":")[0] for a, _ in plan["actions"].values())
    ops = Counter(a.split(":")[1] for a, _ in plan["actions"].values() if a.startswith("mapped:"))
    print(f"  actions: {dict(counts)}; mapped by transform: {dict(ops)}")
    print(f"  dtypes: {dict(Counter(_dt(t) for t in sd.values()))}")
    refused = {k: v for k, v in plan["actions"].items() if v[0] in ("unknown", "wrong-shape", "wrong-dtype")}
    for k, t in sd.items():
        action, target = plan["actions"][k]
        if keys or k in refused:
            print(f"    {k:<64} {list(t.shape)!s:<20} {_dt(t):<9} {action:<14} {target}")
    for k in plan["missing"]:
        print(f"    MISSING {k}")
    for msg in plan.get("problems", []):
        print(f"    PROBLEM {msg}")
    ok = not refused and not plan["missing"] and not plan["error"] and not plan.get("problems")
    print("  the loader would " + ("accept this checkpoint" if ok else "REFUSE this checkpoint"))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--keys", action="store_true", help="list every key, not only the refused ones")
    ap.add_argument("--split-adaln", action="store_true", help="plan for the per-norm AdaLN layout")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON (checkpoints only)")
    a = ap.parse_args(argv)
    try:
        if _is_pack(a.path):
            return inspect_pack(a.path, a.keys)
        if a.json:
            kind, sd = read_checkpoint(a.path)
            plan = plan_checkpoint(sd, kind, stack_adaln=not a.split_adaln)
            plan["shapes"] = {k: [list(t.shape), _dt(t)] for k, t in sd.items()}
            print(json.dumps(plan, indent=1))
            return 0
        return inspect_checkpoint(a.path, a.keys, a.split_adaln)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
