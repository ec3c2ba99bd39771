"""indextts_fast.enable on a live official UnifiedVoice: token-exact generation, the latent pass, exact revert.

The official model is the installed official module code (this venv's code line; CI runs the file against both:
indextts2-inference with transformers 5, and the official repository's code with transformers 4.52.1). Its
``inference_speech`` runs unchanged; enabled, its Hugging Face ``generate`` and the teacher-forced GPT pass run on
our decode loop and our ops (the Triton interpreter on CPU). Random weights; the stop token's head bias is lowered
so that generations run their full length.
"""

import threading

import pytest
import torch

import indextts_fast
from indextts_fast.gpt.sampling import UnsupportedGeneration
from indextts_fast.official import GPT_HEAD_DIM_64, build_unified_voice, inference_speech, speech_inputs
from indextts_fast.official import OFFICIAL_DEFAULTS as BEAM_SAMPLE
from indextts_fast.official import teacher_forced_latents as latents

from ..autocast_ref import official_autocast
from ..helpers import assert_close_rel

STEPS = 56


def _uv(seed=0, dtype=torch.float32):
    """The tiny UnifiedVoice at head_dim 64 with a mel position table for STEPS codes, its stop token made unlikely
    (generations run their full length); fp16: as IndexTTS2's use_fp16."""
    uv = build_unified_voice("tiny", seed, stop_bias=-4.0, half=dtype == torch.float16, max_mel_tokens=STEPS + 8,
                             **GPT_HEAD_DIM_64)  # fmt: skip
    return uv.to(dtype).eval()


MODES = {
    "greedy": dict(do_sample=False, num_beams=1),
    "sample": dict(do_sample=True, num_beams=1, top_k=30, top_p=0.8, temperature=0.8, repetition_penalty=10.0),
    "beam_search": dict(do_sample=False, num_beams=3),
    "beam_sample_defaults": BEAM_SAMPLE,
}


@pytest.fixture(scope="module")
def uv():
    return _uv()


# Every mode on the torch references; the Triton kernels (the interpreter here, about a second per step) on greedy
# and on the official defaults. Greedy runs STEPS codes, the others fewer (each beam step costs three rows).
CASES = [pytest.param(m, "torch", id=f"{m}-torch") for m in MODES] + [
    pytest.param(m, "kernels", id=f"{m}-kernels", marks=pytest.mark.slow) for m in ("greedy", "beam_sample_defaults")
]


@pytest.mark.parametrize("mode, backend", CASES)
def test_tokens_identical_to_the_official_generate(uv, mode, backend, monkeypatch):
    spk, text = speech_inputs()
    if backend == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    steps = STEPS if mode == "greedy" else 24
    official, _ = inference_speech(uv, spk, text, steps=steps, **MODES[mode])
    with indextts_fast.enabled(uv) as h:
        assert any(p.status == "fast" and p.name == "gpt" for p in h.parts), h.report()
        ours, _ = inference_speech(uv, spk, text, steps=steps, **MODES[mode])
        assert h.parts[0].patch.calls["generate"] == 1, "the decode loop did not run"
    assert official.shape[1] >= min(steps, 50) - 1, "the generation stopped early: too few steps compared"
    assert ours.dtype == official.dtype and ours.shape == official.shape, (ours.shape, official.shape)
    assert torch.equal(ours, official), f"{mode}: tokens differ\nofficial {official}\nours     {ours}"
    if backend == "torch":
        again, _ = inference_speech(uv, spk, text, steps=steps, **MODES[mode])
        assert torch.equal(again, official), "after revert the official generate must be back, bit for bit"


