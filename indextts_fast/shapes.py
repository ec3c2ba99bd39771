"""IndexTTS2's hot-path shapes: the one table of them, read by the AOT compile check (``indextts_fast.aot``), the
benchmarks (``bench/shapes.py``) and the tests. Derivations: shared/docs/indextts2-hot-path.md §1.3 (a 10 s
reference and 10 s of output), §2 (the modules) and §3 (the checkpoint's tensors).

Pure data: importing it needs neither Triton nor a GPU. The kernels (``indextts_kernels``) know none of these
numbers; their ``compile_variants`` take the tables below as arguments.
"""

from __future__ import annotations

# GPT-2 (UnifiedVoice.gpt): 24 layers, 1280 wide, 20 heads of 64, MLP 4 x 1280 (gelu_new); the mel head maps 1280 to
# the 8194 mel codes (8192 codes, start 8192, stop 8193). Static KV cache: prompt (~87) + up to ~1800 codes.
GPT_LAYERS, GPT_DIM, GPT_HEADS, GPT_FFN, GPT_MEL_VOCAB = 24, 1280, 20, 5120, 8194
GPT_HEAD_DIM = GPT_DIM // GPT_HEADS  # 64
GPT_CACHE_LEN = 2048
# DiT (the s2mel CFM estimator): 13 blocks, 512 wide, 8 heads of 64, SwiGLU hidden find_multiple(1365, 256) = 1536,
# UViT skips through skip_in_linear(cat(x, skip)) (1024 -> 512), a WaveNet head of 512 channels. The w2v-BERT
# semantic features are 1024 wide.
DIT_LAYERS, DIT_DIM, DIT_HEADS, DIT_FFN, DIT_WAVENET = 13, 512, 8, 1536, 512
DIT_HEAD_DIM = DIT_DIM // DIT_HEADS  # 64
W2V_DIM = 1024

# A typical utterance: 3 beams per decode step (the official default), the teacher-forced latent pass over ~588
# tokens, the DiT at CFG batch 2 x T = 1721 frames (861 reference + 860 generated), 25 steps.
GPT_BEAMS = 3
GPT_PREFILL_T = 600
DIT_B, DIT_T = 2, 1721

# Rows (the GEMMs' M) per regime. GPT-2: 1-8 per decode step, 3 x ~87 at the prefill, up to ~1600 in the
# teacher-forced pass. DiT: 2 x T with T <= ~3870 (max_mel_tokens 1500 -> 2580 generated frames + a <= 15 s
# reference); its AdaLN projection maps the time embedding c [B = 2, 1, C] (M = B, a direct DiT call), or a CFM
# call's every step at once (M = the 25 steps, FastDiT.prepare).
GPT_DECODE_ROWS = range(1, 9)
GPT_ROWS = range(1, 4097)
DIT_ROWS = range(9, 8193)
DIT_COND_ROWS = range(1, 26)

# fp32 product precisions per model part: the fp32 GPT at the launchers' default (None = "ieee"); the fp32 DiT at
# every mode enable(dit_precision=...) offers (its default, "tf32x3": bench/NOTES.md)
GPT_FP32_PRECISIONS = (None,)
DIT_FP32_PRECISIONS = ("ieee", "tf32x3", "tf32")

