"""The end-to-end tests' offline official IndexTTS2 objects (``indextts_fast.offline``, where they are built and
described) and the checks the tests share."""

from __future__ import annotations

import torch

from indextts_fast.offline import *  # noqa: F403 (the tests read the builder's names through this module)
from indextts_fast.offline import SR, Run, stop_index

# ----------------------------------------------------------------------------------------------------------------------
# Checks shared by the tests
# ----------------------------------------------------------------------------------------------------------------------
SILENCE = int(SR * 200 / 1000.0)  # infer's default interval_silence between segments, in samples


def stopped(run: Run) -> list[bool]:
    """Per segment: whether its generation emitted the stop token (else it ran out of max_mel_tokens)."""
    return [stop_index(c) is not None for c in run.codes]


def assert_cut_at_stop(run: Run) -> None:
    """The codes infer handed the semantic codec: each generation up to its first stop token (the stop token and
    what follows dropped), or all of it where it ran out."""
    assert len(run.cut) == len(run.codes), f"{len(run.cut)} codec calls for {len(run.codes)} generations"
    for i, (codes, cut) in enumerate(zip(run.codes, run.cut, strict=True)):
        k = stop_index(codes)
        want = codes if k is None else codes[:, :k]
        assert torch.equal(cut, want.to(cut.dtype)), f"segment {i}: codec got {cut.tolist()} of {codes.tolist()}"


def assert_joined(run: Run) -> None:
    """The written file is the segments' waves (clamped to [-1, 1]; 16-bit files: times 32767, rounded) in order,
    200 ms of zeros between two segments, nothing else (a run of an fp32 object)."""
    x = run.wav.reshape(-1).double()
    scale, tol = (32767.0, 0.5 + 1e-3) if run.bits == 16 else (1.0, 0.0)
    pos = 0
    for i, w in enumerate(run.wavs):
        w = w.reshape(-1).double().clamp(-1, 1) * scale
        seg = x[pos : pos + w.numel()]
        assert seg.numel() == w.numel(), f"the file ends inside segment {i}"
        err = float((seg - w).abs().max())
        assert err <= tol, f"segment {i} of the file differs from the vocoder's wave by {err}"
        pos += w.numel()
        if i < len(run.wavs) - 1:
            gap = x[pos : pos + SILENCE]
            assert gap.numel() == SILENCE and not gap.any(), f"no 200 ms of silence after segment {i}"
            pos += SILENCE
    assert pos == x.numel(), f"{x.numel() - pos} samples in the file after the last segment"


def assert_same_infer(ours: Run, official: Run, ref: Run) -> None:
    """``ours`` (enabled) against ``official`` (never enabled) under the same seed: the same codes and the same
    generator state after each generation (so the same CFM noise), the same cut; each segment's mel and wave,
    and the file, within the tolerance rule against ``ref`` (the fp64 object replaying the official codes and
    generator states)."""
    from ..helpers import assert_close_rel

    n = len(official.codes)
    assert len(ours.codes) == n, f"{len(ours.codes)} generations enabled, {n} official"
    for i in range(n):
        a, b = ours.codes[i], official.codes[i]
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (
            f"segment {i}: codes differ\nofficial {b.tolist()}\nenabled  {a.tolist()}"
        )
        assert torch.equal(ours.rng[i], official.rng[i]), f"segment {i}: the generation drew other random numbers"
        assert torch.equal(ours.cut[i], official.cut[i]) and torch.equal(ref.cut[i], official.cut[i])
    assert len(ours.mels) == len(official.mels) == len(ref.mels) == len(official.cut)
    for i in range(len(official.mels)):
        assert_close_rel(ours.mels[i], official.mels[i], ref.mels[i], f"segment {i}: CFM mel")
        assert_close_rel(ours.wavs[i], official.wavs[i], ref.wavs[i], f"segment {i}: vocoder wave")
    assert ours.bits == official.bits == ref.bits and ours.wav.shape == official.wav.shape == ref.wav.shape
    if official.bits == 32:
        assert_close_rel(ours.wav, official.wav, ref.wav, "the written wav")
    else:  # 16-bit PCM: round(32767 clamp(w)) moves by at most 32767 |dw| + 1 between two waves w
        dw = max(float((a.double() - b.double()).abs().max()) for a, b in zip(ours.wavs, official.wavs, strict=True))
        err = float((ours.wav - official.wav).abs().max())
        assert err <= 1 + 32767 * dw, f"the written 16-bit wav: {err} LSB apart, the waves {dw:.2e}"
    runs_out = [w for w in official.warnings if "max_mel_tokens" in w]
    assert [w for w in ours.warnings if "max_mel_tokens" in w] == runs_out
