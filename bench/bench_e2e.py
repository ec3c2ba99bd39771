"""End to end, in one run on one card: the official modules eagerly, the official modules with ``torch.compile`` on
the CFM estimator (what ``use_torch_compile`` / ``enable_torch_compile`` does), and ours (``indextts_fast.enable``).

Models and inputs: the official module code at IndexTTS-2's sizes with random weights and the synthetic inputs of
the official-model harness (``indextts_fast.official``: ``build_models``, where the stop token's bias is lowered so
every generation runs its full length; ``speech_inputs``, ``cfm_inputs``, ``inference_speech``,
``teacher_forced_latents``, ``cfm_run``). Rows:

- ``gpt ms/token``: the official ``inference_speech`` at infer_v2's sampling settings, batch 1 (num_beams=1) and
  3 beams, timed at ``codes`` and at ``short`` generated codes: (t_long - t_short) / (n_long - n_short), so the
  prefill and the conditioning encoders drop out. tokens/s = 1000 / ms.
- ``cfm ms/step``: ``cfm.inference`` at infer_v2's call (25 steps, CFG 0.7, batch 2), a 10 s reference (861 mel
  frames) plus 500 codes (860 frames): the call's time / 25.
- ``synthesis``: one synthetic sentence as infer_v2 runs it after its encoders: GPT generation (3 beams, 500
  codes), the teacher-forced latent pass, gpt_layer, length_regulator, the 25-step CFM. RTF = seconds / the
  audio's seconds (frames x 256 / 22050). The semantic codec's vq2emb (replaced by a random embedding), the
  w2v-BERT / CAMPPlus encoders and BigVGAN are not part of it: they run the same official code on every provider.
- ``cfm mel max |err|``: each provider's CFM mel against the official fp32 one (same seed, same noise); the
  providers ``ours-bf16`` / ``ours-fp16`` (the opt-in low-precision estimator) give only the CFM rows.
- ``first synthesis``: the first synthesis of each provider (ours: Triton compiles and CUDA-graph captures; compile:
  Inductor), of it ``capture s`` (ours: the host time of the GPT and CFM graph captures), and ``peak MiB``:
  torch.cuda.max_memory_allocated over the syntheses.

The GPT runs as ``use_fp16=True`` (halved weights under fp16 autocast) on CUDA, fp32 on a CPU.

IndexTTS-2.5 (providers ``official-2.5`` and ``ours-2.5``, rows prefixed ``2.5``): the GPT as ``use_bf16=True``
(bf16 weights under bf16 autocast) on CUDA, fp32 on a CPU, on the 2.5 prompt (``official.indextts25_prompt``: 3
conditioning rows, a masked pad row, the language row), 3 beams, 250 codes (10 s at 25 Hz); then the codec's
decoder (indextts25-inference's ``EnhancedCodec``, fp32, official on both providers: enable does not replace it),
the length regulator to ``int(2M * 1.72)`` frames and the 25-step CFM of the 2.5 s2mel (indextts25-inference).

    pytest bench/bench_e2e.py --benchmark            # on a GPU; the table is printed at the end
    python -m bench.bench_e2e [--json bench/results/<card>-e2e.json]
    python -m bench.bench_e2e --size tiny --device cpu   # the harness on tiny models (interpreter: no timing)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Optional

import pytest
import torch

SR, HOP = 22050, 256  # IndexTTS-2's s2mel mel: 22050 Hz, hop 256 (86.1 frames per second)
CODE_TO_FRAMES = 1.72  # infer_v2: target_lengths = (code_lens * 1.72).long()
PROVIDERS = ("official", "compile", "ours", "ours-bf16", "ours-fp16", "official-2.5", "ours-2.5")
V25 = ("official-2.5", "ours-2.5")  # IndexTTS-2.5 (its own rows, against official-2.5)
LOW = {"ours-bf16": "bf16", "ours-fp16": "fp16"}  # the opt-in low-precision estimator: the CFM rows only


@dataclass
class E2ESizes:
    cond_frames: int  # speaker-condition frames (w2v-BERT features, 50 per second: 500 = a 10 s reference)
    text: int  # text tokens
    codes: int  # generated codes (500: about 10 s of audio)
    short: int  # the short generation the per-token time subtracts
    prompt: int  # reference mel frames (861 = 10 s)
    repeats: int  # timed calls after the first
    steps: int = 25  # CFM steps (infer_v2: 25)


SIZES = {"full": E2ESizes(500, 60, 500, 50, 861, 1), "tiny": E2ESizes(37, 9, 12, 2, 9, 0, steps=2)}


@dataclass
class Row:
    provider: str
    metric: str
    value: float
    unit: str
    note: str = ""


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int):
    """(last output, first-call s, median s of ``repeats`` more calls (the first when 0), peak bytes or None)."""
    from indextts_fast.demo import _quiet

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    out = None
    for _ in range(1 + repeats):
        _sync(device)
        t0 = time.perf_counter()
        with _quiet():
            out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out, times[0], statistics.median(times[1:] or times), peak


class Models:
    """The official UnifiedVoice and MyModel at one size on one device, and the synthetic inputs."""

    def __init__(self, size: str, device: torch.device, gpt_dtype: torch.dtype, seed: int = 0):
        from indextts_fast import official
        from indextts_fast.demo import _quiet

        self.s, self.device, self.gpt_dtype = SIZES[size], device, gpt_dtype
        with _quiet():  # use_fp16: IndexTTS2 halves the GPT and runs it under fp16 autocast
            uv, s2 = official.build_models(size, seed, half=gpt_dtype == torch.float16)
            self.uv, self.s2 = uv.to(device).eval(), s2.to(device).eval()
        s = self.s
        self.spk, self.text = official.speech_inputs(seed + 1, frames=s.cond_frames, text_len=s.text, device=device)
        # the reference's length_regulator output (the CFM condition's prompt part), its mel and the style vector
        self.prompt_cond, _, self.ref_mel, self.style = official.cfm_inputs(
            self.s2.models["cfm"], frames=s.prompt, prompt=s.prompt, seed=seed + 2, device=device
        )
        g = torch.Generator().manual_seed(seed + 3)
        self.codebook = torch.randn(1, s.codes, self._content_width(), generator=g).to(device)  # vq2emb's stand-in

    def _content_width(self) -> int:
        return self.s2.models["length_regulator"].content_in_proj.in_features

    @property
    def target(self):
        """The IndexTTS2-shaped object ``enable`` takes: ``.gpt`` and ``.s2mel``."""

        class _TTS:
            pass

        t = _TTS()
        t.gpt, t.s2mel = self.uv, self.s2
        return t

    def _autocast(self):
        on = self.gpt_dtype == torch.float16
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=on)

    def generate(self, codes: int, beams: int, seed: int = 7) -> torch.Tensor:
        from indextts_fast.official import OFFICIAL_DEFAULTS, inference_speech

        gen = dict(OFFICIAL_DEFAULTS, num_beams=beams)
        # the features in fp32, as infer_v2 passes the w2v-BERT features (autocast casts them)
        with self._autocast():
            return inference_speech(self.uv, self.spk, self.text, codes, seed=seed, **gen)[0]

    def cfm(self, mu: torch.Tensor, seed: int = 21) -> torch.Tensor:
        from indextts_fast.official import cfm_run

        lens = torch.LongTensor([mu.size(1)]).to(mu.device)
        return cfm_run(self.s2.models["cfm"], (mu, lens, self.ref_mel, self.style), seed=seed, steps=self.s.steps)

    def mu(self, codes: int) -> torch.Tensor:
        """infer_v2's CFM condition for ``codes`` codes: prompt condition + length_regulator(S_infer) frames."""
        with torch.no_grad():
            S = torch.randn(1, codes, self._content_width(), generator=torch.Generator().manual_seed(3))
            cond = self.s2.models["length_regulator"](S.to(self.device),
                                                      ylens=torch.tensor([int(codes * CODE_TO_FRAMES)],
                                                                         device=self.device), n_quantizers=3,
                                                      f0=None)[0]  # fmt: skip
            return torch.cat([self.prompt_cond, cond], dim=1)

    def synthesis(self, seed: int = 7) -> tuple[torch.Tensor, int]:
        """One sentence after the encoders: (mel [1, 80, frames], codes generated)."""
        from indextts_fast.official import teacher_forced_latents

        codes = self.generate(self.s.codes, 3, seed)
        n = int(codes.shape[1])
        with self._autocast():
            latent = teacher_forced_latents(self.uv, self.spk, self.text, codes)
        with torch.no_grad():
            S_infer = self.codebook[:, :n]
            gpt_layer = self.s2.models["gpt_layer"]
            if gpt_layer[0].in_features == latent.shape[-1]:  # the tiny s2mel's gpt_layer is IndexTTS-2's width
                S_infer = S_infer + gpt_layer(latent.float())[:, :n]
            cond = self.s2.models["length_regulator"](S_infer, ylens=torch.tensor([int(n * CODE_TO_FRAMES)],
                                                                                   device=self.device),
                                                      n_quantizers=3, f0=None)[0]  # fmt: skip
            mu = torch.cat([self.prompt_cond, cond], dim=1)
        mel = self.cfm(mu)
        return mel[:, :, self.ref_mel.size(-1) :], n


