"""enable() used the way a demanding user would: threads, weights changed after enable, copies, lifetimes, second
enables, re-initialised inference models, memory bounds. Every case gets the official result or one clear error.

The official model is the installed official module code (CI runs this file on both code lines). The loop's and
the patch's logic is under test here, so the ops run on the torch references (the kernels are tested elsewhere).
"""

import copy
import gc
import pickle
import threading
import types
import weakref

import pytest
import torch

import indextts_fast
from indextts_fast.gpt.decode import MAX_STATES
from indextts_fast.official import (
    DIT_HEAD_DIM_64,
    build_s2mel,
    cfm_inputs,
    inference_speech,
    speech_inputs,
    teacher_forced_latents,
)

from .autocast_ref import official_autocast
from .gpt.test_gpt_enable import MODES, _uv
from .helpers import assert_close_rel


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")


def _model(seed=3):
    """The tiny s2mel at head_dim 64 of tests/s2mel (its seed)."""
    return build_s2mel(seed=seed, **DIT_HEAD_DIM_64)


# greedy with the official repetition penalty: random tiny models repeat one code without it, whatever the weights
VARIED = dict(do_sample=False, num_beams=1, repetition_penalty=10.0)


# --- 1. threads ------------------------------------------------------------------------------------------------------
def test_threads_generating_on_one_model_get_their_own_official_tokens():
    """Three threads, two sentences each (prompts of different lengths, greedy and beam search alternating) on one
    enabled UnifiedVoice: each gets the tokens the official model gives that sentence alone."""
    uv = _uv()
    modes = {"greedy": VARIED, "beam_search": MODES["beam_search"]}
    jobs = [
        (speech_inputs(seed=s, frames=21 + 4 * s, text_len=5 + 2 * s), "greedy" if s % 2 else "beam_search")
        for s in range(6)
    ]
    want = [inference_speech(uv, spk, text, steps=14, **modes[mode])[0] for (spk, text), mode in jobs]
    got, errors = {}, []
    start = threading.Barrier(3)

    def worker(w):
        try:
            start.wait()
            for i in (w, w + 3):
                (spk, text), mode = jobs[i]
                got[i] = inference_speech(uv, spk, text, steps=14, **modes[mode])[0]
        except Exception as e:  # reported below
            errors.append(e)

    with indextts_fast.enabled(uv):
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i, w in enumerate(want):
        assert torch.equal(got[i], w), f"sentence {i} ({jobs[i][1]}): tokens differ from the official ones"


def test_threads_running_the_cfm_on_one_model_get_their_own_mels():
    """Two threads, two CFM calls each (different lengths) on one enabled s2mel: each mel equals the same call
    run alone, and the official one within the tolerance rule. temperature=0: no random draw to share."""
    model, model64 = _model(), _model().double()
    cfm = model.models["cfm"]
    calls = [cfm_inputs(cfm, seed=s, frames=19 + 6 * s, prompt=3 + s) for s in range(4)]

    def run(c, inputs):
        mu, x_lens, prompt, style = inputs
        with torch.no_grad():
            return c.inference(mu, x_lens, prompt, style, None, 3, temperature=0.0, inference_cfg_rate=0.7)

    low = [run(cfm, c) for c in calls]
    high = [run(model64.models["cfm"], [t.double() if t.is_floating_point() else t for t in c]) for c in calls]
    got, errors = {}, []
    with indextts_fast.enabled(model):
        alone = [run(cfm, c) for c in calls]

        def worker(w):
            try:
                for i in (w, w + 2):
                    got[i] = run(cfm, calls[i])
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i in range(4):
        assert torch.equal(got[i], alone[i]), f"call {i}: the threaded mel differs from the same call alone"
        assert_close_rel(got[i], low[i], high[i], f"threaded CFM call {i}")


