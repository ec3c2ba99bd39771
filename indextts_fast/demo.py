"""The main job: IndexTTS2's GPT, s2mel and vocoder, official path against ours, stage by stage, in one table.

    python -m indextts_fast demo                    # tiny random-weight models on CPU, IndexTTS-2 sizes on a GPU
    python -m indextts_fast demo --model-dir DIR    # the real weights (config.yaml, gpt.pth, s2mel.pth)

The models are the official module code (the installed official package: the official repository's code or the
transformers-5 refactor) with random weights; ``indextts_fast.enable`` then runs the same calls on our decode loop,
our prefill, our DiT/CFM loop and our vocoder (BigVGAN v2, every anti-aliased activation one fused kernel; random
weights also with ``--model-dir``, whose checkpoints hold no vocoder). Per stage: the backend, parity
(tokens identical; or the max error against the fp64 model next to the tolerance, 2x the official fp32 path's own
error plus one fp32 unit), the official time, ours and the speed-up. On a CPU our kernels run in the Triton
interpreter: a correctness run, not a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .official import (
    OFFICIAL_DEFAULTS,
    cfm_inputs,
    cfm_run,
    generate25,
    indextts25_prompt,
    inference_speech,
    speech_inputs,
    teacher_forced_latents,
)
from .tolerance import judge

GREEDY = dict(do_sample=False, num_beams=1)


@dataclass
class Sizes:
    cond_frames: int  # w2v-BERT feature frames of the speaker reference
    text: int  # text tokens
    codes_default: int  # codes generated at the official defaults (3 beams)
    codes_greedy: int
    latent_codes: int  # codes of the teacher-forced pass
    mel: int  # CFM frames
    prompt: int  # reference-mel frames of the CFM
    vocoder: int  # mel frames of the vocoder's input (full: 10 s of audio)


SIZES = {"tiny": Sizes(37, 9, 12, 50, 23, 27, 9, 24), "full": Sizes(500, 60, 250, 250, 250, 1200, 430, 861)}


@dataclass
class Row:
    stage: str
    backend: str
    parity: str
    ok: bool
    t_official: float
    t_ours: float


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device, warmup: bool = False, profile: bool = False) -> tuple[object, float]:
    """(fn(), seconds). ``warmup``: one untimed call first (Triton compiles, caches fill), as on a GPU;
    ``profile``: the timed call inside a cudaProfilerApi range (tools/profile.sh captures only that)."""
    from .profiling import cuda_profiler_range

    if warmup:
        with _quiet():
            fn()
    ctx = cuda_profiler_range() if profile else contextlib.nullcontext()
    with ctx:
        return _timed_once(fn, device)


def _timed_once(fn: Callable, device) -> tuple[object, float]:
    _sync(device)
    t0 = time.perf_counter()
    with _quiet():
        out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def _quiet():
    """The official code prints progress (tqdm, "compute emo vec") and deprecation warnings: not for the table."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():  # fmt: skip
        warnings.simplefilter("ignore")
        yield


STAGES = ("greedy", "defaults", "latent", "cfm", "vocoder", "gpt25", "cfm25")


