"""Instance-attribute patching with an exact undo: what ``enable`` changes on a live model, and how it reverts."""

from __future__ import annotations


class AttrPatch:
    """Sets instance attributes and remembers, for each, whether the instance had its own value before; ``undo``
    restores exactly that (an attribute the instance did not have is removed, so the class's method shows again)."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, bool, object]] = []

    def _set(self, obj, name: str, value) -> None:
        self._saved.append((obj, name, name in obj.__dict__, obj.__dict__.get(name)))
        setattr(obj, name, value)

    def _note_in_repr(self, module, note: str) -> None:
        """``print(module)`` shows ``note`` after the module's own extra_repr."""
        base = module.extra_repr
        self._set(module, "extra_repr", lambda: "\n".join(s for s in (base(), note) if s))

    def _undo(self) -> None:
        for obj, name, had, value in reversed(self._saved):
            if had:
                obj.__dict__[name] = value
            else:
                obj.__dict__.pop(name, None)
        self._saved.clear()
