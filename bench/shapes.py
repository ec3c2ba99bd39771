"""The benchmarks' cases, built on IndexTTS2's hot-path shapes: the model's numbers are indextts_fast.shapes's (one
table, shared with the AOT compile check; derivations: shared/docs/indextts2-hot-path.md §1.3)."""

from indextts_fast.shapes import (
    DIT_B,
    DIT_DIM,
    DIT_FFN,
    DIT_HEAD_DIM,
    DIT_HEADS,
    DIT_T,
    GPT_BEAMS,
    GPT_CACHE_LEN,
    GPT_DIM,
    GPT_FFN,
    GPT_HEAD_DIM,
    GPT_HEADS,
    GPT_PREFILL_T,
)

__all__ = [
    "DIT_B", "DIT_T", "DIT_DIM", "DIT_HEADS", "DIT_FFN", "DIT_HEAD_DIM", "GPT_DIM", "GPT_HEADS", "GPT_FFN",
    "GPT_PREFILL_T", "GPT_BEAMS", "GPT_CACHE_LEN", "NORM_SHAPES", "ATTN_DIT_SHAPES", "ATTN_PREFILL_SHAPES",
    "GPT_DECODE_CONTEXTS", "GEMM_DIT_M",
]  # fmt: skip

# (name, rows M, hidden N)
NORM_SHAPES = [
    (f"dit_{DIT_B}x{DIT_T}x{DIT_DIM}", DIT_B * DIT_T, DIT_DIM),
    (f"gpt_prefill_1x{GPT_PREFILL_T}x{GPT_DIM}", GPT_PREFILL_T, GPT_DIM),
    (f"gpt_decode_{GPT_BEAMS}x1x{GPT_DIM}", GPT_BEAMS, GPT_DIM),
]

# Attention (kernels/indextts_kernels/attention.py)
# DiT: B=2 (CFG), 8 heads of 64, T = 1721; GPT-2: 20 heads of 64, prefill ~90 (prompt) and ~600 (teacher-forced)
ATTN_DIT_SHAPES = [(f"dit_{DIT_B}x{DIT_HEADS}x{DIT_T}x{DIT_HEAD_DIM}", DIT_B, DIT_HEADS, DIT_T, DIT_HEAD_DIM)]
_H, _D = GPT_HEADS, GPT_HEAD_DIM
ATTN_PREFILL_SHAPES = [(f"gpt_prefill_{b}x{_H}x{t}x{_D}", b, _H, t, _D) for b in (1, 3) for t in (90, 600)]
GPT_DECODE_CONTEXTS = [100, 600, 1200, 1800]  # cached positions, within GPT_CACHE_LEN
# GEMM with fused epilogues: every DiT projection sees B x T rows; the GPT-2 MLP is 1280 -> 5120 -> 1280
GEMM_DIT_M = DIT_B * DIT_T  # 3442