def run(size: str, device: torch.device, model_dir=None, stages=STAGES, profile: bool = False) -> list[Row]:
    import indextts_fast

    from . import official

    s = SIZES[size]
    if model_dir is not None:
        build = lambda: official.from_model_dir(model_dir, device="cpu")[:2]  # noqa: E731
    else:
        build = lambda: official.build_models(size)  # noqa: E731
    with _quiet():
        uv, s2 = (m.to(device) for m in build())

    rows: list[Row] = []
    backend = indextts_fast.backend_for(device)
    spk, text = speech_inputs(frames=s.cond_frames, text_len=s.text, device=device)
    warm = device.type == "cuda"  # first calls compile (ours) and fill caches (both); the interpreter needs none
    timed_off = lambda fn: _timed(fn, device, warm)  # noqa: E731
    timed_ours = lambda fn: _timed(fn, device, warm, profile)  # noqa: E731

    for name, gen, steps in (("greedy", GREEDY, s.codes_greedy), ("defaults", OFFICIAL_DEFAULTS, s.codes_default)):
        if name not in stages:
            continue
        label = f"gpt.generate {'greedy' if name == 'greedy' else 'official defaults (3 beams)'}, {steps} codes"
        ref, t_off = timed_off(lambda gen=gen, steps=steps: inference_speech(uv, spk, text, steps, **gen)[0])
        with indextts_fast.enabled(uv, s2mel=False):
            ours, t_ours = timed_ours(lambda gen=gen, steps=steps: inference_speech(uv, spk, text, steps, **gen)[0])
            same = ours.shape == ref.shape and torch.equal(ours.cpu(), ref.cpu())
        rows.append(Row(label, backend, f"tokens identical ({ref.shape[1]})" if same else "TOKENS DIFFER", same, t_off,
                        t_ours))  # fmt: skip

    if "latent" in stages or "cfm" in stages:
        with _quiet():
            uv64, s64 = (m.to(device).double() for m in build())
    if "latent" in stages:
        codes = torch.randint(0, uv.stop_mel_token, (1, s.latent_codes), generator=torch.Generator().manual_seed(3))
        codes = codes.to(device)
        low, t_off = timed_off(lambda: teacher_forced_latents(uv, spk, text, codes))
        high, _ = _timed(lambda: teacher_forced_latents(uv64, spk.double(), text, codes), device)
        with indextts_fast.enabled(uv, s2mel=False):
            out, t_ours = timed_ours(lambda: teacher_forced_latents(uv, spk, text, codes))
        v = judge(out, low, high)
        ok, msg = v.ok, str(v)
        rows.append(Row(f"gpt.latent teacher-forced, {s.latent_codes} codes", backend, msg, ok, t_off, t_ours))
    if "cfm" in stages:
        cfm, cfm64 = s2.models["cfm"], s64.models["cfm"]
        inputs = cfm_inputs(cfm, frames=s.mel, prompt=s.prompt, device=device)
        inputs64 = cfm_inputs(cfm, frames=s.mel, prompt=s.prompt, device=device, dtype=torch.float64)
        low, t_off = timed_off(lambda: cfm_run(cfm, inputs))
        high, _ = _timed(lambda: cfm_run(cfm64, inputs64), device)
        with indextts_fast.enabled(s2) as h:
            out, t_ours = timed_ours(lambda: cfm_run(cfm, inputs))
            detail = h.parts[0].detail
        v = judge(out, low, high)
        ok, msg = v.ok, str(v)
        prec = detail.split("fp32 products ")[1].split(",")[0] if "fp32 products " in detail else ""
        rows.append(Row(f"s2mel.cfm 25 steps CFG, {s.mel} frames ({prec})", backend, msg, ok, t_off, t_ours))
    if "vocoder" in stages:
        rows.append(_vocoder_row(size, device, timed_off, timed_ours, backend))
    if model_dir is None:  # IndexTTS-2.5 rows: random weights (a 2.0 checkpoint directory has no 2.5 model)
        rows += _rows25(size, device, uv, text, stages, timed_off, timed_ours, backend)
    return rows


def _vocoder_row(size, device, timed_off, timed_ours, backend) -> Row:
    """BigVGAN (``official.build_bigvgan(size)``: v2 22 kHz 80-band 256x at full size, random weights): the official
    forward against ``enable(bigvgan)``'s, both judged against the official module in fp64."""
    import copy

    import indextts_fast

    from . import official

    frames = SIZES[size].vocoder
    with _quiet():  # the repository line prints "Removing weight norm..."
        net = official.build_bigvgan(size, 5).to(device)
    net64 = copy.deepcopy(net).double()
    mel = torch.randn(1, net.conv_pre.in_channels, frames, generator=torch.Generator().manual_seed(6)).to(device)
    with torch.no_grad():
        low, t_off = timed_off(lambda: net(mel))
        high, _ = _timed(lambda: net64(mel.double()), device)
        with indextts_fast.enabled(net) as h:
            out, t_ours = timed_ours(lambda: net(mel))
            fused = next(p for p in h.parts if p.name == "vocoder").patch.fast.n_activations
    v = judge(out, low, high)
    label = f"bigvgan.forward {frames} frames -> {out.shape[-1]} samples ({fused} activations fused)"
    return Row(label, backend, str(v), v.ok, t_off, t_ours)


