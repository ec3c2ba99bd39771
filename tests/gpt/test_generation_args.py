"""Every generation argument and model setting the official ``inference_speech`` / ``generate`` accepts gives the
official tokens when enabled; every one it refuses is refused too (an error, never codes); what the fast loop does
not implement is refused by name. Edge values first: None, 0, negative, ints for floats, huge, and the settings
that move the official mel positions (``kv_cache=False``, ``use_cache``). Run on both official code lines, on the
torch references (the loop's argument handling is under test; the kernels are tested elsewhere).
"""

import pytest
import torch

import indextts_fast
from indextts_fast.gpt.sampling import UnsupportedGeneration
from indextts_fast.official import inference_speech, speech_inputs

from .test_gpt_enable import MODES, _uv

STEPS = 12
SAMPLE = dict(do_sample=True, num_beams=1, top_k=30, top_p=0.8, temperature=0.8, repetition_penalty=10.0)
BEAMS = dict(do_sample=False, num_beams=3, repetition_penalty=10.0)
BEAM_SAMPLE = MODES["beam_sample_defaults"]
GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=10.0)  # the penalty: random tiny models repeat a code


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")


@pytest.fixture(scope="module")
def uv():
    return _uv()


def _outcome(uv, steps=STEPS, **gen):
    spk, text = speech_inputs()
    try:
        return inference_speech(uv, spk, text, steps=steps, **gen)[0], None
    except Exception as e:  # compared with the official outcome below
        return None, e


def _compare(uv, steps=STEPS, **gen):
    official, official_error = _outcome(uv, steps, **gen)
    with indextts_fast.enabled(uv) as h:
        ours, our_error = _outcome(uv, steps, **gen)
        ran = h.parts[0].patch.calls["generate"]
    if official_error is None:
        assert our_error is None, f"the official generates; ours raised {our_error!r}"
        assert ran == 1 and torch.equal(ours, official), f"tokens differ\nofficial {official}\nours     {ours}"
    else:
        assert our_error is not None, f"the official raised {official_error!r}; ours returned {ours}"
        assert isinstance(our_error, (ValueError, TypeError, IndexError)), repr(our_error)
    return official_error


SAME = {
    "top_k=None sample": dict(SAMPLE, top_k=None),
    "top_k=None beam-sample": dict(BEAM_SAMPLE, top_k=None),
    "top_k=True beam-sample": dict(BEAM_SAMPLE, top_k=True),
    "temperature=1 (int)": dict(SAMPLE, temperature=1),
    "temperature=None": dict(SAMPLE, temperature=None),
    "top_p=0 (int)": dict(SAMPLE, top_p=0),
    "top_p=1.5": dict(SAMPLE, top_p=1.5),
    "repetition_penalty=None": dict(GREEDY, repetition_penalty=None),
    "repetition_penalty=1 (int)": dict(GREEDY, repetition_penalty=1),
    "num_beams=1.0": dict(GREEDY, num_beams=1.0),
    "use_cache=None": dict(GREEDY, use_cache=None),
    "use_cache=False": dict(GREEDY, use_cache=False),
    "use_cache=False beam-sample": dict(BEAM_SAMPLE, use_cache=False),
    "min_length below the prompt": dict(GREEDY, min_length=5),
    "early_stopping=1, length_penalty=1": dict(BEAMS, early_stopping=1, length_penalty=1.0),
    "early_stopping=never": dict(BEAMS, early_stopping="never", length_penalty=2.0),
    "typical_p without sampling": dict(GREEDY, typical_p=0.5),
    "output_scores without a dict": dict(GREEDY, output_scores=True),
    "generation_config argument": dict(SAMPLE, generation_config=None, streamer=None, synced_gpus=False, foo=None),
    "max_new_tokens 5.0": dict(GREEDY, max_new_tokens=5.0),
}


@pytest.mark.parametrize("case", list(SAME))
def test_accepted_edges_give_the_official_tokens(uv, case):
    assert _compare(uv, **SAME[case]) is None, "the official refused: the case tests nothing"


