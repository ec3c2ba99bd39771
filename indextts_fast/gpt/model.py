"""UnifiedVoice's GPT-2 stack on our ops: causal prefill into the static KV cache, one decode step, the two final
LayerNorms, the mel head.

Math (stock HF GPT-2 as IndexTTS2 builds it; ``indextts2-hot-path.md`` §2.1):
    h = emb (+ the null position embedding's zeros);  per block: h = h + c_proj(attn(ln_1(h))),
    h = h + c_proj(gelu_new(c_fc(ln_2(h))));  latent = final_norm(ln_f(h));  logits = mel_head(latent).
Numerics follow the official run: the GEMM operand dtype is the weights' (fp16 under ``use_fp16``, which halves the
model and runs it under fp16 autocast), and the residual stream is ``promote(operand dtype, fp32)``: the null
position embedding returns fp32 zeros, so ``inputs_embeds + wpe`` is fp32 and stays so through every block.
LayerNorms read the fp32 stream and write the operand dtype the next GEMM consumes (autocast's fp32 LayerNorm, then
its fp16 cast); projections add their operand-dtype result to the stream in fp32 (GEMM epilogues); ``ln_f`` and
``final_norm`` return fp32 (the latents handed to s2mel); the mel head runs in the operand dtype and the logits are
read as fp32 (generation's ``.float()``).
Every op goes through the dispatch (compiled Triton on CUDA, the interpreter or the torch reference on CPU).
"""

from __future__ import annotations

import torch

from .. import ops as F
from .cache import KVCache

__all__ = ["FastGPT"]


class FastGPT:
    """The GPT-2 stack of one UnifiedVoice in kernel layout (``indextts_fast.loader.FastGPTWeights``)."""

    def __init__(self, weights, *, n_heads: int, ln_eps: float = 1e-5, final_norm_eps: float = 1e-5):
        self.w = weights
        self.n_heads = int(n_heads)
        self.ln_eps = float(ln_eps)
        self.final_norm_eps = float(final_norm_eps)
        first = weights.layers[0].qkv_w
        self.width = first.shape[1]
        self.head_dim = self.width // self.n_heads
        self.dtype = first.dtype  # GEMM operands
        self.stream_dtype = torch.promote_types(self.dtype, torch.float32)
        self.device = first.device

    @property
    def n_layers(self) -> int:
        return len(self.w.layers)

    # --- embeddings ---------------------------------------------------------------------------------------------
    def embed_mel(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``mel_embedding(tokens) + mel_pos_embedding(positions)`` in the weights' dtype (the official add), as the
        stream dtype. tokens [B, T] int64, positions [T] or [B, T] int64 -> [B, T, C]."""
        e = torch.nn.functional.embedding(tokens, self.w.mel_embedding)
        p = torch.nn.functional.embedding(positions, self.w.mel_pos)
        return (e + p).to(self.stream_dtype)

    def to_stream(self, emb: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds + wpe`` (fp32 zeros): torch's promotion of the embeddings with fp32."""
        return emb.to(torch.promote_types(emb.dtype, torch.float32))

    # --- the blocks -----------------------------------------------------------------------------------------------
    def _block(self, L, h, attend):
        """One GPT-2 block. Kernels per decode step (rows <= 8): ln_1 + c_attn (the LayerNorm in the GEMV's
        prologue), attention (split-K, its merge folded in), c_proj + residual, ln_2 + c_fc + gelu_new, c_proj +
        residual: 5. Longer rows (prefill) run each LayerNorm as its own kernel."""
        o = attend(F.ln_linear(h, L.ln1_w, L.ln1_b, self.ln_eps, L.qkv_w, L.qkv_b))
        h = F.linear(o, L.attn_out_w, L.attn_out_b, residual=h)
        y = F.ln_linear(h, L.ln2_w, L.ln2_b, self.ln_eps, L.fc_w, L.fc_b, activation="gelu_new")
        return F.linear(y, L.proj_w, L.proj_b, residual=h)

    def prefill(self, h: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal pass over h [B, T, C] (the stream) writing cache positions 0..T-1 of physical rows 0..B-1."""
        for i, L in enumerate(self.w.layers):
            k, v = cache.layer(i)
            h = self._block(L, h, lambda qkv, k=k, v=v: F.gpt_prefill_attention(qkv, self.n_heads, k, v))
        return h

    def causal(self, h: torch.Tensor) -> torch.Tensor:
        """Causal pass over h [B, T, C] without keeping a cache (the teacher-forced latent pass): one scratch
        layer-cache is reused by every layer."""
        B, T, _ = h.shape
        scratch = torch.empty((2, B, self.n_heads, T, self.head_dim), dtype=self.dtype, device=h.device)
        for L in self.w.layers:
            h = self._block(L, h, lambda qkv: F.gpt_prefill_attention(qkv, self.n_heads, scratch[0], scratch[1]))
        return h

    def decode(self, h: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row, h [rows, 1, C]: appends to the cache at ``cache.lengths`` (the caller advances
        them after the step) and attends through the row table."""
        for i, L in enumerate(self.w.layers):
            k, v = cache.layer(i)
            h = self._block(L, h, lambda qkv, k=k, v=v, i=i: F.gpt_decode_attention(
                qkv, self.n_heads, k, v, cache.lengths, cache.table, tickets=cache.tickets[i]))  # fmt: skip
        return h

    # --- the head ---------------------------------------------------------------------------------------------------
    def final(self, h: torch.Tensor) -> torch.Tensor:
        """``final_norm(ln_f(h))`` in the stream dtype: the latent."""
        h = F.layer_norm(h, self.w.ln_f_w, self.w.ln_f_b, self.ln_eps, out_dtype=self.stream_dtype)
        return F.layer_norm(h, self.w.final_norm_w, self.w.final_norm_b, self.final_norm_eps,
                            out_dtype=self.stream_dtype)  # fmt: skip

    def logits(self, h: torch.Tensor, *, fp32: bool = True) -> torch.Tensor:
        """``mel_head(final_norm(ln_f(h)))`` as fp32 (``fp32=False``: the head's dtype), h [rows, C] (the stream).
        final_norm writes the head's operand dtype directly (autocast's fp32 LayerNorm followed by its cast)."""
        h = F.layer_norm(h, self.w.ln_f_w, self.w.ln_f_b, self.ln_eps, out_dtype=self.stream_dtype)
        y = F.layer_norm(h, self.w.final_norm_w, self.w.final_norm_b, self.final_norm_eps, out_dtype=self.dtype)
        y = F.linear(y, self.w.mel_head_w, self.w.mel_head_b)
        return y.float() if fp32 else y