# --- 2. weights changed after enable ----------------------------------------------------------------------------------
def _tokens_after(uv, change, steps=16):
    """(official tokens of the changed model, ours: enabled before the change)."""
    spk, text = speech_inputs()
    with indextts_fast.enabled(uv) as h:
        inference_speech(uv, spk, text, steps=steps, **VARIED)  # built and run before the change
        change(uv)
        ours = inference_speech(uv, spk, text, steps=steps, **VARIED)[0]
        rebuilds = h.parts[0].patch.calls["rebuilds"]
    official = inference_speech(uv, spk, text, steps=steps, **VARIED)[0]
    return official, ours, rebuilds


@pytest.mark.parametrize("change", ["load_state_dict", "transposed_in_place", "viewed_in_place", "assigned"])
def test_weights_changed_after_enable_are_seen(change):
    """load_state_dict of another model's weights; an in-place edit of a Conv1D weight (held transposed, a copy),
    of a weight held as a view (ln_1, the mel head); a parameter assigned anew: the next generation follows the
    model as it is now (the official tokens of the changed model)."""
    other = _uv(seed=5)

    def edit(uv):
        with torch.no_grad():
            if change == "load_state_dict":
                uv.load_state_dict(other.state_dict())
            elif change == "transposed_in_place":
                uv.gpt.h[1].attn.c_attn.weight.mul_(1.5)
            elif change == "viewed_in_place":
                uv.gpt.h[0].ln_1.weight.add_(0.5)
                uv.mel_head.weight.mul_(-1)
            else:
                uv.gpt.h[0].mlp.c_fc.weight = torch.nn.Parameter(uv.gpt.h[0].mlp.c_fc.weight * 2)

    before = inference_speech(_uv(), *speech_inputs(), steps=16, **VARIED)[0]
    official, ours, rebuilds = _tokens_after(_uv(), edit)
    assert not torch.equal(official, before), "the change did not change the official tokens: nothing tested"
    assert torch.equal(ours, official), f"{change}: tokens of neither the old nor the new model"
    assert rebuilds == 1


def test_half_after_enable_follows_the_model():
    """uv.half() after enable: the latent pass under IndexTTS2's fp16 autocast runs the halved weights, within the
    tolerance rule of the official fp16 path (never the stale fp32 copy)."""
    uv, uv64 = _uv(seed=2), _uv(seed=2).half().double()
    spk, text = speech_inputs(seed=6)
    codes = torch.randint(0, uv.stop_mel_token, (1, 19))
    high = teacher_forced_latents(uv64, spk.double(), text, codes)
    with indextts_fast.enabled(uv) as h:
        uv.half()
        with official_autocast("cpu"):
            ours = teacher_forced_latents(uv, spk.half(), text, codes)
        assert h.parts[0].patch.fast.dtype == torch.float16
    with official_autocast("cpu"):
        low = teacher_forced_latents(uv, spk.half(), text, codes)
    assert_close_rel(ours, low, high, "latents after uv.half()")


def test_changes_the_fast_path_does_not_implement_are_refused_by_name():
    uv = _uv()
    spk, text = speech_inputs()
    with indextts_fast.enabled(uv):
        uv.double()
        with pytest.raises(indextts_fast.UnsupportedModel, match=r"changed dtype \(torch.float32 -> torch.float64\)"):
            inference_speech(uv, spk, text, steps=4, **MODES["greedy"])
        uv.float().train()
        with pytest.raises(indextts_fast.UnsupportedModel, match="training mode"):
            inference_speech(uv, spk, text, steps=4, **MODES["greedy"])
        uv.eval()
        assert inference_speech(uv, spk, text, steps=4, **MODES["greedy"])[0].shape == (1, 4)
    model = _model()
    cfm = model.models["cfm"]
    mu, x_lens, prompt, style = cfm_inputs(cfm, frames=19, prompt=5)
    with indextts_fast.enabled(model):
        model.half()
        with pytest.raises(indextts_fast.UnsupportedModel, match="s2mel: .*changed dtype.*runs the official fp32"):
            cfm.inference(mu.half(), x_lens, prompt.half(), style.half(), None, 2)


