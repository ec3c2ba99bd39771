"""Sampling kernels (indextts_kernels.sampling) against the torch references (the official processors' ops).

On CPU the real @triton.jit kernels run in the Triton interpreter at small odd shapes (V = 131, 3 beams), with
ties, -inf entries, repetition-penalty masks, the minimum lengths, top-k / top-p at their edges and every
early-stopping rule. Tokens, rows and bookkeeping must be equal; processed scores within the tolerance rule (the
kernels' reductions add in another order).
"""

import functools
import itertools

import pytest
import torch

import indextts_kernels as K
from indextts_kernels import reference as ref
from indextts_kernels.reference import ProcessConfig, SelectConfig

from ..helpers import assert_close_rel

V, C, L, S, POS = 131, 24, 40, 48, 30


def _logits(rows, device, *, ties=False, neg_inf=False):
    x = torch.randn(rows, V, device=device) * 3
    if ties:  # repeated values, the largest included
        x[:, 10:20] = x[:, 5:6]
        x[:, 40:43] = x.max(dim=-1, keepdim=True).values
    if neg_inf:
        x[:, ::3] = -float("inf")
    return x


def _process_case(rows, device, **kw):
    seen = torch.rand(rows, V, device=device) < 0.2
    cur = torch.tensor(12, device=device)
    prompt_len = torch.tensor(9, device=device)
    beam = torch.randn(rows, device=device) if kw.pop("beam", False) else None
    return seen, cur, prompt_len, beam, ProcessConfig(eos=V - 2, **kw)


PROCESS_CASES = {
    "greedy+penalty+min": dict(penalty=1.7, min_length=20),
    "sample_T_topk_topp": dict(do_sample=True, penalty=10.0, temperature=0.8, top_k=30, top_p=0.8),
    "sample_topp_only": dict(do_sample=True, top_p=0.6, min_new_tokens=5),
    "sample_topk_only_keep2": dict(do_sample=True, top_k=1, min_keep=2),
    "sample_topp_tiny": dict(do_sample=True, top_p=0.05, min_keep=2),
    "sample_topp_zero": dict(do_sample=True, top_p=0.0),
    "beam_logsoftmax": dict(log_softmax=True, penalty=10.0, beam=True),
    "beam_sample": dict(
        log_softmax=True, do_sample=True, penalty=10.0, temperature=0.8, top_k=30, top_p=0.8, min_keep=2, beam=True
    ),
}


@pytest.mark.parametrize("variant", ["plain", "ties", "neg_inf"])
@pytest.mark.parametrize("case", list(PROCESS_CASES))
def test_logits_process(case, variant, device, monkeypatch):
    """Each processor combination; with ties, top-p orders them as a stable ascending sort (by index), which is
    what CUDA's radix sort of a mel-code row does (the CPU's default sort is not stable: the reference is run with
    ``stable=True`` there)."""
    rows = 3
    if variant == "ties":
        monkeypatch.setattr(torch, "sort", functools.partial(torch.sort, stable=True))
    kw = dict(PROCESS_CASES[case])
    seen, cur, prompt_len, beam, cfg = _process_case(rows, device, **kw)
    x = _logits(rows, device, ties=variant == "ties", neg_inf=variant == "neg_inf")
    if variant == "ties":
        x = x.round()  # integer logits: many ties at every rank
    out = K.logits_process_fwd(x, cfg, seen, cur, prompt_len, beam)
    want = ref.logits_process_ref(x, cfg, seen, cur, prompt_len, beam)
    high = ref.logits_process_ref(x.double(), cfg, seen, cur, prompt_len, None if beam is None else beam.double())
    # the same entries masked (top-k / top-p / min lengths), the rest within the rule
    assert torch.equal(torch.isinf(out), torch.isinf(want)), f"{case}: masks differ"
    fin = torch.isfinite(want)
    if fin.any():
        assert_close_rel(out[fin], want[fin], high[fin], what=case)


