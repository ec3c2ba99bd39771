"""IndexTTS2 hot-path shapes, shared by the benchmarks (derivations: shared/docs/indextts2-hot-path.md §1.3)."""

# DiT: CFG batch 2 x T = 1721 frames (10 s reference + 10 s output), hidden 512, 8 heads of 64
DIT_B, DIT_T, DIT_DIM, DIT_HEADS, DIT_FFN = 2, 1721, 512, 8, 1536
# GPT-2: 1280 wide, 20 heads of 64; prefill about 600 tokens (teacher-forced pass), decode 3 beams
GPT_DIM, GPT_HEADS, GPT_FFN = 1280, 20, 5120
GPT_PREFILL_T = 600
GPT_BEAMS = 3

# (name, rows M, hidden N)
NORM_SHAPES = [
    ("dit_2x1721x512", DIT_B * DIT_T, DIT_DIM),
    ("gpt_prefill_1x600x1280", GPT_PREFILL_T, GPT_DIM),
    ("gpt_decode_3x1x1280", GPT_BEAMS, GPT_DIM),
]

# Attention (kernels/indextts_kernels/attention.py)
# DiT: B=2 (CFG), 8 heads of 64, T = 1721; GPT-2: 20 heads of 64, prefill ~90 (prompt) and ~600 (teacher-forced)
DIT_HEAD_DIM = 64
ATTN_DIT_SHAPES = [("dit_2x8x1721x64", DIT_B, DIT_HEADS, DIT_T, DIT_HEAD_DIM)]  # (name, B, H, T, D)
ATTN_PREFILL_SHAPES = [(f"gpt_prefill_{b}x20x{t}x64", b, GPT_HEADS, t, 64) for b in (1, 3) for t in (90, 600)]
GPT_DECODE_CONTEXTS = [100, 600, 1200, 1800]
GPT_CACHE_LEN = 2048  # static cache capacity (prompt + up to ~1800 codes)
# GEMM with fused epilogues: every DiT projection sees B x T rows; the GPT-2 MLP is 1280 -> 5120 -> 1280
GEMM_DIT_M = DIT_B * DIT_T  # 3442
