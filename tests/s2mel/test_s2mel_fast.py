"""indextts_fast.enable on a live official s2mel: the DiT estimator and the 25-step CFM loop on our ops.

The official model is the installed official module code (CI runs this file on both code lines). Ours runs on the
Triton kernels (the interpreter on CPU), fp32 as the official s2mel. Tolerance rule: low = the official module in
fp32, high = the same module in fp64.
"""

import pytest
import torch

import indextts_fast
from indextts_fast.official import (
    DIT_HEAD_DIM_64,
    GPT_HEAD_DIM_64,
    build_s2mel,
    build_unified_voice,
    cfm_inputs,
    cfm_run,
    dit_inputs,
)
from indextts_fast.s2mel import PRECISIONS, FastDiT

from ..helpers import assert_close_rel

B, T, P = 2, 37, 11  # CFG batch, frames (odd), prompt frames (the defaults of dit_inputs and cfm_inputs)


@pytest.fixture(scope="module")
def model():
    return build_s2mel(seed=3, **DIT_HEAD_DIM_64)


@pytest.fixture(scope="module")
def model64():
    """The same weights in fp64 (the builder is seeded; weight-normed modules cannot be deep-copied)."""
    return build_s2mel(seed=3, **DIT_HEAD_DIM_64).double()


def _dbl(args):
    return [a.double() if a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_dit_estimator_matches_official(model, model64, precision):
    dit = model.models["cfm"].estimator
    args = dit_inputs(dit)
    dit64 = model64.models["cfm"].estimator
    with torch.no_grad():
        low, high = dit(*args), dit64(*_dbl(args))
        with indextts_fast.enabled(dit, dit_precision=precision) as h:
            assert h.parts[0].status == "fast", h.report()
            assert precision in h.report()
            ours = dit(*args)
    assert ours.shape == (B, dit.in_channels, T)
    assert_close_rel(ours, low, high, f"DiT estimator ({precision})")


@pytest.mark.slow
def test_dit_full_width_matches_official():
    """IndexTTS2's widths (512 wide, 8 heads, WaveNet 512, 80 mels, style 192, content 512) at 3 blocks (one UViT
    skip pair and the middle block) and 2 WaveNet layers."""
    full = dict(size="full", seed=4, depth=3, wavenet={"num_layers": 2})
    dit = build_s2mel(**full).models["cfm"].estimator
    args = dit_inputs(dit, frames=21)
    dit64 = build_s2mel(**full).double().models["cfm"].estimator
    with torch.no_grad():
        low, high = dit(*args), dit64(*_dbl(args))
        with indextts_fast.enabled(dit) as h:
            assert h.parts[0].status == "fast", h.report()
            ours = dit(*args)
    assert_close_rel(ours, low, high, "full-width DiT estimator")


def test_dit_key_length_mask(model, model64):
    """One length per row, x_lens = [T, T - 9]: keys and WaveNet frames beyond a row's length are masked.
    (The official repository's DiT sizes its mask by x_lens.max(), so the longest row must be T there too.)"""
    dit = model.models["cfm"].estimator
    args = dit_inputs(dit, x_lens=[T, T - 9])
    with torch.no_grad():
        low, high = dit(*args), model64.models["cfm"].estimator(*_dbl(args))
        with indextts_fast.enabled(dit):
            ours = dit(*args)
        full = list(args)
        full[2] = torch.tensor([T])
        with indextts_fast.enabled(dit):
            ours_full = dit(*full)
    assert torch.equal(ours[0], ours_full[0]) and not torch.allclose(ours[1], ours_full[1]), "the mask has no effect"
    assert_close_rel(ours, low, high, "DiT estimator with x_lens < T")


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.7, 0.0], ids=["cfg", "no_cfg"])
def test_cfm_25_steps_matches_official(model, model64, rate):
    """infer_v2's call: 25 Euler steps, CFG 0.7 at batch 2 (and the rate-0 batch-1 path); the same seed draws the
    same noise, the prompt frames are zero in both."""
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm)
    cfm64 = model64.models["cfm"]
    with torch.no_grad():
        low = cfm_run(cfm, inputs, rate=rate)
        high = cfm_run(cfm64, _dbl(inputs), rate=rate)
        with indextts_fast.enabled(model) as h:
            assert [p.name for p in h.parts if p.status == "fast"] == ["s2mel"], h.report()
            ours = cfm_run(cfm, inputs, rate=rate)
            assert h.parts[0].patch.calls["inference"] == 1
    assert torch.all(ours[..., :P] == 0) and torch.all(low[..., :P] == 0)
    assert_close_rel(ours, low, high, f"25-step CFM mel (cfg rate {rate})")