def _decode_on_logits(args, input_ids, logits, step, monkeypatch):
    """Our decode loop's ticks (``DecodeState``, eagerly) over a model given as ``logits`` [1, V] of the prompt and
    ``step(tokens) -> logits`` (never called after the stop, as in the official loop). Returns (the sequences, the
    processed scores of each tick, recorded by a spy on the processors)."""
    from indextts_fast.gpt import decode

    processed, official_process = [], decode.process_scores
    monkeypatch.setattr(decode, "process_scores", lambda *a: processed.append(official_process(*a).clone()) or
                        processed[-1])  # fmt: skip
    st = decode.DecodeState(args, args.max_length, logits.shape[-1], logits.device, pos_limit=2**62)
    st.reset(input_ids, logits, prefix_len=0, max_length=args.max_length)
    while bool(st.running):
        st.tick(lambda tokens, pos, live: step(tokens) if bool(live) else st.logits)
        st.ticks += 1
    return st.finish(None, None), processed


def test_processed_scores_and_beams_replayed_on_official_logits(uv, monkeypatch):
    """The sampler fed the official generation's own logits gives its processed scores (bit-identical), the same
    beam choices and the same tokens, beam-sample at the official defaults with a fixed seed."""
    from indextts_fast.gpt.sampling import resolve_generation_args

    spk, text = speech_inputs(seed=3)
    out, _ = inference_speech(uv, spk, text, steps=STEPS, seed=11, output_scores=True, output_logits=True,
                              return_dict_in_generate=True, **BEAM_SAMPLE)  # fmt: skip
    official_scores, official_logits = out.scores, out.logits
    prompt_len = uv.inference_model.cached_mel_emb.shape[1] + 1
    input_ids = torch.ones((1, prompt_len), dtype=torch.long)
    input_ids[:, -1] = uv.start_mel_token
    kw = dict(BEAM_SAMPLE, bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token,
              eos_token_id=uv.stop_mel_token, max_length=prompt_len + STEPS)  # fmt: skip
    args = resolve_generation_args(uv.inference_model, kw, prompt_len)
    step_logits = iter(official_logits[1:])
    torch.manual_seed(11)
    # the official call draws its random numbers after the conditioning encoders, which draw none: same stream
    seqs, processed = _decode_on_logits(args, input_ids, official_logits[0][:1].float(),
                                        lambda tok: next(step_logits).float(), monkeypatch)  # fmt: skip
    assert len(processed) == len(official_scores)
    for t, (ours, want) in enumerate(zip(processed, official_scores, strict=True)):
        assert torch.equal(ours, want), f"step {t}: processed scores differ from the official ones"
    assert torch.equal(seqs[:, prompt_len:], out.sequences)


def test_teacher_forced_latents(uv):
    """UnifiedVoice.forward as infer_v2 calls it (the latents for s2mel), within the tolerance rule."""
    spk, text = speech_inputs(seed=5)
    codes = torch.randint(0, uv.stop_mel_token, (1, 23))
    uv64 = _uv().double()  # the same weights (the fixture's seed), in fp64

    low, high = latents(uv, spk, text, codes), latents(uv64, spk.double(), text, codes)
    with indextts_fast.enabled(uv) as h:
        ours = latents(uv, spk, text, codes)
        assert h.parts[0].patch.calls["latent"] == 1
    assert ours.shape == low.shape == (1, codes.shape[1], uv.model_dim)
    assert_close_rel(ours, low, high, "teacher-forced latents")
    assert torch.equal(latents(uv, spk, text, codes), low), "after revert the official pass must be back, bit for bit"


def test_fp16_as_use_fp16_runs_it():
    """The halved UnifiedVoice under fp16 autocast (use_fp16): latents and the first decode steps' logits
    within the tolerance rule of the official fp16 path, against the fp64 model, the fp32 stream included."""
    uv16 = _uv(seed=2, dtype=torch.float16)
    uv64 = _uv(seed=2, dtype=torch.float16).double()  # the halved weights, in fp64
    spk, text = speech_inputs(seed=6)
    codes = torch.randint(0, uv16.stop_mel_token, (1, 19))
    with official_autocast("cpu"):
        low = latents(uv16, spk.half(), text, codes)
    high = latents(uv64, spk.double(), text, codes)
    with indextts_fast.enabled(uv16), official_autocast("cpu"):
        ours = latents(uv16, spk.half(), text, codes)
    assert ours.dtype == low.dtype == torch.float32  # final_norm under autocast: fp32 latents
    assert_close_rel(ours, low, high, "fp16 latents")