def test_s2mel_weights_loaded_after_enable_are_seen():
    model, other = _model(), _model(seed=8)
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm, frames=19, prompt=5)

    def run():
        mu, x_lens, prompt, style = inputs
        torch.manual_seed(4)
        with torch.no_grad():
            return cfm.inference(mu, x_lens, prompt, style, None, 2, inference_cfg_rate=0.7)

    with indextts_fast.enabled(model) as h:
        before = run()
        cfm.estimator.load_state_dict(other.models["cfm"].estimator.state_dict())
        ours = run()
        assert h.parts[0].patch.calls["rebuilds"] == 1
    official = run()
    assert not torch.allclose(official, before)
    assert float((ours - official).abs().max()) <= 1e-4 * float(official.abs().max())


# --- 4. lifetimes, copies, second enables ---------------------------------------------------------------------------
def test_an_enabled_model_is_freed_with_its_caches():
    """del + gc frees an enabled UnifiedVoice (and an IndexTTS2-like object holding enabled parts) with its
    decoders and KV caches, even while the handle is still referenced."""
    uv = _uv()
    spk, text = speech_inputs()
    h = indextts_fast.enable(uv)
    inference_speech(uv, spk, text, steps=4, **MODES["greedy"])
    (decoder,) = h.parts[0].patch.decoders.values()
    refs = [weakref.ref(uv), weakref.ref(decoder.cache.buf)]
    del uv, decoder
    gc.collect()
    assert all(r() is None for r in refs), "the enabled model (or its KV cache) is still alive"
    assert "freed" in h.report()
    h.revert()  # a no-op now

    tts = types.SimpleNamespace()  # not weak-referenceable: the handle holds it, nothing else does
    tts.gpt, tts.s2mel = _uv(), _model()
    h2 = indextts_fast.enable(tts)
    refs = [weakref.ref(tts.gpt), weakref.ref(tts.s2mel)]
    h2.revert()
    del h2, tts
    gc.collect()
    assert all(r() is None for r in refs)

    class TTS:  # an IndexTTS2-shaped object
        pass

    tts = TTS()
    tts.gpt, tts.s2mel = _uv(), _model()
    h3 = indextts_fast.enable(tts)
    refs = [weakref.ref(tts), weakref.ref(tts.gpt), weakref.ref(tts.s2mel)]
    del tts
    gc.collect()
    assert all(r() is None for r in refs), "an IndexTTS2 holding enabled parts is kept alive"
    assert not h3.live or "freed" in h3.report()


def _copy(obj, how):
    return copy.deepcopy(obj) if how == "deepcopy" else pickle.loads(pickle.dumps(obj))


def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # the official module's own failure, compared below
        return None, type(e)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_and_pickles_of_an_enabled_model_are_the_official_model(how):
    """copy.deepcopy and pickle of an enabled model do what they do to the official model (some official modules
    refuse one or the other: weight norm, hooks, local classes), and where they give a copy it is the official,
    unpatched model, its own to enable and revert; the original stays enabled."""
    uv, model = _uv(), _model()
    spk, text = speech_inputs()
    official = inference_speech(uv, spk, text, steps=8, **VARIED)[0]
    want = {name: _outcome(lambda m=m: _copy(m, how))[1] for name, m in (("gpt", _uv()), ("s2mel", _model()))}
    with indextts_fast.enabled(uv) as h, indextts_fast.enabled(model):
        twin, error = _outcome(lambda: _copy(uv, how))
        s2_twin, s2_error = _outcome(lambda: _copy(model, how))
        assert (error, s2_error) == (want["gpt"], want["s2mel"]), "not what the official model does"
        if twin is not None:
            assert "generate" not in twin.inference_model.__dict__ and "get_logits" not in twin.__dict__
            assert "indextts_fast" not in repr(twin) and "__reduce_ex__" not in twin.__dict__
            assert torch.equal(inference_speech(twin, spk, text, steps=8, **VARIED)[0], official)
            with indextts_fast.enabled(twin) as h2:
                assert torch.equal(inference_speech(twin, spk, text, steps=8, **VARIED)[0], official)
                assert h2.parts[0].patch.calls["generate"] == 1
            assert "generate" not in twin.inference_model.__dict__
        if s2_twin is not None:
            assert "inference" not in s2_twin.models["cfm"].__dict__ and "indextts_fast" not in repr(s2_twin)
        assert torch.equal(inference_speech(uv, spk, text, steps=8, **VARIED)[0], official)
        assert h.parts[0].patch.calls["generate"] == 1, "the original is no longer enabled"
    assert "__reduce_ex__" not in uv.__dict__ and "__reduce_ex__" not in uv.inference_model.__dict__
    assert any(e is None for e in want.values()) or how == "deepcopy", "no copy was made: nothing tested"


