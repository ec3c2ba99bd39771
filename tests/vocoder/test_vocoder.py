"""The vocoder on the fast backend: the official BigVGAN (tiny config, weight norm removed as infer_v2 does) against
its own forward under the tolerance rule (``low`` the module in fp32, ``high`` a copy in fp64), padded to a bucket
(the graphs' path) and not; ``enable`` / ``revert`` on it; no official activation forward while enabled, also for a
vocoder built with the CUDA activation class; weights changed after enable followed; bad input refused.

On CPU the kernels run in the Triton interpreter.
"""

import copy
import gc
import pickle
import sys
import threading
import weakref

import pytest
import torch

import indextts_fast
from indextts_fast.errors import UnsupportedModel
from indextts_fast.official import BIGVGAN_V2, build_bigvgan
from indextts_fast.vocoder.bigvgan import FastBigVGAN, VocoderLoop, unsupported_reason

from ..helpers import assert_close_rel, official_line

FRAMES = 11  # odd: not a multiple of any bucket granule


@pytest.fixture(scope="module")
def net():
    return build_bigvgan("tiny", seed=4)


def _mel(frames=FRAMES, batch=1, seed=2):
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed))


def _official(net, mel):
    with torch.no_grad():
        return net(mel), copy.deepcopy(net).double()(mel.double())


def _activation_calls(net) -> list:
    """Counts of calls into the official anti-aliased activations (Activation1d and the Snake modules)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for m in net.modules():
        if type(m).__name__ in ("Activation1d", "SnakeBeta", "Snake"):
            m.register_forward_pre_hook(hook)
    return calls


@pytest.mark.parametrize("batch", [2])
def test_fast_vocoder_matches_official(net, batch):
    mel = _mel(batch=batch)
    low, high = _official(net, mel)
    with torch.no_grad():
        ours = FastBigVGAN(net)(mel)
    assert ours.shape == low.shape == (batch, 1, FRAMES * 256)
    assert_close_rel(ours, low, high, "vocoder wave")


@pytest.mark.parametrize("frames", [1, 2, FRAMES])
def test_padded_vocoder_keeps_the_unpadded_samples(net, frames):
    """The graphs' path (mel padded to a bucket, valid lengths per stage): the kept samples are the unpadded run's,
    within the rule; frames 1 and 2 put every pad of every activation and convolution at the valid end."""
    mel = _mel(frames)
    low, high = _official(net, mel)
    loop = VocoderLoop(FastBigVGAN(net), pad=True)
    assert loop.bucket(frames) > frames  # padding does happen
    with torch.no_grad():
        ours = loop(mel)
    assert_close_rel(ours, low, high, f"padded vocoder wave ({frames} frames)")


def test_enable_patches_the_vocoder_and_revert_restores_it(net):
    mel = _mel()
    with torch.no_grad():
        before = net(mel)
    calls = _activation_calls(net)
    h = indextts_fast.enable(net)
    try:
        part = {p.name: p for p in h.parts}["vocoder"]
        assert part.status == "fast" and "vocoder" in h.report() and "anti-aliased" in h.report(), h.report()
        with torch.no_grad():
            ours = net(mel)
        assert calls[0] == 0, "an official activation ran while enabled"
        assert part.patch.calls["forward"] == 1
        _, high = _official_unpatched(net, mel)
        assert_close_rel(ours, before, high, "enabled vocoder wave")
    finally:
        h.revert()
    with torch.no_grad():
        after = net(mel)
    assert calls[0] > 0 and torch.equal(after, before), "after revert the vocoder must be the official one, bit for bit"
    assert "forward" not in net.__dict__


def _official_unpatched(net, mel):
    """The fp64 copy of a module (deepcopy gives the official, unpatched module)."""
    copied = copy.deepcopy(net)
    assert "forward" not in copied.__dict__
    with torch.no_grad():
        return None, copied.double()(mel.double())


def test_cuda_activation_class_is_never_called_nor_built(net):
    """A vocoder built with use_cuda_kernel=True holds the CUDA Activation1d class (same attributes, a forward that
    calls the extension). Stand-ins with that class's name and a forward that fails: enable runs the vocoder
    without them, and nothing imports the extension's module."""

    class Activation1d(torch.nn.Module):  # the CUDA class's shape: act, upsample, downsample, fused
        def __init__(self, torch_act):
            super().__init__()
            self.act, self.upsample, self.downsample, self.fused = (torch_act.act, torch_act.upsample,
                                                                    torch_act.downsample, True)  # fmt: skip

        def forward(self, x):
            raise AssertionError("the CUDA extension's activation was called")

    cuda_net = copy.deepcopy(net)
    mel = _mel()
    low, high = _official(net, mel)
    cuda_net.activation_post = Activation1d(cuda_net.activation_post)
    for rb in cuda_net.resblocks:
        rb.activations = torch.nn.ModuleList(Activation1d(a) for a in rb.activations)
    with indextts_fast.enabled(cuda_net), torch.no_grad():
        ours = cuda_net(mel)
    assert_close_rel(ours, low, high, "vocoder wave with the CUDA activation class")
    assert not [m for m in sys.modules if "alias_free_activation.cuda" in m]


