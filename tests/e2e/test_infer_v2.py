"""``IndexTTS2.infer()`` of the official IndexTTS-2 code (``indextts.infer_v2``) end to end, never enabled vs
enabled with ``indextts_fast.enable(tts)``.

The object is the offline one of ``tests/e2e/harness.py`` (tiny official modules with seeded random weights,
deterministic stand-ins for the heavy front ends; read its docstring for which is which). Each case runs the
official ``infer`` with its own defaults (beam-sample: 3 beams, top-k 30, top-p 0.8, temperature 0.8, repetition
penalty 10) under a fixed seed, then the same call enabled (then ``revert()``), then the fp64 copy of the object
replaying the official codes: the GPT codes must be identical, the generator left as the official generation
left it (the CFM noise is drawn after it), every segment's mel and wave within the tolerance rule
(``indextts_fast.tolerance``: ours against fp64 within twice the official fp32 error plus one fp32 unit), and the
written file too (the repository line writes 32-bit floats: the rule; the refactor 16-bit PCM: within what
rounding to PCM allows). The text splits into three segments (max_text_tokens_per_segment 12), so the 200 ms
joins and the per-segment cut at the stop token run; a small max_mel_tokens keeps generations short.

On CPU our path runs on the torch reference ops (INDEXTTS_FAST_BACKEND=torch: our decode loop, latent pass, CFM
loop and DiT, with PyTorch ops where the Triton kernels would run); the kernels themselves are checked against
the same official modules in tests/gpt and tests/s2mel (the interpreter would take minutes per infer here).

Both 2.0 code lines run this file: the official repository's (tts-webui-index-tts, transformers 4.52.1:
.venv-tf452) and the transformers-5 refactor (indextts2-inference). On the repository's line a segment whose
generation runs out of max_mel_tokens makes the official infer raise (it counts that segment's code length twice
and hands the CFM a two-row condition); enabled, infer must raise the same way after the same codes.
"""

import pytest
import torch

import indextts_fast
from indextts_fast.official import official_line

from . import harness as H

VERSION = "2.0"  # the offline object conftest.py builds

TEXT = "The fox runs away. A dog sleeps here! Then the cat comes back."
SEGMENT_TOKENS = 12  # three segments of 7, 7 and 9 tokens
CASES = {
    # the official defaults; every generation stops before max_mel_tokens
    "beam_sample_defaults": dict(seed=3, max_mel_tokens=20),
    # one beam: sampling (the official forces do_sample=True); the first generation's stop token is its 20th code
    "sample_one_beam": dict(seed=1, max_mel_tokens=20, num_beams=1),
}
RUNS_OUT = dict(seed=0, max_mel_tokens=12)  # the first generation runs out of max_mel_tokens


def _infer(o, path, case):
    kw = dict(case)
    return o.infer(text=TEXT, output_path=path, seed=kw.pop("seed"), max_text_tokens_per_segment=SEGMENT_TOKENS, **kw)


def _enabled_infer(o, path, case):
    """infer after enable(tts), then revert; (the run, the fast parts' call counts)."""
    h = indextts_fast.enable(o.tts)
    try:
        parts = {p.name: p for p in h.parts}
        assert parts["gpt"].status == parts["s2mel"].status == parts["vocoder"].status == "fast", h.report()
        run = _infer(o, path, case)
        calls = {name: dict(p.patch.calls) for name, p in parts.items()}
    finally:
        h.revert()
    return run, calls


@pytest.mark.parametrize("case", list(CASES))
def test_infer_enabled_matches_official(offline, case, tmp_path):
    o, o64 = offline
    official = _infer(o, tmp_path / "official.wav", CASES[case])
    ours, calls = _enabled_infer(o, tmp_path / "x.wav", CASES[case])
    with o64.replaying(official):
        ref = _infer(o64, tmp_path / "fp64.wav", CASES[case])

    n = len(official.codes)
    assert n == 3, f"{n} segments: the text must split into three"
    assert all(H.stopped(official)), "every generation of this case stops before max_mel_tokens"
    assert calls["gpt"]["generate"] == calls["gpt"]["latent"] == calls["s2mel"]["inference"] == n, calls
    assert calls["vocoder"]["forward"] == n, calls
    for run in (official, ours):
        H.assert_cut_at_stop(run)
        H.assert_joined(run)
    H.assert_same_infer(ours, official, ref)
    assert ours.result == str(tmp_path / "x.wav")

    if case == "beam_sample_defaults":  # reverted: the official code again, bit for bit
        again = _infer(o, tmp_path / "again.wav", CASES[case])
        assert all(torch.equal(a, b) for a, b in zip(again.codes, official.codes, strict=True))
        assert torch.equal(again.wav, official.wav), "after revert infer must give the official wav, bit for bit"


def test_generation_that_runs_out(offline, tmp_path):
    """A generation that reaches max_mel_tokens without its stop token. Refactor line: compared like the others,
    in an infer where other generations stop. Repository line: the official infer raises at that segment; enabled,
    the same error after the same codes."""
    o, o64 = offline
    if official_line() == "repository":
        with pytest.raises(RuntimeError) as official_err:
            _infer(o, tmp_path / "official.wav", RUNS_OUT)
        official_codes = list(o.log["codes"])
        with pytest.raises(RuntimeError) as ours_err:
            _enabled_infer(o, tmp_path / "x.wav", RUNS_OUT)
        assert len(official_codes) == 1 and H.stop_index(official_codes[0]) is None, official_codes
        assert official_codes[0].shape[1] == RUNS_OUT["max_mel_tokens"]
        assert [c.tolist() for c in o.log["codes"]] == [c.tolist() for c in official_codes]
        assert str(ours_err.value) == str(official_err.value)
        return
    official = _infer(o, tmp_path / "official.wav", RUNS_OUT)
    ours, _ = _enabled_infer(o, tmp_path / "x.wav", RUNS_OUT)
    with o64.replaying(official):
        ref = _infer(o64, tmp_path / "fp64.wav", RUNS_OUT)
    done = H.stopped(official)
    assert any(done) and not all(done), f"stopped per segment: {done}: this case needs both"
    assert any("max_mel_tokens" in w for w in official.warnings), official.warnings
    for run in (official, ours):
        H.assert_cut_at_stop(run)
        H.assert_joined(run)
    H.assert_same_infer(ours, official, ref)
