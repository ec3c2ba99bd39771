"""Small @triton.jit helpers shared by the kernels, with the Triton-interpreter workarounds they need.

Both workarounds are constexpr-gated on TRITON_INTERPRET at import time, so compiled kernels contain none
of their code.
"""

import triton
import triton.language as tl

from ._utils import is_interpreting

# The interpreter stores bf16 as uint16 bit patterns: its fp32 -> bf16 cast truncates (the GPU rounds to
# nearest even) and its bf16 tl.dot multiplies bit patterns. Emulate the GPU's behaviour there.
_INTERPRET_BF16 = tl.constexpr(is_interpreting())


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """``x.to(dtype)`` with round-to-nearest-even on every backend (x is fp32)."""
    if _INTERPRET_BF16:
        if dtype == tl.bfloat16:
            u = x.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            x = u.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def dot(a, b, acc):
    """``acc + a @ b`` (tl.dot); bf16 operands are upcast under the interpreter, where bf16 dot is wrong."""
    if _INTERPRET_BF16:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _tf32_round(x):
    """fp32 rounded to TF32 (10 explicit mantissa bits), to nearest with ties away: cvt.rna.tf32.f32."""
    u = x.to(tl.uint32, bitcast=True)
    return ((u + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _tf32_trunc(x):
    """fp32 cut to TF32 by dropping the 13 low mantissa bits: what the tensor cores read of an fp32 register."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def dot_prec(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """:func:`dot` with an explicit ``input_precision`` for fp32 operands ("ieee", "tf32" or "tf32x3").

    Compiled, it picks FMA (ieee) or tensor cores (tf32, tf32x3); it has no effect on fp16/bf16 operands. The
    interpreter's fp32 dot is exact whatever the precision, so there the tensor cores' operand rounding is
    emulated: "tf32" drops the 13 low mantissa bits of each operand; "tf32x3" is Triton's split
    (big = rna(x), small = x - big; small*big + big*small with NaNs zeroed, then + big*big, then + acc).
    """
    if _INTERPRET_BF16:
        if a.dtype == tl.float32 and b.dtype == tl.float32:
            if INPUT_PRECISION == "tf32":
                return tl.dot(_tf32_trunc(a), _tf32_trunc(b), acc)
            if INPUT_PRECISION == "tf32x3":
                a_big = _tf32_round(a)
                b_big = _tf32_round(b)
                small = tl.dot(_tf32_trunc(a - a_big), b_big)
                small = tl.dot(a_big, _tf32_trunc(b - b_big), small)
                small = tl.where(small != small, 0.0, small)
                return acc + tl.dot(a_big, b_big, small)
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