def test_enable_follows_weights_changed_after_enable():
    net = build_bigvgan("tiny", seed=6)
    other = build_bigvgan("tiny", seed=7)
    mel = _mel(5)
    with indextts_fast.enabled(net) as h, torch.no_grad():
        net(mel)
        net.load_state_dict(other.state_dict())
        ours = net(mel)
        assert h.parts[0].patch.calls["rebuilds"] == 1
    low, high = _official(other, mel)
    assert_close_rel(ours, low, high, "vocoder wave after load_state_dict")


def test_enable_refuses_what_it_does_not_implement():
    net64 = build_bigvgan("tiny", seed=1).double()
    assert "float64" in unsupported_reason(net64)
    with pytest.raises(UnsupportedModel, match="vocoder: .*float64"):
        indextts_fast.enable(net64)
    net = build_bigvgan("tiny", seed=1)
    net.train()
    assert "training mode" in unsupported_reason(net)
    net.eval()
    net.resblocks[0].convs2 = None  # an AMPBlock2 has no second convolutions
    del net.resblocks[0].convs2
    assert "AMPBlock2" in unsupported_reason(net)


def test_enabled_vocoder_refuses_bad_mel():
    net = build_bigvgan("tiny", seed=2)
    with indextts_fast.enabled(net), torch.no_grad():
        with pytest.raises(TypeError, match="float16.*fp32"):
            net(_mel(4).half())
        with pytest.raises(ValueError, match=r"\[B, 80, T\]"):
            net(torch.randn(1, 79, 4))
        with pytest.raises(ValueError, match="empty mel"):
            net(torch.randn(1, 80, 0))
        assert net(_mel(4)).shape == (1, 1, 4 * 256)  # and the next call runs


def test_vocoder_false_leaves_it_official(net):
    """enable(tts-like, vocoder=False): the vocoder part is reported skipped and runs the official forward."""

    class Holder:
        pass

    t = Holder()
    t.bigvgan = net
    with pytest.raises(ValueError, match="nothing to enable"):
        indextts_fast.enable(t, vocoder=False)
    with indextts_fast.enabled(t) as h:
        assert [p.name for p in h.parts] == ["vocoder"] and "forward" in net.__dict__
    assert "forward" not in net.__dict__


@pytest.mark.skipif(official_line() != "refactor", reason="indextts25-inference ships beside the refactor line")
def test_indextts25_vocoder_matches_its_forward():
    """IndexTTS-2.5's copy of the code (weight norm folded at load, the torch activation only)."""
    net = build_bigvgan("tiny", seed=3, version="2.5")
    mel = _mel(7)
    low, high = _official(net, mel)
    with indextts_fast.enabled(net), torch.no_grad():
        ours = net(mel)
    assert_close_rel(ours, low, high, "2.5 vocoder wave")