def test_state_dict_print_and_handles(uv):
    before = uv.state_dict()
    h = indextts_fast.enable(uv)
    try:
        assert indextts_fast.enable(uv) is h, "a second enable must return the live handle"
        after = uv.state_dict()
        assert list(after) == list(before)
        assert all(after[k] is before[k] or torch.equal(after[k], before[k]) for k in before)
        assert "indextts_fast" in repr(uv)
        report = h.report()
        assert "gpt" in report and "fast" in report
    finally:
        h.revert()
    assert "indextts_fast" not in repr(uv)
    assert "generate" not in uv.inference_model.__dict__ and "get_logits" not in uv.__dict__
    h.revert()  # idempotent


def test_enable_revert_from_two_threads(uv):
    handles, errors = [], []

    def worker():
        try:
            handles.append(indextts_fast.enable(uv))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({id(h) for h in handles}) == 1, "one live handle for one target"
    handles[0].revert()
    assert "generate" not in uv.inference_model.__dict__


def test_bad_targets_and_arguments(uv):
    with pytest.raises(TypeError, match="target must be an IndexTTS2 object or one of its parts.*builtins.str"):
        indextts_fast.enable("not a model")
    spk, text = speech_inputs()
    with indextts_fast.enabled(uv):
        with pytest.raises(UnsupportedGeneration, match="no_repeat_ngram_size=2"):
            inference_speech(uv, spk, text, steps=STEPS, do_sample=False, num_beams=1, no_repeat_ngram_size=2)
        with pytest.raises(UnsupportedGeneration, match="num_beam_groups=3"):
            inference_speech(uv, spk, text, steps=STEPS, num_beams=3, num_beam_groups=3, diversity_penalty=0.5)
    accel = _uv()
    accel.accel_engine = object()
    with pytest.raises(indextts_fast.UnsupportedModel, match="accel engine"):
        indextts_fast.enable(accel)
    with pytest.raises(indextts_fast.UnsupportedModel, match="nothing to enable.*accel engine"):
        indextts_fast.enable(accel, strict=False)  # skipped, and then nothing is left to enable


@pytest.mark.slow
def test_full_width_layer_greedy_tokens_identical():
    """IndexTTS-2's layer width (1280, 20 heads of 64) at one layer, greedy over 30 steps in fp32, on the kernels
    (the interpreter here: about 2.5 s a step); the vocabulary stays small (the mel head is not the layer under
    test)."""
    uv = build_unified_voice("tiny", 3, stop_bias=-4.0, layers=1, model_dim=1280, heads=20, max_mel_tokens=64)
    spk, text = speech_inputs(seed=4, frames=21, text_len=7)
    official, _ = inference_speech(uv, spk, text, steps=30, **MODES["greedy"])
    with indextts_fast.enabled(uv) as h:
        ours, _ = inference_speech(uv, spk, text, steps=30, **MODES["greedy"])
        assert h.parts[0].patch.calls["generate"] == 1 and "1 layers" in h.report()
    assert official.shape[1] >= 29, "the generation stopped early"
    assert torch.equal(ours, official), f"tokens differ\nofficial {official}\nours     {ours}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="counted on the CPU interpreter path (the model is on the CPU)")
