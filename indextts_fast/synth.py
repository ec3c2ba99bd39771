"""``python -m indextts_fast synth``: a real synthesis with the official IndexTTS2, then with indextts_fast enabled.

    python -m indextts_fast synth --model-dir checkpoints --voice ref.wav --text "..." --out out.wav [--lang en]

The checkpoint directory says which model it is: IndexTTS-2.5 (``codec.pth`` and the tiktoken vocabulary beside
gpt.pth and s2mel.pth: ``indextts.infer_v2_5``, whose infer takes ``--lang``) or IndexTTS-2 (``bpe.model``:
``indextts.infer_v2``); its checkpoints are then read for their keys and must all be that version. Needs the
official package with its own requirements (the official repository; for 2.0 also ``pip install
indextts2-inference``), the checkpoint directory and, for any speed, a GPU. Prints the official run's per-stage
times (IndexTTS2.infer's own timers: gpt_gen, gpt_forward (2.0 only), s2mel, bigvgan, total, RTF) without and with
the fast backend (whose report, printed first, names each part it runs: the GPT, the CFM/DiT and the vocoder, so
the second run's bigvgan time is BigVGAN on our fused anti-aliased activation). The official run's audio goes to
``<out>.official.wav`` (skip it with ``--no-baseline``). Where a part is missing (the package, a weight file, the
voice file, a GPU) one line says which.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import sys
from pathlib import Path

NEEDED_FILES = {
    "2.0": ("config.yaml", "gpt.pth", "s2mel.pth", "bpe.model"),
    "2.5": ("config.yaml", "gpt.pth", "s2mel.pth", "codec.pth", "multilingual_zh_ja_yue_char_del.tiktoken"),
}
MODULES = {"2.0": "indextts.infer_v2", "2.5": "indextts.infer_v2_5"}


def model_version(model_dir: Path) -> str:
    """ "2.5" where the directory holds a file only IndexTTS-2.5 reads (codec.pth, its tiktoken vocabulary), else
    "2.0"; the checkpoints' own structure is checked afterwards (``checkpoint.check_model_dir``)."""
    return "2.5" if any((model_dir / n).is_file() for n in NEEDED_FILES["2.5"][3:]) else "2.0"


_TIMES = re.compile(r">> (gpt_gen_time|gpt_forward_time|s2mel_time|bigvgan_time|Total inference time|RTF): ([\d.]+)")


def _parse_times(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in _TIMES.findall(text)}


def _infer(tts, args, out_path: str, version: str) -> dict[str, float]:
    buf = io.StringIO()
    extra = {"lang": args.lang} if version == "2.5" else {}
    with contextlib.redirect_stdout(buf):
        tts.infer(spk_audio_prompt=args.voice, text=args.text, output_path=out_path, verbose=False, **extra)
    times = _parse_times(buf.getvalue())
    if not times:
        raise RuntimeError("IndexTTS2.infer printed no stage times (an unknown revision of the official code?)")
    return times


@contextlib.contextmanager
def _vocoder_range(tts):
    """An NVTX range ``vocoder`` around BigVGAN's forward (an instance attribute, removed afterwards; inside
    ``enable``, around the fast forward it installed, which is put back)."""
    from .profiling import nvtx_range

    voc = getattr(tts, "bigvgan", None)
    if voc is None:
        yield
        return
    had = "forward" in voc.__dict__  # enable()'s vocoder patch is an instance attribute
    base = voc.forward

    def forward(*a, **k):
        with nvtx_range("vocoder"):
            return base(*a, **k)

    voc.forward = forward
    try:
        yield
    finally:
        if had:
            voc.forward = base
        else:
            del voc.forward


def model_files(model_dir: Path, *, fp16: bool, bf16: bool) -> str:
    """The version ("2.0" / "2.5") of ``model_dir`` from its files; ValueError: one line naming what is wrong (the
    directory, a missing file, a half-precision option of the other version)."""
    if not model_dir.is_dir():
        raise ValueError(f"the model directory {model_dir} does not exist")
    version = model_version(model_dir)
    missing = [n for n in NEEDED_FILES[version] if not (model_dir / n).is_file()]
    if missing:
        raise ValueError(f"{model_dir} lacks {', '.join(missing)} (download IndexTTS-{version} into it)")
    if fp16 and version == "2.5" or bf16 and version == "2.0":
        flag, other = ("--fp16", "--bf16") if fp16 else ("--bf16", "--fp16")
        raise ValueError(f"{flag}: {model_dir} is IndexTTS-{version}, whose half-precision option is {other}")
    return version


