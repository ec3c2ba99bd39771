"""The vocoder side of ``indextts_fast.enable``: what is replaced on a live BigVGAN, and the undo.

The instance attribute ``bigvgan.forward`` -> ``VocoderPatch.forward``: the official forward on FastBigVGAN (every
anti-aliased activation on the fused Triton kernel; on CUDA one CUDA graph per length bucket). Nothing of the
official activation code runs while enabled, whether the vocoder was built with ``use_cuda_kernel`` True or
False: the CUDA extension's module is neither imported nor built by us, and its forward is never called. Hooks on
the module still run (``nn.Module.__call__`` calls the instance's ``forward``). ``revert()`` removes the attribute.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch

from .._attrs import AttrPatch
from .._watch import ModuleWatch
from ..errors import UnsupportedModel
from ..profiling import nvtx_range
from .bigvgan import FastBigVGAN, VocoderLoop, unsupported_reason

__all__ = ["unsupported_reason", "VocoderPatch"]


class VocoderPatch(AttrPatch):
    """The replacement on one BigVGAN, its lock, its exact undo. Every call holds the lock (the graphs own static
    buffers) and first checks the vocoder's modules (``ModuleWatch``): weights changed after ``enable`` rebuild the
    fast vocoder (and drop its graphs); a change it does not implement (a dtype other than fp32, training mode)
    raises ``UnsupportedModel`` naming it."""

    def __init__(self, net, *, graphs: Optional[bool] = None):
        super().__init__()
        self.net, self.graphs = net, graphs
        self.lock = threading.RLock()
        self.status, self.detail = "fast", ""
        self.calls = {"forward": 0, "rebuilds": 0}
        self._build()

    def _build(self) -> None:
        with torch.no_grad():
            self.fast = FastBigVGAN(self.net)
        self.loop = VocoderLoop(self.fast, graphs=self.graphs)
        self.watch = ModuleWatch({"bigvgan": self.net})

    @property
    def what(self) -> str:
        f = self.fast
        graphs = ", a CUDA graph per length bucket" if self.loop.graphs else ""
        return (f"BigVGAN: {f.n_activations} anti-aliased activations fused, {len(f.ups)} upsampling stages "
                f"(x{f.hop}), fp32{graphs}")  # fmt: skip

    def current(self) -> None:
        what = self.watch.changed()
        if what is None:
            return
        reason = unsupported_reason(self.net)
        if reason is not None:
            raise UnsupportedModel(f"vocoder: {what} after enable(), and now {reason}; revert() runs the official code")
        self.loop = None  # its graphs hold the old weights' addresses
        self._build()
        self.calls["rebuilds"] += 1

    def forward(self, x):
        with self.lock:
            self.current()
            dev = x.device.type if isinstance(x, torch.Tensor) else "cpu"
            with torch.inference_mode(), torch.autocast(dev, enabled=False), nvtx_range("vocoder.fast"):
                out = self.loop(x)
            self.calls["forward"] += 1
            return out

    def install(self, note: str) -> None:
        self._set(self.net, "forward", self.forward)
        self._note_in_repr(self.net, note)

    def revert(self) -> None:
        with self.lock:
            self._undo()
            self.loop = None