@contextlib.contextmanager
def provider(name: str, m: Models):
    """The models as ``name`` runs them; restored afterwards."""
    if name == "official":
        yield None
    elif name == "compile":
        cfm = m.s2.models["cfm"]
        eager = cfm.estimator
        # the official enable_torch_compile (indextts2-inference): fullgraph, dynamic shapes
        cfm.estimator = torch.compile(eager, fullgraph=True, dynamic=True)
        try:
            yield None
        finally:
            cfm.estimator = eager
    elif name == "ours" or name in LOW:
        import indextts_fast

        with indextts_fast.enabled(m.target, dit_precision=LOW.get(name)) as h:
            yield h
    else:
        raise ValueError(f"unknown provider {name!r}; the providers are {', '.join(PROVIDERS)}")


class Models25:
    """IndexTTS-2.5's GPT (bf16 on CUDA), codec decoder and s2mel at one size on one device, and the inputs."""

    def __init__(self, size: str, device: torch.device, seed: int = 0):
        import indextts25.codec.models as cm

        from indextts_fast import official
        from indextts_fast.demo import _quiet

        self.s, self.device = SIZES[size], device
        self.half = device.type == "cuda"  # use_bf16 is forced off on a CPU, as the official constructor does
        dit = {} if size == "full" else dict(official.DIT_HEAD_DIM_64)
        # the tiny config's length regulator is narrower than its DiT's content input; 2.5 feeds one to the other
        lr_cfg = {"channels": official.s2mel_config(size)["DiT"]["content_dim"]}
        with _quiet():
            uv = official.build_models(size, seed)[0].to(device)
            if self.half:
                uv = uv.bfloat16()
                uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=True)
            self.uv = uv.eval()
            self.s2 = official.build_s2mel(size, seed, version="2.5", length_regulator=lr_cfg, **dit).to(device).eval()
        lr = self.s2.models["length_regulator"]
        width = lr.content_in_proj.in_features
        tiny = dict(codebook_size=uv.stop_mel_token + 1, vocos_dim=32, vocos_intermediate_dim=64, vocos_num_layers=2)
        torch.manual_seed(seed)
        self.codec = cm.EnhancedCodec(hidden_size=width, **({} if size == "full" else tiny)).to(device).eval()
        s = self.s
        _, text = official.speech_inputs(seed + 1, frames=s.cond_frames, text_len=s.text, device=device)
        self.prompt = official.indextts25_prompt(uv, text)
        self.prompt_cond, _, self.ref_mel, self.style = official.cfm_inputs(
            self.s2.models["cfm"], frames=s.prompt, prompt=s.prompt, seed=seed + 2, device=device
        )
        # 25 codes per second of audio: half of 2.0's codes for the same audio (tiny: the same few codes)
        self.codes, self.short = (s.codes // 2, s.short // 2) if size == "full" else (s.codes, s.short)

    def generate(self, codes: int, seed: int = 7) -> torch.Tensor:
        from indextts_fast.official import OFFICIAL_DEFAULTS, generate25

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.half):
            return generate25(self.uv, self.prompt, codes, seed=seed, **OFFICIAL_DEFAULTS)

    def synthesis(self, seed: int = 7) -> tuple[torch.Tensor, int, int]:
        """infer_v2_5 after its encoders: (mel [1, 80, frames], codes, frames)."""
        from indextts_fast.official import cfm_run

        codes = self.generate(self.codes, seed)
        stop = (codes[0] == self.uv.stop_mel_token).nonzero()
        n = int(stop[0, 0]) if stop.numel() else codes.shape[1]
        with torch.no_grad():
            S = self.codec.decode(codes[:, :n])
            frames = int(S.shape[1] * CODE_TO_FRAMES)
            cond = self.s2.models["length_regulator"](S, ylens=torch.tensor([frames], device=self.device))
            cond = cond[0] if isinstance(cond, tuple) else cond  # the official returns a tuple, this one a tensor
            mu = torch.cat([self.prompt_cond, cond], dim=1)
        lens = torch.LongTensor([mu.size(1)]).to(self.device)
        mel = cfm_run(self.s2.models["cfm"], (mu, lens, self.ref_mel, self.style), steps=self.s.steps)
        return mel[:, :, self.ref_mel.size(-1) :], n, frames


