#!/usr/bin/env python3
"""Convert an official IndexTTS2 checkpoint (gpt.pth / s2mel.pth, IndexTTS-2.5's codec.pth, or a .safetensors
export with the same names) into an indextts_fast fast pack (.safetensors in kernel layout), or every checkpoint
of a model directory.

    python tools/convert_checkpoint.py checkpoints/gpt.pth --config checkpoints/config.yaml
    python tools/convert_checkpoint.py checkpoints/s2mel.pth out/s2mel.fast.safetensors --config checkpoints/config.yaml
    python tools/convert_checkpoint.py checkpoints/    # gpt.pth, s2mel.pth, codec.pth -> <stem>.fast.safetensors

The IndexTTS version (2.0 or 2.5) is read from the structure: a gpt.pth by its keys (2.5: spk_emb_proj,
lang_embedding; 2.0: the speaker conformer / perceiver, speed_emb), a codec.pth is 2.5; an s2mel.pth does not tell
(both hold gpt_layer): a model directory gives it the version of its gpt.pth / codec.pth, --version 2.5 gives it
alone, and a 2.5 s2mel pack leaves gpt_layer out (reported as ignored). The 2.5 GPT pack holds spk_emb_proj and
lang_embedding besides the 2.0 tables (no speed_emb), in bf16 as 2.5's use_bf16 runs it; the codec pack holds the
decoding half (codebook, out_project folded, the Vocos decoder, up), fp32, and leaves out the encoder, down and
in_project (reported as ignored). Files of two versions (a 2.0 gpt.pth beside a codec.pth, a gpt.pth with keys of
both) are refused.

Exit status 0 on success, 2 when an argument is wrong, or the checkpoint, the config, an environment variable or the
output is refused or cannot be written (one line on stderr: `refused:` names the file, the keys or field, and the
problem), 128 + the signal number when SIGTERM / SIGHUP stops the write (the temporary file is removed first), 130
on Ctrl-C. Library warnings (the head count assumed without a config.yaml, non-finite weights allowed) are printed
as `warning:` lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from indextts_fast.checkpoint import (
        CheckpointWarning,
        check_model_dir,
        convert_checkpoint,
        convert_model_dir,
        gpt_policy,
        model_dir_files,
    )
    from indextts_fast.checkpoint.cli import ArgumentParser, run
except Exception as e:  # torch refuses to import: a broken install, or e.g. a TQDM_* value that tqdm cannot read
    env = "".join(f" ({k}={v!r})" for k, v in os.environ.items() if k.startswith("TQDM_"))
    print(f"error: cannot import indextts_fast: {type(e).__name__}: {e}{env}", file=sys.stderr)
    sys.exit(2)


def _progress(quiet: bool):
    if quiet:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:  # a plain counter on stderr
        state = {"last": -1}

        def plain(done, total, name):
            pct = 100 * done // total
            if pct // 10 != state["last"] // 10:
                print(f"  {pct:3d}% {name}", file=sys.stderr)
            state["last"] = pct

        return plain, lambda: None
    bar = {"bar": None}

    def cb(done, total, name):
        if bar["bar"] is None or done < bar["bar"].n:  # the first file, or the next of a model directory
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(total=total, unit="tensor", desc="remap", file=sys.stderr)
        bar["bar"].set_postfix_str(name[-40:], refresh=False)
        bar["bar"].update(done - bar["bar"].n)

    def close():
        if bar["bar"] is not None:
            bar["bar"].close()

    return cb, close


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "src", type=Path, help="gpt.pth / s2mel.pth / codec.pth / .safetensors export, or a model directory"
    )
    ap.add_argument(
        "out",
        type=Path,
        nargs="?",
        help="output .safetensors (default: <src stem>.fast.safetensors); for a model directory, an output directory",
    )
    ap.add_argument("--config", type=Path, help="config.yaml to check the dimensions against (and take head counts)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ap.add_argument("--allow-nonfinite", action="store_true", help="convert even if weights hold NaN / inf")
    ap.add_argument(
        "--split-adaln", action="store_true", help="one AdaLN projection GEMM per norm (default: one stacked GEMM)"
    )
    ap.add_argument(
        "--gpt-dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="dtype of every GPT tensor (default float16 as IndexTTS2's use_fp16, bfloat16 for IndexTTS-2.5 as its "
        "use_bf16; float32 = their fp32 default)",
    )
    ap.add_argument(
        "--version",
        choices=["2.0", "2.5"],
        default=None,
        help="the IndexTTS version the checkpoint must be (gpt.pth, codec.pth) or is taken as (s2mel.pth: 2.5 leaves "
        "gpt_layer out); default: read from the structure",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    a = ap.parse_args(argv)
    return run(lambda: _convert(a), "refused:")


def _reporting_warnings(fn, close):
    """fn(), its CheckpointWarnings printed as ``warning:`` lines, the others shown as Python shows them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        try:
            return fn()
        finally:
            close()
            for w in caught:
                if issubclass(w.category, CheckpointWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _convert(a) -> int:
    policy = {"gpt": gpt_policy(a.gpt_dtype)} if a.gpt_dtype else None
    kw = dict(config=a.config, overwrite=a.overwrite, policy=policy, stack_adaln=not a.split_adaln,
              allow_nonfinite=a.allow_nonfinite, version=a.version)  # fmt: skip
    cb, close = _progress(a.quiet)
    t0 = time.perf_counter()
    if os.path.isdir(a.src) and model_dir_files(a.src):
        version, files = check_model_dir(a.src, a.version)
        reports = _reporting_warnings(lambda: convert_model_dir(a.src, a.out, progress=cb, **kw), close)
        if not a.quiet:
            print(f"{a.src}: model directory, IndexTTS-{version or '2.0 or 2.5'}")
            for name, why in files.items():
                print(f"  {name}: {why}")
    else:
        out = a.out or a.src.parent / (a.src.stem + ".fast.safetensors")
        reports = {out: _reporting_warnings(lambda: convert_checkpoint(a.src, out, progress=cb, **kw), close)}
    dt = time.perf_counter() - t0
    if not a.quiet:
        for out, rep in reports.items():
            print(rep.summary())
            print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
        print(f"in {dt:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