def test_revert_state_dict_and_print(model):
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm, frames=19, prompt=5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = cfm_run(cfm, inputs, steps=3)
        h = indextts_fast.enable(model)
        assert indextts_fast.enable(model) is h, "a second enable must return the live handle"
        after_sd = model.state_dict()
        assert list(after_sd) == list(sd) and all(torch.equal(after_sd[k], v) for k, v in sd.items())
        assert "indextts_fast" in repr(cfm), repr(cfm)[-300:]
        assert "s2mel" in h.report() and "fast" in h.report()
        h.revert()
        again = cfm_run(cfm, inputs, steps=3)
    assert torch.equal(before, again), "outputs after revert differ from the never-enabled model"
    assert "indextts_fast" not in repr(cfm)
    assert "inference" not in cfm.__dict__ and "forward" not in cfm.estimator.__dict__


def test_unknown_variants_refused_or_skipped():
    m = build_s2mel(seed=3, num_heads=1, time_as_token=True)
    with pytest.raises(indextts_fast.UnsupportedModel, match="time_as_token=True"):
        indextts_fast.enable(m)
    with pytest.raises(indextts_fast.UnsupportedModel, match="nothing to enable on MyModel.*time_as_token"):
        indextts_fast.enable(m, strict=False)  # skipped, and then nothing is left to enable
    assert "inference" not in m.models["cfm"].__dict__
    tiny = build_s2mel(seed=3)  # head_dim 16
    with pytest.raises(indextts_fast.UnsupportedModel, match="head_dim 16"):
        indextts_fast.enable(tiny)
    half = build_s2mel(seed=3, **DIT_HEAD_DIM_64)
    half.models["cfm"].estimator.half()
    with pytest.raises(indextts_fast.UnsupportedModel, match="fp32 s2mel"):
        indextts_fast.enable(half)
    with pytest.raises(ValueError, match="dit_precision must be one of"):
        indextts_fast.enable(build_s2mel(seed=3, **DIT_HEAD_DIM_64), dit_precision="fp8")


def test_indextts2_shaped_object(model):
    """An object holding .gpt (UnifiedVoice) and .s2mel (MyModel), as IndexTTS2: both parts swapped, one report,
    one revert."""
    uv = build_unified_voice("tiny", 0, **GPT_HEAD_DIM_64)

    class IndexTTS2Like:
        pass

    tts = IndexTTS2Like()
    tts.gpt, tts.s2mel = uv.eval(), model
    with indextts_fast.enabled(tts) as h:
        assert {p.name: p.status for p in h.parts} == {"gpt": "fast", "s2mel": "fast"}, h.report()
        assert "inference" in model.models["cfm"].__dict__ and "generate" in uv.inference_model.__dict__
    assert "inference" not in model.models["cfm"].__dict__ and "generate" not in uv.inference_model.__dict__


def test_fast_dit_alone_precisions():
    assert PRECISIONS[0] == "tf32x3"
    m = build_s2mel(seed=3, **DIT_HEAD_DIM_64)
    from indextts_fast import loader

    dit = m.models["cfm"].estimator
    t, rep = loader.remap_live(dit, "s2mel", stack_adaln=False)
    w = loader.dit_weights(t, rep.dims, stack_adaln=False)  # the unstacked layout gives the same stacked modulation
    fast = FastDiT(w, rep.dims, precision="ieee")
    w2 = loader.dit_weights(loader.remap_live(dit, "s2mel")[0], rep.dims, stack_adaln=True)
    assert torch.equal(fast.adaln_w, w2.adaln_w) and torch.equal(fast.adaln_b, w2.adaln_b)
    with pytest.raises(ValueError, match="precision must be one of"):
        FastDiT(w, rep.dims, precision="int8")
    args = dit_inputs(m.models["cfm"].estimator)
    bad = list(args)
    bad[2] = torch.tensor([T, T, T])
    with pytest.raises(ValueError, match="3 lengths for a batch of 2"):
        fast(*bad)