# The GEMMs of the hot path: (tag, N, K, bias, residual, activation, dtypes, rows, fp32 precisions). Weights
# [N, K]; SwiGLU's N is the hidden I of the packed w13 [2I, K]. A dtype "fp16+r32" is fp16 operands with an fp32
# residual stream and output (the use_fp16 GPT's residual adds; "bf16+r32" IndexTTS-2.5's use_bf16). GPT-2: fp16
# under use_fp16, bf16 under 2.5's use_bf16, else fp32. DiT: fp32 as the official code, bf16 opt-in.
_GPT, _DIT = ("fp16", "bf16", "fp32"), ("fp32", "bf16")
_GPT_RES = ("fp16+r32", "bf16+r32", "fp16", "bf16", "fp32")
GEMMS = (
    ("gpt/c_attn+bias", 3 * GPT_DIM, GPT_DIM, True, False, None, _GPT, GPT_ROWS, GPT_FP32_PRECISIONS),
    ("gpt/attn_c_proj+bias+res", GPT_DIM, GPT_DIM, True, True, None, _GPT_RES, GPT_ROWS, GPT_FP32_PRECISIONS),
    ("gpt/c_fc+bias+gelu", GPT_FFN, GPT_DIM, True, False, "gelu_new", _GPT, GPT_ROWS, GPT_FP32_PRECISIONS),
    ("gpt/c_proj+bias+res", GPT_DIM, GPT_FFN, True, True, None, _GPT_RES, GPT_ROWS, GPT_FP32_PRECISIONS),
    ("dit/wqkv", 3 * DIT_DIM, DIT_DIM, False, False, None, _DIT, DIT_ROWS, DIT_FP32_PRECISIONS),
    ("dit/wo+res", DIT_DIM, DIT_DIM, False, True, None, _DIT, DIT_ROWS, DIT_FP32_PRECISIONS),
    ("dit/w13_swiglu", DIT_FFN, DIT_DIM, False, False, "swiglu", _DIT, DIT_ROWS, DIT_FP32_PRECISIONS),
    ("dit/w2+res", DIT_DIM, DIT_FFN, False, True, None, _DIT, DIT_ROWS, DIT_FP32_PRECISIONS),
    ("dit/skip_in+bias", DIT_DIM, 2 * DIT_DIM, True, False, None, _DIT, DIT_ROWS, DIT_FP32_PRECISIONS),
    ("dit/adaln_project+bias", 2 * DIT_DIM, DIT_DIM, True, False, None, _DIT, DIT_COND_ROWS, DIT_FP32_PRECISIONS),
)
# The WaveNet head's layer GEMMs (gemm.wavenet_gate_fwd: the 5-tap REFLECT conv gathered in the A load, the gated
# tanh * sigmoid epilogue; gemm.wavenet_res_skip_fwd: the in-place residual / skip updates): (tag, H, C, taps, dtypes,
# fp32 precisions)
DIT_MELS, WAVENET_TAPS = 80, 5
WAVENETS = (("dit/wavenet", DIT_WAVENET, DIT_WAVENET, WAVENET_TAPS, _DIT, DIT_FP32_PRECISIONS),)
# The CFM Euler step (euler.cfm_euler_fwd): (tag, mel channels, the row stride of the estimator input it writes (a
# slice of the long skip's [B, T, C + F] input), dtypes of the estimator's output and input)
CFM_EULERS = (("cfm", DIT_MELS, DIT_DIM + DIT_MELS, _DIT),)
# The decode GEMVs with the LayerNorm prologue (ln_1 + c_attn, ln_2 + c_fc + gelu_new): (tag, N, K, bias, activation,
# dtypes); x is the residual stream, fp32 under half autocast ("fp16+x32", "bf16+x32"), the operand and output the
# weight's dtype
LN_GEMMS = (
    ("gpt/ln_1+c_attn+bias", 3 * GPT_DIM, GPT_DIM, True, None, ("fp16+x32", "bf16+x32", "fp32")),
    ("gpt/ln_2+c_fc+bias+gelu", GPT_FFN, GPT_DIM, True, "gelu_new", ("fp16+x32", "bf16+x32", "fp32")),
)

# Normalized widths -> a representative row count: the DiT's 512 (2 x 1721 rows), the w2v features' 1024, the
# GPT's 1280 (the teacher-forced pass)
NORMS = {DIT_DIM: DIT_B * DIT_T, W2V_DIM: DIT_B * DIT_T, GPT_DIM: GPT_PREFILL_T}

# Attention: (launcher variant, ((dtype or fp32 precision, head_dim), ...)). The DiT runs fp32 at every precision
# (bf16 / fp16 opt-in), the GPT's prefill fp16 (use_fp16) or fp32; both at head_dim 64. The launchers' other head
# size, 128, is compiled too (no IndexTTS2 op uses it), so that a change that breaks it shows in the table.
_D = DIT_HEAD_DIM
ATTENTION_FWD = (
    (
        "dit_rope",
        (("fp32", _D), ("tf32x3", _D), ("tf32", _D), ("fp16", _D), ("bf16", _D), ("fp32", 128), ("fp16", 128)),
    ),
    ("dit_rope", (("tf32x3", 128), ("tf32", 128), ("bf16", 128))),
    ("dit_rope_lens", (("fp32", _D), ("tf32x3", _D), ("fp16", _D), ("bf16", _D))),
    ("gpt_prefill_cache", tuple((t, D) for D in (GPT_HEAD_DIM, 128) for t in ("fp16", "bf16", "fp32", "tf32x3"))),
    ("full", (("fp16", GPT_HEAD_DIM),)),
)
# Decode over the static cache: (cache dtype, head_dim, capacity)
ATTENTION_DECODE = tuple((t, D, GPT_CACHE_LEN) for t in ("fp16", "bf16", "fp32") for D in (GPT_HEAD_DIM, 128))
# The decode loop's sampling kernels (sampling.logits_process_fwd, sampling.decode_select_fwd): the mel-code logits
# width, the beam counts (1: greedy / multinomial, always compiled; 3: the official default), the sequences'
# capacity and the embedding width (the block sizes of the row reorders and the next tokens' embedding)
SAMPLING = dict(vocab=GPT_MEL_VOCAB, beams=(GPT_BEAMS,), capacity=GPT_CACHE_LEN, width=GPT_DIM)

# BigVGAN v2 (22.05 kHz, 80 bands, 256x: upsampling 4, 4, 2, 2, 2, 2 from 1536 channels, three AMP blocks per stage
# of kernel sizes 3, 7, 11 and dilations 1, 3, 5): the anti-aliased SnakeBeta (alias_free.anti_alias_snake_fwd) with
# the 12-tap filters of every v2 checkpoint, and the merges (alias_free.amp_merge_fwd): a stage's three resblock
# outputs averaged, the pre-convolution's output (one part, the zero tail of a padded batch alone). 10 s of audio is
# 861 mel frames, 220,416 samples.
VOCODER_TAPS = 12
VOCODER_SNAKES = (("bigvgan", VOCODER_TAPS),)
VOCODER_MERGES = (("bigvgan/stage", 3, True), ("bigvgan/pre", 1, False))
VOCODER_FRAMES_10S = 861