REFUSED = {
    "repetition_penalty=2 (int)": dict(GREEDY, repetition_penalty=2),
    "repetition_penalty=-1.0": dict(GREEDY, repetition_penalty=-1.0),
    "num_beams=None": dict(GREEDY, num_beams=None),
    "length_penalty=None with beams": dict(BEAMS, length_penalty=None),
    "max_generate_length=0": dict(GREEDY, steps=0),
    "max_generate_length=-1": dict(GREEDY, steps=-1),
    "max_new_tokens=0": dict(GREEDY, max_new_tokens=0),
    "top_k=True sample": dict(SAMPLE, top_k=True),
    "top_k=30.0": dict(SAMPLE, top_k=30.0),
    "temperature=0.0": dict(SAMPLE, temperature=0.0),
    "temperature=2 (int)": dict(SAMPLE, temperature=2),
    "top_p=-0.5": dict(SAMPLE, top_p=-0.5),
    "early_stopping=yes": dict(BEAMS, early_stopping="yes"),
    "max_generate_length past the table": dict(GREEDY, steps=200),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_edges_are_refused(uv, case):
    gen = dict(REFUSED[case])
    assert _compare(uv, gen.pop("steps", STEPS), **gen) is not None, "the official generated: the case tests nothing"


def test_early_stopping_none_follows_each_line(uv):
    """The official repository's generate refuses early_stopping=None (ValueError), transformers 5's reads it as
    False: ours follows the line it runs on."""
    official_error = _compare(uv, **dict(GREEDY, early_stopping=None))
    assert official_error is None or "early_stopping" in str(official_error)


NOT_IMPLEMENTED = {
    "num_return_sequences=2": (dict(SAMPLE, num_return_sequences=2), "num_return_sequences=2"),
    "return_dict_in_generate": (dict(GREEDY, return_dict_in_generate=True), "return_dict_in_generate=True"),
    "no_repeat_ngram_size": (dict(GREEDY, no_repeat_ngram_size=2), "no_repeat_ngram_size=2"),
    "typical_p with sampling": (dict(SAMPLE, typical_p=0.9), "typical_p=0.9"),
    "a streamer": (dict(GREEDY, streamer=object()), "streamer=<object"),
    "an unknown argument": (dict(GREEDY, topk=5), "topk=5"),
    "a forward input": (dict(GREEDY, token_type_ids=None), "token_type_ids=None"),  # the repository line fails on it
}


@pytest.mark.parametrize("case", list(NOT_IMPLEMENTED))
def test_what_the_loop_does_not_implement_is_refused_by_name(uv, case):
    gen, name = NOT_IMPLEMENTED[case]
    with indextts_fast.enabled(uv) as h:
        with pytest.raises(UnsupportedGeneration, match=name.replace("(", r"\(").replace("<", "<")):
            inference_speech(uv, *speech_inputs(), steps=STEPS, **gen)
        assert h.parts[0].patch.calls["generate"] == 0


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam_search", "beam_sample"])
def test_kv_cache_false_gives_the_official_positions(mode):
    """A UnifiedVoice post-initialised with kv_cache=False: the official recomputes the whole sequence each step
    and gives code k mel position k + 1 (with its KV cache, k + 2); ours follows whichever the official code does."""
    uv = _uv()
    uv.post_init_gpt2_config(kv_cache=False)
    gen = {"greedy": GREEDY, "sample": SAMPLE, "beam_search": BEAMS, "beam_sample": BEAM_SAMPLE}[mode]
    assert _compare(uv, **gen) is None


@pytest.mark.parametrize("case", ["min_length", "min_new_tokens"])
def test_minimum_lengths_hold_the_stop_back(case):
    """min_length / min_new_tokens block the stop token until the length is reached (a model that would stop at
    once otherwise), greedy and with beams."""
    uv = _uv()
    with torch.no_grad():
        uv.mel_head.bias[uv.stop_mel_token] += 9.6
    spk, text = speech_inputs()
    short = inference_speech(uv, spk, text, steps=24, **GREEDY)[0]
    assert short.shape[1] < 10, "the model does not stop early: the minimum length tests nothing"
    P = uv.inference_model.cached_mel_emb.shape[1] + 1
    extra = {"min_length": dict(min_length=P + 14), "min_new_tokens": dict(min_new_tokens=14)}[case]
    for gen in (GREEDY, BEAMS):
        assert _compare(uv, steps=24, **gen, **extra) is None


def test_model_generation_config_edits(uv):
    """Fields the user sets on the model's generation_config are the official's defaults for every call; a None
    there is the default under transformers 5's generate and stays None (no top-k) under the repository's."""
    gc = uv.inference_model.generation_config
    saved = gc.to_dict()
    try:
        gc.top_k = 5
        assert _compare(uv, **{k: v for k, v in SAMPLE.items() if k != "top_k"}) is None
        gc.top_k = None
        assert _compare(uv, **{k: v for k, v in SAMPLE.items() if k != "top_k"}) is None
        gc.do_sample, gc.temperature = True, 0.7
        assert _compare(uv, num_beams=1) is None
    finally:
        for k, v in saved.items():
            setattr(gc, k, v)


def test_no_generation_config_is_refused():
    uv = _uv()
    uv.inference_model.generation_config = None
    assert _compare(uv, **GREEDY) is not None