def _rows25(name: str, m: Models25, dev) -> list[Row]:
    s, rows = m.s, []
    (mel, n, frames), first, t_syn, peak = _timed(m.synthesis, dev, s.repeats)
    audio_s = frames * HOP / SR
    if not torch.isfinite(mel).all():
        raise RuntimeError(f"{name}: the synthetic mel has non-finite values")
    gpt = "bf16" if m.half else "fp32"
    rows.append(Row(name, f"2.5 synthesis s (gpt {gpt} 3 beams + codec + s2mel)", t_syn, "s", f"{n} codes"))
    rows.append(Row(name, "2.5 synthesis RTF", t_syn / audio_s, "x", f"{audio_s:.2f} s of audio"))
    rows.append(Row(name, "2.5 first synthesis s", first, "s", "compiles and captures included"))
    if peak is not None:
        rows.append(Row(name, "2.5 peak MiB (synthesis)", peak / 2**20, "MiB"))
    long_out, _, t_long, _ = _timed(lambda: m.generate(m.codes), dev, s.repeats)
    short_out, _, t_short, _ = _timed(lambda: m.generate(m.short), dev, s.repeats)
    ms = 1000 * (t_long - t_short) / max(int(long_out.shape[1]) - int(short_out.shape[1]), 1)
    rows.append(Row(name, f"2.5 gpt ms/token, 3 beams, {gpt}", ms, "ms",
                    f"{long_out.shape[1]} - {short_out.shape[1]} codes"))  # fmt: skip
    return rows


