"""IndexTTS-2.5's GPT generation on the fast decode loop, against golden facts of the official 2.5 code.

No package carries the official 2.5 GPT (``model_v2.py`` with ``spk_cond_mode="campplus"``); the fixtures under
tests/fixtures/official25 are what it did (tools/official25_fixtures.py, run on the official repository at the commit
the JSON names, with transformers 4.52.1): for each case the prompt ``inference_speech`` stored (the CAMPPlus +
emotion row, two zero rows, the text rows with the language embedding, and the masked pad rows
``prepare_gpt_inputs`` puts in front), the prompt ids, the attention mask, the generation arguments, the seed, and
the sequences generate returned; for one prompt the last hidden state and logits in fp32 and bf16.

The GPT-2 stack, the mel tables and the heads of that model are rebuilt here in this code line's UnifiedVoice (the
weights are drawn by parameter name, ``seeded_by_name``): what the fast path replaces, ``inference_model.generate``,
then runs on the same prompt. In the official repository's line (its generate is the 2.5 one) the tokens must be
the fixture's, enabled or not; in the transformers-5 refactor (whose generate places codes one mel position
earlier) ours must be that line's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import indextts_fast
from indextts_fast import ops
from indextts_fast.gpt.patch import build_fast_gpt
from indextts_fast.gpt.sampling import UnsupportedGeneration
from indextts_fast.official import import_official, official_line, prompt_pass, seeded_by_name

from ..autocast_ref import official_autocast
from ..helpers import assert_close_rel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official25"
META = json.loads((FIXTURES / "gpt_tiny.json").read_text())
CASES = {c["name"]: c for c in META["cases"]}


@pytest.fixture(scope="module")
def tensors():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "gpt_tiny.safetensors"))


def _build(dtype=torch.float32):
    mv = import_official("gpt.model_v2")
    cfg, emo = META["config"], META["emo_condition_module"]
    torch.manual_seed(0)
    uv = mv.UnifiedVoice(**cfg, condition_type="conformer_perceiver", condition_module=emo,
                         emo_condition_module=emo).eval()  # fmt: skip
    seeded_by_name(uv, META["seed"], stop_bias=META["stop_bias"], stop_token=cfg["stop_mel_token"])
    if dtype != torch.float32:
        uv = uv.to(dtype)
    uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=dtype != torch.float32)
    return uv.eval()


@pytest.fixture(scope="module")
def uv():
    return _build()


def _generate(uv, case, tensors):
    from transformers import LogitsProcessorList

    im = uv.inference_model
    im.store_mel_emb(tensors[f"{case['name']}.prefix"])
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    torch.manual_seed(case["seed"])
    with torch.no_grad():
        return im.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList(), **case["kwargs"])


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_are_the_official_25(uv, tensors, name):
    """Greedy, beam search and beam sampling with the official defaults, sampling: with 1 to 3 masked pad rows,
    with the language embedding and with ``langs=None``; some stop at the stop token, some at max_length."""
    case = CASES[name]
    assert case["masked_rows"] >= 1, "the official 2.5 prompt always carries a masked pad row"
    official = _generate(uv, case, tensors)
    with indextts_fast.enabled(uv, s2mel=False) as h:
        ours = _generate(uv, case, tensors)
        assert h.parts[0].patch.calls["generate"] == 1, "the fast loop did not run"
    assert torch.equal(ours, official), f"{name}: ours {ours.tolist()} vs this line's {official.tolist()}"
    if official_line() == "repository":  # the line whose generate is the official 2.5 one
        assert official.tolist() == case["sequences"], f"{name}: this line's generate departs from the fixture"
        assert ours.tolist() == case["sequences"]


def _prompt_pass_official(uv, case, tensors, dtype=torch.float32, half=False):
    """``official.prompt_pass`` on the case's stored prompt at ``dtype`` (half: under use_bf16's autocast)."""
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    ctx = official_autocast("cpu", torch.bfloat16) if half else torch.autocast("cpu", enabled=False)
    with ctx:
        return prompt_pass(uv, tensors[f"{case['name']}.prefix"].to(dtype), ids, mask)


def _prompt_pass_ours(uv, case, tensors):
    """The same from the fast GPT: the prompt without its masked rows, prefilled causally."""
    fast = build_fast_gpt(uv)
    pad = case["masked_rows"]
    prefix = tensors[f"{case['name']}.prefix"][:, pad:]
    tail = torch.tensor(case["input_ids"])[:, tensors[f"{case['name']}.prefix"].shape[1] :]
    with torch.no_grad():
        emb = torch.cat([fast.to_stream(prefix), fast.embed_mel(tail, torch.arange(tail.shape[1]))], dim=1)
        h = fast.causal(emb)[:, -1]
        hidden = ops.layer_norm(h, fast.w.ln_f_w, fast.w.ln_f_b, fast.ln_eps, out_dtype=fast.stream_dtype)
        return hidden, fast.logits(h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_prompt_hidden_state_and_logits_within_the_rule(tensors, dtype):
    """fp32, and bf16 as the official use_bf16 runs it (the GPT halved, bf16 autocast with CUDA's fp32 list: an
    fp32 residual stream, fp32 LayerNorms, bf16 GEMM operands and attention): ours against the official
    fixture's, both judged against the fp64 pass of the same (bf16-rounded) weights."""
    case = CASES[META["prompt_case"]]
    tag = "fp32" if dtype == torch.float32 else "bf16"
    model = _build(dtype)
    high = _prompt_pass_official(_build(dtype).double(), case, tensors, torch.float64)  # the rounded weights
    ours = _prompt_pass_ours(model, case, tensors)
    low = tensors[f"prompt.{tag}.hidden"], tensors[f"prompt.{tag}.logits"]
    for what, o, lo, hi in zip(("hidden state", "logits"), ours, low, high, strict=True):
        assert o.dtype == torch.float32
        assert_close_rel(o, lo, hi, f"2.5 prompt {what} ({tag})")
    if dtype == torch.bfloat16:  # this line's own official bf16 pass gives the fixture's
        mine = _prompt_pass_official(model, case, tensors, half=True)
        assert all(torch.allclose(a.float(), b, rtol=0, atol=0) for a, b in zip(mine, low, strict=True)), (
            "bf16 pass differs"
        )


