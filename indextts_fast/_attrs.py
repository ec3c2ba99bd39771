"""Instance-attribute patching with an exact undo: what ``enable`` changes on a live model, and how it reverts.

A patched object also gets an instance ``__reduce_ex__`` that leaves the patched attributes out of its state, so
``copy.deepcopy`` and ``pickle`` (``torch.save`` of the module) of an enabled model give the official, unpatched
model: the copy runs the official code, holds no reference to the fast backend, and is never enabled itself.
"""

from __future__ import annotations

_REDUCE = "__reduce_ex__"
_MISSING = object()


class _UnpatchedReduce:
    """``obj.__reduce_ex__`` while ``obj`` is patched: the class's own reduction of ``obj`` with the patched
    attributes' values from before the patch in the state (or none, where the instance had none)."""

    def __init__(self, obj, prev) -> None:
        self.obj, self.prev = obj, prev
        self.names: dict[str, list] = {}  # name -> [patches holding it, the instance had one before, its value]

    def __call__(self, protocol):
        obj = self.obj
        rv = type(obj).__reduce_ex__(obj, protocol)
        if isinstance(rv, tuple) and len(rv) > 2 and isinstance(rv[2], dict):
            state = {k: v for k, v in rv[2].items() if k not in self.names and k != _REDUCE}
            state.update({k: value for k, (_, had, value) in self.names.items() if had})
            rv = (*rv[:2], state, *rv[3:])
        return rv


class AttrPatch:
    """Sets instance attributes and remembers, for each, whether the instance had its own value before; ``_undo``
    restores exactly that (an attribute the instance did not have is removed, so the class's method shows again)."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, bool, object]] = []

    def _set(self, obj, name: str, value) -> None:
        d = obj.__dict__
        self._saved.append((obj, name, name in d, d.get(name)))
        reducer = d.get(_REDUCE)
        if not isinstance(reducer, _UnpatchedReduce):
            reducer = d[_REDUCE] = _UnpatchedReduce(obj, d.get(_REDUCE, _MISSING))
        reducer.names.setdefault(name, [0, name in d, d.get(name)])[0] += 1
        setattr(obj, name, value)

    def _note_in_repr(self, module, note: str) -> None:
        """``print(module)`` shows ``note`` after the module's own extra_repr."""
        self._set(module, "extra_repr", _ExtraRepr(module.extra_repr, note))

    def _undo(self) -> None:
        for obj, name, had, value in reversed(self._saved):
            d = obj.__dict__
            if had:
                d[name] = value
            else:
                d.pop(name, None)
            reducer = d.get(_REDUCE)
            if isinstance(reducer, _UnpatchedReduce) and name in reducer.names:
                reducer.names[name][0] -= 1
                if not reducer.names[name][0]:
                    del reducer.names[name]
                if not reducer.names:  # no patch left on this object: its own reduction back
                    if reducer.prev is _MISSING:
                        del d[_REDUCE]
                    else:
                        d[_REDUCE] = reducer.prev
        self._saved.clear()


class _ExtraRepr:
    def __init__(self, base, note: str) -> None:
        self.base, self.note = base, note

    def __call__(self) -> str:
        return "\n".join(s for s in (self.base(), self.note) if s)
