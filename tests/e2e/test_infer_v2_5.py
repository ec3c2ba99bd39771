"""``IndexTTS2.infer()`` of IndexTTS-2.5 (``indextts25.infer_v2_5``, indextts25-inference: the 2.5 code derived from
the official ee40fa7) end to end, never enabled vs enabled with ``indextts_fast.enable(tts)``.

The object is the offline one of ``tests/e2e/harness.py`` (tiny 2.5 modules with seeded random weights: the
campplus UnifiedVoice, EnhancedCodec, the s2mel without gpt_layer; deterministic stand-ins for w2v-BERT and audio
loading; the official tiktoken tokenizer over a byte vocabulary; read the harness docstring for which is which).
Each case runs the official ``infer`` (lang "en", text_normalization off: WeTextProcessing and NeMo are not
installed) under a fixed seed, then the same call enabled (then ``revert()``), then the fp64 copy of the object
replaying the official codes: the GPT codes must be identical, the generator left as the official generation
left it, each segment's mel and wave within the tolerance rule against fp64, and the 16-bit file within what
rounding to PCM allows. The text splits into two segments (max_text_tokens_per_segment 16), so the 200 ms join
and the per-segment cut at the stop token run; the cases hold generations that stop and generations that run out
of max_mel_tokens. On CPU our path runs on the torch reference ops (as tests/e2e/test_infer_v2.py explains).
"""

import pytest
import torch

import indextts_fast

from . import harness as H

VERSION = "2.5"  # the offline object conftest.py builds

TEXT = "The fox runs. A dog sleeps!"
SEGMENT_TOKENS = 16  # "the fox runs." and " a dog sleeps!" after the language prefix
CASES = {
    # the official defaults (beam-sample, 3 beams): the first generation stops, the second runs out
    "beam_sample_defaults": dict(seed=1, max_mel_tokens=20),
    # one beam, sampling: the first runs out, the second stops
    "sample_one_beam": dict(seed=0, max_mel_tokens=20, num_beams=1),
    # greedy (2.5 passes do_sample on): both run out (the repetition penalty keeps them from repeating a code)
    "greedy": dict(seed=0, max_mel_tokens=12, do_sample=False, num_beams=1),
}
STOPS = {"beam_sample_defaults": [True, False], "sample_one_beam": [False, True], "greedy": [False, False]}


def _infer(o, path, case):
    kw = dict(case)
    return o.infer(text=TEXT, output_path=path, seed=kw.pop("seed"), max_text_tokens_per_segment=SEGMENT_TOKENS, **kw)


def test_official_infer_is_deterministic(offline, tmp_path):
    """The harness as the enabled comparison needs it: the same seed, the same codes, mels and file, bit for bit;
    two segments joined, each generation cut at its stop token."""
    o, _ = offline
    first = _infer(o, tmp_path / "a.wav", CASES["beam_sample_defaults"])
    second = _infer(o, tmp_path / "b.wav", CASES["beam_sample_defaults"])
    assert len(first.codes) == 2 and H.stopped(first) == STOPS["beam_sample_defaults"]
    for a, b in zip(first.codes + first.mels, second.codes + second.mels, strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    H.assert_cut_at_stop(first)
    H.assert_joined(first)
    assert first.bits == 16 and float(first.wav.abs().max()) > 1000, "a wave well above the 16-bit noise floor"


@pytest.mark.parametrize("case", list(CASES))
def test_infer_enabled_matches_official(offline, case, tmp_path):
    o, o64 = offline
    official = _infer(o, tmp_path / "official.wav", CASES[case])
    h = indextts_fast.enable(o.tts)
    try:
        parts = {p.name: p for p in h.parts}
        assert parts["gpt"].status == parts["s2mel"].status == parts["vocoder"].status == "fast", h.report()
        ours = _infer(o, tmp_path / "x.wav", CASES[case])
        calls = {name: dict(p.patch.calls) for name, p in parts.items()}
    finally:
        h.revert()
    with o64.replaying(official):
        ref = _infer(o64, tmp_path / "fp64.wav", CASES[case])

    assert H.stopped(official) == STOPS[case], H.stopped(official)
    n = len(official.codes)
    assert calls["gpt"]["generate"] == calls["s2mel"]["inference"] == calls["vocoder"]["forward"] == n, calls
    assert calls["gpt"]["latent"] == 0, "2.5 makes no teacher-forced GPT pass"
    for run in (official, ours):
        H.assert_cut_at_stop(run)
        H.assert_joined(run)
    H.assert_same_infer(ours, official, ref)
    assert ours.result == str(tmp_path / "x.wav")

    if case == "beam_sample_defaults":  # reverted: the official code again, bit for bit
        _infer(o, tmp_path / "again.wav", CASES[case])
        assert (tmp_path / "again.wav").read_bytes() == (tmp_path / "official.wav").read_bytes()
