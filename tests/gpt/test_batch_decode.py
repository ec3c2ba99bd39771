"""Several generations in one decode tick (indextts_fast.gpt.batch.BatchDecoder): each request's tokens are the
official generate's for its own prompt (greedy, beam search, sampling from its own generator), whatever else the
pool runs and whenever the request joins; more requests than slots wait and join as slots free
up; more than slots and queue are refused.

On the torch references (the fused tick's kernels are tests/kernels/test_sampling.py's and the decode tests').
"""

import pytest
import torch

from indextts_fast.gpt.batch import BatchDecoder, PoolFull, Request
from indextts_fast.gpt.patch import build_fast_gpt, official_position_offset
from indextts_fast.gpt.sampling import resolve_generation_args
from indextts_fast.official import GPT_HEAD_DIM_64, build_unified_voice, inference_speech, speech_inputs

STEPS = 20
MODES = {
    "greedy": dict(do_sample=False, num_beams=1),
    "beam_search": dict(do_sample=False, num_beams=3),
    "sample": dict(do_sample=True, num_beams=1, top_k=30, top_p=0.8, temperature=0.8, repetition_penalty=10.0),
}


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")


@pytest.fixture(scope="module")
def uv():
    return build_unified_voice("tiny", 0, stop_bias=-4.0, max_mel_tokens=STEPS + 8, **GPT_HEAD_DIM_64).eval()


def _request(uv, seed: int, mode: str, steps: int):
    """(Request, the official codes, the official generator state after them) of one prompt: the official
    inference_speech run under torch.manual_seed(seed + 100), its prompt kept for ours."""
    spk, text = speech_inputs(seed=seed, frames=31 + 3 * seed, text_len=5 + seed)
    codes, _ = inference_speech(uv, spk, text, steps=steps, seed=seed + 100, **MODES[mode])
    after = torch.get_rng_state()
    prefix = uv.inference_model.cached_mel_emb.clone()
    P = prefix.shape[1] + 1
    ids = torch.ones((1, P), dtype=torch.long)
    ids[:, -1] = uv.start_mel_token
    gen = torch.Generator().manual_seed(seed + 100) if MODES[mode]["do_sample"] else None
    offset = official_position_offset(uv)  # the official code line's mel positions (code k at k + 2 or k + 1)
    return Request(ids, prefix, max_length=P + steps, generator=gen, position_offset=offset), codes, after


def _pool(uv, mode: str, slots: int, **kw) -> BatchDecoder:
    gen = dict(MODES[mode], bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token,
               eos_token_id=uv.stop_mel_token, max_length=64 + STEPS)  # fmt: skip
    args = resolve_generation_args(uv.inference_model, gen, 64)
    return BatchDecoder(build_fast_gpt(uv), args, slots=slots, capacity=128, **kw)


@pytest.mark.parametrize("mode", list(MODES))
def test_each_request_gets_its_official_tokens(uv, mode):
    """Four requests of different prompt lengths and lengths on two slots: two run together, two join as slots
    free up; each gets the official codes of its own prompt (sampling: drawn from its own generator, seeded as
    the official run's global one, and left where the official generation leaves that one)."""
    runs = [_request(uv, s, mode, STEPS - 3 * s) for s in range(4)]
    out = _pool(uv, mode, slots=2).run([r for r, _, _ in runs])
    for s, ((req, codes, after), seqs) in enumerate(zip(runs, out, strict=True)):
        P = req.input_ids.shape[1]
        assert torch.equal(seqs[:, P:], codes), f"request {s}: ours {seqs[:, P:]}, official {codes}"
        if req.generator is not None:
            assert torch.equal(req.generator.get_state(), after), f"request {s}: the generator is elsewhere"


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_a_request_alone_and_in_a_full_pool_agree(uv, mode):
    """The pool runs every slot each tick, so a request's tokens do not depend on what runs beside it or when it
    joins; a sampled request draws from its own generator only: the same tokens alone and together, and its
    generator left where its own draws (without the no-op ticks after its stop) leave it, as a lone generation
    leaves the global one."""
    runs = [_request(uv, s, mode, STEPS - 2 * s) for s in range(3)]

    def fresh(r, s):
        gen = torch.Generator().manual_seed(s + 100) if r.generator is not None else None
        return Request(
            r.input_ids, r.prefix_emb, max_length=r.max_length, generator=gen, position_offset=r.position_offset
        )

    alone_reqs = [fresh(r, s) for s, (r, _, _) in enumerate(runs)]
    together = _pool(uv, mode, slots=2).run([r for r, _, _ in runs])
    for s, r in enumerate(alone_reqs):
        (alone,) = _pool(uv, mode, slots=2).run([r])
        assert torch.equal(alone, together[s]), f"request {s}"
        if r.generator is not None:
            assert torch.equal(r.generator.get_state(), runs[s][0].generator.get_state())
            drawn = alone.shape[1] - r.input_ids.shape[1]
            ref = torch.Generator().manual_seed(s + 100)
            for _ in range(drawn):  # one draw of the vocabulary's exponential noise per generated token
                torch.empty(1, uv.mel_head.out_features).exponential_(1, generator=ref)
            assert torch.equal(r.generator.get_state(), ref.get_state()), f"request {s}: the generator moved on"


