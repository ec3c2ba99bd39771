"""indextts_fast.enable on IndexTTS-2.5's s2mel: the same CFM/DiT code and dims as 2.0, new weights, and sequences up to
~11.6k frames (1500 codes at duration_factor 2).

The official model is ``indextts25-inference``'s MyModel (derived from the official ee40fa7; its DiT drops the
all-true attention mask the official builds, which changes nothing at x_lens = T). Ours runs on the Triton
kernels (the interpreter on CPU). Tolerance rule: low = the official module in fp32, high = the same in fp64.
"""

import pytest
import torch

import indextts_fast
from indextts_fast.official import DIT_HEAD_DIM_64, build_s2mel, cfm_inputs, cfm_run

from ..helpers import assert_close_rel

pytest.importorskip("indextts25", reason="IndexTTS-2.5's module code: pip install --no-deps indextts25-inference")


@pytest.fixture(scope="module")
def model():
    return build_s2mel(seed=4, version="2.5", **DIT_HEAD_DIM_64)


def _dbl(args):
    return [a.double() if a.is_floating_point() else a for a in args]


def test_cfm_25_steps_of_indextts25_within_the_rule(model):
    """infer_v2_5's call: 25 Euler steps, CFG 0.7 at batch 2, on the 2.5 MyModel (no gpt_layer)."""
    assert "gpt_layer" not in model.models
    model64 = build_s2mel(seed=4, version="2.5", **DIT_HEAD_DIM_64).double()
    cfm = model.models["cfm"]
    inputs = cfm_inputs(cfm, frames=29, prompt=7)
    with torch.no_grad():
        low = cfm_run(cfm, inputs)
        high = cfm_run(model64.models["cfm"], _dbl(inputs))
        with indextts_fast.enabled(model) as h:
            assert [p.name for p in h.parts if p.status == "fast"] == ["s2mel"], h.report()
            ours = cfm_run(cfm, inputs)
            assert h.parts[0].patch.calls["inference"] == 1
    assert_close_rel(ours, low, high, "IndexTTS-2.5 25-step CFM mel")


def test_lengths_beyond_the_dit_positions_are_refused_before_any_work(model):
    """The official DiT holds 16384 positions (input_pos and the RoPE table, block_size; setup_caches'
    max_seq_length does not bound it) and fails beyond them; ours refuses with one clear error, before the noise
    is drawn (the random stream is left where it was)."""
    cfm = model.models["cfm"]
    dit = cfm.estimator
    limit = dit.input_pos.numel()
    assert limit == dit.transformer.freqs_cis.shape[0] == 16384
    mu = torch.zeros(1, limit + 1, dit.cond_projection.in_features)
    prompt, style = torch.zeros(1, dit.in_channels, 5), torch.zeros(1, 24)
    x_lens = torch.tensor([limit + 1])
    with pytest.raises(RuntimeError):  # the official estimator: a shape mismatch deep in the first block
        with torch.no_grad():
            cfm.inference(mu, x_lens, prompt, style, None, 1, inference_cfg_rate=0.7)
    with indextts_fast.enabled(model) as h:
        assert h.parts[0].patch.fast.freqs_cis.shape[0] == limit
        state = torch.get_rng_state()
        with pytest.raises(ValueError, match=f"{limit + 1} frames exceed the {limit} positions of the DiT"):
            cfm.inference(mu, x_lens, prompt, style, None, 25, inference_cfg_rate=0.7)
        assert torch.equal(torch.get_rng_state(), state), "the refused call drew random numbers"
