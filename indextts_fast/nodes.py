"""Graph nodes, counted on any machine: what one decode tick or one CFM step would put into a CUDA graph.

Inside a CUDA graph every kernel is a node, and each node costs about 1-2 µs of dead time however little it
computes. ``count_nodes()`` counts, for the code run inside it:

    triton:<kernel>  every kernel our launchers launch (``indextts_kernels.count_launches``: the launchers note
                     each launch, split-K reduce passes included)
    aten:<op>        every aten op dispatched outside our launchers that is not a view and not a bare
                     allocation (``empty``: the graph's memory pool, no node)

The eager path and the graph path are the same code (``_graphs.Graphed`` captures what runs eagerly), so this is
the graph's node count, with two approximations: an aten op counts one node although a few launch several kernels
(sort, topk, cumsum on CUDA), and a host sync (``aten:_local_scalar_dense``, which a capture refuses) is counted
like any op, so that a test can see it. Our ops must launch their Triton kernels (CUDA or the Triton interpreter:
``TRITON_INTERPRET=1``); on the torch reference backend an op is many aten ops and the count is refused.

``count_calls(owner, name)`` counts each call of ``owner.name`` separately (one Counter per call), e.g. the
decode tick ``DecodeState.tick`` or the CFM step ``s2mel.cfm.cfm_step``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import indextts_kernels

from ._dispatch import TORCH, backend_for

__all__ = ["count_nodes", "count_calls", "launcher", "total", "breakdown"]

_aten = torch.ops.aten
# allocations and metadata-only ops: no kernel, so no node
_NO_NODE = {
    _aten.empty.memory_format, _aten.empty_strided.default, _aten.empty_like.default, _aten.new_empty.default,
    _aten.new_empty_strided.default, _aten.lift_fresh.default, _aten.detach.default, _aten.alias.default,
    _aten.resize_.default, _aten.set_.source_Storage_storage_offset,
}  # fmt: skip

_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


@contextlib.contextmanager
def launcher():
    """What runs inside is one of our launchers: its own aten ops (argument checks, output allocation, the
    interpreter's copies) are not nodes; the launches it notes are."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1


class _AtenCounter(TorchDispatchMode):
    def __init__(self, counter: collections.Counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _depth() == 0 and not func.is_view and func not in _NO_NODE:
            self.counter["aten:" + func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_nodes(device="cpu"):
    """``with count_nodes() as c: ...`` -> c["triton:<kernel>"], c["aten:<op>"]: the nodes the block would put in a
    CUDA graph. Raises on the torch reference backend (an op's count would be its reference's aten ops)."""
    if backend_for(torch.device(device)) == TORCH:
        raise RuntimeError("count_nodes needs our Triton kernels to launch (CUDA, or TRITON_INTERPRET=1 on a CPU); "
                           "on the torch reference backend an op is many aten ops")  # fmt: skip
    counter: collections.Counter = collections.Counter()
    with indextts_kernels.count_launches() as launches, _AtenCounter(counter):
        yield counter
        # the launches noted so far, under their prefix (a caller reading c inside the block sees aten ops only)
    counter.update({"triton:" + k: n for k, n in launches.items()})


@contextlib.contextmanager
def count_calls(owner, name: str, device="cpu"):
    """Patch ``owner.name`` (a class or module attribute) so that each call's nodes are counted; yields the list of
    Counters (one per call, in order). The attribute is restored on exit."""
    original = getattr(owner, name)
    calls: list = []

    @functools.wraps(original)
    def counted(*args, **kwargs):
        with count_nodes(device) as c:
            out = original(*args, **kwargs)
        calls.append(c)
        return out

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


def total(counter: collections.Counter) -> int:
    return sum(counter.values())


def breakdown(counter: collections.Counter, title: str = "") -> str:
    """A few lines: the total, ours (triton) and the rest, then every entry, most frequent first."""
    ours = sum(n for k, n in counter.items() if k.startswith("triton:"))
    head = f"{title}: {total(counter)} nodes ({ours} of our kernels, {total(counter) - ours} aten ops)"
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return head + "\n    " + ", ".join(f"{k} {n}" for k, n in items)