def _rows25(size, device, uv, text, stages, timed_off, timed_ours, backend) -> list[Row]:
    """IndexTTS-2.5: the GPT generation on a 2.5 prompt (3 conditioning rows, the masked pad rows, the language
    row; fp32, and on a GPU the use_bf16 prompt pass) and the 2.5 s2mel's CFM (indextts25-inference's modules)."""
    from . import official

    s, rows = SIZES[size], []
    if "gpt25" in stages:
        text25 = text.clone()
        text25[0, 1] = uv.start_text_token  # an id prepare_gpt_inputs strips: a second masked row (as "!" in 2.5)
        prompt = indextts25_prompt(uv, text25)
        steps = s.codes_default
        ref, t_off = timed_off(lambda: generate25(uv, prompt, steps, **OFFICIAL_DEFAULTS))
        with indextts_fast_enabled(uv):
            ours, t_ours = timed_ours(lambda: generate25(uv, prompt, steps, **OFFICIAL_DEFAULTS))
        same = ours.shape == ref.shape and torch.equal(ours.cpu(), ref.cpu())
        pad = int((prompt[2][0] == 0).sum())
        parity = f"tokens identical ({ref.shape[1]})" if same else "TOKENS DIFFER"
        label = f"gpt.generate 2.5 prompt ({pad} masked rows), official defaults, {steps} codes"
        rows.append(Row(label, backend, parity, same, t_off, t_ours))
        if device.type == "cuda":  # use_bf16: CPU autocast has no fp32 LayerNorm, the official bf16 GPT fails there
            rows.append(_bf16_prompt_row(size, device, prompt, timed_off, timed_ours, backend))
    if "cfm25" in stages:
        try:
            s2, s64 = (official.build_s2mel(size, 4, version="2.5", **_dit(size)) for _ in range(2))
        except official.OfficialCodeMissing as e:
            rows.append(Row("s2mel.cfm IndexTTS-2.5", "-", f"not run: {e}", True, float("nan"), float("nan")))
            return rows
        s2, s64 = s2.to(device), s64.to(device).double()
        cfm, cfm64 = s2.models["cfm"], s64.models["cfm"]
        inputs = cfm_inputs(cfm, frames=s.mel, prompt=s.prompt, device=device)
        inputs64 = cfm_inputs(cfm, frames=s.mel, prompt=s.prompt, device=device, dtype=torch.float64)
        low, t_off = timed_off(lambda: cfm_run(cfm, inputs))
        high, _ = _timed(lambda: cfm_run(cfm64, inputs64), device)
        import indextts_fast

        with indextts_fast.enabled(s2):
            out, t_ours = timed_ours(lambda: cfm_run(cfm, inputs))
        v = judge(out, low, high)
        rows.append(Row(f"s2mel.cfm 2.5 model, 25 steps CFG, {s.mel} frames", backend, str(v), v.ok, t_off, t_ours))
    return rows


def _dit(size: str) -> dict:
    from .official import DIT_HEAD_DIM_64

    return {} if size == "full" else dict(DIT_HEAD_DIM_64)


@contextlib.contextmanager
def indextts_fast_enabled(uv):
    import indextts_fast

    with indextts_fast.enabled(uv, s2mel=False) as h:
        yield h


