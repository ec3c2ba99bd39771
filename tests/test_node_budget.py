"""The node budget: graph nodes per decode token and per CFM step, counted on CPU and held under a ceiling.

Inside a CUDA graph every kernel is a node costing ~1-2 µs whatever it computes, so the count per token decides how
near the decode loop gets to the weight floor. ``indextts_fast.nodes.count_nodes`` counts, through the dispatch
layer, every Triton launch of ours (the Triton interpreter runs them here) and every non-view aten op outside them.
The enabled path runs on tiny official modules with the real layer counts (24 GPT layers; 13 DiT layers and an
8-layer WaveNet) and graphs off: the same code a CUDA graph captures. The per-kernel breakdown goes to the
terminal summary (CI's log).
"""

import pytest
import torch

import indextts_fast
from indextts_fast import nodes
from indextts_fast.gpt.decode import DecodeState
from indextts_fast.official import (
    DIT_HEAD_DIM_64,
    GPT_HEAD_DIM_64,
    OFFICIAL_DEFAULTS,
    build_s2mel,
    build_unified_voice,
    cfm_inputs,
    inference_speech,
    speech_inputs,
)
from indextts_fast.s2mel import cfm as cfm_module

from .conftest import NODE_REPORTS

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="counted on the CPU path (graphs off)")

BUDGET = {"greedy": 155, "official defaults": 165, "cfm step": 135}
GPT_LAYERS, DIT_DEPTH, WAVENET_LAYERS = 24, 13, 8  # IndexTTS-2's config.yaml
TICKS = 3  # decode ticks counted (the first generates from the prefill's logits; all ticks are the same code)


@pytest.fixture(scope="module")
def uv():
    uv = build_unified_voice("tiny", 0, stop_bias=-8.0, max_mel_tokens=24, layers=GPT_LAYERS, **GPT_HEAD_DIM_64)
    return uv.eval()


def _tick_counts(uv, gen: dict) -> list:
    spk, text = speech_inputs(frames=9, text_len=3)
    with indextts_fast.enabled(uv, s2mel=False), nodes.count_calls(DecodeState, "tick") as ticks:
        codes, _ = inference_speech(uv, spk, text, steps=TICKS, **gen)
    assert codes.shape[1] >= TICKS - 1, codes.shape  # the generation ran (its stop token made unlikely)
    assert len(ticks) >= TICKS, len(ticks)
    return ticks


def _check(name: str, counts: list) -> None:
    for c in counts:
        assert "aten:_local_scalar_dense" not in c, f"{name}: a host sync inside the graphed code\n{c}"
    # every tick is the same code: the same count each time
    assert all(nodes.total(c) == nodes.total(counts[0]) for c in counts), [nodes.total(c) for c in counts]
    c = counts[-1]
    NODE_REPORTS.append(nodes.breakdown(c, f"{name} (budget {BUDGET[name]})"))
    assert nodes.total(c) <= BUDGET[name], nodes.breakdown(c, f"{name}: over the budget of {BUDGET[name]}")


@pytest.mark.parametrize("mode", ["greedy", "official defaults"])
def test_decode_tick_nodes(uv, mode):
    gen = dict(do_sample=False, num_beams=1) if mode == "greedy" else OFFICIAL_DEFAULTS
    _check(mode, _tick_counts(uv, gen))


def test_cfm_step_nodes():
    """The step the CFM loop's CUDA graph captures: frames padded to the length bucket, the DiT told the true
    length (``cfm_inference(pad_to=...)``, what ``CFMLoop`` runs under graphs), CFG batch 2 as infer_v2."""
    s2mel = build_s2mel("tiny", 0, depth=DIT_DEPTH, wavenet={"num_layers": WAVENET_LAYERS}, **DIT_HEAD_DIM_64)
    cfm = s2mel.models["cfm"]
    mu, lens, prompt, style = cfm_inputs(cfm, frames=13, prompt=3)
    with indextts_fast.enabled(cfm, gpt=False) as h:
        loop = next(p.patch.loop for p in h.parts if getattr(p.patch, "loop", None) is not None)
        with torch.no_grad(), nodes.count_calls(cfm_module, "cfm_step") as steps:
            cfm_module.cfm_inference(cfm, loop.fast, mu, lens, prompt, style, None, 2, inference_cfg_rate=0.7,
                                     pad_to=loop.bucket(mu.shape[1]))  # fmt: skip
    assert len(steps) == 2, len(steps)
    _check("cfm step", steps)
    # what the graph holds once per call (FastDiT.prepare: the time embeddings of every step, the AdaLN / FinalLayer
    # / WaveNet condition GEMMs, cond_projection and the merge of the constant inputs; the CFG batch's constant
    # halves, the steps' t and dt): the whole solve, less its steps
    with indextts_fast.enabled(cfm, gpt=False) as h:
        loop = next(p.patch.loop for p in h.parts if getattr(p.patch, "loop", None) is not None)
        with torch.no_grad(), nodes.count_calls(cfm_module, "_solve") as solves:
            cfm_module.cfm_inference(cfm, loop.fast, mu, lens, prompt, style, None, 2, inference_cfg_rate=0.7,
                                     pad_to=loop.bucket(mu.shape[1]))  # fmt: skip
    per_call = solves[0].copy()
    per_call.subtract({k: 2 * n for k, n in steps[-1].items()})
    NODE_REPORTS.append(nodes.breakdown(+per_call, "cfm per call, outside the steps (2 steps here)"))
