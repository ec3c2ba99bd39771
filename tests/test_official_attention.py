"""Fidelity of the attention ops against the OFFICIAL module classes (test-only references), random weights.

DiT: gpt_fast ``Attention(ModelArgs(...))`` with its ``freqs_cis`` from the official ``precompute_freqs_cis`` and
the boolean key mask the DiT builds from x_lens (all True for IndexTTS2's single request). GPT: HF
``GPT2Attention`` (SDPA implementation, as IndexTTS2's stock GPT2Model uses) with its ``DynamicCache`` for the
prefill, the decode steps and the beam reorder (``reorder_cache``).

Ours = the same projections (``wqkv``/``wo``, ``c_attn``/``c_proj``) computed by torch around the dispatched
attention op. Both the Triton path (interpreter on CPU) and the torch fallback are checked, with the tolerance
rule: low = the official module at the test dtype, high = the official module in fp64.
"""

import copy
import inspect

import pytest
import torch

import indextts_fast as F
from indextts_fast.gpt.cache import KVCache

from .helpers import DTYPES, assert_close_rel, dtype_id, official, randn

DIM, HEADS, HEAD_DIM = 128, 2, 64


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    return request.param


def _dit_attention(dtype):
    m = official("s2mel.modules.gpt_fast.model")
    attn = m.Attention(m.ModelArgs(dim=DIM, n_head=HEADS, head_dim=HEAD_DIM, block_size=256)).eval()
    return m, attn.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("masked", [False, True], ids=["all_true_mask", "x_lens_mask"])
def test_dit_attention_matches_official(masked, dtype, backend):
    m, attn = _dit_attention(dtype)
    attn64 = copy.deepcopy(attn).double()
    B, T = 2, 45
    x = randn(B, T, DIM, dtype=dtype)
    # the official table is built in the model dtype (setup_caches), fp32 in IndexTTS2
    freqs = m.precompute_freqs_cis(256, HEAD_DIM, 10000, dtype=dtype)
    x_lens = torch.tensor([T, 17] if masked else [T, T])
    keys = torch.arange(T)[None, :] < x_lens[:, None]
    mask = keys[:, None, None, :].expand(B, 1, T, T)  # as the DiT builds it from x_lens
    with torch.no_grad():
        low = attn(x, freqs[:T], mask)
        high = attn64(x.double(), freqs[:T].double(), mask)
        qkv = torch.nn.functional.linear(x, attn.wqkv.weight)
        y = F.dit_attention(qkv, HEADS, x_lens=x_lens.int() if masked else None, freqs_cis=freqs)
        ours = torch.nn.functional.linear(y, attn.wo.weight)
    assert_close_rel(ours, low, high, what=f"DiT attention ({backend})")


def test_dit_default_table_is_the_official_one():
    """Without freqs_cis the ops build the RoPE table exactly (bit for bit) as the official fp32 table."""
    m = official("s2mel.modules.gpt_fast.model")
    from indextts_kernels.reference import rope_table_ref

    for D in (64, 128):
        assert torch.equal(rope_table_ref(2048, D), m.precompute_freqs_cis(2048, D, 10000, dtype=torch.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rope_reference_is_the_official_rotation(dtype):
    """The reference RoPE (the oracle of the kernel tests) equals the official apply_rotary_emb bit for bit."""
    m = official("s2mel.modules.gpt_fast.model")
    from indextts_kernels.reference import rope_ref

    x = randn(2, 37, 3, HEAD_DIM, dtype=dtype, std=3.0)
    table = m.precompute_freqs_cis(64, HEAD_DIM, 10000, dtype=torch.float32)[:37]
    assert torch.equal(rope_ref(x, table), m.apply_rotary_emb(x, table))


def _gpt2_attention(dtype):
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    cfg = GPT2Config(n_embd=DIM, n_head=HEADS, n_layer=1, n_positions=256)
    cfg._attn_implementation = "sdpa"
    attn = GPT2Attention(cfg, layer_idx=0).eval()
    with torch.no_grad():  # Conv1D biases start at zero; make them count
        attn.c_attn.bias.normal_()
        attn.c_proj.bias.normal_()
    return cfg, attn.to(dtype)


def _hf_cache(DynamicCache, cfg):
    """A DynamicCache on either transformers line (5.x takes the config, 4.52 takes nothing)."""
    try:
        return DynamicCache(config=cfg)
    except TypeError:
        return DynamicCache()


def _cached_call(attn, x, cache):
    """GPT2Attention with a cache: ``cache=`` in transformers 5, ``past_key_value=`` in 4.52."""
    params = inspect.signature(attn.forward).parameters
    return attn(x, **({"cache": cache} if "cache" in params else {"past_key_value": cache}))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gpt2_prefill_decode_and_beam_reorder_match_official(dtype, backend):
    """Prefill of 3 identical beams (as IndexTTS2's generate), then decode steps with beam reorders, against
    GPT2Attention + DynamicCache + reorder_cache."""
    from transformers import DynamicCache

    cfg, attn = _gpt2_attention(dtype)
    attn64 = copy.deepcopy(attn).double()
    B, T0, S = 3, 21, 40
    cache, cache64 = _hf_cache(DynamicCache, cfg), _hf_cache(DynamicCache, cfg)
    kv = KVCache(1, B, HEADS, S, HEAD_DIM, dtype, "cpu")  # the decode loop's cache, its row table, its reorder
    kc, vc = kv.layer(0)
    kv.lengths.fill_(T0)
    x = randn(1, T0, DIM, dtype=dtype).expand(B, T0, DIM).contiguous()
    with torch.no_grad():
        low, _ = _cached_call(attn, x, cache)
        high, _ = _cached_call(attn64, x.double(), cache64)
        ours = attn.c_proj(F.gpt_prefill_attention(attn.c_attn(x), HEADS, kc, vc))
        assert_close_rel(ours, low, high, what=f"GPT-2 prefill ({backend})")
        for step, beam_idx in enumerate(([0, 0, 1], [2, 0, 1], [1, 1, 1], [0, 2, 1])):
            xn = randn(B, 1, DIM, dtype=dtype)
            low, _ = _cached_call(attn, xn, cache)
            high, _ = _cached_call(attn64, xn.double(), cache64)
            y = F.gpt_decode_attention(attn.c_attn(xn), HEADS, kc, vc, kv.lengths, row_table=kv.table)
            kv.lengths += 1
            assert_close_rel(attn.c_proj(y), low, high, what=f"GPT-2 decode step {step} ({backend})")
            idx = torch.tensor(beam_idx)
            cache.reorder_cache(idx)
            cache64.reorder_cache(idx)
            kv.reorder(idx)