def _bf16_prompt_row(size, device, prompt, timed_off, timed_ours, backend) -> Row:
    """use_bf16's prompt pass (the first step's logits): the official bf16 GPT under bf16 autocast against ours,
    both judged against the fp64 pass of the same bf16-rounded weights."""
    from . import official
    from .gpt.patch import build_fast_gpt

    def build(dtype):
        uv = official.build_models(size)[0].to(device=device, dtype=dtype)
        uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=dtype == torch.bfloat16)
        return uv

    def official_logits(uv, dtype):
        prefix, ids, mask = prompt
        prefix = prefix.to(device, dtype if dtype == torch.float64 else prefix.dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return official.prompt_pass(uv, prefix, ids.to(device), mask.to(device))[1].float()

    def ours_logits(uv):
        fast = build_fast_gpt(uv)
        prefix, ids, mask = prompt
        pad = int((mask[0] == 0).sum())
        tail = ids[:, prefix.shape[1] :].to(device)
        with torch.no_grad():
            emb = torch.cat([fast.to_stream(prefix[:, pad:].to(device)),
                             fast.embed_mel(tail, torch.arange(tail.shape[1], device=device))], dim=1)  # fmt: skip
            return fast.logits(fast.causal(emb)[:, -1])

    half = build(torch.bfloat16)
    low, t_off = timed_off(lambda: official_logits(half, torch.bfloat16))
    out, t_ours = timed_ours(lambda: ours_logits(half))
    high = official_logits(half.double(), torch.float64)
    v = judge(out, low, high)
    return Row("gpt 2.5 prompt pass, bf16 (use_bf16), logits", backend, str(v), v.ok, t_off, t_ours)


def print_table(rows: list[Row], header: str) -> None:
    print(header)
    w = max(len(r.stage) for r in rows)
    print(f"{'stage':<{w}}  {'backend':<10} {'parity':<44} {'official s':>10} {'ours s':>9} {'speed-up':>8}")
    for r in rows:
        print(f"{r.stage:<{w}}  {r.backend:<10} {r.parity:<44} {r.t_official:>10.3f} {r.t_ours:>9.3f} "
              f"{r.t_official / r.t_ours:>7.2f}x")  # fmt: skip
    print("every stage agrees" if all(r.ok for r in rows) else "SOME STAGES DISAGREE")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m indextts_fast demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size", choices=sorted(SIZES), help="model size (default: full on a GPU, tiny on a CPU)")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--model-dir", help="an IndexTTS-2 checkpoint directory (config.yaml, gpt.pth, s2mel.pth)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="our timed runs inside cudaProfilerApi ranges (nsys --capture-range=cudaProfilerApi)",
    )
    args = ap.parse_args(argv)

    import indextts_fast

    from . import official
    from .__main__ import fail

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        return fail("demo", f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda"):
        return fail("demo", f"--device {args.device!r}: the demo runs on cpu or cuda")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        return fail("demo", f"--device {args.device}: no such CUDA device on this machine")
    size = args.size or ("full" if device.type == "cuda" or args.model_dir else "tiny")
    stages = tuple(args.stages.split(","))
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        return fail("demo", f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
    try:
        version = official.official_version() or "unknown version"
        line = official.official_line()
    except official.OfficialCodeMissing as e:
        return fail("demo", e)
    if args.model_dir is not None:
        from pathlib import Path

        from .synth import model_version

        gone = [n for n in ("config.yaml", "gpt.pth", "s2mel.pth") if not (Path(args.model_dir) / n).is_file()]
        if gone:
            return fail("demo", f"--model-dir {args.model_dir} lacks {', '.join(gone)}")
        if model_version(Path(args.model_dir)) == "2.5":
            why = "the demo's real-weight stages are IndexTTS-2's; its 2.5 rows run on random weights (synth runs it)"
            return fail("demo", f"--model-dir {args.model_dir} is IndexTTS-2.5 (codec.pth): {why}")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    models = f"real weights {args.model_dir}" if args.model_dir else f"{size} models"
    header = (f"indextts_fast {indextts_fast.__version__} on {card}: official {version} ({line} line), torch "
              f"{torch.__version__}, {models}")  # fmt: skip
    if device.type != "cuda":
        interpreted = indextts_fast.backend_for(device) == "interpret"
        where = "in the Triton interpreter" if interpreted else "on the torch references"
        header += f"\n(CPU: our ops run {where}; the times show correctness runs, not speed)"
    try:
        rows = run(size, device, args.model_dir, stages, profile=args.profile)
    except official.ModelDirError as e:  # the model directory's files: named, no traceback
        return fail("demo", e)
    print_table(rows, header)
    return 0 if all(r.ok for r in rows) else 1
