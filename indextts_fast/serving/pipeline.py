"""Many syntheses at once on an enabled IndexTTS2 (2.0) object: the official ``infer`` per request, with each
segment's GPT generations of all requests decoded together in one pool and their waves made in one vocoder call.

    pipe = Pipeline(tts)                              # tts: indextts.infer_v2.IndexTTS2, enabled with indextts_fast
    voice = pipe.voice("ref.wav")                     # the speaker's conditioning, computed once
    outs = pipe.synthesize([Job(voice, "text one", seed=1), Job(voice, "text two", seed=2)])
    outs[0].wave                                      # [1, samples] int16-range float, 22,050 Hz, as infer writes it

What each request computes is what ``IndexTTS2.infer(spk_audio_prompt, text, ...)`` computes after
``torch.manual_seed(seed)`` with the emotion taken from the speaker (no emotion audio, vector or text), at the
official generation defaults unless the job says otherwise (infer itself always samples; a job's
``do_sample=False`` is honoured): the speaker's conditioning (``voice``: the audio cut to
15 s, resampled, w2v-BERT features, the semantic codec, the reference mel, CAMPPlus style, the length-regulated
prompt condition), the text tokenized and split into segments, and per segment: the emotion vector, the GPT
generation (its prompt built by the official ``inference_speech``, captured, and decoded with the other requests'
in ``gpt.batch.BatchDecoder``), the codes cut at the stop token, the teacher-forced latent pass, ``gpt_layer``,
``vq2emb``, the length regulator at 1.72 frames per code, the 25-step CFM with CFG 0.7 (its noise from the
request's generator), the vocoder (``VocoderLoop.many``: every request's segment in one call), x 32767 clamped;
the segments joined with ``interval_silence`` ms of silence. The random draws (the GPT's sampling, the CFM's noise)
come from the request's own generator, in the official order, so a request gives the official audio of
``torch.manual_seed(seed)`` whatever runs beside it.

Between the GPT and the vocoder, the teacher-forced latent pass and the length regulator run per request; the CFMs of
a round run in one padded batch on CUDA (``CFMLoop.many``: each row its own lengths, so each request's mel is its
own within the tolerance rule; ``cfm_batch``), one at a time elsewhere (the same values as alone).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
from typing import Optional

import torch

from ..gpt.batch import BatchDecoder, Cancelled, Request
from ..gpt.decode import CAPACITY_STEP

__all__ = ["Pipeline", "Rounds", "Job", "Voice", "Result", "Cancelled"]

# infer_v2's generation defaults (the keyword arguments infer pops, with their defaults)
DEFAULTS = dict(do_sample=True, top_p=0.8, top_k=30, temperature=0.8, length_penalty=0.0, num_beams=3,
                repetition_penalty=10.0, max_mel_tokens=1500)  # fmt: skip
SAMPLE_RATE = 22050
_PUNCTUATION = {".", ",", "!", "?", ";", ":", "▁.", "▁,", "▁!", "▁?", "。", "，", "！", "？", "；", "：", "、"}


@dataclasses.dataclass
class Voice:
    """A speaker reference's conditioning, as infer computes it once per reference (its speaker cache)."""

    spk_cond_emb: torch.Tensor
    emo_cond_emb: torch.Tensor  # infer's emotion reference is the speaker's audio, loaded at 16 kHz by its own path
    style: torch.Tensor
    prompt_condition: torch.Tensor
    ref_mel: torch.Tensor


@dataclasses.dataclass
class Job:
    voice: Voice
    text: str
    seed: int = 0
    max_text_tokens_per_segment: int = 120
    interval_silence: int = 200
    generation: dict = dataclasses.field(default_factory=dict)  # overrides of DEFAULTS
    first_segment_tokens: Optional[int] = None  # a shorter first segment (streaming); None: the official split
    speed: float = 1.0  # 1: the official 1.72 mel frames per code; s: 1.72 / s frames per code (not official)
    cancel: Optional[threading.Event] = None  # set: the job stops at its next stop-flag read, error Cancelled


