"""``python -m indextts_fast serve``: the OpenAI-compatible speech server (server.py) on one process and one device.

    python -m indextts_fast serve --model-dir checkpoints --voices voices/ [--host 127.0.0.1 --port 8000]
                                  [--max-batch 8 --max-queue 64 --kv-budget GB --fp16 --first-segment-tokens N]
    python -m indextts_fast serve --tiny    # tiny random-weight models, a synthetic voice "default": no checkpoints

``--voices DIR``: every .wav / .flac / .mp3 / .ogg file in DIR is a voice named after the file (its conditioning
computed once at start). ``--kv-budget GB``: the KV pool's memory; it holds ``floor(budget / one request's KV)``
requests' generations at once (one request: 3 beam rows x the longest prompt and generation x layers x 2 x width),
the rest of a round's requests wait for a slot in it; ``--max-batch``: the requests in a round; ``--max-queue``: the
requests waiting for a round (beyond it: 429).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

AUDIO = (".wav", ".flac", ".mp3", ".ogg")


def _fail(message) -> int:
    from ..__main__ import fail

    return fail("serve", message)


@contextlib.contextmanager
def _quiet():
    """The tiny models' construction notes off stderr (token ids past the tiny vocabularies, weight_norm's
    deprecation, the official code's vendored transformers note on its GPT2InferenceModel)."""
    import logging

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def kv_plan(tts, *, beams: int, segment_tokens: int, max_mel_tokens: int, max_batch: int, budget_gb) -> dict:
    """The KV pool's size: positions one request needs at most (the conditioning, the segment's text, the
    generation), the bytes of one request's slot, the slots the budget (or ``max_batch``) gives."""
    import torch

    from ..gpt.decode import CAPACITY_STEP

    gpt = tts.gpt
    cond = int(getattr(gpt, "cond_num", 32))
    positions = cond + segment_tokens + 2 + 1 + max_mel_tokens + 2
    positions = -(-positions // CAPACITY_STEP) * CAPACITY_STEP
    half = getattr(tts, "dtype", None) if getattr(tts, "use_fp16", False) else None
    item = torch.tensor([], dtype=half or torch.float32).element_size()
    slot_bytes = int(gpt.layers) * 2 * beams * positions * int(gpt.model_dim) * item
    slots = max_batch
    if budget_gb is not None:
        slots = min(max_batch, int(budget_gb * 2**30) // slot_bytes)
        if slots < 1:
            raise ValueError(f"--kv-budget {budget_gb} GB holds no request: one needs {slot_bytes / 2**30:.3f} GB "
                             f"({beams} beams x {positions} positions x {gpt.layers} layers x 2 x {gpt.model_dim} x "
                             f"{item} bytes)")  # fmt: skip
    return dict(slots=slots, beams=beams, positions=positions, slot_bytes=slot_bytes, bytes=slots * slot_bytes,
                budget_bytes=None if budget_gb is None else int(budget_gb * 2**30))  # fmt: skip


def build(args, log=print):
    """(Served, the enable handle): the model, enabled; its voices; the engine. ValueError: what is wrong."""
    import torch

    import indextts_fast

    from .engine import Engine
    from .pipeline import DEFAULTS, Pipeline
    from .server import Served

    voices: dict = {}
    if args.tiny:
        from .. import offline

        work = Path(tempfile.mkdtemp(prefix="indextts_fast_tiny_"))
        with _quiet():
            off = offline.build("2.0", work, seed=args.seed, record=False)
        tts, model_id, version = off.tts, "indextts-2-tiny", "2.0"
        voices["default"] = off.prompt
    else:
        from .. import synth

        version = synth.model_files(Path(args.model_dir), fp16=args.fp16, bf16=False)
        if version != "2.0":
            raise ValueError(f"{args.model_dir} is IndexTTS-{version}; the server serves IndexTTS-2 (2.0) for now")
        tts = synth.open_model(Path(args.model_dir), version, fp16=args.fp16, bf16=False, prog="serve")
        model_id = "indextts-2"
    if args.voices:
        d = Path(args.voices)
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in AUDIO and f.is_file():
                voices[f.stem] = f
    if not voices:
        raise ValueError("no voice: give --voices DIR with reference audio files (.wav, .flac, .mp3, .ogg)")
    seg = min(120, int(tts.gpt.max_text_tokens) - 2)
    mel = min(DEFAULTS["max_mel_tokens"], int(tts.gpt.max_mel_tokens) - 8)
    if args.official:  # the baseline: the official infer, never enabled, one request at a time
        from .engine import OfficialEngine

        engine = OfficialEngine(tts, {n: str(p) for n, p in voices.items()}, max_queue=args.max_queue)
        log(f"serve: {model_id} on the official infer (not enabled), one request at a time; queue {args.max_queue}")
        return Served(engine, model_id=model_id, version=version, max_text_tokens_per_segment=seg,
                      max_mel_tokens=mel, backend="official"), None  # fmt: skip
    with _quiet() if args.tiny else contextlib.nullcontext():
        handle = indextts_fast.enable(tts)
    kv = kv_plan(tts, beams=DEFAULTS["num_beams"], segment_tokens=seg, max_mel_tokens=mel,
                 max_batch=args.max_batch, budget_gb=args.kv_budget)  # fmt: skip
    pipe = Pipeline(tts, slots=kv["slots"])
    conditioned = {}
    for name, path in voices.items():
        try:
            conditioned[name] = pipe.voice(path)
        except Exception as e:
            raise ValueError(f"voice {name!r} ({path}): its conditioning failed: {type(e).__name__}: {e}") from None
        log(f"serve: voice {name!r} from {path}")
    engine = Engine(pipe, conditioned, max_batch=args.max_batch, max_queue=args.max_queue)
    served = Served(engine, model_id=model_id, version=version, max_text_tokens_per_segment=seg, max_mel_tokens=mel,
                    first_segment_tokens=args.first_segment_tokens, kv=kv)  # fmt: skip
    log(f"serve: {model_id} on {'cuda' if torch.cuda.is_available() else 'cpu'}; KV pool {kv['slots']} requests x "
        f"{kv['beams']} beams x {kv['positions']} positions = {kv['bytes'] / 2**20:.1f} MiB; "
        f"max batch {args.max_batch}, queue {args.max_queue}")  # fmt: skip
    return served, handle


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m indextts_fast serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="the IndexTTS-2 checkpoint directory")
    src.add_argument("--tiny", action="store_true", help="tiny random-weight models, a synthetic voice 'default'")
    ap.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--voices", help="a directory of reference audio files, one voice per file")
    ap.add_argument("--max-batch", type=int, default=8, help="requests in one round (default 8)")
    ap.add_argument("--max-queue", type=int, default=64, help="requests waiting (default 64; beyond: 429)")
    ap.add_argument("--kv-budget", type=float, default=None, help="the KV pool's GB (default: max-batch requests)")
    ap.add_argument("--fp16", action="store_true", help="use_fp16=True, as the official option")
    ap.add_argument(
        "--first-segment-tokens",
        type=int,
        default=None,
        help="cut the first segment at its last punctuation within N text tokens (shorter first audio)",
    )
    ap.add_argument("--seed", type=int, default=0, help="--tiny: the weights' seed")
    ap.add_argument(
        "--official",
        action="store_true",
        help="serve the official infer instead (never enabled, one request at a time): a baseline",
    )
    return ap


def check(args) -> None:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: not a port")
    if args.max_batch < 1 or args.max_queue < 0:
        raise ValueError("--max-batch must be >= 1 and --max-queue >= 0")
    if args.kv_budget is not None and not args.kv_budget > 0:
        raise ValueError(f"--kv-budget {args.kv_budget}: must be > 0 GB")
    if args.voices and not Path(args.voices).is_dir():
        raise ValueError(f"--voices {args.voices}: not a directory")
    if args.first_segment_tokens is not None and args.first_segment_tokens < 1:
        raise ValueError("--first-segment-tokens must be >= 1")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        check(args)
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        return _fail(f"{e.name} is not installed: pip install 'indextts-fast[serve]'")
    except ValueError as e:
        return _fail(e)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        served, _handle = build(args, log)
    except (ValueError, OSError) as e:
        return _fail(e)
    from .server import create_app

    app = create_app(served)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        served.engine.close()
    return 0
