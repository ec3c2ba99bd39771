"""The dtype policy of a fast pack: the dtype of each tensor class (gemm_w, gemm_b, norm, embed, other, carry) per
model: the GPT all fp16, as IndexTTS2 runs it with ``use_fp16`` (``gpt.half()`` rounds every tensor of UnifiedVoice,
norms and embeddings included, so storing those in fp32 would not reproduce its tokens; ``gpt_policy("float32")``
reproduces the fp32 default); IndexTTS-2.5's GPT all bf16, as its ``use_bf16`` runs it (``.bfloat16()``); s2mel
and the 2.5 codec all fp32 (the official code runs them in fp32 either way)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch

from ..loader.remap import FLOAT_DTYPES

DEFAULT_POLICY: dict[str, dict[str, str]] = {
    # use_fp16: the official code calls .half() on the whole UnifiedVoice (infer_v2.py)
    "gpt": {
        "gemm_w": "float16",
        "gemm_b": "float16",
        "norm": "float16",
        "embed": "float16",
        "other": "float16",
        "carry": "float16",
    },  # fmt: skip
    "s2mel": {"gemm_w": "float32", "gemm_b": "float32", "norm": "float32", "embed": "float32", "other": "float32"},
    "codec": {"gemm_w": "float32", "gemm_b": "float32", "norm": "float32", "embed": "float32", "other": "float32"},
}


def gpt_policy(dtype: str) -> dict[str, str]:
    """A dtype policy with every GPT tensor class in one dtype, for ``policy=`` of convert_checkpoint /
    remap_state_dict: "float16" is DEFAULT_POLICY (the official use_fp16), "float32" reproduces the official fp32
    default, "bfloat16" halves the pack without fp16's range limit (IndexTTS-2.5's use_bf16 and its default here;
    not an official 2.0 mode)."""
    return {k: dtype for k in DEFAULT_POLICY["gpt"]}


def _policy(kind: str, policy: Optional[Mapping[str, str]], version: str = "2.0") -> dict[str, str]:
    p = gpt_policy("bfloat16") if kind == "gpt" and version == "2.5" else dict(DEFAULT_POLICY[kind])
    if policy:
        unknown = set(policy) - set(p)
        if unknown:
            raise ValueError(f"policy: unknown tensor classes {sorted(unknown)} (known: {sorted(p)})")
        for k, v in policy.items():
            if not isinstance(getattr(torch, str(v), None), torch.dtype) or getattr(torch, v) not in FLOAT_DTYPES:
                raise ValueError(f"policy[{k!r}] = {v!r}: expected one of float32, float16, bfloat16")
        p.update(policy)
    return p