def test_rope_table_built_outside_the_op(model, monkeypatch):
    """FastDiT builds its RoPE table when it is built; its forward never reaches the launcher's lazy table (which
    refuses to build during a CUDA-graph capture), so a capture of the CFM loop allocates nothing persistent."""
    from indextts_kernels import load_kernel_module

    attn_mod = load_kernel_module("attention")

    def lazy(*a, **k):
        raise AssertionError("the lazily built RoPE table was requested inside the DiT forward")

    monkeypatch.setattr(attn_mod, "_rope_table", lazy)
    dit = model.models["cfm"].estimator
    args = dit_inputs(dit, frames=13)
    with torch.no_grad(), indextts_fast.enabled(dit) as h:
        fast = h.parts[0].patch.fast
        assert fast.freqs_cis.shape == (16384, 32, 2) and fast.freqs_cis.dtype == torch.float32
        dit(*args)


def test_lazy_rope_table_refused_during_capture(monkeypatch):
    from indextts_kernels import load_kernel_module

    attn_mod = load_kernel_module("attention")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    before = dict(attn_mod._ROPE_TABLES)
    with pytest.raises(RuntimeError, match="during a CUDA-graph capture.*freqs_cis"):
        attn_mod._rope_table(37, 64, 10000.0, torch.device("cuda", 0))
    assert attn_mod._ROPE_TABLES == before


# --- length buckets: padding with the key mask and the reflected WaveNet taps changes nothing ---------------------
@pytest.mark.parametrize("k", [3, 5, 7])
def test_reflected_taps_are_the_official_padding(k):
    """The WaveNet gate's tap frames (``reference.reflect_taps_index``, which its kernel computes in its A load) are
    the official SConv1d's REFLECT padding (``pad1d``, with its zero extension of a sequence shorter than the pad),
    unpadded; and reflected at the true length of a padded sequence, the unpadded ones for every frame below it,
    whatever the padding holds (here noise, not zeros)."""
    from indextts_kernels.reference import reflect_taps_index

    from ..helpers import official

    pad1d = official("s2mel.modules.encodec").pad1d
    right = (k - 1) // 2
    g = torch.Generator().manual_seed(k)
    for L in (1, 2, 3, 23):
        x = torch.randn(2, 41, 6, generator=g)  # [B, Tb, C] channel-last
        want = pad1d(x[:, :L].transpose(1, 2), (k - 1 - right, right), mode="reflect").unfold(2, k, 1)  # [B, C, L, k]
        for T, valid in ((L, None), (41, torch.tensor([L]))):
            p, ok = reflect_taps_index(T, k, valid)
            p, ok = p[0], ok[0]  # one valid length for the batch
            got = x[:, :T][:, p] * ok[None, :, :, None]  # [B, T, k, C]
            assert torch.equal(got[:, :L].permute(0, 3, 1, 2), want), (k, L, T)


