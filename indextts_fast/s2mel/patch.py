"""The s2mel side of ``indextts_fast.enable``: what is replaced on a live CFM (or a lone DiT), and the undo.

On a CFM: the instance attribute ``cfm.inference`` -> a ``CFMLoop`` (the official 25-step Euler loop with CFG, our
own; on CUDA one CUDA graph per length bucket) with FastDiT as the estimator; the estimator module itself is left
as it is (a ``torch.compile``d one included: FastDiT is built from the module it wraps). On a lone DiT:
``dit.forward`` -> FastDiT.
FastDiT holds the loader's kernel-layout tensors of the live DiT (``remap_live``: views where the layout is the
module's own, the packed w13 / stacked AdaLN / folded weight-norm tensors new), no file involved.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch

from .. import loader
from .._attrs import AttrPatch
from .._watch import ModuleWatch
from ..errors import UnsupportedModel
from ..profiling import nvtx_range
from .cfm import CFMLoop
from .dit import DEFAULT_PRECISION, PRECISIONS, ROPE_POSITIONS, FastDiT
from .dit import unsupported_reason as dit_unsupported_reason

__all__ = ["unsupported_reason", "S2MelPatch", "build_fast_dit", "official_positions"]


def _estimator(obj):
    """The DiT of a CFM (unwrapping a torch.compile'd estimator), or the DiT itself."""
    est = getattr(obj, "estimator", obj)
    return getattr(est, "_orig_mod", est)


def unsupported_reason(obj) -> Optional[str]:
    if hasattr(obj, "estimator") and not callable(getattr(obj, "inference", None)):
        return f"{type(obj).__name__} has an estimator but no inference() to replace"
    return dit_unsupported_reason(_estimator(obj))


def build_fast_dit(obj, precision: str) -> FastDiT:
    """FastDiT over the loader's kernel-layout tensors of the live DiT (of ``obj``, a CFM or the DiT)."""
    dit = _estimator(obj)
    with torch.no_grad():
        tensors, report = loader.remap_live(dit, "s2mel", parts=("cfm",))
        tensors = {k: v.detach() for k, v in tensors.items()}
        weights = loader.dit_weights(tensors, report.dims, stack_adaln=True)
    eps = dict(rms_eps=dit.transformer.norm.eps, final_eps=dit.final_layer.norm_final.eps)
    return FastDiT(weights, report.dims, precision=precision, rope_positions=official_positions(dit), **eps)


def official_positions(dit) -> int:
    """The longest sequence the official DiT runs: its ``input_pos`` buffer and its RoPE table ``freqs_cis`` (both
    ``block_size`` = 16384 positions, whatever ``setup_caches``' max_seq_length says: that only decides whether the
    table is rebuilt); beyond it the official forward fails on a shape mismatch."""
    n = [ROPE_POSITIONS]
    pos = getattr(dit, "input_pos", None)
    if isinstance(pos, torch.Tensor):
        n.append(pos.numel())
    table = getattr(getattr(dit, "transformer", None), "freqs_cis", None)
    if isinstance(table, torch.Tensor):
        n.append(table.shape[0])
    return min(n)


class S2MelPatch(AttrPatch):
    """The replacement on one CFM (or lone DiT), its lock, its exact undo. Every call holds the lock (one call at
    a time per model: the CFM loop's graphs own static buffers) and first checks the DiT's modules (``ModuleWatch``):
    weights changed after ``enable`` rebuild the fast DiT (and drop the graphs); a change it does not implement (a
    dtype other than fp32, training mode) raises ``UnsupportedModel`` naming it."""

    def __init__(self, obj, *, precision: Optional[str] = None, graphs: Optional[bool] = None):
        super().__init__()
        precision = precision or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise ValueError(f"enable: dit_precision must be one of {PRECISIONS}, got {precision!r}")
        self.obj, self.precision, self.graphs = obj, precision, graphs
        self.lock = threading.RLock()
        self.is_cfm = hasattr(obj, "estimator")
        self.what = "CFM Euler loop + DiT estimator" if self.is_cfm else "DiT estimator"
        self.status, self.detail = "fast", ""
        self.calls = {"inference": 0, "rebuilds": 0}
        self._build()

    def _build(self) -> None:
        self.fast = build_fast_dit(self.obj, self.precision)
        self.loop = CFMLoop(self.obj, self.fast, graphs=self.graphs) if self.is_cfm else None
        self.watch = ModuleWatch({"cfm" if self.is_cfm else "dit": self.obj})

    @property
    def precision_note(self) -> str:
        low = self.fast.act_dtype is not None
        return f"{self.precision} estimator (opt-in)" if low else f"fp32 products {self.precision}"

    def current(self) -> None:
        """Rebuild the fast DiT if a watched weight changed since it was built; refuse what it cannot follow."""
        what = self.watch.changed()
        if what is None:
            return
        reason = unsupported_reason(self.obj)
        if reason is not None:
            raise UnsupportedModel(f"s2mel: {what} after enable(), and now {reason}; revert() runs the official code")
        self.loop = None  # its graphs hold the old weights' addresses: freed before the new ones are built
        self._build()
        self.calls["rebuilds"] += 1

    # --- the replacements ------------------------------------------------------------------------------------------
    def inference(self, mu, x_lens, prompt, style, f0, n_timesteps, temperature=1.0, inference_cfg_rate=0.5):
        with self.lock:
            self.current()
            with torch.inference_mode(), torch.autocast(mu.device.type, enabled=False), nvtx_range("s2mel.cfm"):
                out = self.loop(mu, x_lens, prompt, style, f0, n_timesteps, temperature=temperature,
                                inference_cfg_rate=inference_cfg_rate)  # fmt: skip
            self.calls["inference"] += 1
            return out

    def forward(self, x, prompt_x, x_lens, t, style, cond, mask_content=False):
        if mask_content:
            raise ValueError("the fast DiT does not implement mask_content=True (training-time content dropout)")
        with self.lock:
            self.current()
            self.calls["inference"] += 1
            return self.fast(x, prompt_x, x_lens, t, style, cond)

    # --- install / undo ------------------------------------------------------------------------------------------
    def install(self, note: str) -> None:
        obj = self.obj
        self._set(obj, "inference" if self.is_cfm else "forward", self.inference if self.is_cfm else self.forward)
        self._note_in_repr(obj, note)

    def revert(self) -> None:
        with self.lock:
            self._undo()
            self.loop = None
