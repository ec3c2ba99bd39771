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

# GEMM with fused epilogues: (name, rows M, in K, out N); SwiGLU N counts the packed w13 rows (2 x 1536)
GEMM_DIT_M = DIT_B * DIT_T  # 3442 rows through every DiT projection
GEMM_SHAPES = [
    ("dit_ffn_w13_3442x512x3072", GEMM_DIT_M, DIT_DIM, 2 * DIT_FFN),
    ("dit_ffn_w2_3442x1536x512", GEMM_DIT_M, DIT_FFN, DIT_DIM),
    ("gpt_prefill_mlp_600x1280x5120", GPT_PREFILL_T, GPT_DIM, GPT_FFN),
    ("gpt_decode_mlp_3x1280x5120", GPT_BEAMS, GPT_DIM, GPT_FFN),
    ("gpt_decode_c_attn_3x1280x3840", GPT_BEAMS, GPT_DIM, 3 * GPT_DIM),
]