def test_dit_padded_frames_change_nothing(model):
    """FastDiT on a batch padded from T to T + 19 frames (the padding is noise), told the true length: every frame
    below T equals the unpadded run's, with one length per row (x_lens = [T, T - 9])."""
    dit = model.models["cfm"].estimator
    x, prompt_x, _, t, style, cond = dit_inputs(dit)
    lens = torch.tensor([T, T - 9])
    g = torch.Generator().manual_seed(77)
    padded_in = [torch.cat([a, torch.randn(*a.shape[:-1], 19, generator=g)], -1) for a in (x, prompt_x)]
    padded_in.append(torch.cat([cond, torch.randn(B, 19, cond.shape[-1], generator=g)], 1))
    px, ppx, pcond = padded_in
    with torch.no_grad(), indextts_fast.enabled(dit) as h:
        fast = h.parts[0].patch.fast
        ref = fast(x, prompt_x, lens, t, style, cond)
        padded = fast(px, ppx, lens, t, style, pcond, valid_len=torch.tensor([T]))
        blind = fast(px, ppx, lens, t, style, pcond)
    assert padded.shape == (B, dit.in_channels, T + 19)
    torch.testing.assert_close(padded[..., :T], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(blind[..., :T], ref, rtol=1e-3, atol=1e-3), "the padding had no effect to undo"


@pytest.mark.parametrize("rate", [0.7, 0.0], ids=["cfg", "no_cfg"])
def test_cfm_bucketed_mel_equals_unpadded(model, model64, rate):
    """The CFM loop on frames padded to a bucket (the graphed path's layout, here eager on CPU) gives the unpadded
    run's mel: same seed, same noise, prompt frames zero; both within the tolerance rule of the official loop."""
    from indextts_fast.s2mel import bucket_frames, cfm_inference

    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm)
    Tb = bucket_frames(T)
    assert Tb == 64 and bucket_frames(1700) == 1792 and bucket_frames(64) == 64
    with torch.no_grad():
        low = cfm_run(cfm, inputs, steps=3, rate=rate)
        high = cfm_run(model64.models["cfm"], _dbl(inputs), steps=3, rate=rate)
        with indextts_fast.enabled(model) as h:
            fast = h.parts[0].patch.fast
            runs = {}
            for pad_to in (None, Tb):
                mu, x_lens, prompt, style = inputs
                torch.manual_seed(21)
                runs[pad_to] = cfm_inference(cfm, fast, mu, x_lens, prompt, style, None, 3,
                                             inference_cfg_rate=rate, pad_to=pad_to)  # fmt: skip
    assert runs[Tb].shape == runs[None].shape == (1, cfm.in_channels, T)
    assert torch.all(runs[Tb][..., :P] == 0)
    torch.testing.assert_close(runs[Tb], runs[None], rtol=1e-5, atol=1e-5)
    assert_close_rel(runs[Tb], low, high, f"bucketed 3-step CFM mel (cfg rate {rate})")


@pytest.mark.parametrize("rate", [0.7, 0.0], ids=["cfg", "no_cfg"])
def test_cfm_torch_backend_matches_official(model, model64, rate, monkeypatch):
    """The same loop on the torch references (no Triton): FastDiT.prepare / step, the WaveNet layer ops and the
    Euler step as torch code, padded and unpadded, within the rule of the official loop."""
    from indextts_fast.s2mel import bucket_frames, cfm_inference

    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm)
    with torch.no_grad():
        low = cfm_run(cfm, inputs, steps=3, rate=rate)
        high = cfm_run(model64.models["cfm"], _dbl(inputs), steps=3, rate=rate)
        with indextts_fast.enabled(model) as h:
            fast = h.parts[0].patch.fast
            for pad_to in (None, bucket_frames(T)):
                mu, x_lens, prompt, style = inputs
                torch.manual_seed(21)
                ours = cfm_inference(cfm, fast, mu, x_lens, prompt, style, None, 3, inference_cfg_rate=rate,
                                     pad_to=pad_to)  # fmt: skip
                assert_close_rel(ours, low, high, f"torch-backend 3-step CFM mel (cfg rate {rate}, pad_to {pad_to})")


def test_cfm_noise_from_a_request_generator(model, monkeypatch):
    """A request's own generator for the CFM noise: the mel of a generator seeded s is the mel after
    torch.manual_seed(s) without one (the official draw), and the global generator is left untouched."""
    from indextts_fast.s2mel import CFMLoop

    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    cfm = model.models["cfm"]
    mu, x_lens, prompt, style = cfm_inputs(cfm)
    with torch.no_grad(), indextts_fast.enabled(model) as h:
        loop = CFMLoop(cfm, h.parts[0].patch.fast)
        torch.manual_seed(21)
        official_stream = loop(mu.clone(), x_lens, prompt, style, None, 2, inference_cfg_rate=0.7)
        torch.manual_seed(5)
        before = torch.get_rng_state()
        own = loop(mu.clone(), x_lens, prompt, style, None, 2, inference_cfg_rate=0.7,
                   generator=torch.Generator().manual_seed(21))  # fmt: skip
        assert torch.equal(torch.get_rng_state(), before), "the request's noise moved the global generator"
    assert torch.equal(own, official_stream)


