"""CFM Euler step: the classifier-free-guidance combine, the Euler update and the prompt frames re-zeroed, in one
launch, which also writes the estimator's next input.

Math (fp32; what ``BASECFM.solve_euler`` computes per step, its order of operations kept):
    v   = (1 + r) * v[:B] - r * v[B:]          (r = rate > 0: the CFG batch [2B]; r = 0: v = v[:B])
    x   = where(keep, x + dt * v, 0)           (x [B, F, T], updated in place; keep [1 or B, 1, T] bool)
    xin[i*B + b, t, f] = x[b, f, t]            (i < 2 with CFG: both halves of the next estimator input)
Contract:   v [R*B, T, F] in the estimator's dtype (channel-last: its last GEMM's output), rows viewable as
            [R*B*T, F]; x fp32 contiguous; dt a one-element fp32 tensor on the device (a CUDA graph replays it);
            xin [R*B, T, F] with any row stride (a slice of a wider buffer: the DiT's long-skip input), any float
            dtype (cast at the store). The coefficients (1 + r) and r are fp32,
            as torch's scalar multiply of an fp32 tensor takes them.
Matches:    indextts_kernels.reference.cfm_euler_ref
Limits:     forward only; no host sync (CUDA-graph safe).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._jit import cast_to
from ._utils import cdiv, check_launchable, note_launch, rows_view
from ._validate import cfm_euler_args, validate_once

__all__ = ["cfm_euler_fwd"]


@triton.jit(do_not_specialize=["T", "c_cond", "c_uncond"])
def _cfm_euler_kernel(
    V,  # pointer to the estimator output [R*B, T, F] (row stride stride_vm per frame)
    X,  # pointer to the state [B, F, T], contiguous, updated in place
    DT,  # pointer to dt (fp32, one value)
    KEEP,  # pointer to the keep mask [1 or B, T] (uint8 view of the bool)
    XIN,  # pointer to the next estimator input [R*B, T, F] (row stride stride_im per frame)
    B,
    F,
    T,
    stride_vm,
    stride_im,
    stride_kb,
    c_cond,  # 1 + r (fp32)
    c_uncond,  # r (fp32)
    CFG: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    b = tl.program_id(1)
    rt = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rf = tl.arange(0, BLOCK_F)
    t_ok = rt < T
    mask = t_ok[:, None] & (rf < F)[None, :]
    row = (b * T + rt).to(tl.int64)
    v = tl.load(V + row[:, None] * stride_vm + rf[None, :], mask=mask, other=0.0).to(tl.float32)
    if CFG:
        vu = tl.load(V + (row + B * T)[:, None] * stride_vm + rf[None, :], mask=mask, other=0.0).to(tl.float32)
        v = c_cond * v - c_uncond * vu
    x_ptrs = X + b.to(tl.int64) * F * T + rf[None, :] * T + rt[:, None]
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    dt = tl.load(DT)
    x = x + dt * v
    keep = tl.load(KEEP + b * stride_kb + rt, mask=t_ok, other=0) != 0
    x = tl.where(keep[:, None], x, 0.0)
    tl.store(x_ptrs, x, mask=mask)
    xi = cast_to(x, XIN.dtype.element_ty)
    tl.store(XIN + row[:, None] * stride_im + rf[None, :], xi, mask=mask)
    if CFG:
        tl.store(XIN + (row + B * T)[:, None] * stride_im + rf[None, :], xi, mask=mask)


def _config(F: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_F, num_warps): a whole mel row per program (F = 80 -> 128), 32 frames."""
    return 32, triton.next_power_of_2(max(F, 1)), 4


def cfm_euler_fwd(v: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, keep: torch.Tensor, xin: torch.Tensor, *,
                  rate: float) -> None:  # fmt: skip
    """One Euler step of the CFM loop, in place on x and xin (see the module docstring)."""
    rate = float(rate)
    validate_once(cfm_euler_args, "cfm_euler_fwd", v, x, dt, keep, xin, rate=rate)
    check_launchable(x, "cfm_euler_fwd")
    B, F, T = x.shape
    if B * F * T == 0:
        return
    BT, BF, warps = _config(F)
    k = keep.view(torch.uint8)
    v2 = rows_view("v", v, F)
    xin2 = rows_view("xin", xin, F)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        note_launch("cfm_euler")
        _cfm_euler_kernel[(cdiv(T, BT), B)](
            v2, x, dt, k, xin2, B, F, T, v2.stride(0), xin2.stride(0), k.stride(0) if k.shape[0] > 1 else 0,
            1.0 + rate, rate,  # passed as fp32 (the kernel's float arguments)
            CFG=rate > 0, BLOCK_T=BT, BLOCK_F=BF, num_warps=warps,
        )  # fmt: skip


def compile_variants(eulers=()):
    """``eulers``: (tag, F, xin's row stride, dtypes of v and xin) of the CFM loop; both CFG settings each."""
    for tag, F, stride_im, dtypes in eulers:
        for dt in dtypes:
            for cfg in (True, False):
                BT, BF, warps = _config(F)
                const = dict(CFG=cfg, BLOCK_T=BT, BLOCK_F=BF)
                sig = {"V": f"*{dt}", "X": "*fp32", "DT": "*fp32", "KEEP": "*u8", "XIN": f"*{dt}", "B": "i32",
                       "F": "i32", "T": "i32", "stride_vm": "i32", "stride_im": "i32", "stride_kb": "i32", "c_cond": "fp32",
                       "c_uncond": "fp32", **{k: "constexpr" for k in const}}  # fmt: skip
                divisible = ["V", "X", "DT", "KEEP", "XIN"] + (["F", "stride_vm"] if F % 16 == 0 else [])
                divisible += ["stride_im"] if stride_im % 16 == 0 else []
                name = f"cfm_euler/{tag}/{dt}/{'cfg' if cfg else 'nocfg'}/BT{BT}xBF{BF}"
                yield name, _cfm_euler_kernel, sig, const, warps, divisible, 64
