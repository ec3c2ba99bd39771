"""Attention kernels against SDPA (flash backend where it applies), torch.compile and HF-style decoding, same run.

DiT: the official path is a separate RoPE (fp32 products, cast back) on q and k, then SDPA; ours reads the wqkv
output and rotates in the kernel. GPT prefill: SDPA (is_causal) plus the copy of k/v into a static cache; ours
fills the cache in the same pass. Decode (3 beams, one layer): SDPA over a static-cache slice; "hf" = what HF
generate does per layer and step (DynamicCache concatenation, SDPA, index_select beam reorder of k and v);
ours = split-K decode with the append in the same launch and a row-table reorder (21 KiB gather, shared by all
layers, not counted).

FLOPs: 4*B*H*T^2*D (DiT), half of that causal (prefill); decode is bandwidth-bound: bytes = the K and V read.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import indextts_kernels as K
from indextts_kernels import reference as ref

from .shapes import ATTN_DIT_SHAPES, ATTN_PREFILL_SHAPES, GPT_BEAMS, GPT_CACHE_LEN, GPT_DECODE_CONTEXTS, GPT_HEADS

pytestmark = pytest.mark.gpu

F = torch.nn.functional


def _ids(s):
    return s[0]


def _split(qkv, H, D):
    return [t.unflatten(-1, (H, D)) for t in qkv.split(H * D, dim=-1)]


def _rope_fn():
    """The official apply_rotary_emb when the official code is installed, else our copy of its math."""
    import importlib.util

    if importlib.util.find_spec("indextts") is not None:
        from tests.helpers import official

        return official("s2mel.modules.gpt_fast.model").apply_rotary_emb, "official"
    return lambda x, f: ref.rope_ref(x, f), "reference"


def _sdpa(q, k, v, **kw):
    """SDPA with the flash backend for fp16/bf16 (what the issue compares against); default choice for fp32."""
    if q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, **kw)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("provider", ["torch", "compile", "triton", "triton-tf32x3"])
@pytest.mark.parametrize("shape", ATTN_DIT_SHAPES, ids=_ids)
def test_dit_attention(measure, shape, provider, dtype):
    """fp32 is the official s2mel dtype: ``triton`` runs exact fp32 there, ``triton-tf32x3`` the opt-in mma path."""
    name, B, H, T, D = shape
    if provider == "triton-tf32x3" and dtype != torch.float32:
        pytest.skip("tf32x3 applies to fp32 inputs only")
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=dtype)
    table = ref.rope_table_ref(T, D, device="cuda")
    rope, _ = _rope_fn()

    def official(qkv):
        q, k, v = _split(qkv, H, D)
        q, k = rope(q, table), rope(k, table)  # separate RoPE (fp32, cast back), as the official module
        y = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return y.transpose(1, 2).reshape(B, T, H * D)

    if provider == "torch":
        fn = official
    elif provider == "compile":
        fn = torch.compile(official, dynamic=False)
    else:
        prec = "tf32x3" if provider == "triton-tf32x3" else "ieee"
        fn = lambda qkv: K.dit_attention_fwd(qkv, H, freqs_cis=table, fp32_precision=prec)  # noqa: E731
    es = qkv.element_size()
    measure(lambda: fn(qkv), provider=provider, group=f"dit_attn/{name}/{str(dtype)[6:]}",
            bytes_moved=4 * B * T * H * D * es, flops=4 * B * H * T * T * D)  # fmt: skip


@pytest.mark.parametrize("provider", ["torch", "compile", "triton"])
@pytest.mark.parametrize("shape", ATTN_PREFILL_SHAPES, ids=_ids)
def test_gpt_prefill_attention(measure, shape, provider):
    name, B, H, T, D = shape
    dtype = torch.float16
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=dtype)
    kc = torch.empty(B, H, GPT_CACHE_LEN, D, device="cuda", dtype=dtype)
    vc = torch.empty_like(kc)

    def eager(qkv):
        q, k, v = (t.transpose(1, 2) for t in _split(qkv, H, D))
        kc[:, :, :T] = k
        vc[:, :, :T] = v
        return _sdpa(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * D)

    if provider == "torch":
        fn = eager
    elif provider == "compile":
        fn = torch.compile(eager, dynamic=False)
    else:
        fn = lambda qkv: K.gpt_prefill_attention_fwd(qkv, H, kc, vc)  # noqa: E731
    measure(lambda: fn(qkv), provider=provider, group=f"prefill_attn/{name}/float16",
            bytes_moved=6 * B * T * H * D * 2, flops=2 * B * H * T * T * D)  # fmt: skip


@pytest.mark.parametrize("provider", ["torch", "hf", "triton"])
@pytest.mark.parametrize("ctx", GPT_DECODE_CONTEXTS)
def test_gpt_decode_attention(measure, ctx, provider):
    B, H, D, dtype = GPT_BEAMS, GPT_HEADS, 64, torch.float16
    L = ctx - 1  # cached tokens; the new one makes the context
    qkv = torch.randn(B, 1, 3 * H * D, device="cuda", dtype=dtype)
    kc = torch.randn(B, H, GPT_CACHE_LEN, D, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    lengths = torch.full((B,), L, dtype=torch.int32, device="cuda")
    table = torch.arange(B, dtype=torch.int32, device="cuda")[:, None].expand(B, GPT_CACHE_LEN).contiguous()
    k_past, v_past = kc[:, :, :L].contiguous(), vc[:, :, :L].contiguous()
    beam_idx = torch.tensor([0, 0, 1], device="cuda")

    def static_sdpa(qkv):
        q, k, v = (t.transpose(1, 2) for t in _split(qkv, H, D))
        kc[:, :, L : L + 1] = k
        vc[:, :, L : L + 1] = v
        return _sdpa(q, kc[:, :, : L + 1], vc[:, :, : L + 1])

    def hf_style(qkv):
        q, k, v = (t.transpose(1, 2) for t in _split(qkv, H, D))
        kk, vv = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)  # DynamicCache.update
        y = _sdpa(q, kk, vv)
        return y, kk.index_select(0, beam_idx), vv.index_select(0, beam_idx)  # the per-step beam reorder

    if provider == "torch":
        fn = static_sdpa
    elif provider == "hf":
        fn = hf_style
    else:
        fn = lambda qkv: K.gpt_decode_attention_fwd(qkv, H, kc, vc, lengths, row_table=table)  # noqa: E731
    measure(lambda: fn(qkv), provider=provider, group=f"decode_attn/3x20x{ctx}x64/float16",
            bytes_moved=2 * B * H * ctx * D * 2)  # fmt: skip


@pytest.mark.parametrize("provider", ["hf", "triton"])
@pytest.mark.parametrize("ctx", GPT_DECODE_CONTEXTS)
def test_gpt2_attention_layer_decode(measure, ctx, provider):
    """One decode step of a whole GPT2Attention layer (c_attn, attention, c_proj): HF's module with its
    DynamicCache (reset to ctx - 1 cached tokens before each call, without a copy) vs the same projections
    around the split-K kernel. Same GEMMs on both sides, so the difference is the attention and cache handling."""
    from transformers import DynamicCache, GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    B, H, D, dtype = GPT_BEAMS, GPT_HEADS, 64, torch.float16
    cfg = GPT2Config(n_embd=H * D, n_head=H, n_layer=1)
    cfg._attn_implementation = "sdpa"
    attn = GPT2Attention(cfg, layer_idx=0).to(device="cuda", dtype=dtype).eval()
    L = ctx - 1
    x = torch.randn(B, 1, H * D, device="cuda", dtype=dtype)
    k_past = torch.randn(B, H, L, D, device="cuda", dtype=dtype)
    v_past = torch.randn_like(k_past)
    cache = DynamicCache(config=cfg)
    cache.update(k_past, v_past, 0)
    layer = cache.layers[0]
    kc = torch.randn(B, H, GPT_CACHE_LEN, D, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    lengths = torch.full((B,), L, dtype=torch.int32, device="cuda")
    table = torch.arange(B, dtype=torch.int32, device="cuda")[:, None].expand(B, GPT_CACHE_LEN).contiguous()

    def hf(x):
        layer.keys, layer.values = k_past, v_past  # back to ctx - 1 tokens (update concatenates a new tensor)
        return attn(x, cache=cache)[0]

    def ours(x):
        y = K.gpt_decode_attention_fwd(attn.c_attn(x), H, kc, vc, lengths, row_table=table)
        return attn.c_proj(y)

    fn = hf if provider == "hf" else ours
    measure(lambda: fn(x), provider="torch" if provider == "hf" else provider,
            group=f"decode_layer/3x20x{ctx}x64/float16", bytes_moved=2 * B * H * ctx * D * 2)  # fmt: skip