@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_cfm_many_requests_in_one_padded_batch(model, model64, backend, monkeypatch):
    """``CFMLoop.many(batched=True)``: three requests of other lengths, prompts and styles in one batch padded to
    the longest's bucket (the graphed path's layout, eager here), each row told its own prompt frames, key length
    and WaveNet reflection length: each request's mel is its own official ``cfm.inference`` (noise from its own
    generator = the official draw under manual_seed) within the tolerance rule, as is the one-at-a-time run's."""
    from indextts_fast.s2mel import CFMLoop

    if backend == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    cfm = model.models["cfm"]
    shapes = [(37, 11, 1), (29, 7, 2), (50, 13, 3)]  # frames, prompt frames, seed
    inputs = [cfm_inputs(cfm, frames=T, prompt=P, seed=k) for T, P, k in shapes]
    with torch.no_grad(), indextts_fast.enabled(model) as h:
        loop = CFMLoop(cfm, h.parts[0].patch.fast, graphs=False)
        items = lambda: [(mu.clone(), prompt, style, torch.Generator().manual_seed(20 + k))
                         for (mu, _, prompt, style), (_, _, k) in zip(inputs, shapes, strict=True)]  # fmt: skip
        together = loop.many(items(), 3, inference_cfg_rate=0.7, batched=True)
        alone = loop.many(items(), 3, inference_cfg_rate=0.7, batched=False)
    for i, ((mu, x_lens, prompt, style), (T, P, k)) in enumerate(zip(inputs, shapes, strict=True)):
        low = cfm_run(cfm, (mu.clone(), x_lens, prompt, style), seed=20 + k, steps=3)
        high = cfm_run(model64.models["cfm"], _dbl((mu.clone(), x_lens, prompt, style)), seed=20 + k, steps=3)
        assert together[i].shape == (1, cfm.in_channels, T) and torch.all(together[i][..., :P] == 0)
        assert_close_rel(together[i], low, high, f"request {i} of a padded CFM batch ({backend})")
        assert_close_rel(alone[i], low, high, f"request {i} alone ({backend})")


def test_cfm_loop_refuses_bad_lengths(model):
    from indextts_fast.s2mel import cfm_inference

    cfm = model.models["cfm"]
    mu, x_lens, prompt, style = cfm_inputs(cfm)
    with indextts_fast.enabled(model) as h:
        fast = h.parts[0].patch.fast
        with pytest.raises(ValueError, match="pad_to=30 is shorter than the 37 frames"):
            cfm_inference(cfm, fast, mu, x_lens, prompt, style, None, 2, pad_to=30)
        with pytest.raises(ValueError, match="prompt has 40 frames, more than the 37"):
            cfm_inference(cfm, fast, mu, x_lens, torch.randn(1, cfm.in_channels, 40), style, None, 2, pad_to=64)
        with pytest.raises(ValueError, match="n_timesteps must be at least 1"):
            cfm_inference(cfm, fast, mu, x_lens, prompt, style, None, 0)


@pytest.mark.gpu(reason="CUDA graphs")
def test_cuda_graph_cfm_loop_replays_the_eager_mel():
    """On a GPU: the graphed CFM loop (first call eager and captured, then replays at two lengths of one bucket)
    gives the eager padded loop's mel for the same seed."""
    from indextts_fast.s2mel import CFMLoop, cfm_inference

    m = build_s2mel(seed=3, **DIT_HEAD_DIM_64).cuda()
    cfm = m.models["cfm"]
    with torch.no_grad(), indextts_fast.enabled(m) as h:
        fast = h.parts[0].patch.fast
        loop = CFMLoop(cfm, fast, graphs=True)
        for n, Tn in enumerate((37, 41, 37)):
            mu, x_lens, prompt, style = (a.cuda() for a in cfm_inputs(cfm, seed=9 + n, frames=Tn))
            torch.manual_seed(5)
            eager = cfm_inference(cfm, fast, mu.clone(), x_lens, prompt, style, None, 25, pad_to=64)
            torch.manual_seed(5)
            graphed = loop(mu.clone(), x_lens, prompt, style, None, 25)
            torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
        assert len(loop.capture_s) == 1 and list(loop.runs.values())[0].graphed.replays == 2