def open_model(model_dir: Path, version: str, *, fp16: bool, bf16: bool, prog: str):
    """The official IndexTTS2 object of ``model_dir`` (``model_files``' version), every checkpoint checked first;
    ValueError: one line naming what is wrong (a checkpoint, the package, the official constructor)."""
    from . import checkpoint

    try:  # keys and shapes only (memory-mapped): every checkpoint the version the directory's files say
        checkpoint.check_model_dir(model_dir, version)
    except (checkpoint.CheckpointError, OSError, ValueError) as e:
        raise ValueError(str(e)) from None
    try:
        infer_mod = importlib.import_module(MODULES[version])
    except Exception as e:  # the package, or one of its own requirements, is missing or broken: not ours to trace
        why = f"{type(e).__name__}: {e}"
        where = (
            "the official repository"
            if version == "2.5"
            else "pip install indextts2-inference, or the official repository"
        )
        raise ValueError(f"the official IndexTTS2 package ({MODULES[version]}) cannot be imported ({why}); "
                         f"install it with its requirements ({where})") from None  # fmt: skip
    import torch

    if not torch.cuda.is_available():
        print(f"{prog}: no GPU: the model runs on the CPU (the fast backend on its torch references); expect minutes",
              file=sys.stderr)  # fmt: skip
    try:  # it also fetches w2v-BERT, CAMPPlus, BigVGAN and the codec from the Hugging Face hub
        half = {"use_bf16": bf16} if version == "2.5" else {"use_fp16": fp16}
        tts = infer_mod.IndexTTS2(cfg_path=str(model_dir / "config.yaml"), model_dir=str(model_dir), **half)
    except Exception as e:  # the official constructor's own failure (hub, files, CUDA): one line, not a traceback
        raise ValueError(f"building the official IndexTTS2 failed: {type(e).__name__}: {e}") from None
    return tts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m indextts_fast synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model-dir", required=True, help="the IndexTTS-2 or IndexTTS-2.5 checkpoint directory")
    ap.add_argument("--voice", required=True, help="the speaker reference audio")
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", required=True, help="output wav (ours); the official run writes <out>.official.wav")
    ap.add_argument("--fp16", action="store_true", help="IndexTTS-2: use_fp16=True, as the official option")
    ap.add_argument("--bf16", action="store_true", help="IndexTTS-2.5: use_bf16=True, as the official option")
    ap.add_argument("--lang", default="en", help="IndexTTS-2.5: the text's language (en, zh, ja, es, ...)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the official run")
    args = ap.parse_args(argv)

    from .__main__ import fail

    model_dir = Path(args.model_dir)
    try:
        version = model_files(model_dir, fp16=args.fp16, bf16=args.bf16)
    except ValueError as e:
        return fail("synth", e)
    if not Path(args.voice).is_file():
        return fail("synth", f"the voice file {args.voice} does not exist")
    if Path(args.out).is_dir() or not Path(args.out).resolve().parent.is_dir():
        return fail("synth", f"--out {args.out}: not a file path in an existing directory")
    try:
        tts = open_model(model_dir, version, fp16=args.fp16, bf16=args.bf16, prog="synth")
    except ValueError as e:
        return fail("synth", e)
    import indextts_fast

    out = Path(args.out)
    runs = {}
    try:
        if not args.no_baseline:
            runs["official"] = _infer(tts, args, str(out.with_suffix(".official.wav")), version)
        with indextts_fast.enabled(tts) as handle, _vocoder_range(tts):
            print(handle.report())
            runs["indextts_fast"] = _infer(tts, args, str(out), version)
    except (indextts_fast.UnsupportedModel, RuntimeError, OSError, ValueError) as e:
        print(f"synth: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    keys = ["gpt_gen_time", "gpt_forward_time", "s2mel_time", "bigvgan_time", "Total inference time", "RTF"]
    names = list(runs)
    print(f"{'stage':<22}" + "".join(f"{n:>16}" for n in names) + ("   speed-up" if len(names) == 2 else ""))
    for k in keys:
        vals = [runs[n].get(k) for n in names]
        cells = "".join(f"{v:>16.3f}" if v is not None else f"{'-':>16}" for v in vals)
        sp = f"   {vals[0] / vals[1]:.2f}x" if len(vals) == 2 and all(vals) else ""
        print(f"{k.replace(' inference', ''):<22}{cells}{sp}")
    print(f"wrote {out}" + ("" if args.no_baseline else f" and {out.with_suffix('.official.wav')}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
