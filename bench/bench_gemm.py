"""GEMM with fused epilogues against torch (cuBLAS plus separate elementwise ops) and torch.compile, same run.

- DiT feed-forward block, M = 3442 (CFG batch 2 x 1721 frames), 512 -> 3072 (packed w13) -> 512, with the
  block's residual: fp32 as the official DiT (Triton "ieee" = FMA, and the opt-in "tf32x3" / "tf32" tensor-core
  modes against torch fp32 with its default allow_tf32=False), and bf16. TFLOP/s over 2·M·(512·3072 + 1536·512).
- GPT-2 MLP with the block's residual, 1280 -> 5120 -> 1280, fp16: prefill M = 600 (TFLOP/s) and decode M = 3
  beams (GB/s over the weight bytes streamed; % of the measured copy bandwidth).
- GPT-2 c_attn at decode (M = 3, 1280 -> 3840 + bias): GB/s.
"""

import pytest
import torch
import torch.nn.functional as F

import indextts_kernels as K
from indextts_kernels import reference as ref

from .shapes import DIT_DIM, DIT_FFN, GEMM_DIT_M, GPT_BEAMS, GPT_DIM, GPT_FFN, GPT_PREFILL_T

pytestmark = pytest.mark.gpu


def _randn(*shape, dtype, std=1.0):
    return (torch.randn(*shape, device="cuda") * std).to(dtype)


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


DIT_PROVIDERS = [
    ("fp32", "torch", None),
    ("fp32", "compile", None),
    ("fp32", "triton", "ieee"),
    ("fp32", "triton-tf32x3", "tf32x3"),
    ("fp32", "triton-tf32", "tf32"),
    ("bf16", "torch", None),
    ("bf16", "compile", None),
    ("bf16", "triton", None),
]


@pytest.mark.parametrize("case", DIT_PROVIDERS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_dit_feed_forward(measure, case):
    tname, provider, precision = case
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[tname]
    M, D, I = GEMM_DIT_M, DIT_DIM, DIT_FFN
    x, h = _randn(M, D, dtype=dtype), _randn(M, D, dtype=dtype)
    w1, w3 = _randn(I, D, dtype=dtype, std=D**-0.5), _randn(I, D, dtype=dtype, std=D**-0.5)
    w2 = _randn(D, I, dtype=dtype, std=I**-0.5)
    w13 = K.pack_w13(w1, w3)

    def eager():  # the official FeedForward's ops plus the block's residual add
        return h + F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    if provider == "torch":
        fn = eager
    elif provider == "compile":
        fn = _compiled(eager)
    else:

        def fn():
            return K.swiglu_feed_forward_fwd(x, w13, w2, residual=h, precision=precision)

    measure(fn, provider=provider, group=f"dit_ffn/{M}x{D}x{2 * I}x{D}/{tname}", flops=2 * M * (D * 2 * I + I * D))


def _mlp_weights(dtype):
    wf, bf = _randn(GPT_FFN, GPT_DIM, dtype=dtype, std=GPT_DIM**-0.5), _randn(GPT_FFN, dtype=dtype, std=0.1)
    wp, bp = _randn(GPT_DIM, GPT_FFN, dtype=dtype, std=GPT_FFN**-0.5), _randn(GPT_DIM, dtype=dtype, std=0.1)
    return wf, bf, wp, bp


@pytest.mark.parametrize("provider", ["torch", "compile", "triton"])
@pytest.mark.parametrize("M", [GPT_PREFILL_T, GPT_BEAMS], ids=["prefill", "decode"])
def test_gpt2_mlp(measure, M, provider):
    dtype = torch.float16
    wf, bf, wp, bp = _mlp_weights(dtype)
    x, r = _randn(M, GPT_DIM, dtype=dtype), _randn(M, GPT_DIM, dtype=dtype)

    def eager():  # HF: addmm, gelu_new (elementwise), addmm, then the block's residual add
        return r + F.linear(ref.gelu_new_ref(F.linear(x, wf, bf)), wp, bp)

    if provider == "torch":
        fn = eager
    elif provider == "compile":
        fn = _compiled(eager)
    else:

        def fn():
            return K.gpt2_mlp_fwd(x, wf, bf, wp, bp, residual=r)

    es = 2
    weight_bytes = (2 * GPT_DIM * GPT_FFN + GPT_FFN + GPT_DIM) * es
    act_bytes = (3 * M * GPT_DIM + 2 * M * GPT_FFN) * es  # x, r, out; the hidden written and read once
    measure(fn, provider=provider, group=f"gpt2_mlp/{M}x{GPT_DIM}x{GPT_FFN}/fp16",
            bytes_moved=weight_bytes + act_bytes, flops=2 * M * 2 * GPT_DIM * GPT_FFN)  # fmt: skip


@pytest.mark.parametrize("provider", ["torch", "triton"])
def test_gpt2_c_attn_decode(measure, provider):
    dtype, M, N = torch.float16, GPT_BEAMS, 3 * GPT_DIM
    w, b = _randn(N, GPT_DIM, dtype=dtype, std=GPT_DIM**-0.5), _randn(N, dtype=dtype)
    x = _randn(M, GPT_DIM, dtype=dtype)
    if provider == "torch":

        def fn():
            return F.linear(x, w, b)
    else:

        def fn():
            return K.linear_fwd(x, w, b)

    measure(fn, provider=provider, group=f"c_attn/{M}x{GPT_DIM}x{N}/fp16",
            bytes_moved=(N * GPT_DIM + N + M * GPT_DIM + M * N) * 2, flops=2 * M * GPT_DIM * N)  # fmt: skip