@pytest.mark.gpu(reason="CUDA graphs")
def test_cuda_graph_cfm_batch_replays_the_eager_batch():
    """On a GPU: ``CFMLoop.many`` graphed (first call eager, then captured, then replayed) gives the eager padded
    batch's mels bit for bit, each request's noise from its own generator."""
    from indextts_fast.s2mel import CFMLoop

    m = build_s2mel(seed=3, **DIT_HEAD_DIM_64).cuda()
    cfm = m.models["cfm"]
    shapes = [(37, 11), (29, 7), (50, 13)]
    with torch.no_grad(), indextts_fast.enabled(m) as h:
        fast = h.parts[0].patch.fast
        graphed, eager = CFMLoop(cfm, fast, graphs=True), CFMLoop(cfm, fast, graphs=False)
        for n in range(3):
            inputs = [[a.cuda() for a in cfm_inputs(cfm, frames=T, prompt=P, seed=10 * n + k)]
                      for k, (T, P) in enumerate(shapes)]  # fmt: skip
            want = eager.many(_requests(inputs), 25, inference_cfg_rate=0.7, batched=True)
            got = graphed.many(_requests(inputs), 25, inference_cfg_rate=0.7, batched=True)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert len(graphed.capture_s) == 1 and list(graphed.runs.values())[0].graphed.replays == 2


def _requests(inputs) -> list:
    """CFMLoop.many's items of cfm_inputs tuples, request k's noise from a CUDA generator seeded k."""
    return [(mu.clone(), prompt, style, torch.Generator("cuda").manual_seed(k))
            for k, (mu, _, prompt, style) in enumerate(inputs)]  # fmt: skip


class _AutocastDiT(torch.nn.Module):
    """PyTorch's own run of the official DiT at a lower dtype: the fp32 module under autocast."""

    def __init__(self, dit, dtype):
        super().__init__()
        self.dit, self.dtype = dit, dtype

    def forward(self, *args, **kw):
        with torch.autocast("cpu", dtype=self.dtype):
            return self.dit(*args, **kw).float()


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_dit_mel_error(model, model64, name, capsys):
    """The opt-in bf16 / fp16 estimator (weights and activations in that dtype, Euler state fp32): the 3-step CFM
    mel against fp64 within the tolerance rule of PyTorch's run of the official DiT at that dtype (autocast), and
    its error against the fp32 path reported. It must differ from fp32: the low dtype really ran."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm)
    with torch.no_grad():
        high = cfm_run(model64.models["cfm"], _dbl(inputs), steps=3)
        fp32 = cfm_run(cfm, inputs, steps=3)
        ref_model = build_s2mel(seed=3, **DIT_HEAD_DIM_64)
        ref_cfm = ref_model.models["cfm"]
        ref_cfm.estimator = _AutocastDiT(ref_cfm.estimator, dtype)
        low = cfm_run(ref_cfm, inputs, steps=3)
        with indextts_fast.enabled(model, dit_precision=name) as h:
            assert f"{name} estimator" in h.report(), h.report()
            ours = cfm_run(cfm, inputs, steps=3)
    assert ours.dtype == torch.float32 and torch.all(ours[..., :P] == 0)
    assert_close_rel(ours, low, high, f"{name} estimator, 3-step CFM mel")
    err32 = float((ours - fp32).abs().max())
    assert err32 > 0, "the low-precision estimator gave the fp32 mel"
    with capsys.disabled():
        print(
            f"\n{name} estimator: 3-step CFM mel max |ours - fp32| = {err32:.3e} (|mel| <= "
            f"{float(fp32.abs().max()):.1f}); PyTorch autocast {name}: {float((low - fp32).abs().max()):.3e}"
        )