@pytest.mark.parametrize("rows", [1, 3], ids=["batch1", "3beams"])
def test_five_kernels_per_layer_per_decode_step(uv, rows):
    """The decode step's kernel launches (the decoder's model step, inside the graphed tick), counted through the
    dispatch on the Triton kernels (the interpreter here): per layer ln_1 + c_attn, decode attention (its split
    merge folded in), c_proj + residual, ln_2 + c_fc + gelu_new, c_proj + residual; then ln_f, final_norm and the
    mel head. A regression (an unfused LayerNorm, an extra pass) fails here."""
    from indextts_fast.gpt.decode import Decoder
    from indextts_fast.gpt.patch import build_fast_gpt
    from indextts_kernels import count_launches

    fast = build_fast_gpt(uv)
    decoder = Decoder(fast, rows, 32, graphs=False)
    h = torch.randn(rows, 9, fast.width)
    with torch.no_grad():
        fast.prefill(h, decoder.cache)
        decoder.cache.lengths += 9
        tokens = torch.randint(0, fast.w.mel_embedding.shape[0], (rows,))
        with count_launches() as launches:
            logits = decoder.step(tokens, torch.tensor([9]))
    assert logits.shape == (rows, fast.w.mel_head_w.shape[0]) and torch.isfinite(logits).all()
    assert decoder.cache.lengths.tolist() == [10] * rows
    layers = {k: v for k, v in launches.items()}
    layers["gemm"] -= 1  # the mel head
    layers["norm"] -= 2  # ln_f, final_norm
    assert layers.pop("norm") == 0, dict(launches)
    per_layer = sum(layers.values()) / fast.n_layers
    assert per_layer <= 5, f"{per_layer} kernels per layer per decode step: {dict(launches)}"
    assert layers == {"gemm": 4 * fast.n_layers, "decode_attention": fast.n_layers}, dict(launches)


@pytest.mark.gpu(reason="CUDA graphs")
@pytest.mark.parametrize("mode", ["greedy", "beam_sample_defaults"])
def test_cuda_graph_decode_gives_the_eager_tokens(mode):
    """On a GPU: each token's tick (processors, draw, beam step, model step) captured as a CUDA graph (first tick
    eager, then captured and replayed) gives the tokens of the same loop run eagerly, in a fresh decoder each (so
    the capture happens on fresh state); the next generation replays that graph."""
    from indextts_fast.gpt.decode import generate
    from indextts_fast.gpt.patch import build_fast_gpt
    from indextts_fast.gpt.sampling import resolve_generation_args

    uv = _uv().cuda()
    spk, text = speech_inputs()
    inference_speech(uv, spk.cuda(), text.cuda(), steps=4, **MODES[mode])  # stores the prompt embeddings
    prefix = uv.inference_model.cached_mel_emb
    P = prefix.shape[1] + 1
    ids = torch.ones((1, P), dtype=torch.long, device="cuda")
    ids[:, -1] = uv.start_mel_token
    kw = dict(MODES[mode], bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token,
              eos_token_id=uv.stop_mel_token, max_length=P + 24)  # fmt: skip
    args = resolve_generation_args(uv.inference_model, kw, P)
    fast = build_fast_gpt(uv)
    out, rng = {}, {}
    for graphs in (False, True):
        torch.manual_seed(3)
        with torch.no_grad():
            seqs, decoder = generate(fast, args, ids, prefix, graphs=graphs)
        rng[graphs] = torch.cuda.get_rng_state()  # replays advance the generator as the eager draws do
        (state,) = decoder.states.values()
        assert decoder.graphs == graphs and (state.tick_graph.graph is not None) == graphs
        out[graphs] = seqs
    assert torch.equal(out[True], out[False])
    assert torch.equal(rng[True], rng[False]), "the generator after the graphs is not where the eager loop leaves it"
    torch.manual_seed(3)  # a second generation on the same decoder replays the graph captured by the first
    with torch.no_grad():
        again, decoder2 = generate(fast, args, ids, prefix, decoder)
    assert decoder2 is decoder and state.tick_graph.replays > seqs.shape[1] - P  # more than one generation's ticks
    assert torch.equal(again, out[False])