def run(size: str = "full", device: Optional[str] = None, gpt_dtype: Optional[str] = None,
        providers=PROVIDERS) -> list[Row]:  # fmt: skip
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = {"fp16": torch.float16, "fp32": torch.float32}[gpt_dtype or ("fp16" if dev.type == "cuda" else "fp32")]
    m = Models(size, dev, dt)
    s = m.s
    rows: list[Row] = []
    mu = m.mu(s.codes)
    frames = mu.shape[1]
    audio_s = (frames - s.prompt) * HOP / SR
    ref = None  # the official fp32 CFM mel: every provider's error is against it

    def one(name: str, handle) -> None:
        nonlocal ref
        if name in LOW:
            mel, _, t_cfm, _ = _timed(lambda: m.cfm(mu), dev, s.repeats)
            rows.append(Row(name, f"cfm ms/step, {s.steps} steps CFG, {frames} frames", 1000 * t_cfm / s.steps,
                            "ms"))  # fmt: skip
            if ref is not None:
                rows.append(Row(name, "cfm mel max |err| vs official fp32", float((mel - ref).abs().max()), "abs",
                                f"|mel| <= {float(ref.abs().max()):.1f}"))  # fmt: skip
            return
        # the synthesis first: its first call is the provider's cold start (compiles, captures)
        (mel, n), first, t_syn, peak = _timed(m.synthesis, dev, s.repeats)
        rows.append(Row(name, "synthesis s (gpt 3 beams + latent + s2mel)", t_syn, "s", f"{n} codes"))
        rows.append(Row(name, "synthesis RTF", t_syn / audio_s, "x", f"{audio_s:.2f} s of audio"))
        rows.append(Row(name, "first synthesis s", first, "s", "compiles and captures included"))
        if peak is not None:
            rows.append(Row(name, "peak MiB (synthesis)", peak / 2**20, "MiB"))
        if not torch.isfinite(mel).all():
            raise RuntimeError(f"{name}: the synthetic mel has non-finite values")
        if handle is not None and dev.type == "cuda":
            gpt_s, cfm_s = _capture_seconds(handle)
            rows.append(Row(name, "capture s (GPT decode graphs)", gpt_s, "s", "inside the first synthesis"))
            rows.append(Row(name, "capture s (CFM graphs)", cfm_s, "s", "inside the first synthesis"))
        if name != "compile":  # the compiled estimator changes the CFM only: its GPT rows are the official ones
            for beams, label in ((1, "batch 1"), (3, "3 beams")):
                long_out, _, t_long, _ = _timed(lambda b=beams: m.generate(s.codes, b), dev, s.repeats)
                short_out, _, t_short, _ = _timed(lambda b=beams: m.generate(s.short, b), dev, s.repeats)
                n_long, n_short = int(long_out.shape[1]), int(short_out.shape[1])
                ms = 1000 * (t_long - t_short) / max(n_long - n_short, 1)
                note = f"{n_long} - {n_short} codes"
                rows.append(Row(name, f"gpt ms/token, {label}", ms, "ms", note))
                tps = 1000 / ms if ms > 0 else float("nan")
                rows.append(Row(name, f"gpt tokens/s, {label}", tps, "tok/s", note))
        mel, _, t_cfm, _ = _timed(lambda: m.cfm(mu), dev, s.repeats)
        rows.append(Row(name, f"cfm ms/step, {s.steps} steps CFG, {frames} frames", 1000 * t_cfm / s.steps, "ms"))
        if name == "official":
            ref = mel
        elif ref is not None:
            rows.append(Row(name, "cfm mel max |err| vs official fp32", float((mel - ref).abs().max()), "abs",
                            f"|mel| <= {float(ref.abs().max()):.1f}"))  # fmt: skip

    m25 = None
    for name in providers:
        try:
            if name in V25:
                m25 = m25 or Models25(size, dev)
                with contextlib.ExitStack() as stack:
                    if name == "ours-2.5":
                        import indextts_fast

                        tts = type("TTS25", (), {})()
                        tts.gpt, tts.s2mel = m25.uv, m25.s2
                        stack.enter_context(indextts_fast.enabled(tts))
                    rows.extend(_rows25(name, m25, dev))
                continue
            with provider(name, m) as handle:
                one(name, handle)
        except Exception as e:  # one provider's failure (torch.compile's, say) is a row, not the end of the run
            rows.append(Row(name, "FAILED", float("nan"), "error", f"{type(e).__name__}: {str(e)[:160]}"))
    return rows


