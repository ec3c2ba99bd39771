"""Many syntheses at once (``indextts_fast.serving.Pipeline``) against ``IndexTTS2.infer`` of each request alone: the
offline IndexTTS-2 object of tests/e2e/harness.py, enabled; two requests (different texts, seeds and generation
settings) synthesized together, each segment's GPT generations decoded in one pool. Each request's codes are the
official infer's under ``torch.manual_seed(seed)`` (its generator drawn in the official order: the GPT's sampling,
then the CFM's noise, segment by segment, and left where infer leaves torch's), and each segment's wave is the
enabled infer's of that request alone, bit for bit (the same fast parts on the same codes; their fidelity to the
official waves is test_infer_v2.py's).

On the torch reference ops, as every end-to-end test.
"""

import torch

import indextts_fast
from indextts_fast.serving import Job, Pipeline

VERSION = "2.0"  # the offline object conftest.py builds

TEXTS = (
    "The fox runs away. A dog sleeps here! Then the cat comes back.",
    "A bird sings in the tree. The sun is up now.",
)
SEGMENT_TOKENS = 12
RUNS = (dict(seed=3, max_mel_tokens=20), dict(seed=5, max_mel_tokens=30, num_beams=1))  # every generation stops


def _infer_args():
    """Per request: (seed, the keyword arguments of its official infer)."""
    for t, kw in zip(TEXTS, RUNS, strict=True):
        kw = dict(kw)
        seed = kw.pop("seed")
        yield seed, dict(text=t, seed=seed, max_text_tokens_per_segment=SEGMENT_TOKENS, **kw)


def _pipeline_results(tts, prompt, **options) -> list:
    """The requests of RUNS through one Pipeline on the enabled object."""
    with indextts_fast.enabled(tts):
        pipe = Pipeline(tts, slots=2, **options)
        voice = pipe.voice(prompt)
        jobs = [Job(voice, t, seed=kw["seed"], max_text_tokens_per_segment=SEGMENT_TOKENS,
                    generation={k: v for k, v in kw.items() if k != "seed"})
                for t, kw in zip(TEXTS, RUNS, strict=True)]  # fmt: skip
        return pipe.synthesize(jobs)


def test_two_requests_at_once_are_each_the_official_infer(offline, tmp_path):
    o, _ = offline
    officials, enabled = [], []
    for seed, args in _infer_args():
        officials.append((o.infer(output_path=tmp_path / f"official{seed}.wav", **args), torch.get_rng_state()))
        with indextts_fast.enabled(o.tts):
            enabled.append(o.infer(output_path=tmp_path / f"enabled{seed}.wav", **args))
    results = _pipeline_results(o.tts, o.prompt)
    for n, (res, (run, after), alone) in enumerate(zip(results, officials, enabled, strict=True)):
        assert res.error is None, res.error
        assert len(res.codes) == len(run.codes) >= 2, f"request {n}: {len(res.codes)} segments"
        for i, (ours, theirs) in enumerate(zip(res.codes, run.codes, strict=True)):
            assert torch.equal(ours, theirs), f"request {n}, segment {i}: codes {ours} vs official {theirs}"
            assert torch.equal(res.segments[i], alone.wavs[i]), f"request {n}, segment {i}: wave"
        assert torch.equal(res.generator.get_state(), after), f"request {n}: the generator is not where infer's is"
        assert res.wave.shape[1] == run.wav.shape[-1], (res.wave.shape, run.wav.shape)


