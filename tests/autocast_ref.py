"""IndexTTS2's ``use_fp16`` (and IndexTTS-2.5's ``use_bf16``) numerics as a test reference, on CUDA and on a
CPU-only machine (bf16: the same mechanism, the same lists, with bf16 for fp16).

``use_fp16`` halves UnifiedVoice and runs it under ``torch.amp.autocast("cuda", dtype=torch.float16)``. CUDA
autocast casts the inputs of matmul-like ops (addmm, linear, bmm, SDPA, ...) to fp16 and those of its fp32 list
(layer_norm, pow, softmax, ...) to fp32. CPU autocast has no layer_norm entry: a halved GPT-2 with its fp32
residual stream does not even run under it (``mixed dtype (CPU)`` at ln_1). :func:`official_autocast`
therefore uses the real CUDA autocast on CUDA tensors and, on CPU, CPU autocast (the same fp16 list for the ops
IndexTTS2 uses) plus a torch-function mode that casts the inputs of CUDA autocast's fp32-list ops to fp32,
following the list in PyTorch's autocast documentation ("CUDA Ops that can autocast to float32"). Like real
autocast, the mode does nothing inside ``torch.autocast(..., enabled=False)``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

T = torch.Tensor
# CUDA autocast's fp32 list, as the functions and methods Python code reaches them through
_FP32_FUNCS = {
    F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm,
    torch.pow, T.pow, T.__pow__, T.__rpow__,
    F.softmax, torch.softmax, T.softmax, F.log_softmax, torch.log_softmax, T.log_softmax, F.softmin,
    torch.exp, T.exp, torch.expm1, T.expm1, torch.log, T.log, torch.log2, T.log2, torch.log10, T.log10,
    torch.log1p, T.log1p, torch.rsqrt, T.rsqrt, torch.reciprocal, T.reciprocal,
    torch.acos, T.acos, torch.asin, T.asin, torch.cosh, T.cosh, torch.sinh, T.sinh, torch.tan, T.tan,
    torch.erfinv, T.erfinv, torch.cumsum, T.cumsum, torch.cumprod, T.cumprod, torch.sum, T.sum,
    torch.prod, T.prod, torch.norm, T.norm, F.normalize, torch.dist, torch.cdist, F.cosine_similarity,
    F.softplus, torch.renorm, F.pdist,
}  # fmt: skip


def _to_fp32(a):
    if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16):
        return a.float()
    if isinstance(a, (list, tuple)):
        return type(a)(_to_fp32(v) for v in a)
    return a


class _CudaFp32List(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FP32_FUNCS and torch.is_autocast_enabled("cpu"):
            args, kwargs = _to_fp32(args), {k: _to_fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextlib.contextmanager
def official_autocast(device, dtype=torch.float16):
    """The autocast IndexTTS2's use_fp16 (``dtype`` fp16) or IndexTTS-2.5's use_bf16 (bf16) runs its GPT under,
    for tensors on ``device``."""
    if torch.device(device).type == "cuda":
        with torch.autocast("cuda", dtype=dtype):
            yield
        return
    with torch.autocast("cpu", dtype=dtype), _CudaFp32List():
        yield