def _capture_seconds(handle) -> tuple[float, float]:
    """Host seconds the enabled parts spent capturing CUDA graphs so far: (GPT decode loops, CFM loops)."""
    gpt = cfm = 0.0
    for part in handle.parts:
        patch = getattr(part, "patch", None)
        for decoder in getattr(patch, "decoders", {}).values():
            gpt += sum(st.tick_graph.capture_s or 0.0 for st in decoder.states.values())
        loop = getattr(patch, "loop", None)
        if loop is not None:
            cfm += sum(loop.capture_s.values())
    return gpt, cfm


def table(rows: list[Row], header: str = "") -> str:
    base = {r.metric: r.value for r in rows if r.provider in ("official", "official-2.5")}
    lower_better = lambda r: r.unit in ("ms", "s", "x", "MiB", "abs")  # noqa: E731
    lines = [header] if header else []
    w = max(len(r.metric) for r in rows)
    lines.append(f"{'metric':<{w}}  {'provider':<12} {'value':>10} {'unit':<6} {'vs official':>11}  note")
    for r in sorted(rows, key=lambda r: (r.metric, PROVIDERS.index(r.provider))):
        b = base.get(r.metric)
        ratio = (b / r.value if lower_better(r) else r.value / b) if b and r.value else float("nan")
        lines.append(f"{r.metric:<{w}}  {r.provider:<12} {r.value:>10.3f} {r.unit:<6} {ratio:>10.2f}x  {r.note}")
    return "\n".join(lines)