def test_threads_on_one_enabled_vocoder_get_their_own_waves():
    """Two threads, two calls each (different lengths) on one enabled vocoder: each wave equals the same call run
    alone (one call at a time per model: the lock)."""
    net = build_bigvgan("tiny", seed=8)
    mels = [_mel(3 + 2 * i, seed=i) for i in range(4)]
    got, errors = {}, []
    with indextts_fast.enabled(net), torch.no_grad():
        alone = [net(m) for m in mels]

        def worker(w):
            try:
                for i in (w, w + 2):
                    with torch.no_grad():
                        got[i] = net(mels[i])
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert all(torch.equal(got[i], alone[i]) for i in range(4))


def test_an_enabled_vocoder_is_freed_and_copies_are_official():
    """del + gc frees an enabled vocoder with its fast copy; deepcopy and pickle of an enabled one give the
    official module."""
    net = build_bigvgan("tiny", seed=9)
    h = indextts_fast.enable(net)
    copied = copy.deepcopy(net)
    pickled = pickle.loads(pickle.dumps(net))
    assert "forward" not in copied.__dict__ and "forward" not in pickled.__dict__
    mel = _mel(3)
    with torch.no_grad():
        assert torch.equal(copied(mel), pickled(mel))
    ref = weakref.ref(net)
    fast = weakref.ref(h.parts[0].patch.fast.conv_pre.weight)
    del net
    gc.collect()
    assert ref() is None and fast() is None, "the enabled vocoder is still alive"
    assert "freed" in h.report()
    h.revert()


@pytest.mark.gpu(reason="CUDA graphs")
def test_cuda_graph_vocoder_replays_the_padded_eager_wave():
    """On a GPU: the graphed vocoder (first call eager, second captured, then replays at two lengths of one bucket)
    gives the eager padded run's wave bit for bit, and the official wave within the rule."""
    net = build_bigvgan("tiny", seed=4).cuda()
    fast = FastBigVGAN(net)
    graphed, padded = VocoderLoop(fast, graphs=True), VocoderLoop(fast, graphs=False, pad=True)
    for frames in (11, 13, 11, 13):
        mel = _mel(frames).cuda()
        with torch.no_grad():
            got, want = graphed(mel), padded(mel)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        low, high = _official(net, mel)
        assert_close_rel(got, low, high, f"graphed vocoder wave ({frames} frames)")
    assert len(graphed.capture_s) == 1 and list(graphed.runs.values())[0].graphed.replays == 3


def test_the_official_structure_on_the_references(monkeypatch):
    """BigVGAN v2's own structure (6 stages: rates 4, 4, 2, 2, 2, 2 with kernels 8, 8, 4, 4, 4, 4; three AMP kernel
    sizes 3, 7, 11 and so three-part merges) at narrow channels, on the torch references (the kernels' part is
    tests/kernels/test_alias_free.py): unpadded and padded within the rule."""
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    cfg = {k: BIGVGAN_V2[k] for k in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes",
                                      "resblock_dilation_sizes")}  # fmt: skip
    net = build_bigvgan("tiny", seed=1, upsample_initial_channel=64, **cfg)
    fast = FastBigVGAN(net)
    assert fast.hop == 256 and fast.n_activations == 109 and fast.num_kernels == 3
    mel = _mel(5)
    low, high = _official(net, mel)
    with torch.no_grad():
        assert_close_rel(fast(mel), low, high, "vocoder wave (official structure)")
        assert_close_rel(VocoderLoop(fast, pad=True)(mel), low, high, "padded vocoder wave (official structure)")


def test_many_mels_in_one_call(net):
    """Three requests' mels of different lengths in one padded call (each row its own valid lengths): each wave is
    its mel's official wave within the rule (the padded path without graphs here; one graph per (bucket, batch)
    on CUDA)."""
    mels = [_mel(n, seed=n) for n in (3, 11, 6)]
    waves = VocoderLoop(FastBigVGAN(net), pad=True).many(mels)
    for m, w in zip(mels, waves, strict=True):
        low, high = _official(net, m)
        assert_close_rel(w, low, high, f"wave of {m.shape[2]} frames among three")
    with pytest.raises(ValueError, match="one mel per request"):
        VocoderLoop(FastBigVGAN(net)).many([_mel(3, batch=2)])
