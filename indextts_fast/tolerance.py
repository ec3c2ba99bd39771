"""The tolerance rule: the one implementation the tests, the demo and the op demo judge results by.

    max |out - high|  <=  2 * max |low - high|  +  eps(dtype of out) * max(1, max |high|)

``out`` is ours, ``low`` PyTorch's result (the official module's) at the same dtype, ``high`` the fp64 reference:
flash-attention's rule, twice PyTorch's own error at that dtype plus one unit of the dtype's precision at the
reference's magnitude, with no hand-tuned tolerance. A NaN or inf anywhere in ``out`` fails (an element a kernel
never wrote into a NaN-poisoned output shows up that way).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Verdict", "judge", "floor"]


def floor(dtype: torch.dtype, high: torch.Tensor) -> float:
    """The rule's per-dtype floor: one unit of ``dtype``'s precision at the reference's largest magnitude."""
    return torch.finfo(dtype).eps * max(1.0, float(high.detach().abs().max())) if high.numel() else 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    err: float  # max |out - high|
    torch_err: float  # max |low - high|
    bound: float  # 2 * torch_err + floor
    nonfinite: int  # non-finite elements of out

    def __str__(self) -> str:
        if self.nonfinite:
            return f"{self.nonfinite} non-finite values"
        return f"err {self.err:.2e} {'<=' if self.ok else '>'} {self.bound:.2e}"


def judge(out: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> Verdict:
    """The rule applied to ``out`` (same shape as ``low`` and ``high``)."""
    if not out.shape == low.shape == high.shape:
        raise ValueError(f"tolerance rule: shapes {tuple(out.shape)}, {tuple(low.shape)}, {tuple(high.shape)} differ")
    o, lo, hi = (t.detach().double().cpu() for t in (out, low, high))
    nonfinite = int((~torch.isfinite(o)).sum())
    err = float((o - hi).abs().max()) if o.numel() else 0.0
    torch_err = float((lo - hi).abs().max()) if o.numel() else 0.0
    bound = 2 * torch_err + floor(out.dtype, hi)
    return Verdict(nonfinite == 0 and err <= bound, err, torch_err, bound, nonfinite)