def test_second_enable_and_enable_with_nothing_to_do():
    uv = _uv()
    h = indextts_fast.enable(uv)
    try:
        assert indextts_fast.enable(uv) is h, "the same options return the live handle"
        with pytest.raises(ValueError, match=r"already enabled with other options: graphs=False \(enabled with None\)"):
            indextts_fast.enable(uv, graphs=False)
    finally:
        h.revert()
    with pytest.raises(ValueError, match=r"nothing to enable on UnifiedVoice \(gpt: gpt=False\)"):
        indextts_fast.enable(uv, gpt=False, s2mel=False)
    accel = _uv()
    accel.accel_engine = object()
    with pytest.raises(indextts_fast.UnsupportedModel, match="nothing to enable.*accel engine"):
        indextts_fast.enable(accel, strict=False)
    assert "generate" not in accel.inference_model.__dict__
    h = indextts_fast.enable(uv)  # nothing was left registered by the refusals
    h.revert()


def test_revert_on_a_target_that_takes_no_weak_reference():
    tts = types.SimpleNamespace(gpt=_uv())
    h = indextts_fast.enable(tts)
    assert indextts_fast.enable(tts) is h
    h.revert()
    assert "generate" not in tts.gpt.inference_model.__dict__


def test_post_init_gpt2_config_again_is_patched_again():
    """post_init_gpt2_config() called again while enabled builds a new inference model: it is patched again (the
    tokens are ours, the official ones); where the model is then no longer one the fast GPT runs, the report says
    so and the official code generates."""
    uv = _uv()
    spk, text = speech_inputs()
    official = inference_speech(uv, spk, text, steps=8, **MODES["beam_search"])[0]
    with indextts_fast.enabled(uv) as h:
        uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
        assert torch.equal(inference_speech(uv, spk, text, steps=8, **MODES["beam_search"])[0], official)
        assert h.parts[0].patch.calls["generate"] == 1 and "gpt     fast" in h.report()
        uv.accel_engine = object()  # as use_accel=True sets it: the official accel engine generates
        uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
        assert "gpt     skipped  after post_init_gpt2_config: the accel engine" in h.report(), h.report()
        assert "generate" not in uv.inference_model.__dict__
        uv.accel_engine = None
        uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=False, half=False)  # the official k + 1 positions
        assert "gpt     fast" in h.report(), h.report()
        off_no_cache = inference_speech(uv, spk, text, steps=8, **VARIED)[0]
        assert h.parts[0].patch.calls["generate"] == 2
    assert torch.equal(inference_speech(uv, spk, text, steps=8, **VARIED)[0], off_no_cache)
    assert "post_init_gpt2_config" not in uv.__dict__