def test_more_requests_than_slots_and_queue_are_refused(uv):
    req, _, _ = _request(uv, 0, "greedy", 4)
    pool = _pool(uv, "greedy", slots=1, max_queue=2)
    with pytest.raises(PoolFull, match="4 requests for 1 slots and a queue of 2"):
        pool.run([req] * 4)
    assert len(pool.run([req] * 3)) == 3  # and the pool still serves
    too_long = Request(req.input_ids, req.prefix_emb, max_length=1000)  # the official raises at the table's end
    ok, err, ok2 = pool.run([req, too_long, req])
    assert isinstance(err, IndexError) and "beyond the mel position table" in str(err)
    assert torch.is_tensor(ok) and torch.equal(ok, ok2), "a failing request changed another"
    big = Request(torch.ones((1, 200), dtype=torch.long), req.prefix_emb, max_length=204)
    (err,) = pool.run([big])
    assert isinstance(err, ValueError) and "exceeds the pool's 128 positions" in str(err)


@pytest.mark.parametrize("mode", ["greedy", "beam_search"])
def test_the_pool_on_the_kernels(uv, mode, monkeypatch):
    """The same pool with the fused tick's Triton kernels (the interpreter here) on slot views of the pooled
    buffers: two requests, one joining after the other leaves, each with its official codes."""
    monkeypatch.delenv("INDEXTTS_FAST_BACKEND")
    runs = [_request(uv, s, mode, 9 - 4 * s) for s in range(2)]
    out = _pool(uv, mode, slots=1).run([r for r, _, _ in runs])
    for s, ((req, codes, _), seqs) in enumerate(zip(runs, out, strict=True)):
        P = req.input_ids.shape[1]
        assert torch.equal(seqs[:, P:], codes), f"request {s}: ours {seqs[:, P:]}, official {codes}"


@pytest.mark.gpu(reason="CUDA graphs")
def test_cuda_graph_pool_gives_the_eager_tokens(uv, monkeypatch):
    """On a GPU: the pool's tick as one CUDA graph (first tick eager, then captured, replayed across joins and
    leaves) gives the eager pool's tokens."""
    import copy

    monkeypatch.delenv("INDEXTTS_FAST_BACKEND")
    runs = [_request(uv, s, "beam_search", STEPS - 3 * s) for s in range(4)]
    reqs = [
        Request(r.input_ids.cuda(), r.prefix_emb.cuda(), max_length=r.max_length, position_offset=r.position_offset)
        for r, _, _ in runs
    ]
    uvc = copy.deepcopy(uv).cuda()
    out = {g: _pool(uvc, "beam_search", slots=2, graphs=g).run(reqs) for g in (False, True)}
    for a, b in zip(out[False], out[True], strict=True):
        assert torch.equal(a, b)


def test_requests_with_their_own_settings_share_a_pool(uv):
    """Greedy, sampling and greedy with a repetition penalty in one 2-slot pool (each slot's decode state that of
    its request's settings): the greedy ones get their official codes, the sampled one its tokens alone."""
    base = _pool(uv, "greedy", slots=2)

    def own(mode, **extra):
        gen = dict(MODES[mode], bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token,
                   eos_token_id=uv.stop_mel_token, max_length=64 + STEPS, **extra)  # fmt: skip
        return resolve_generation_args(uv.inference_model, gen, 64)

    greedy, _, _ = _request(uv, 0, "greedy", STEPS)
    sampled, _, _ = _request(uv, 1, "sample", STEPS - 4)
    spk, text = speech_inputs(seed=2, frames=37, text_len=7)
    penalized_codes, _ = inference_speech(uv, spk, text, steps=STEPS - 2, do_sample=False, num_beams=1,
                                          repetition_penalty=2.0)  # fmt: skip
    pen, _, _ = _request(uv, 2, "greedy", STEPS - 2)  # the same prompt (seed 2), its ids and prefix
    off = greedy.position_offset
    reqs = [Request(greedy.input_ids, greedy.prefix_emb, max_length=greedy.max_length, position_offset=off),
            Request(sampled.input_ids, sampled.prefix_emb, max_length=sampled.max_length,
                    generator=torch.Generator().manual_seed(101), args=own("sample"), position_offset=off),
            Request(pen.input_ids, pen.prefix_emb, max_length=pen.max_length,
                    args=own("greedy", repetition_penalty=2.0), position_offset=off)]  # fmt: skip
    out = base.run(reqs)
    assert torch.equal(out[0], _pool(uv, "greedy", slots=2).run([reqs[0]])[0])
    P = pen.input_ids.shape[1]
    assert torch.equal(out[2][:, P:], penalized_codes)
    alone = Request(sampled.input_ids, sampled.prefix_emb, max_length=sampled.max_length,
                    generator=torch.Generator().manual_seed(101), args=own("sample"), position_offset=off)  # fmt: skip
    assert torch.equal(out[1], _pool(uv, "greedy", slots=2).run([alone])[0])
    (err,) = base.run([Request(greedy.input_ids, greedy.prefix_emb, args=own("beam_search"))])
    assert isinstance(err, ValueError) and "3 beams in a pool of 1-beam slots" in str(err)