@pytest.mark.parametrize("mode, bias", [("greedy", 9.6), ("beam_search", 9.5)])
def test_stop_flag_read_every_few_ticks_changes_nothing(mode, bias, monkeypatch):
    """Without sampling the host reads the stop flag every CHECK_EVERY ticks; the ticks after an early stop
    (the stop token, here made likely by its bias) are no-ops on the device state: the tokens are the official
    ones, twice on one decoder (its decode state reset in place, as a captured graph needs)."""
    from indextts_fast.gpt.decode import CHECK_EVERY

    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")  # the loop's logic; the kernels are tested above
    uv = _uv()
    with torch.no_grad():
        uv.mel_head.bias[uv.stop_mel_token] += bias
    spk, text = speech_inputs()
    official, _ = inference_speech(uv, spk, text, steps=40, **MODES[mode])
    assert official[0, -1] == uv.stop_mel_token and official.shape[1] < 40, "no early stop to test"
    with indextts_fast.enabled(uv) as h:
        first, _ = inference_speech(uv, spk, text, steps=40, **MODES[mode])
        second, _ = inference_speech(uv, spk, text, steps=40, **MODES[mode])
        (decoder,) = h.parts[0].patch.decoders.values()
        (state,) = decoder.states.values()
    assert torch.equal(first, second), (first, second)
    assert torch.equal(first, official), (first, official)
    n = first.shape[1]
    assert first[0, -1] == uv.stop_mel_token and n % CHECK_EVERY != 0, "no stop between two flag reads"
    assert state.ticks > n and state.ticks % CHECK_EVERY == 0, "no tick ran after the stop"


@pytest.mark.parametrize("mode, bias", [("sample", 7.0), ("beam_sample_defaults", 6.0)])
def test_sampling_reads_the_stop_flag_every_few_ticks_and_rewinds_the_generator(mode, bias, monkeypatch):
    """With sampling too the host reads the stop flag every CHECK_EVERY ticks. The ticks after an early stop draw
    random numbers for nothing; the loop then puts the generator back where it was before the first of them, so
    the random stream after the GPT (s2mel's noise) is the official one: the same tokens, and the same generator
    state after the generation as after the official one."""
    from indextts_fast.gpt.decode import CHECK_EVERY

    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")  # the loop's logic; the kernels are tested above
    uv = _uv()
    with torch.no_grad():
        uv.mel_head.bias[uv.stop_mel_token] += bias
    spk, text = speech_inputs()
    official, _ = inference_speech(uv, spk, text, steps=40, **MODES[mode])
    official_after = torch.get_rng_state()
    assert official[0, -1] == uv.stop_mel_token and official.shape[1] < 40, "no early stop to test"
    with indextts_fast.enabled(uv) as h:
        first, _ = inference_speech(uv, spk, text, steps=40, **MODES[mode])
        ours_after = torch.get_rng_state()
        (decoder,) = h.parts[0].patch.decoders.values()
        (state,) = decoder.states.values()
        ours = first
    assert torch.equal(ours, official), (ours, official)
    n = ours.shape[1]
    assert ours[0, -1] == uv.stop_mel_token and n % CHECK_EVERY != 0, "no stop between two flag reads"
    assert state.ticks > n and state.ticks % CHECK_EVERY == 0, "no tick ran after the stop"
    assert torch.equal(ours_after, official_after), "the generator is not where the official generation leaves it"


def test_draw_is_torch_multinomial():
    """The graph-safe draw gives torch.multinomial's samples and leaves the generator where it leaves it
    (one sample, and 2 x beams without replacement), so the random stream after the GPT is the official one."""
    from indextts_fast.gpt.sampling import draw

    for n, shape in ((1, (1, 130)), (1, (3, 8194)), (6, (1, 3 * 8194)), (2, (1, 37))):
        for seed in range(5):
            logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
            logits[..., ::7] = -float("inf")
            probs = torch.softmax(logits, dim=-1)
            torch.manual_seed(seed)
            want = torch.multinomial(probs, n)
            after_official = torch.rand(3)
            torch.manual_seed(seed)
            got, valid = draw(probs, n)
            after_ours = torch.rand(3)
            assert torch.equal(got, want) and bool(valid), (n, shape, seed)
            assert torch.equal(after_ours, after_official)
    bad = torch.tensor([[0.5, float("nan"), 0.5]])
    assert not bool(draw(bad, 1)[1]) and not bool(draw(torch.zeros(1, 3), 1)[1])