def _header(device: torch.device) -> str:
    import triton

    import indextts_fast
    from indextts_fast import official

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (not a timing of the kernels)"
    return (f"end to end on {card}: indextts_fast {indextts_fast.__version__} (backend "
            f"{indextts_fast.backend_for(device)}), {official.official_version()}, torch {torch.__version__}, "
            f"triton {triton.__version__}")  # fmt: skip


RESULTS: list[str] = []  # tables bench/conftest.py prints in the terminal summary
JSON_ENV = "INDEXTTS_BENCH_E2E_JSON"


@pytest.mark.gpu
def test_end_to_end():
    """All providers in one run at IndexTTS-2's sizes; the table goes to the terminal summary (and to the JSON
    file ``$INDEXTTS_BENCH_E2E_JSON`` names). Its own timer, not pytest-benchmark's: one synthesis takes seconds."""
    import os

    dev = torch.device("cuda")
    rows = run("full")
    header = _header(dev)
    RESULTS.append(table(rows, header))
    if os.environ.get(JSON_ENV):
        _write_json(os.environ[JSON_ENV], header, "full", rows)
    failed = [f"{r.provider}: {r.note}" for r in rows if r.unit == "error"]
    assert not failed, failed
    assert {r.provider for r in rows} == set(PROVIDERS)
    assert all(r.value == r.value for r in rows), "a NaN row"


def _write_json(path: str, header: str, size: str, rows: list[Row]) -> None:
    with open(path, "w") as f:
        json.dump({"header": header, "size": size, "rows": [asdict(r) for r in rows]}, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--gpt-dtype", choices=("fp16", "fp32"), help="default: fp16 on CUDA (use_fp16), fp32 on CPU")
    ap.add_argument("--providers", default=None, help=f"comma-separated subset of {','.join(PROVIDERS)}")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    providers = tuple(args.providers.split(",")) if args.providers else \
        (PROVIDERS if dev.type == "cuda" else ("official", "ours", "ours-bf16", *V25))  # fmt: skip
    bad = [p for p in providers if p not in PROVIDERS]
    if bad:
        print(f"bench_e2e: unknown provider {bad[0]!r}; the providers are {', '.join(PROVIDERS)}")
        return 2
    rows = run(args.size, str(dev), args.gpt_dtype, providers)
    header = _header(dev)
    print(table(rows, header))
    if args.json:
        _write_json(args.json, header, args.size, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
