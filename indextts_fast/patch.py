"""``enable`` / ``revert``: the fast backend on a live IndexTTS2 object, or on one of its parts.

    handle = indextts_fast.enable(tts)          # tts = indextts.infer_v2.IndexTTS2(...)
    print(handle.report())                      # each part swapped or skipped (why), and the backend it runs on
    handle.revert()                             # the original methods back, exactly
    with indextts_fast.enabled(tts): ...

Targets, recognized by class and structure (never by a version string): an IndexTTS2 object (``.gpt`` a
UnifiedVoice, ``.s2mel`` a MyModel, ``.bigvgan`` a BigVGAN), a UnifiedVoice, the s2mel MyModel, its CFM, the DiT
estimator, or the BigVGAN vocoder. What changes is a handful of instance attributes (see ``gpt/patch.py``,
``s2mel/patch.py`` and ``vocoder/patch.py``): no module is
swapped and no parameter touched, so ``state_dict()`` keys and values are unchanged while enabled. Each enabled
part has a lock (concurrent calls run one at a time, each with its own official result) and checks its watched
modules at each call: weights reloaded, edited, cast or moved after ``enable`` are followed (the fast weights
rebuilt) or refused by name, never run stale.

Lifetimes: the registry and the handle hold models weakly (the model holds its patches, the patches hold the
handle), so ``del`` + gc frees an enabled model with its KV caches and graphs; ``copy.deepcopy`` / ``pickle`` of an
enabled model give the official, unpatched model. A second ``enable`` on the same target with the same options
returns the live handle, with other options raises; an ``enable`` with nothing to do raises. ``enable`` and
``revert`` are serialized by one lock, so two threads cannot patch one model twice or half.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Optional

import torch
from torch import nn

from ._dispatch import backend_for
from .errors import UnsupportedModel

__all__ = ["enable", "enabled", "FastHandle", "UnsupportedModel"]

_LOCK = threading.RLock()
# target -> weakref(its live handle); enabled part -> weakref(its handle). Weak both ways: a handle lives while its
# parts are patched (each part's patch holds it), so an enabled model is freed by ``del`` + gc like any other.
_HANDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PATCHED_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Part:
    """One part of a handle: its module and its patch, both held weakly (the model holds its patches, its patches
    hold the handle; a handle never keeps a model alive)."""

    def __init__(self, name: str, obj, status: str, detail: str, patch=None):
        self.name, self.status, self.detail = name, status, detail  # status: "fast" | "skipped"
        self._obj = weakref.ref(obj)
        self._patch = weakref.ref(patch) if patch is not None else None

    @property
    def obj(self):
        return self._obj()

    @property
    def patch(self):
        return self._patch() if self._patch is not None else None

    def state(self) -> tuple[str, str]:
        """(status, detail) as things are now: a patch reports a later change (a re-run of post_init_gpt2_config),
        and a part whose model was freed says so."""
        if self._patch is not None and self.patch is None:
            return "freed", "the model was freed"
        if self.patch is not None and self.patch.status != "fast":
            return self.patch.status, self.patch.detail
        return self.status, self.detail


def _is_unified_voice(m) -> bool:
    return isinstance(m, nn.Module) and hasattr(m, "gpt") and hasattr(m, "mel_head") and hasattr(m, "final_norm")


def _is_cfm(m) -> bool:
    return isinstance(m, nn.Module) and hasattr(m, "estimator") and hasattr(m, "solve_euler")


def _is_dit(m) -> bool:
    return isinstance(m, nn.Module) and hasattr(m, "transformer") and hasattr(m, "cond_x_merge_linear")


def _is_s2mel(m) -> bool:
    models = getattr(m, "models", None)
    return isinstance(m, nn.Module) and isinstance(models, (nn.ModuleDict, dict)) and "cfm" in models


def _is_bigvgan(m) -> bool:
    from .vocoder.bigvgan import is_bigvgan

    return is_bigvgan(m)


def _resolve(target) -> dict[str, object]:
    """{'gpt': UnifiedVoice, 's2mel': CFM or DiT, 'vocoder': BigVGAN} of whatever the target holds."""
    if _is_unified_voice(target):
        return {"gpt": target}
    if _is_s2mel(target):
        return {"s2mel": target.models["cfm"]}
    if _is_cfm(target) or _is_dit(target):
        return {"s2mel": target}
    if _is_bigvgan(target):
        return {"vocoder": target}
    gpt, s2mel, voc = getattr(target, "gpt", None), getattr(target, "s2mel", None), getattr(target, "bigvgan", None)
    if _is_unified_voice(gpt) or _is_s2mel(s2mel) or _is_bigvgan(voc):
        parts = {}
        if _is_unified_voice(gpt):
            parts["gpt"] = gpt
        if _is_s2mel(s2mel):
            parts["s2mel"] = s2mel.models["cfm"]
        if _is_bigvgan(voc):
            parts["vocoder"] = voc
        return parts
    raise TypeError(
        f"enable: target must be an IndexTTS2 object or one of its parts (UnifiedVoice, the s2mel MyModel, its CFM, "
        f"the DiT, the BigVGAN vocoder); got {type(target).__module__}.{type(target).__qualname__}"
    )


def _device_of(m) -> torch.device:
    for p in m.parameters():
        return p.device
    return torch.device("cpu")


class FastHandle:
    """What ``enable`` did to one target: the parts swapped and skipped, the options, and their exact undo."""

    def __init__(self, target, parts: list[_Part], options: dict):
        # weakly: a handle must not keep its model alive (a target that takes no weak reference, a plain
        # namespace holding the parts, say, is held strongly: it is no model itself)
        self._target = weakref.ref(target) if _weakrefable(target) else (lambda t=target: t)
        self._name = type(target).__name__
        self.parts, self.options = parts, dict(options)
        self.live = True
        for p in parts:
            if p.patch is not None:
                p.patch.handle = self  # the patched model holds its handle, not the other way round

    @property
    def target(self):
        return self._target()

    def report(self) -> str:
        lines = [f"indextts_fast on {self._name}" + ("" if self.live else " (reverted)")]
        for p in self.parts:
            status, detail = p.state()
            lines.append(f"  {p.name:<7} {status:<8} {detail}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.report()

    def revert(self) -> None:
        """Put back the original methods; outputs are then bit-identical to a never-enabled model."""
        with _LOCK:
            if not self.live:
                return
            for p in reversed(self.parts):
                patch, obj = p.patch, p.obj
                if patch is not None:
                    patch.revert()
                if obj is not None:
                    _PATCHED_PARTS.pop(obj, None)
            t = self.target
            if t is not None and _weakrefable(t) and _live_handle(_HANDLES.get(t)) is self:
                del _HANDLES[t]
            self.live = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.revert()
        return False


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _live_handle(ref) -> Optional[FastHandle]:
    h = ref() if ref is not None else None
    return h if h is not None and h.live else None


def _handle_of(target) -> Optional[FastHandle]:
    """The live handle enabled on ``target`` itself (found through its parts when it takes no weak reference)."""
    if _weakrefable(target):
        return _live_handle(_HANDLES.get(target))
    try:
        found = _resolve(target)
    except TypeError:
        return None
    for obj in found.values():
        h = _live_handle(_PATCHED_PARTS.get(obj))
        if h is not None and h.target is target:
            return h
    return None


def _install(patch, note: str) -> None:
    try:
        patch.install(note)
    except BaseException:
        patch.revert()
        raise


def _gpt_part(uv, strict: bool, graphs: Optional[bool]) -> _Part:
    from .gpt import patch as gp

    reason = gp.unsupported_reason(uv)
    if reason is not None:
        if strict:
            raise UnsupportedModel(f"gpt: {reason}")
        return _Part("gpt", uv, "skipped", reason)
    patch = gp.GPTPatch(uv, graphs=graphs)
    fast = patch.fast
    backend = backend_for(fast.device)
    dtype = str(fast.dtype).replace("torch.", "")
    _install(patch, f"(indextts_fast: generate and latent pass on {backend}, {dtype} operands, fp32 stream)")
    what = "IndexTTS-2.5 decode loop" if gp.is_indextts25(uv) else "decode loop + latent pass"
    return _Part("gpt", uv, "fast", f"{what}, {fast.n_layers} layers, {dtype}, on {backend}", patch)


def _s2mel_part(obj, strict: bool, precision: Optional[str], graphs: Optional[bool]) -> _Part:
    from .s2mel import patch as sp

    reason = sp.unsupported_reason(obj)
    if reason is not None:
        if strict:
            raise UnsupportedModel(f"s2mel: {reason}")
        return _Part("s2mel", obj, "skipped", reason)
    patch = sp.S2MelPatch(obj, precision=precision, graphs=graphs)
    backend = backend_for(_device_of(obj))
    _install(patch, f"(indextts_fast: {patch.what} on {backend})")
    return _Part("s2mel", obj, "fast", f"{patch.what}, {patch.precision_note}, on {backend}", patch)


def _vocoder_part(net, strict: bool, graphs: Optional[bool]) -> _Part:
    from .vocoder import patch as vp

    reason = vp.unsupported_reason(net)
    if reason is not None:
        if strict:
            raise UnsupportedModel(f"vocoder: {reason}")
        return _Part("vocoder", net, "skipped", reason)
    patch = vp.VocoderPatch(net, graphs=graphs)
    backend = backend_for(_device_of(net))
    _install(patch, f"(indextts_fast: the forward on {backend}, anti-aliased activations fused)")
    return _Part("vocoder", net, "fast", f"{patch.what}, on {backend}", patch)


def _options(gpt, s2mel, vocoder, strict, dit_precision, graphs) -> dict:
    from .s2mel.dit import DEFAULT_PRECISION

    return dict(gpt=bool(gpt), s2mel=bool(s2mel), vocoder=bool(vocoder), strict=bool(strict),
                dit_precision=dit_precision or DEFAULT_PRECISION, graphs=graphs)  # fmt: skip


def enable(target, *, gpt: bool = True, s2mel: bool = True, vocoder: bool = True, strict: bool = True,
           dit_precision: Optional[str] = None, graphs: Optional[bool] = None) -> FastHandle:  # fmt: skip
    """Run ``target``'s GPT generation, its teacher-forced latent pass, its CFM/DiT and its BigVGAN vocoder on
    indextts_fast.

    ``strict``: a part of a variant the fast backend does not implement raises UnsupportedModel (else it is skipped
    and the report says why; if no part is left, enable raises). IndexTTS-2 and IndexTTS-2.5. ``dit_precision``
    overrides the DiT's fp32 product precision ("ieee" exact, "tf32x3", "tf32"; default: the s2mel module's
    documented default, tf32x3; "bf16" / "fp16": the estimator in that dtype, opt-in). ``graphs``: replay the GPT's
    per-token tick, the CFM loop and the vocoder (per length bucket) as CUDA graphs (default: on CUDA; False runs
    the same loops eagerly, the same results). ``vocoder``: the BigVGAN forward on the fused anti-aliased
    activation (no CUDA extension built or called).

    On a target already enabled: the same options return its live handle; other options raise ValueError (revert
    it first). Nothing is changed when enable raises.
    """
    options = _options(gpt, s2mel, vocoder, strict, dit_precision, graphs)
    with _LOCK:
        live = _handle_of(target)
        if live is not None:
            if live.options != options:
                diff = ", ".join(f"{k}={options[k]!r} (enabled with {live.options[k]!r})" for k in options
                                 if options[k] != live.options[k])  # fmt: skip
                raise ValueError(f"enable: {type(target).__name__} is already enabled with other options: {diff}; "
                                 "revert() its handle first")  # fmt: skip
            return live
        found = _resolve(target)
        wanted = {"gpt": gpt, "s2mel": s2mel, "vocoder": vocoder}
        parts: list[_Part] = []
        try:
            for name in ("gpt", "s2mel", "vocoder"):
                obj = found.get(name)
                if obj is None:
                    continue
                if not wanted[name]:
                    parts.append(_Part(name, obj, "skipped", f"{name}=False"))
                    continue
                if _live_handle(_PATCHED_PARTS.get(obj)) is not None:
                    raise ValueError(
                        f"enable: the {name} part is already enabled through another handle; revert it first"
                    )
                if name == "gpt":
                    part = _gpt_part(obj, strict, graphs)
                elif name == "s2mel":
                    part = _s2mel_part(obj, strict, dit_precision, graphs)
                else:
                    part = _vocoder_part(obj, strict, graphs)
                parts.append(part)
            if not any(p.patch is not None for p in parts):
                why = "; ".join(f"{p.name}: {p.detail}" for p in parts) or "no part"
                error = UnsupportedModel if any("=False" not in p.detail for p in parts) else ValueError
                raise error(f"enable: nothing to enable on {type(target).__name__} ({why})")
        except BaseException:
            for p in reversed(parts):  # never half-patched
                if p.patch is not None:
                    p.patch.revert()
            raise
        handle = FastHandle(target, parts, options)
        for p in parts:
            if p.patch is not None:
                _PATCHED_PARTS[p.obj] = weakref.ref(handle)
        if _weakrefable(target):
            _HANDLES[target] = weakref.ref(handle)
        return handle


@contextlib.contextmanager
def enabled(target, **kwargs):
    """``with enabled(tts): ...`` — enable for the block, revert after it (unless it was already enabled)."""
    with _LOCK:
        pre = _handle_of(target)
        h = enable(target, **kwargs)
    try:
        yield h
    finally:
        if pre is None:
            h.revert()