def _state(K_, device, *, seen=True, cur=20, prompt=9, max_length=36, emb_dtype=torch.float32, tab_dtype=None):
    tab_dtype = tab_dtype or emb_dtype
    g = torch.Generator(device="cpu").manual_seed(5)
    ids = torch.randint(0, V, (K_, L), generator=g).to(device)
    t = dict(
        ids=ids, cur=torch.tensor(cur, device=device), max_length=torch.tensor(max_length, device=device),
        prompt_len=torch.tensor(prompt, device=device), pos_base=torch.tensor(prompt - 1, device=device),
        running=torch.tensor(True, device=device), overflow=torch.tensor(False, device=device),
        valid=torch.tensor(True, device=device), tokens=torch.zeros(K_, dtype=torch.int64, device=device),
        pos=torch.zeros(1, dtype=torch.int64, device=device),
        seen=(torch.rand(K_, V, generator=g) < 0.1).to(device) if seen else None,
        lengths=torch.full((K_,), cur - 1, dtype=torch.int32, device=device),
        table=torch.randint(0, K_, (K_, S), generator=g, dtype=torch.int32).to(device),
        pending=torch.tensor(1, dtype=torch.int32, device=device),
        emb=torch.zeros(K_, 1, C, dtype=emb_dtype, device=device),
        tok_emb=torch.randn(V, C, generator=g).to(device, tab_dtype),
        pos_emb=torch.randn(POS, C, generator=g).to(device, tab_dtype),
    )  # fmt: skip
    if K_ > 1:
        hyp_filled = 1
        t.update(
            beam_scores=torch.randn(K_, generator=g).to(device) - 5,
            hyp_scores=torch.tensor([-3.0] * hyp_filled + [float("inf")] * (K_ - hyp_filled), dtype=torch.float64,
                                    device=device),
            hyp_seq=torch.tensor([0] * hyp_filled + [-1] * (K_ - hyp_filled), device=device),
            hyp_len=torch.zeros(K_, dtype=torch.int64, device=device),
            hyp_ids=torch.zeros(K_, L, dtype=torch.int64, device=device),
            count=torch.tensor(hyp_filled, device=device), inserted=torch.tensor(hyp_filled, device=device),
            done=torch.tensor(False, device=device),
            powers=torch.tensor([1.0] + [float(g_**1.3) for g_ in range(1, L + 1)], dtype=torch.float64,
                                device=device),
            never_power=torch.tensor(float(27**1.3), dtype=torch.float64, device=device),
        )  # fmt: skip
    return t


def _clone(t):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in t.items()}


def _assert_same_state(ours, want, what):
    for k in want:
        a, b = ours[k], want[k]
        if a is None:
            assert b is None
            continue
        if a.is_floating_point() and k in ("emb",):
            assert torch.equal(a, b), f"{what}: {k} differs\n{a}\n{b}"
        else:
            assert torch.equal(a, b), f"{what}: {k} differs\nours {a}\nref  {b}"


@pytest.mark.parametrize("seen", [True, False])
@pytest.mark.parametrize("mode", ["greedy_fused", "greedy", "sample", "sample_neg_inf"])
def test_decode_select_one_row(mode, seen, device):
    t = _state(1, device, seen=seen)
    x = _logits(1, device, ties=True, neg_inf=mode.endswith("neg_inf"))
    sample = mode.startswith("sample")
    cfg = SelectConfig(num_beams=1, do_sample=sample, eos=V - 2, pos_limit=POS)
    process = ProcessConfig(eos=V - 2, penalty=1.5 if seen else 1.0, min_length=25) if mode == "greedy_fused" else None
    noise = torch.empty(1, V, device=device).exponential_(1) if sample else None
    ours, want = _clone(t), _clone(t)
    K.decode_select_fwd(x, noise, ours, cfg, process)
    ref.decode_select_ref(x, noise, want, cfg, process)
    _assert_same_state(ours, want, mode)
    assert int(ours["cur"]) == 21 and int(ours["lengths"][0]) == 20