# --- 5. memory bounds ------------------------------------------------------------------------------------------------
def test_kv_cache_capped_at_the_position_table_and_states_bounded():
    """A huge max_generate_length allocates no more cache than the mel position table can address; distinct
    sampling settings keep at most MAX_STATES decode states per decoder, and at most two decoders are kept."""
    uv = _uv()
    with torch.no_grad():
        uv.mel_head.bias[uv.stop_mel_token] += 9.6  # stops early
    spk, text = speech_inputs()
    official = inference_speech(uv, spk, text, steps=10**6, **MODES["greedy"])[0]
    with indextts_fast.enabled(uv) as h:
        ours = inference_speech(uv, spk, text, steps=10**6, **MODES["greedy"])[0]
        patch = h.parts[0].patch
        (decoder,) = patch.decoders.values()
        table = uv.mel_pos_embedding.emb.weight.shape[0]
        assert decoder.capacity <= uv.inference_model.cached_mel_emb.shape[1] + table + 256
        for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.1):
            inference_speech(uv, spk, text, steps=6, do_sample=True, temperature=t, top_k=0)
        for beams in (2, 3, 4):
            inference_speech(uv, spk, text, steps=6, do_sample=False, num_beams=beams)
        assert len(patch.decoders) <= 2 and all(len(d.states) <= MAX_STATES for d in patch.decoders.values())
    assert torch.equal(ours, official)


class _CpuGraph:
    """What a captured CUDA graph does, on the CPU: each replay reruns the captured work into static outputs."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        new = self.fn()
        for a, b in zip(_tensors(self.out), _tensors(new), strict=True):
            a.copy_(b)


def _tensors(out):
    return [out] if isinstance(out, torch.Tensor) else [] if out is None else list(out)


@pytest.fixture
def cpu_graphs(monkeypatch):
    """The CUDA-graph paths (Graphed: eager first call, capture, replays of static outputs) run on the CPU."""
    from indextts_fast import _graphs

    def capture(self):
        self.out = self.fn()
        self.graph, self.capture_s = _CpuGraph(self.fn, self.out), 0.0

    monkeypatch.setattr(_graphs.Graphed, "_capture", capture)
    for mod in ("indextts_fast.gpt.decode", "indextts_fast.s2mel.cfm"):
        monkeypatch.setattr(f"{mod}.graphs_wanted", lambda graphs, device: graphs is not False)


@pytest.mark.parametrize("mode", ["greedy", "beam_sample_defaults"])
def test_graphed_decode_loop_gives_the_official_tokens(cpu_graphs, mode):
    """The decode loop as CUDA graphs run it (first tick eager, second captured, the rest replays; the states
    reused by the next sentence): the official tokens, sentence after sentence."""
    uv = _uv()
    sentences = [speech_inputs(seed=s, text_len=5 + 3 * s) for s in range(2)]
    official = [inference_speech(uv, spk, text, steps=12, **MODES[mode])[0] for spk, text in sentences]
    with indextts_fast.enabled(uv, graphs=True) as h:
        ours = [inference_speech(uv, spk, text, steps=12, **MODES[mode])[0] for spk, text in sentences]
        (decoder,) = h.parts[0].patch.decoders.values()
        (state,) = decoder.states.values()
        assert state.tick_graph.graph is not None and state.tick_graph.replays > 12
    for o, w in zip(ours, official, strict=True):
        assert torch.equal(o, w)


def test_cfm_graph_output_is_a_copy(cpu_graphs):
    """The graphed CFM loop's result never aliases the graph's static output, which the next replay rewrites (a
    length that is exactly a bucket returned the static output itself)."""
    model = _model()
    cfm = model.models["cfm"]
    outs = []
    with indextts_fast.enabled(model, graphs=True) as h:
        for seed in (1, 2, 3):
            mu, x_lens, prompt, style = cfm_inputs(cfm, seed=seed, frames=64, prompt=5)
            torch.manual_seed(seed)
            with torch.no_grad():
                outs.append(cfm.inference(mu, x_lens, prompt, style, None, 2, inference_cfg_rate=0.7))
        second = outs[1].clone()
        (run,) = h.parts[0].patch.loop.runs.values()
        assert run.graphed.graph is not None and run.graphed.replays == 2
    assert torch.equal(outs[1], second) and not torch.equal(outs[1], outs[2])