def test_the_cfms_of_a_round_in_one_padded_batch(offline, tmp_path):
    """``cfm_batch=True`` (the CUDA default, here eager): each round's CFMs in one batch padded to the longest's bucket,
    each row with its own prompt, lengths and noise (from its generator): each request's codes are still the
    official infer's, and each segment's wave is within the tolerance rule of the official one (the fp64 object
    replaying the official codes as the reference)."""
    from ..helpers import assert_close_rel

    o, o64 = offline
    officials, refs = [], []
    for seed, args in _infer_args():
        officials.append(o.infer(output_path=tmp_path / f"official{seed}.wav", **args))
        with o64.replaying(officials[-1]):
            refs.append(o64.infer(output_path=tmp_path / f"fp64_{seed}.wav", **args))
    results = _pipeline_results(o.tts, o.prompt, cfm_batch=True)
    for n, (res, run, ref) in enumerate(zip(results, officials, refs, strict=True)):
        assert res.error is None, res.error
        assert len(res.codes) == len(run.codes) >= 2
        for i, (ours, theirs) in enumerate(zip(res.codes, run.codes, strict=True)):
            assert torch.equal(ours, theirs), f"request {n}, segment {i}: codes"
            assert_close_rel(res.segments[i], run.wavs[i], ref.wavs[i], f"request {n}, segment {i}: wave")


def test_streaming_yields_each_segment_as_it_is_made(offline, tmp_path):
    """``stream``: one yield per round, a job's first segment after the first; the waves streamed are the
    synthesized ones; ``first_segment_tokens`` cuts the first segment at its last punctuation within that many
    tokens (the rest its own segment), so the first yield waits for a shorter generation."""
    import time

    o, _ = offline
    with indextts_fast.enabled(o.tts):
        pipe = Pipeline(o.tts, slots=2)
        voice = pipe.voice(o.prompt)
        job = Job(voice, TEXTS[0], seed=3, max_text_tokens_per_segment=SEGMENT_TOKENS,
                  generation=dict(max_mel_tokens=20))  # fmt: skip
        whole = pipe.synthesize([job])[0]
        t0 = time.perf_counter()
        streamed, first, final = [], None, None
        for results, out in pipe.stream([job]):
            first = first if first is not None else time.perf_counter() - t0
            streamed += [w for i, w in out if i == 0]
            final = results
        total = time.perf_counter() - t0
        assert len(streamed) == len(whole.segments) == 3 and first < total
        assert all(torch.equal(a, b) for a, b in zip(streamed, whole.segments, strict=True))
        assert torch.equal(final[0].wave, whole.wave)
        short = Job(voice, TEXTS[0], seed=3, max_text_tokens_per_segment=SEGMENT_TOKENS, first_segment_tokens=3,
                    generation=dict(max_mel_tokens=20))  # fmt: skip
        segs = pipe._segments(short)
        assert len(segs) == 4 and len(segs[0]) <= 3 and segs[0] + segs[1] == pipe._segments(job)[0]


def test_weights_changed_after_enable_are_followed(offline, tmp_path):
    """The vocoder's SnakeBeta parameters edited in place after enable (the fast vocoder keeps them exponentiated):
    the pipeline's waves are those of the enabled infer on the edited object, bit for bit."""
    o, _ = offline
    net = o.tts.bigvgan
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        with indextts_fast.enabled(o.tts):
            pipe = Pipeline(o.tts, slots=2)
            voice = pipe.voice(o.prompt)
            (seed, args), _ = _infer_args()
            job = Job(voice, args["text"], seed=seed, max_text_tokens_per_segment=SEGMENT_TOKENS,
                      generation={k: v for k, v in RUNS[0].items() if k != "seed"})  # fmt: skip
            before = pipe.synthesize([job])[0]
            with torch.no_grad():
                net.resblocks[0].activations[0].act.alpha.mul_(1.5)
            after = pipe.synthesize([job])[0]
            alone = o.infer(output_path=tmp_path / "enabled.wav", **args)
    finally:
        net.load_state_dict(saved)
    assert not torch.equal(after.segments[0], before.segments[0]), "the edit changed nothing: no check"
    for i, w in enumerate(after.segments):
        assert torch.equal(w, alone.wavs[i]), f"segment {i}: the pipeline ran the vocoder's old weights"
