"""What the fast paths copied or viewed from a live module, and whether it has changed since.

The fast GPT and DiT hold kernel-layout tensors built from a module's parameters at ``enable``: some are views of
the live parameters (an in-place edit shows through), others copies (transposed, packed, folded: an edit does not).
``ModuleWatch`` snapshots, for every module of the watched trees, the identity of each child module, parameter
and buffer, and each tensor's version counter, data pointer, dtype, device and shape, plus the module's training
flag. ``changed()`` compares them at each call (a few hundred dictionary lookups, no device work) and names the
first difference: ``load_state_dict`` (in-place copies: the version counters move), ``param.data = ...``,
``.half()`` / ``.to()`` (new data pointers and dtypes), assigned parameters or modules (new identities), an
in-place edit of any weight, ``.train()``. The owner then rebuilds its fast weights or refuses, never runs stale.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["ModuleWatch"]


def _tensor_key(t: torch.Tensor) -> tuple:
    # inference tensors (made under torch.inference_mode) keep no version counter: their in-place edits are not
    # seen (nothing can see them), everything else is
    version = None if t.is_inference() else t._version
    return (version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


class ModuleWatch:
    def __init__(self, roots: dict[str, nn.Module]):
        self.roots = dict(roots)
        self._snap = self._snapshot()

    def _snapshot(self) -> list[tuple]:
        entries = []
        for root_name, root in self.roots.items():
            for mod_name, mod in root.named_modules(prefix=root_name, remove_duplicate=False):
                entries.append((mod_name, "training", mod, mod.training))
                for kind in ("_modules", "_parameters", "_buffers"):
                    d = mod.__dict__[kind]
                    for name, obj in d.items():
                        key = _tensor_key(obj) if isinstance(obj, torch.Tensor) else None
                        entries.append((f"{mod_name}.{name}", kind, d, name, obj, key))
                    entries.append((mod_name, kind + " names", d, tuple(d)))
        return entries

    def changed(self) -> Optional[str]:
        """None while nothing watched changed, else what did (one phrase)."""
        for e in self._snap:
            kind = e[1]
            if kind == "training":
                if e[2].training != e[3]:
                    return f"{e[0] or 'the module'} was switched to {'training' if e[2].training else 'eval'} mode"
            elif kind.endswith(" names"):
                if tuple(e[2]) != e[3]:
                    return f"the {kind[1:-7]} of {e[0] or 'the module'} were added or removed"
            else:
                _, _, d, name, obj, key = e
                now = d.get(name)
                if now is not obj:
                    return f"{e[0]} was replaced"
                if key is not None and _tensor_key(obj) != key:
                    return _what(e[0], key, _tensor_key(obj))
        return None

    def refresh(self) -> None:
        self._snap = self._snapshot()


def _what(name: str, before: tuple, now: tuple) -> str:
    if now[2] != before[2]:
        return f"{name} changed dtype ({before[2]} -> {now[2]})"
    if now[3] != before[3]:
        return f"{name} moved ({before[3]} -> {now[3]})"
    if now[4] != before[4]:
        return f"{name} changed shape ({list(before[4])} -> {list(now[4])})"
    return f"{name} was modified in place or given new data"
