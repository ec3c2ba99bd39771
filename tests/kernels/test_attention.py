"""Attention kernels (indextts_kernels.attention) against the torch references, under the tolerance rule.

On CPU these run the real @triton.jit kernels in the Triton interpreter at small odd shapes (T not a multiple of
the 64-row block, T = 1, masked rows, lengths 1 and T_max); on a CUDA machine the same tests run compiled.
"""

import pytest
import torch

import indextts_fast as F
import indextts_kernels as K
from indextts_kernels import reference as ref

from ..helpers import DTYPES, assert_close_rel, dtype_id, poisoned, randn

H, D = 2, 64


def _qkv(B, T, dtype, device, heads=H, head_dim=D):
    return randn(B, T, 3 * heads * head_dim, dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("T", [1, 37, 70])
def test_dit_attention(T, dtype, device):
    """Non-causal attention with in-kernel RoPE from the fused wqkv output; rows masked by key length."""
    B = 3
    qkv = _qkv(B, T, dtype, device)
    lens = torch.tensor([T, max(1, T // 2), 1], dtype=torch.int32, device=device)  # T_max, masked rows, 1
    for x_lens in (None, lens):
        out = poisoned((B, T, H * D), dtype, device)
        y = K.dit_attention_fwd(qkv, H, x_lens=x_lens, out=out)
        assert y is out
        low = ref.dit_attention_ref(qkv, H, x_lens)
        high = ref.dit_attention_ref(qkv.double(), H, x_lens)
        assert_close_rel(y, low, high, what=f"dit attention x_lens={x_lens}")


def test_dit_attention_head_dim_128_and_official_table(device):
    """head_dim 128, and a caller-provided freqs_cis table (the official layout) with more rows than T."""
    B, T, heads = 2, 37, 1
    qkv = _qkv(B, T, torch.float16, device, heads=heads, head_dim=128)
    table = ref.rope_table_ref(100, 128, device=device)
    y = K.dit_attention_fwd(qkv, heads, freqs_cis=table)
    assert_close_rel(y, ref.dit_attention_ref(qkv, heads, None, table), ref.dit_attention_ref(qkv.double(), heads))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("T", [1, 37, 70])
def test_gpt_prefill_attention_fills_cache(T, dtype, device):
    B, S = 2, 80
    qkv = _qkv(B, T, dtype, device)
    kc, vc = poisoned((B + 1, H, S, D), dtype, device), poisoned((B + 1, H, S, D), dtype, device)
    out = poisoned((B, T, H * D), dtype, device)
    y = K.gpt_prefill_attention_fwd(qkv, H, kc, vc, out=out)
    assert y is out
    q, k, v = (t.unflatten(-1, (H, D)) for t in qkv.split(H * D, dim=-1))
    assert torch.equal(kc[:B, :, :T], k.transpose(1, 2)) and torch.equal(vc[:B, :, :T], v.transpose(1, 2))
    for c in (kc, vc):
        assert c[:, :, T:].isnan().all() and c[B:].isnan().all(), "the prefill wrote outside positions 0..T-1"
    low = ref.attention_ref(q, k, v, causal=True)
    high = ref.attention_ref(q.double(), k.double(), v.double(), causal=True)
    assert_close_rel(y, low, high, what="causal prefill")


def _filled_cache(B, S, dtype, device):
    kc = randn(B, H, S, D, dtype=dtype, device=device)
    vc = randn(B, H, S, D, dtype=dtype, device=device, mean=0.5)
    return kc, vc


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_gpt_decode_attention(num_splits, dtype, device):
    """Split-K decode with the append in the same launch; lengths 0 (only the new token), 1, odd, S_max - 1."""
    B, S = 4, 150
    kc, vc = _filled_cache(B, S, dtype, device)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    lengths = torch.tensor([0, 1, 77, S - 1], dtype=torch.int32, device=device)
    qkv = _qkv(B, 1, dtype, device)
    out = poisoned((B, 1, H * D), dtype, device)
    y = K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, num_splits=num_splits, out=out)
    assert y is out
    low = ref.gpt_decode_attention_ref(qkv, H, kc_ref, vc_ref, lengths)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref), "the appended k/v differ from the reference's"
    high = ref.gpt_decode_attention_ref(qkv.double(), H, kc_ref.double(), vc_ref.double(), lengths)
    assert_close_rel(y, low, high, what="decode")


def test_gpt_decode_beam_reorder_with_row_table(device):
    """Three decode steps of 3 beams with reorders: the row table (no cache copy) against a physically
    reordered, concatenated cache as HF keeps it (index_select of every row each step)."""
    dtype, B, S, T0 = torch.float16, 3, 96, 9
    prompt = _qkv(1, T0, dtype, device).expand(B, T0, -1).contiguous()  # identical beams after the prompt
    kc, vc = poisoned((B, H, S, D), dtype, device), poisoned((B, H, S, D), dtype, device)
    K.gpt_prefill_attention_fwd(prompt, H, kc, vc)
    table = torch.arange(B, dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous()
    lengths = torch.full((B,), T0, dtype=torch.int32, device=device)
    _, k0, v0 = (t.unflatten(-1, (H, D)).transpose(1, 2) for t in prompt.split(H * D, dim=-1))
    hf_k, hf_v = k0.double(), v0.double()  # [B, H, T, D], grows by concatenation
    for beam_idx in ([0, 0, 1], [2, 1, 1], [1, 2, 0]):
        qkv = _qkv(B, 1, dtype, device)
        y = K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, row_table=table)
        lengths += 1
        q, k, v = (t.unflatten(-1, (H, D)).transpose(1, 2).double() for t in qkv.split(H * D, dim=-1))
        hf_k, hf_v = torch.cat([hf_k, k], dim=2), torch.cat([hf_v, v], dim=2)
        high = torch.nn.functional.scaled_dot_product_attention(q, hf_k, hf_v).transpose(1, 2).reshape(B, 1, H * D)
        low = torch.nn.functional.scaled_dot_product_attention(q.to(dtype), hf_k.to(dtype), hf_v.to(dtype))
        assert_close_rel(y, low.transpose(1, 2).reshape(B, 1, H * D), high, what=f"beam step {beam_idx}")
        idx = torch.tensor(beam_idx, device=device)
        table = table.index_select(0, idx)  # the beam reorder: a permutation of the table, not of the cache
        hf_k, hf_v = hf_k.index_select(0, idx), hf_v.index_select(0, idx)


def test_decode_length_beyond_cache_gives_nan_not_garbage(device, monkeypatch):
    """On the device lengths cannot be checked without a sync: such a row writes nothing and outputs NaN.

    (CPU lengths are checked on the host, see test_bad_input_raises; that check is bypassed here to reach the
    kernel's own guard under the interpreter.)
    """
    from indextts_kernels import attention

    monkeypatch.setattr(attention, "decode_attention_args", lambda *a, **k: None)
    B, S = 2, 64
    kc, vc = _filled_cache(B, S, torch.float32, device)
    before_k, before_v = kc.clone(), vc.clone()
    lengths = torch.tensor([S, 3], dtype=torch.int32, device=device)
    y = K.gpt_decode_attention_fwd(_qkv(B, 1, torch.float32, device), H, kc, vc, lengths)
    assert y[0].isnan().all() and torch.isfinite(y[1]).all()
    assert torch.equal(kc[0], before_k[0]) and torch.equal(vc[0], before_v[0])


def test_decode_negative_length_writes_nothing(device, monkeypatch):
    """A negative device length (not checkable without a sync) must not write before the row's cache slab."""
    from indextts_kernels import attention

    monkeypatch.setattr(attention, "decode_attention_args", lambda *a, **k: None)
    B, S = 2, 64
    kc, vc = _filled_cache(B, S, torch.float32, device)
    table = torch.arange(B, dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous()
    before = kc.clone(), vc.clone(), table.clone()
    lengths = torch.tensor([5, -1], dtype=torch.int32, device=device)
    qkv = _qkv(B, 1, torch.float32, device)
    y = K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, row_table=table)
    assert y[1].isnan().all() and torch.isfinite(y[0]).all()
    for name, now, was in zip(("k_cache", "v_cache", "row_table"), (kc, vc, table), before, strict=True):
        changed = (now != was).reshape(now.shape[0], -1).any(-1)
        assert not changed[1:].any() and (name == "row_table" or changed[0]), f"{name}: rows written {changed}"
    # the reference agrees: no write (no wrap-around to position S - 1) and a NaN row
    kr, vr, tr = (t.clone() for t in before)
    low = ref.gpt_decode_attention_ref(qkv, H, kr, vr, lengths, tr)
    assert torch.equal(kr, kc) and torch.equal(vr, vc) and torch.equal(tr, table) and low[1].isnan().all()


def _bad_inputs(device):
    qkv = _qkv(1, 5, torch.float32, device)
    kc, vc = _filled_cache(1, 8, torch.float32, device)
    lengths = torch.tensor([2], dtype=torch.int32, device=device)
    return qkv, kc, vc, lengths


@pytest.mark.parametrize("backend", ["kernel", "dispatch-torch"])
def test_bad_input_raises(backend, device, monkeypatch):
    if backend == "dispatch-torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
        dit, prefill, decode = F.dit_attention, F.gpt_prefill_attention, F.gpt_decode_attention
    else:
        dit, prefill, decode = K.dit_attention_fwd, K.gpt_prefill_attention_fwd, K.gpt_decode_attention_fwd
    qkv, kc, vc, lengths = _bad_inputs(device)
    with pytest.raises(ValueError, match="unsupported head_dim 32"):
        dit(qkv, 4)  # 4 heads of 32
    with pytest.raises(ValueError, match="n_heads"):
        dit(qkv, 5)
    with pytest.raises(ValueError, match="x_lens"):
        dit(qkv, H, x_lens=torch.tensor([5, 5], device=device))
    with pytest.raises(TypeError, match="x_lens"):
        dit(qkv, H, x_lens=torch.tensor([5.0], device=device))
    with pytest.raises(TypeError, match="k_cache"):
        prefill(qkv, H, kc.half(), vc.half())  # mismatched dtypes
    with pytest.raises(ValueError, match="fp32_precision"):
        dit(qkv, H, fp32_precision="fp64")
    with pytest.raises(ValueError, match="do not fit k_cache"):
        prefill(_qkv(1, 9, torch.float32, device), H, kc, vc)  # prompt longer than the cache
    with pytest.raises(ValueError, match="one new token"):
        decode(qkv, H, kc, vc, lengths)
    new = _qkv(1, 1, torch.float32, device)
    if device == "cpu":
        with pytest.raises(ValueError, match="leave no room"):
            decode(new, H, kc, vc, torch.tensor([8], dtype=torch.int32))  # lengths beyond the cache
    with pytest.raises(TypeError, match="lengths"):
        decode(new, H, kc, vc, lengths.float())
    with pytest.raises(TypeError, match="row_table"):
        decode(new, H, kc, vc, lengths, row_table=torch.zeros(1, 8, dtype=torch.int64, device=device))


def test_tolerance_rule_catches_wrong_math(device):
    """The checks above can fail: half-split (NeoX) RoPE instead of interleaved pairs, a missing causal mask,
    and an unwritten output element are all caught."""
    B, T = 2, 37
    qkv = _qkv(B, T, torch.float32, device)
    y = K.dit_attention_fwd(qkv, H)
    low, high = ref.dit_attention_ref(qkv, H), ref.dit_attention_ref(qkv.double(), H)
    # NeoX-style rotation: pair dim i with dim i + D/2 (permute so that interleaved RoPE applies to those pairs)
    perm = torch.arange(D).view(2, D // 2).t().reshape(-1)
    q, k, v = (t.unflatten(-1, (H, D)) for t in qkv.split(H * D, dim=-1))
    tab = ref.rope_table_ref(T, D, device=device)
    qn, kn = (ref.rope_ref(t[..., perm], tab)[..., torch.argsort(perm)] for t in (q, k))
    wrong = ref.attention_ref(qn, kn, v)
    with pytest.raises(AssertionError, match="max error"):
        assert_close_rel(wrong, low, high)
    assert_close_rel(y, low, high)
    non_causal = K.attention_fwd(q, k, v)
    with pytest.raises(AssertionError, match="max error"):
        causal_high = ref.attention_ref(q.double(), k.double(), v.double(), causal=True)
        assert_close_rel(non_causal, ref.attention_ref(q, k, v, causal=True), causal_high)
    partial = y.clone()
    partial[1, 5, 3] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_rel(partial, low, high)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rope_causal_attention_writes_rotated_keys_to_cache(dtype, device):
    """attention_fwd with rope=True and a cache (the ROPE + WRITE_CACHE branch): the cache holds the rotated k."""
    B, T, S = 2, 37, 48
    q, k, v = (randn(B, T, H, D, dtype=dtype, device=device) for _ in range(3))
    kc, vc = poisoned((B, H, S, D), dtype, device), poisoned((B, H, S, D), dtype, device)
    y = K.attention_fwd(q, k, v, causal=True, rope=True, k_cache=kc, v_cache=vc)
    tab = ref.rope_table_ref(T, D, device=device)
    qr, kr = ref.rope_ref(q, tab), ref.rope_ref(k, tab)
    kr64 = ref.rope_ref(k.double(), tab)
    assert_close_rel(kc[:, :, :T].transpose(1, 2), kr, kr64, what="rotated k in the cache")
    assert torch.equal(vc[:, :, :T], v.transpose(1, 2)) and kc[:, :, T:].isnan().all()
    high = ref.attention_ref(ref.rope_ref(q.double(), tab), kr64, v.double(), causal=True)
    assert_close_rel(y, ref.attention_ref(qr, kr, v, causal=True), high, what="rope + causal")


def test_dit_key_lengths_beyond_T_and_zero(device):
    """x_lens > T means all T keys (no read past the sequence); x_lens = 0 gives a zero row; int64 lengths."""
    B, T = 3, 37
    qkv = _qkv(B, T, torch.float32, device)
    x_lens = torch.tensor([T + 30, 0, T - 1], dtype=torch.int64, device=device)
    y = K.dit_attention_fwd(qkv, H, x_lens=x_lens, out=poisoned((B, T, H * D), torch.float32, device))
    low, high = ref.dit_attention_ref(qkv, H, x_lens), ref.dit_attention_ref(qkv.double(), H, x_lens)
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    assert_close_rel(y, low, high, what="x_lens beyond T")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gpt_prefill_and_decode_head_dim_128(dtype, device):
    """head_dim 128 (BLOCK_N 32 in decode): prefill fills the cache, then a split decode step with a row table."""
    B, T, S, heads, hd = 2, 21, 100, 1, 128
    qkv = _qkv(B, T, dtype, device, heads=heads, head_dim=hd)
    kc, vc = poisoned((B, heads, S, hd), dtype, device), poisoned((B, heads, S, hd), dtype, device)
    y = K.gpt_prefill_attention_fwd(qkv, heads, kc, vc)
    q, k, v = (t.unflatten(-1, (heads, hd)) for t in qkv.split(heads * hd, dim=-1))
    assert torch.equal(kc[:, :, :T], k.transpose(1, 2)) and torch.equal(vc[:, :, :T], v.transpose(1, 2))
    high = ref.attention_ref(q.double(), k.double(), v.double(), causal=True)
    assert_close_rel(y, ref.attention_ref(q, k, v, causal=True), high, what="prefill D128")
    kc, vc = randn(B, heads, S, hd, dtype=dtype, device=device), randn(B, heads, S, hd, dtype=dtype, device=device)
    table = torch.tensor([1, 0], dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous()
    kr, vr, tr = kc.clone(), vc.clone(), table.clone()
    lengths = torch.tensor([T + 50, S - 1], dtype=torch.int32, device=device)
    new = _qkv(B, 1, dtype, device, heads=heads, head_dim=hd)
    y = K.gpt_decode_attention_fwd(new, heads, kc, vc, lengths, row_table=table, num_splits=4)
    low = ref.gpt_decode_attention_ref(new, heads, kr, vr, lengths, tr)
    assert torch.equal(kc, kr) and torch.equal(vc, vr) and torch.equal(table, tr)
    high = ref.gpt_decode_attention_ref(new.double(), heads, kr.double(), vr.double(), lengths, table)
    assert_close_rel(y, low, high, what="decode D128")


@pytest.mark.parametrize("lengths", [[137, 137, 137], [140, 70, 3]], ids=["beams", "ragged"])
def test_gpt_decode_row_table_across_splits(lengths, device):
    """A gathered (non-identity) row table read by every split (lengths not a multiple of the split)."""
    dtype, B, S = torch.float16, 3, 150
    kc, vc = _filled_cache(B, S, dtype, device)
    g = torch.Generator().manual_seed(3)
    table = torch.randint(0, B, (B, S), generator=g, dtype=torch.int32).to(device)
    kr, vr, tr = kc.clone(), vc.clone(), table.clone()
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    qkv = _qkv(B, 1, dtype, device)
    y = K.gpt_decode_attention_fwd(qkv, H, kc, vc, lens, row_table=table, num_splits=4)
    low = ref.gpt_decode_attention_ref(qkv, H, kr, vr, lens, tr)
    assert torch.equal(kc, kr) and torch.equal(table, tr)
    high = ref.gpt_decode_attention_ref(qkv.double(), H, kr.double(), vr.double(), lens, table)
    assert_close_rel(y, low, high, what="row table across splits")


@pytest.mark.parametrize(
    "dtype, head_dim, rope", [(torch.float32, 64, True), (torch.float16, 64, True), (torch.float16, 64, False),
                              (torch.bfloat16, 128, True), (torch.float32, 128, True)],
    ids=["fp32-64x16", "fp16-rope-128x32", "fp16-128x64", "bf16-d128-64x32", "fp32-d128-32x16"]
)  # fmt: skip
def test_gpu_tile_configs(dtype, head_dim, rope, device, monkeypatch):
    """The GPU launch configs (not the interpreter's 64 x 64 tile): BLOCK_M 128 with BLOCK_N 16/32/64."""
    from indextts_kernels import attention

    real = attention.attention_launch_config
    monkeypatch.setattr(attention, "attention_launch_config", lambda *a, **k: real(*a, **{**k, "interpret": False}))
    B, T, heads = 1, 70, 1
    qkv = _qkv(B, T, dtype, device, heads=heads, head_dim=head_dim)
    if rope:
        lens = torch.tensor([53], dtype=torch.int32, device=device)
        y = K.dit_attention_fwd(qkv, heads, x_lens=lens)
        low, high = ref.dit_attention_ref(qkv, heads, lens), ref.dit_attention_ref(qkv.double(), heads, lens)
    else:
        S = 80
        kc, vc = torch.empty(B, heads, S, head_dim, dtype=dtype), torch.empty(B, heads, S, head_dim, dtype=dtype)
        y = K.gpt_prefill_attention_fwd(qkv, heads, kc.to(device), vc.to(device))
        low = ref.gpt_prefill_attention_ref(qkv, heads, kc.clone(), vc.clone())
        high = ref.gpt_prefill_attention_ref(qkv.double(), heads, kc.double(), vc.double())
    assert_close_rel(y, low, high, what=f"GPU tile config {real(head_dim, dtype, rope, interpret=False)}")


def test_compile_variants_cover_the_launch_configs():
    """Every kernel specialization the ops launch on a GPU (dtype, fp32 precision, head_dim, flags, tiles, splits)
    is listed in compile_variants(), so the AOT table (0 spills, mma) checks the code that actually runs."""
    from indextts_fast.aot import requests
    from indextts_fast.shapes import GPT_CACHE_LEN
    from indextts_kernels import attention as A

    def key(fn, ptr, const):
        return getattr(fn, "__name__", None) or fn.fn.__name__, ptr, tuple(sorted(const.items()))

    variants = A.compile_variants(**requests()["attention"])
    listed = {key(fn, sig.get("Q", sig.get("O")), const) for _, fn, sig, const, *_ in variants}
    cases = [(t, prec, D) for t in ("fp16", "bf16") for D in (64, 128) for prec in ("ieee",)]
    cases += [("fp32", prec, D) for prec in A.FP32_PRECISIONS for D in (64, 128)]
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    launched = []
    for tname, prec, D in cases:
        ptr = "*fp32" if tname == "fp32" else f"*{tname}"
        flags = [(False, False, True, False), (True, False, False, True)]  # DiT (no x_lens), GPT prefill
        if D == 64 and prec != "tf32":
            flags.append((False, True, True, False))  # DiT with x_lens
        for causal, lens, rope, write in flags:
            if prec == "tf32" and not rope:
                continue  # the prefill op runs exact fp32 or tf32x3
            bm, bn, _, _ = A.attention_launch_config(D, tdt[tname], rope, prec, interpret=False)
            const = dict(HEAD_DIM=D, CAUSAL=causal, HAS_LENS=lens, ROPE=rope, WRITE_CACHE=write, FP32_PREC=prec,
                         BLOCK_M=bm, BLOCK_N=bn)  # fmt: skip
            launched.append(key(A._attn_fwd_kernel, ptr, const))
        if prec == "ieee":
            splits = A.decode_num_splits(GPT_CACHE_LEN, interpret=False)
            for table in (False, True):
                for fold in (False, True):  # the merge folded in (tickets) or its own launch
                    const = dict(
                        HEAD_DIM=D,
                        HAS_TABLE=table,
                        NUM_SPLITS=splits,
                        BLOCK_N=A.decode_block_n(D, tdt[tname], interpret=False),
                        FOLD=fold,
                    )
                    launched.append(key(A._attn_decode_kernel, ptr, const))
            launched.append(key(A._attn_decode_reduce_kernel, ptr, dict(HEAD_DIM=D, NUM_SPLITS=splits)))
    missing = [k for k in launched if k not in listed]
    assert not missing, f"launch configs missing from compile_variants(): {missing}"


@pytest.mark.parametrize("backend", ["kernel", "dispatch-torch"])
def test_strided_lengths_raise(backend, device, monkeypatch):
    """The kernels read x_lens[b] and lengths[b] at offset b: a strided or expanded view must raise, not be
    silently read as contiguous (a wrong mask, or the new k/v written at the wrong cache position)."""
    if backend == "dispatch-torch":
        monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
        dit, decode = F.dit_attention, F.gpt_decode_attention
    else:
        dit, decode = K.dit_attention_fwd, K.gpt_decode_attention_fwd
    B, T, S = 2, 9, 16
    pairs = torch.tensor([[T, 0], [3, 0]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="x_lens"):
        dit(_qkv(B, T, torch.float32, device), H, x_lens=pairs[:, 0])  # stride 2
    kc, vc = _filled_cache(B, S, torch.float32, device)
    with pytest.raises(ValueError, match="lengths"):
        decode(_qkv(B, 1, torch.float32, device), H, kc, vc, pairs[:, 0])
    with pytest.raises(ValueError, match="lengths"):
        decode(_qkv(B, 1, torch.float32, device), H, kc, vc, torch.tensor([4], dtype=torch.int32).expand(B))


@pytest.mark.parametrize("with_table", [False, True], ids=["no-table", "table"])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_gpt_decode_folded_reduce(num_splits, with_table, device):
    """``tickets``: the split merge folded into the decode launch (the last split of each (row, head) merges)
    gives bit for bit the two-launch result, launch after launch (the tickets are zero again after each)."""
    dtype, B, S = torch.float16, 3, 150
    kc, vc = _filled_cache(B, S, dtype, device)
    kr, vr = kc.clone(), vc.clone()
    table = torch.arange(B, dtype=torch.int32, device=device)[:, None].expand(B, S).contiguous() if with_table else None
    tr = None if table is None else table.clone()
    lengths = torch.tensor([0, 77, S - 4], dtype=torch.int32, device=device)
    tickets = torch.zeros(B * H + 1, dtype=torch.int32, device=device)  # one spare: more than B * H is fine
    for step in range(3):
        qkv = _qkv(B, 1, dtype, device)
        with K.count_launches() as launches:
            y = K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, row_table=table, num_splits=num_splits,
                                           tickets=tickets, out=poisoned((B, 1, H * D), dtype, device))  # fmt: skip
        assert dict(launches) == {"decode_attention": 1}, launches
        two = K.gpt_decode_attention_fwd(qkv, H, kr, vr, lengths, row_table=tr, num_splits=num_splits)
        assert torch.equal(y, two), f"step {step}: the folded merge differs from the reduction launch"
        assert torch.equal(kc, kr) and torch.equal(vc, vr)
        assert not tickets.any(), f"step {step}: tickets left at {tickets.tolist()}"
        lengths += 1


def test_gpt_decode_tickets_refused_when_too_few(device):
    B, S = 2, 40
    kc, vc = _filled_cache(B, S, torch.float16, device)
    lengths = torch.tensor([3, 5], dtype=torch.int32, device=device)
    qkv = _qkv(B, 1, torch.float16, device)
    for bad in (torch.zeros(B * H - 1, dtype=torch.int32, device=device),
                torch.zeros(B * H, dtype=torch.int64, device=device)):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match="tickets"):
            K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, tickets=bad)