def test_positions_beyond_the_table_raise(uv, monkeypatch):
    """max_length beyond the mel position table: the official generate fails with an IndexError; so does ours,
    naming the table."""
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")  # the loop's check; no kernel is involved
    spk, text = speech_inputs()
    with pytest.raises(IndexError):
        inference_speech(uv, spk, text, steps=100, **MODES["greedy"])
    with indextts_fast.enabled(uv), pytest.raises(IndexError, match="beyond the mel position table"):
        inference_speech(uv, spk, text, steps=100, **MODES["greedy"])


_FRESH_PROCESS_GRAPHS = r"""
import json, torch
import indextts_fast
from indextts_fast import official as O
from indextts_fast.s2mel import bucket_frames, cfm_inference

dev = torch.device("cuda")
uv, s2 = (m.to(dev) for m in O.build_models("tiny", 0))
class TTS: pass
tts = TTS(); tts.gpt, tts.s2mel = uv, s2
spk, text = O.speech_inputs(device=dev)
cfm = s2.models["cfm"]
mu, lens, prompt, style = O.cfm_inputs(cfm, frames=27, prompt=9, device=dev)
runs = {}
for graphs in (True, False):
    with indextts_fast.enabled(tts, graphs=graphs) as h:
        codes = [O.inference_speech(uv, spk, text, 24, seed=7, **O.OFFICIAL_DEFAULTS)[0].cpu() for _ in range(2)]
        mels = [O.cfm_run(cfm, (mu.clone(), lens, prompt, style), seed=21).cpu() for _ in range(2)]
        gpt, s2p = h.parts[0].patch, h.parts[1].patch
        captured = sum(st.tick_graph.graph is not None for d in gpt.decoders.values() for st in d.states.values())
        captured += len(s2p.loop.capture_s)
        torch.manual_seed(21)  # cfm_run's seed: the eager loop on the graph's padded layout
        with torch.no_grad():
            padded = cfm_inference(cfm, s2p.fast, mu.clone(), lens, prompt, style, None, 25, inference_cfg_rate=0.7,
                                   pad_to=bucket_frames(mu.shape[1])).cpu()
    runs[graphs] = (codes, mels, captured, padded)
(c1, m1, n1, p1), (c0, m0, n0, _) = runs[True], runs[False]
print(json.dumps({
    "captured": [n1, n0],
    "tokens": [torch.equal(c1[0], c0[0]), torch.equal(c1[1], c0[1]), torch.equal(c1[0], c1[1])],
    "mel_graph_is_eager_padded": [torch.equal(m, p1) for m in m1],
    "mel_graph_vs_unpadded": max(float((a - b).abs().max()) for a, b in zip(m1, m0)),
}))
"""


@pytest.mark.gpu(reason="CUDA graphs")
def test_cuda_graphs_captured_in_a_fresh_process():
    """On a GPU, in a fresh interpreter (no kernel compiled, no table built, nothing cached): enable() with CUDA
    graphs compiles in the first eager tick, captures the GPT's per-token tick and the CFM loop, and gives the
    tokens of the eager loop and the mel of the eager CFM loop on the same padded frames, bit for bit; a second
    sentence replays the captured graphs and gives the same again."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "INDEXTTS_FAST_BACKEND")}
    res = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_GRAPHS], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["captured"] == [2, 0], out  # the GPT tick (3 beams) and one CFM bucket; none without graphs
    assert all(out["tokens"]) and all(out["mel_graph_is_eager_padded"]), out
    print(f"graph mel vs the unpadded eager loop: max |diff| {out['mel_graph_vs_unpadded']:.2e}")