@dataclasses.dataclass
class Result:
    wave: torch.Tensor  # [1, samples]: the joined segments x 32767, clamped (what infer saves as 16-bit PCM)
    segments: list  # per segment: the vocoder's wave [1, 1, n] (before x 32767)
    codes: list  # per segment: the generation's codes [1, n] (after the prompt, the stop token included)
    generator: torch.Generator  # the request's generator, where the official run leaves torch's
    error: object = None  # the request's own failure (its wave None), the others unaffected


class Pipeline:
    def __init__(self, tts, *, slots: int = 4, cfm_batch: Optional[bool] = None):
        from ..patch import _handle_of

        handle = _handle_of(tts)
        parts = {p.name: p.patch for p in (handle.parts if handle is not None else []) if p.patch is not None}
        missing = [n for n in ("gpt", "s2mel", "vocoder") if n not in parts]
        if missing:
            raise ValueError(f"pipeline: enable(tts) first; not enabled: {', '.join(missing)}")
        if getattr(parts["s2mel"], "loop", None) is None:
            raise ValueError("pipeline: the s2mel part must be enabled on the CFM (enable(tts))")
        self.tts, self.parts, self.slots = tts, parts, int(slots)
        self.cfm_batch = cfm_batch  # the CFMs of a round in one padded batch (None: where the CFM runs graphs)
        self._infer_module = sys.modules[type(tts).__module__]
        self._pools: dict = {}  # beam count -> BatchDecoder
        self.lock = threading.Lock()

    # --- the speaker -----------------------------------------------------------------------------------------------
    def voice(self, audio_path) -> Voice:
        """The conditioning infer computes for ``spk_audio_prompt=audio_path``."""
        tts, ta = self.tts, self._infer_module.torchaudio
        with torch.no_grad():
            audio, sr = tts._load_and_cut_audio(str(audio_path), 15, False)
            audio_22k = ta.transforms.Resample(sr, 22050)(audio)
            audio_16k = ta.transforms.Resample(sr, 16000)(audio)
            inputs = tts.extract_features(audio_16k, sampling_rate=16000, return_tensors="pt")
            feats = inputs["input_features"].to(tts.device)
            mask = inputs["attention_mask"].to(tts.device)
            spk_cond_emb = tts.get_emb(feats, mask)
            _, s_ref = tts.semantic_codec.quantize(spk_cond_emb)
            ref_mel = tts.mel_fn(audio_22k.to(spk_cond_emb.device).float())
            ref_lengths = torch.LongTensor([ref_mel.size(2)]).to(ref_mel.device)
            fbank = ta.compliance.kaldi.fbank(audio_16k.to(ref_mel.device), num_mel_bins=80, dither=0,
                                              sample_frequency=16000)  # fmt: skip
            fbank = fbank - fbank.mean(dim=0, keepdim=True)
            style = tts.campplus_model(fbank.unsqueeze(0))
            prompt = tts.s2mel.models["length_regulator"](s_ref, ylens=ref_lengths, n_quantizers=3, f0=None)[0]
            emo_audio, _ = tts._load_and_cut_audio(str(audio_path), 15, False, sr=16000)
            emo = tts.extract_features(emo_audio, sampling_rate=16000, return_tensors="pt")
            emo_cond_emb = tts.get_emb(emo["input_features"].to(tts.device), emo["attention_mask"].to(tts.device))
        return Voice(spk_cond_emb, emo_cond_emb, style, prompt, ref_mel)

    # --- many requests ---------------------------------------------------------------------------------------------
    def synthesize(self, jobs: list) -> list:
        """Every job's Result, in order (segment k of every job decoded together, then each job's segment k through
        the rest, every job's wave of it in one vocoder call)."""
        rounds = collections.deque(self.stream(jobs), maxlen=1)  # the last round's Results are complete
        return rounds[0][0] if rounds else []

    def stream(self, jobs: list):
        """The same rounds as ``synthesize``, yielding after each: (the Results so far, [(job index, the segment's
        wave [1, 1, n] before x 32767), ...] of this round). A job's first segment is out after the first round: its
        time to first audio is one segment's, whatever its text's length. The last round's Results are complete
        (``wave`` joined)."""
        with self.lock, torch.no_grad():
            rounds = Rounds(self)
            entries = [rounds.add(j) for j in jobs]
            index = {id(e): n for n, e in enumerate(entries)}
            if not rounds.live:  # nothing to say
                yield [e.result for e in entries], []
                return
            while rounds.live:
                out = rounds.step()
                yield [e.result for e in entries], [(index[id(e)], w) for e, w in out]

    def rounds(self, *, keep: bool = True) -> Rounds:
        """Continuous batching by segment: ``add`` jobs at any time, each ``step`` runs every live job's next
        segment (its GPT generation decoded with the others', then the rest, the waves in one vocoder call). Hold
        ``lock`` around its use when other threads may use the pipeline. ``keep=False``: the Results keep no
        segment, code or joined wave (a server streams each segment as it comes)."""
        return Rounds(self, keep=keep)

    def _segments(self, job: Job) -> list:
        """The official split of the job's text; ``first_segment_tokens``: the first segment cut at its last
        punctuation within that many tokens (else at that many), the rest its own segment (a shorter first wait; the
        audio of a segmentation other than the official)."""
        tts = self.tts
        segs = tts.tokenizer.split_segments(tts.tokenizer.tokenize(job.text), job.max_text_tokens_per_segment)
        n = job.first_segment_tokens
        if n is None or not segs or len(segs[0]) <= n:
            return segs
        head = segs[0]
        cut = max((i + 1 for i, t in enumerate(head[:n]) if t in _PUNCTUATION), default=n)
        return [head[:cut], head[cut:], *segs[1:]]

    def _prompt(self, job: Job, sent, gen: dict, generator) -> dict:
        """One segment's GPT prompt, built by the official inference_speech (captured, not generated)."""
        tts, v = self.tts, job.voice
        text = torch.tensor(tts.tokenizer.convert_tokens_to_ids(sent), dtype=torch.int32, device=tts.device)[None]
        dev = text.device
        lens = torch.tensor([v.spk_cond_emb.shape[-1]], device=dev)
        emo_lens = torch.tensor([v.emo_cond_emb.shape[-1]], device=dev)
        with torch.amp.autocast(dev.type, enabled=tts.dtype is not None, dtype=tts.dtype):
            emovec = tts.gpt.merge_emovec(v.spk_cond_emb, v.emo_cond_emb, lens, emo_lens, alpha=1.0)
            gpt = self.parts["gpt"]
            kw = {k: val for k, val in gen.items() if k != "max_mel_tokens"}
            with gpt.capture() as prompts:
                _, latent = tts.gpt.inference_speech(v.spk_cond_emb, text, v.emo_cond_emb, cond_lengths=lens,
                                                     emo_cond_lengths=emo_lens, emo_vec=emovec,
                                                     num_return_sequences=1, max_generate_length=gen["max_mel_tokens"],
                                                     **kw)  # fmt: skip
        (p,) = prompts
        req = Request(p.input_ids, p.prefix_emb, generator=generator if p.args.do_sample else None,
                      position_offset=p.position_offset, args=p.args, cancel=job.cancel)  # fmt: skip
        return dict(request=req, text=text, latent=latent, emovec=emovec)

    def _pool(self, beams: int, steps: list) -> BatchDecoder:
        need = max(st["request"].args.max_length for st in steps) + 1
        capacity = -(-need // CAPACITY_STEP) * CAPACITY_STEP
        gpt = self.parts["gpt"]
        with gpt.lock:  # the GPT part's weights as they are now (rebuilt there if they changed)
            fast = gpt.current()
        pool = self._pools.get(beams)
        if pool is None or pool.capacity < capacity or pool.fast is not fast:
            self._pools.pop(beams, None)  # freed before the new one is allocated
            pool = BatchDecoder(fast, steps[0]["request"].args, slots=self.slots, capacity=capacity,
                                graphs=gpt.graphs)  # fmt: skip
            self._pools[beams] = pool
        return pool

    def _cfm_input(self, job: Job, st: dict) -> torch.Tensor:
        """From the codes to the CFM's mu (the reference's prompt condition, then the segment's), as infer's segment
        loop."""
        tts, v = self.tts, job.voice
        stop = tts.stop_mel_token
        codes = st["codes"]
        hit = (codes[0] == stop).nonzero()
        n = int(hit[0, 0]) if hit.numel() else codes.shape[1]
        codes = codes[:, :n]
        text, dev = st["text"], st["text"].device
        code_lens = torch.LongTensor([n]).to(tts.device)
        lens = torch.tensor([v.spk_cond_emb.shape[-1]], device=dev)
        emo_lens = torch.tensor([v.emo_cond_emb.shape[-1]], device=dev)
        use_speed = torch.zeros(v.spk_cond_emb.size(0)).to(v.spk_cond_emb.device).long()
        with torch.amp.autocast(dev.type, enabled=tts.dtype is not None, dtype=tts.dtype):
            latent = tts.gpt(st["latent"], text, torch.tensor([text.shape[-1]], device=dev), codes,
                             torch.tensor([codes.shape[-1]], device=dev), v.emo_cond_emb, cond_mel_lengths=lens,
                             emo_cond_mel_lengths=emo_lens, emo_vec=st["emovec"], use_speed=use_speed)  # fmt: skip
        latent = tts.s2mel.models["gpt_layer"](latent)
        s_infer = tts.semantic_codec.quantizer.vq2emb(codes.unsqueeze(1)).transpose(1, 2) + latent
        frames = code_lens * 1.72 if job.speed == 1.0 else code_lens * (1.72 / job.speed)
        cond = tts.s2mel.models["length_regulator"](s_infer, ylens=frames.long(), n_quantizers=3,
                                                    f0=None)[0]  # fmt: skip
        return torch.cat([v.prompt_condition, cond], dim=1)

    def _mels(self, entries: list, cats: list) -> list:
        """Each job's CFM mel past its reference (25 steps, CFG 0.7, the noise from its generator), in one padded batch
        where ``cfm_batch`` says (default: on CUDA with graphs), else one at a time; a job's own failure is its entry
        (an exception), the others unaffected."""
        s2mel = self.parts["s2mel"]
        items = [(cat, e.job.voice.ref_mel, e.job.voice.style, e.result.generator)
                 for e, cat in zip(entries, cats, strict=True)]  # fmt: skip
        states = [e.result.generator.get_state() for e in entries]
        with s2mel.lock:
            s2mel.current()
            try:
                mels = s2mel.loop.many(items, 25, inference_cfg_rate=0.7, batched=self.cfm_batch)
            except Exception:  # one of them: each alone (its noise drawn again from where it was), its own result
                for e, st in zip(entries, states, strict=True):
                    e.result.generator.set_state(st)
                mels = []
                for it in items:
                    try:
                        mels += s2mel.loop.many([it], 25, inference_cfg_rate=0.7, batched=False)
                    except Exception as err:
                        mels.append(err)
        return [m if isinstance(m, BaseException) else m[:, :, e.job.voice.ref_mel.size(-1) :].float()
                for e, m in zip(entries, mels, strict=True)]  # fmt: skip

    @staticmethod
    def _join(segments: list, interval_silence: int) -> torch.Tensor:
        waves = [torch.clamp(32767 * w.squeeze(1).cpu(), -32767.0, 32767.0) for w in segments]
        if not waves:
            return torch.zeros(1, 0)
        out = [waves[0]]
        for w in waves[1:]:
            if interval_silence > 0:
                out.append(torch.zeros(1, int(SAMPLE_RATE * interval_silence / 1000.0)))
            out.append(w)
        return torch.cat(out, dim=1)


@dataclasses.dataclass
class _Entry:
    job: Job
    segments: list  # the text's segments (token lists)
    result: Result
    settings: dict
    done: int = 0  # segments made
    codes_made: int = 0  # GPT codes generated (each generation's stop token included)


class Rounds:
    """Continuous batching by segment over a ``Pipeline``: jobs join with ``add`` between rounds, each ``step`` makes
    every live job's next segment (the GPT generations of all of them in the pool, one per beam count; the rest per
    job; the waves in one vocoder call) and returns [(entry, wave [1, 1, n] before x 32767), ...]. A job leaves
    when its last segment is made (its ``result.wave`` joined), when it fails (``result.error``: its own error, the
    others unaffected) or when its ``cancel`` event is set (``result.error``: Cancelled). Each job's audio is the
    one it gets alone: its draws come from its own generator, in the official order."""

    def __init__(self, pipe: Pipeline, *, keep: bool = True):
        self.pipe, self.live, self.keep = pipe, [], keep

    def add(self, job: Job) -> _Entry:
        """The job's entry (``entry.result`` fills in as its segments are made); a job with nothing to say is done
        at once (an empty wave)."""
        gen = torch.Generator(device=self.pipe.tts.device).manual_seed(int(job.seed))
        e = _Entry(job, self.pipe._segments(job), Result(None, [], [], gen), dict(DEFAULTS, **job.generation))
        if e.segments:
            self.live.append(e)
        else:
            e.result.wave = torch.zeros(1, 0)
        return e

    def _drop_cancelled(self) -> None:
        for e in [e for e in self.live if e.job.cancel is not None and e.job.cancel.is_set()]:
            e.result.error = e.result.error or Cancelled("the request was cancelled")
            self.live.remove(e)

    def step(self) -> list:
        pipe = self.pipe
        self._drop_cancelled()
        live = list(self.live)
        if not live:
            return []
        steps = []
        for e in live:  # a job's own failure here (its text, its settings) is its error alone
            try:
                steps.append(pipe._prompt(e.job, e.segments[e.done], e.settings, e.result.generator))
            except Exception as err:
                e.result.error = err
        live = [e for e in live if e.result.error is None]
        by_beams: dict = {}
        for e, st in zip(live, steps, strict=True):  # one pool per beam count
            by_beams.setdefault(st["request"].args.num_beams, []).append((e, st))
        for beams, group in by_beams.items():
            seqs = pipe._pool(beams, [st for _, st in group]).run([st["request"] for _, st in group])
            for (e, st), out in zip(group, seqs, strict=True):
                if isinstance(out, BaseException):  # this request's own failure (the official error), or cancelled
                    e.result.error = out
                else:
                    st["codes"] = out[:, st["request"].input_ids.shape[1] :]
        ok = [(e, st) for e, st in zip(live, steps, strict=True) if e.result.error is None]
        cats = []
        for e, st in ok:
            try:
                cats.append(pipe._cfm_input(e.job, st))
            except Exception as err:
                e.result.error = err
        ok = [(e, st) for e, st in ok if e.result.error is None]
        mels = pipe._mels([e for e, _ in ok], cats) if ok else []
        for (e, _), m in zip(ok, mels, strict=True):
            if isinstance(m, BaseException):
                e.result.error = m
        mels = [m for m in mels if not isinstance(m, BaseException)]
        ok = [(e, st) for e, st in ok if e.result.error is None]
        out = []
        if mels:
            vocoder = pipe.parts["vocoder"]
            with vocoder.lock:
                vocoder.current()  # its weights as they are now (rebuilt there if they changed)
                waves = vocoder.loop.many(mels)
            for (e, st), w in zip(ok, waves, strict=True):
                if self.keep:
                    e.result.segments.append(w)
                    e.result.codes.append(st["codes"])
                e.done += 1
                e.codes_made += int(st["codes"].shape[1])
                out.append((e, w))
        for e in list(self.live):
            if e.result.error is not None:
                self.live.remove(e)
            elif e.done == len(e.segments):
                if self.keep:
                    e.result.wave = pipe._join(e.result.segments, e.job.interval_silence)
                self.live.remove(e)
        self._drop_cancelled()
        return out