def test_masks_the_fast_loop_cannot_drop_are_refused(uv, tensors):
    case = CASES["greedy_pad3"]
    from transformers import LogitsProcessorList

    im = uv.inference_model
    ids = torch.tensor(case["input_ids"])
    n = ids.shape[1]
    holes = torch.ones(1, n, dtype=torch.long)
    holes[0, 5] = 0
    everything = torch.zeros(1, n, dtype=torch.long)
    everything[0, -1] = 1
    with indextts_fast.enabled(uv, s2mel=False):
        for mask, words in ((holes, "after the first attended one"), (everything, "nothing of the conditioning"),
                            (torch.ones(1, n + 1, dtype=torch.long), "attention_mask of shape")):  # fmt: skip
            im.store_mel_emb(tensors[f"{case['name']}.prefix"])
            with pytest.raises(UnsupportedGeneration, match=words):
                im.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList(), **case["kwargs"])


def test_bf16_weights_under_fp16_autocast_are_refused(tensors):
    """use_bf16 halves the GPT to bf16 and runs it under bf16 autocast; under fp16 autocast the official GEMMs would
    run in fp16, which the fast path (the weights' dtype) does not: one clear error, not another result."""
    from transformers import LogitsProcessorList

    case = CASES["greedy_pad3"]
    model = _build(torch.bfloat16)
    im = model.inference_model
    with indextts_fast.enabled(model, s2mel=False), official_autocast("cpu", torch.float16):
        im.store_mel_emb(tensors[f"{case['name']}.prefix"])
        with pytest.raises(UnsupportedGeneration, match="bfloat16 GPT weights under torch.float16 autocast"):
            im.generate(torch.tensor(case["input_ids"]), attention_mask=torch.tensor(case["attention_mask"]),
                        logits_processor=LogitsProcessorList(), **case["kwargs"])  # fmt: skip