def test_decode_select_stops(device):
    """eos chosen, max_length reached, the position table's end, a stopped state: the flags as the reference."""
    for cur, max_length, pos_base, force_eos, running in itertools.product((20, 35), (36,), (8, -20), (False, True),
                                                                            (True, False)):  # fmt: skip
        t = _state(1, device, cur=cur, max_length=max_length)
        t["pos_base"].fill_(pos_base)
        t["running"].fill_(running)
        x = _logits(1, device)
        if force_eos:
            x[0, V - 2] = 100.0
        cfg = SelectConfig(num_beams=1, eos=V - 2, pos_limit=POS)
        ours, want = _clone(t), _clone(t)
        K.decode_select_fwd(x, None, ours, cfg)
        ref.decode_select_ref(x, None, want, cfg)
        _assert_same_state(ours, want, f"cur={cur} pos_base={pos_base} eos={force_eos} running={running}")


def test_decode_select_invalid_probs(device):
    """A NaN row: the draw's validity flag drops (the official multinomial raises)."""
    t = _state(1, device)
    x = _logits(1, device)
    x[0, 3] = float("nan")
    cfg = SelectConfig(num_beams=1, do_sample=True, eos=V - 2, pos_limit=POS)
    noise = torch.empty(1, V, device=device).exponential_(1)
    K.decode_select_fwd(x, noise, t, cfg)
    assert not bool(t["valid"])


@pytest.mark.parametrize("early", [True, False, "never"])
@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("eos_case", ["none", "first", "many", "full"])
def test_decode_select_beams(eos_case, sample, early, device):
    K_ = 3
    t = _state(K_, device)
    cfg = SelectConfig(num_beams=K_, do_sample=sample, eos=V - 2, pos_limit=POS, early_stopping=early,
                       length_penalty=1.3)  # fmt: skip
    # no exact ties among the best candidates: torch.topk orders them unspecified (ours: the lower index first)
    x = torch.log_softmax(_logits(K_, device, neg_inf=True), dim=-1) + t["beam_scores"][:, None]
    if eos_case in ("first", "many"):
        x[0, V - 2] = 1.0  # the best candidate is eos
    if eos_case == "many":
        x[1, V - 2] = 0.9
        x[2, V - 2] = 0.8
    if eos_case == "full":  # every slot kept: a new hypothesis must beat the worst
        t["hyp_scores"].copy_(torch.tensor([-3.0, -0.5, -1.0], dtype=torch.float64))
        t["hyp_seq"].copy_(torch.tensor([0, 2, 1]))
        t["count"].fill_(3)
        t["inserted"].fill_(3)
        x[1, V - 2] = 1.0
    noise = torch.empty(1, K_ * V, device=device).exponential_(1) if sample else None
    ours, want = _clone(t), _clone(t)
    K.decode_select_fwd(x, noise, ours, cfg)
    ref.decode_select_ref(x, noise, want, cfg)
    _assert_same_state(ours, want, f"{eos_case} sample={sample} early={early}")


def test_decode_select_beams_bf16_tables_and_stopped(device):
    """bf16 embedding tables into an fp32 stream (2.5's use_bf16); a stopped state changes nothing but the cache
    length advance and the embedding."""
    K_ = 3
    for running in (True, False):
        t = _state(K_, device, tab_dtype=torch.bfloat16)
        t["running"].fill_(running)
        cfg = SelectConfig(num_beams=K_, eos=V - 2, pos_limit=POS)
        x = torch.log_softmax(_logits(K_, device), dim=-1)
        ours, want = _clone(t), _clone(t)
        K.decode_select_fwd(x, None, ours, cfg)
        ref.decode_select_ref(x, None, want, cfg)
        _assert_same_state(ours, want, f"running={running}")
