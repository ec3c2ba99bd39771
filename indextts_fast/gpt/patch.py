"""The GPT side of ``indextts_fast.enable``: what is replaced on a live UnifiedVoice, and the replacements.

Instance attributes only (no module is swapped, so ``state_dict()`` is untouched):
    uv.inference_model.generate   our decode loop (decode.py) instead of Hugging Face generate. The official
                                  ``inference_speech`` still builds the conditioning (conformer, perceiver,
                                  emotion vector, speed embeddings), the text embeddings and the prompt, in both
                                  code lines and whatever parameters a revision added ahead of them; only the
                                  generation itself changes hands.
    uv.get_logits                 the teacher-forced pass of ``UnifiedVoice.forward`` (``return_latent=True``) on
                                  our causal prefill; any other use (logits, attentions) runs the official code.
    uv.inference_speech           the official method, under this part's lock (it stores the prompt on the
                                  inference model, then generates from it: two threads must not interleave there)
    uv.post_init_gpt2_config      the official method, then the new inference model patched again (or the part
                                  reported skipped, with the reason, when the new one is not a GPT2InferenceModel)
Every entry point holds the part's lock (one call at a time per model: concurrent callers each get their own,
official result, one after another) and first checks the watched modules (``_watch.ModuleWatch``): weights
reloaded, edited in place, moved or cast after ``enable`` rebuild the fast weights; a change the fast GPT does not
implement (a dtype it has no path for, training mode) raises ``UnsupportedModel`` naming it. Our ops run with the
caller's autocast disabled: their numerics are those of the official run (model.py), whichever autocast is active.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import warnings
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from .. import loader
from .._attrs import AttrPatch
from .._watch import ModuleWatch
from ..errors import UnsupportedModel
from ..profiling import nvtx_range
from .decode import generate
from .model import FastGPT
from .sampling import UnsupportedGeneration, resolve_generation_args

__all__ = ["unsupported_reason", "is_indextts25", "build_fast_gpt", "masked_rows", "GPTPatch", "MAX_DECODERS"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the tanh GELU the fused MLP computes, by the names transformers gives it (indextts25-inference's 2.5 GPT-2 config
# says gelu_pytorch_tanh: the same formula)
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
MAX_DECODERS = 2  # decoders (KV caches) kept per model: one per row count (batch 1 and a beam count), LRU


def is_indextts25(uv) -> bool:
    """An IndexTTS-2.5 UnifiedVoice (``spk_cond_mode="campplus"``: CAMPPlus speaker prefix, language embedding)."""
    return getattr(uv, "spk_cond_mode", "conformer") == "campplus" or hasattr(uv, "spk_emb_proj")


def unsupported_reason(uv) -> Optional[str]:
    """None when ``uv`` is the UnifiedVoice variant the fast GPT implements, else what differs (one line)."""
    gpt = getattr(uv, "gpt", None)
    if gpt is None or type(gpt).__name__ != "GPT2Model" or not hasattr(gpt, "h"):
        return f"UnifiedVoice.gpt is {type(gpt).__name__}, not a GPT-2 (GPT2Model) stack"
    im = getattr(uv, "inference_model", None)
    if im is None:
        return "post_init_gpt2_config() has not been called (no inference_model)"
    if type(im).__name__ != "GPT2InferenceModel" or not hasattr(im, "generate"):
        return f"inference_model is {type(im).__name__} (DeepSpeed or another engine), not GPT2InferenceModel"
    if getattr(uv, "accel_engine", None) is not None:
        return "the accel engine (use_accel=True) generates instead of inference_model.generate"
    cfg = gpt.config
    act = getattr(cfg, "activation_function", None)
    if act not in _GELU_TANH:
        return f"GPT-2 config: activation_function={act!r} (expected one of {', '.join(map(repr, _GELU_TANH))})"
    checks = {
        "add_cross_attention": (getattr(cfg, "add_cross_attention", False), False),
        "scale_attn_weights": (getattr(cfg, "scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (getattr(cfg, "scale_attn_by_inverse_layer_idx", False), False),
        "reorder_and_upcast_attn": (getattr(cfg, "reorder_and_upcast_attn", False), False),
    }
    bad = [f"{k}={v!r} (expected {want!r})" for k, (v, want) in checks.items() if v != want]
    if bad:
        return "GPT-2 config: " + ", ".join(bad)
    if isinstance(getattr(gpt, "wpe", None), nn.Module):
        return "gpt.wpe is a learned position embedding, not IndexTTS2's null position embedding"
    C, H = cfg.n_embd, cfg.n_head
    if C % H or C // H not in (64, 128):
        return f"head_dim {C} // {H} = {C // H if C % H == 0 else C / H} (the attention kernels support 64 and 128)"
    inner = getattr(cfg, "n_inner", None)
    if inner not in (None, 4 * C):
        return f"n_inner={inner} (the fast MLP assumes 4 x n_embd)"
    for name in ("mel_embedding", "mel_pos_embedding", "final_norm", "mel_head"):
        if not hasattr(uv, name):
            return f"UnifiedVoice has no {name}"
    dtypes = {p.dtype for p in gpt.parameters()} | {uv.mel_head.weight.dtype, uv.final_norm.weight.dtype}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _SUPPORTED_DTYPES:
        found = sorted(str(d).replace("torch.", "") for d in dtypes)
        return (
            f"GPT weights of dtype {found} (supported: all float32, or all float16 / all bfloat16 as use_fp16 / "
            "use_bf16 halve them)"
        )
    devices = {p.device for p in gpt.parameters()} | {uv.mel_head.weight.device, uv.mel_embedding.weight.device}
    if len(devices) != 1:
        return f"the GPT's weights are spread over {sorted(map(str, devices))}"
    if any(m.training for root in _watched(uv).values() for m in root.modules()):
        return "the GPT is in training mode (its dropout draws random numbers); call .eval() first"
    return None


def _watched(uv) -> dict[str, nn.Module]:
    """The modules the fast GPT reads its weights from (the conditioning encoders stay with the official code)."""
    return {n: getattr(uv, n) for n in ("gpt", "mel_embedding", "mel_pos_embedding", "final_norm", "mel_head")}


def build_fast_gpt(uv) -> FastGPT:
    """Kernel-layout views of the live UnifiedVoice (the loader's remap: Conv1D weights transposed, identity
    transforms as views of the live parameters), no file involved."""
    with torch.no_grad():
        tensors, report = loader.remap_live(uv, "gpt")
        tensors = {k: v.detach() for k, v in tensors.items()}
        w = loader.gpt_weights(tensors, report.dims, {"source": "live UnifiedVoice"})
    cfg = uv.gpt.config
    return FastGPT(w, n_heads=cfg.n_head, ln_eps=cfg.layer_norm_epsilon, final_norm_eps=uv.final_norm.eps)


class _Seen(Exception):
    """Ends the position probe's official generate once its second step showed what it feeds."""


def official_position_offset(uv, use_cache=True) -> int:
    """Where the official generate of ``uv`` puts code k: mel position k + 2 (0: it keeps a KV cache and feeds one
    token per step, the official repository with ``kv_cache=True``) or k + 1 (-1: it feeds the whole sequence each
    step, as with ``kv_cache=False``, and as the transformers-5 refactor does under transformers 5.24 and 5.25,
    whose generate hands its cache over under another name; and with ``use_cache`` None or False, where the GPT-2
    config's own use_cache is False). Read off the official code itself: its generate is
    started on a one-row dummy prompt (the stop token suppressed) and stopped at its second step, once that step's
    inputs are known (one forward of two positions; the stored prompt and the random stream are left as they were;
    it runs once per inference model, kv_cache setting and use_cache argument). Where the probe
    cannot run (an official forward that fails on this device and dtype), the ``kv_cache`` flag decides."""
    im = uv.inference_model
    fallback = 0 if getattr(im, "kv_cache", True) and use_cache else -1
    fed: list[int] = []
    official_prepare = im.prepare_inputs_for_generation

    def spy(input_ids, *args, **kwargs):
        out = official_prepare(input_ids, *args, **kwargs)
        fed.append(int(out["input_ids"].shape[1]))
        if len(fed) == 2:
            raise _Seen
        return out

    w = uv.mel_embedding.weight
    stored, own = im.cached_mel_emb, im.__dict__.get("prepare_inputs_for_generation")
    im.__dict__["prepare_inputs_for_generation"] = spy
    try:
        im.store_mel_emb(torch.zeros((1, 1, w.shape[1]), dtype=w.dtype, device=w.device))
        ids = torch.tensor([[0, uv.start_mel_token]], device=w.device)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # min_length: the stop token cannot end the probe before its second step
            type(im).generate(im, ids, attention_mask=torch.ones_like(ids), max_length=4, min_length=4, do_sample=False,
                              num_beams=1, bos_token_id=uv.start_mel_token, eos_token_id=uv.stop_mel_token,
                              pad_token_id=uv.stop_mel_token, use_cache=use_cache)  # fmt: skip
    except _Seen:
        pass
    except Exception:  # the official forward does not run here (e.g. fp16 weights on a CPU): the flag decides
        return fallback
    finally:
        if own is None:
            del im.__dict__["prepare_inputs_for_generation"]
        else:  # the instance's own override, put back
            im.__dict__["prepare_inputs_for_generation"] = own
        im.cached_mel_emb = stored
    return fallback if len(fed) < 2 else (0 if fed[1] == 1 else -1)


@dataclasses.dataclass
class Prompt:
    """What an official ``inference_speech`` hands its generate, resolved (``GPTPatch.capture``): the prompt ids and
    embeddings past any masked pad rows, the generation arguments, the code line's mel position offset, and the
    pad rows' ids (prepended to the sequences, as the official generate returns them)."""

    input_ids: torch.Tensor
    prefix_emb: torch.Tensor
    args: object
    position_offset: int
    pad_ids: torch.Tensor


def masked_rows(mask: Optional[torch.Tensor], length: int, prefix_len: int, args) -> int:
    """How many leading prompt rows the attention mask hides (0: none), checked to be what the fast loop can drop.

    IndexTTS-2.5's ``prepare_gpt_inputs`` (and 2.0's where the text holds start/stop ids) puts one zero row on the
    left of the stored prefix for each text id it strips, and masks it out. A masked key gets exactly zero weight
    in every query's softmax, the positions are null (``wpe`` is zeros) and the mel positions are counted from the
    prefix's end, so the official result is the one of the prompt without those rows: the fast loop generates from
    the rows after them (``max_length`` and ``min_length`` shortened by as many) and puts their ids back in front.
    Any other mask (holes after the first attended row, a masked start token) raises."""
    if mask is None:
        return 0
    if not isinstance(mask, torch.Tensor) or mask.shape != (1, length):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise UnsupportedGeneration(f"attention_mask of shape {got} for a prompt of shape (1, {length})")
    keep = mask[0].to(torch.bool)
    pad = int((~keep).cumprod(0).sum())  # the leading masked rows (one host read per generation)
    if not bool(keep[pad:].all()):
        raise UnsupportedGeneration("attention_mask with masked rows after the first attended one: only left "
                                    "padding (IndexTTS2's masked pad rows before the prompt) is supported")  # fmt: skip
    if pad >= prefix_len:
        raise UnsupportedGeneration(f"attention_mask hides {pad} leading rows of a {prefix_len}-row prompt prefix: "
                                    "nothing of the conditioning is attended")  # fmt: skip
    if pad and any(not _reads_scores_only(p) for p in args.custom_processors):
        names = ", ".join(type(p).__name__ for p in args.custom_processors)
        raise UnsupportedGeneration(f"logits processors ({names}) with a padded prompt: the fast loop drops the "
                                    "masked rows, so a processor reading input_ids would see other ids")  # fmt: skip
    return pad


def _reads_scores_only(processor) -> bool:
    """Processors whose output depends on the scores alone (typical sampling), not on input_ids."""
    return type(processor).__name__ == "TypicalLogitsWarper"


def _without_rows(args, pad: int):
    """``args`` for the prompt without its ``pad`` leading masked rows (lengths counted from the prompt's start)."""
    if not pad:
        return args
    return dataclasses.replace(args, max_length=args.max_length - pad, min_length=max(0, args.min_length - pad))


_WRAPPED = ("get_logits", "inference_speech", "post_init_gpt2_config")


def _autocast_off(device: torch.device):
    return torch.autocast(device.type, enabled=False)


class GPTPatch(AttrPatch):
    """The replacements on one UnifiedVoice, their lock, their exact undo."""

    def __init__(self, uv, *, graphs: Optional[bool] = None):
        super().__init__()
        self.uv, self.graphs = uv, graphs
        self.lock = threading.RLock()
        self.fast = build_fast_gpt(uv)
        self.watch = ModuleWatch(_watched(uv))
        self.decoders: OrderedDict = OrderedDict()  # rows -> Decoder (its KV cache, its states and graphs), LRU
        self.calls = {"generate": 0, "latent": 0, "rebuilds": 0}
        self.status, self.detail = "fast", ""
        self._gen = AttrPatch()  # the generate attribute of the current inference model
        self._offsets: dict = {}
        self._capturing = threading.local()  # capture(): this thread's generate calls hand their prompt over
        # the methods this UnifiedVoice has (a 2.5 one may have no get_logits: it makes no teacher-forced pass)
        self._official = {n: getattr(uv, n) for n in _WRAPPED if callable(getattr(uv, n, None))}

    # --- each call: the part's current fast weights, or a clear error --------------------------------------------
    def current(self) -> FastGPT:
        """The fast GPT of the model as it is now: rebuilt if a watched weight changed since it was built."""
        what = self.watch.changed()
        if what is None:
            return self.fast
        reason = unsupported_reason(self.uv)
        if reason is not None:
            raise UnsupportedModel(f"gpt: {what} after enable(), and now {reason}; revert() runs the official code")
        self.decoders.clear()  # their caches and graphs hold the old weights' dtype, device and addresses
        self.fast = build_fast_gpt(self.uv)
        self.watch.refresh()
        self.calls["rebuilds"] += 1
        return self.fast

    # --- the replacements ------------------------------------------------------------------------------------------
    def generate(self, inputs=None, **kwargs):
        with self.lock:
            return self._generate(inputs, **kwargs)

    def _generate(self, inputs=None, **kwargs):
        im = self.uv.inference_model
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
            raise UnsupportedGeneration("the fast decode loop needs the prompt ids as a 2-D tensor (inputs)")
        if inputs.shape[0] != 1:
            raise UnsupportedGeneration(f"batch {inputs.shape[0]}: the fast decode loop generates one prompt at a time")
        mask = kwargs.pop("attention_mask", None)
        processors = kwargs.pop("logits_processor", None)
        if kwargs.pop("stopping_criteria", None):
            raise UnsupportedGeneration("stopping_criteria: custom stopping criteria are not supported")
        args = resolve_generation_args(im, kwargs, inputs.shape[1], processors)
        prefix = getattr(im, "cached_mel_emb", None)
        if prefix is None or prefix.dim() != 3 or prefix.shape[0] != 1:
            raise UnsupportedGeneration("no stored prompt embeddings (inference_model.store_mel_emb was not called)")
        pad = masked_rows(mask, inputs.shape[1], prefix.shape[1], args)
        fast = self.current()
        self._check_autocast(inputs.device, fast)
        offset = self._position_offset(im, args.use_cache)
        captured = getattr(self._capturing, "prompts", None)
        if captured is not None:  # capture(): the prompt for a batched decode, no generation here
            captured.append(Prompt(inputs[:, pad:].clone(), prefix[:, pad:].clone(), _without_rows(args, pad), offset,
                                   inputs[:, :pad].clone()))  # fmt: skip
            stop = torch.full((inputs.shape[0], 1), args.eos_token_id, dtype=inputs.dtype, device=inputs.device)
            return torch.cat([inputs, stop], dim=1)  # as a generation that stopped at once
        with torch.no_grad(), _autocast_off(fast.device):
            decoder = self.decoders.pop(args.num_beams, None)  # popped: a decoder that no longer fits is freed
            seqs, decoder = generate(fast, _without_rows(args, pad), inputs[:, pad:], prefix[:, pad:], decoder,
                                     position_offset=offset, graphs=self.graphs)  # fmt: skip
            self.decoders[args.num_beams] = decoder
            while len(self.decoders) > MAX_DECODERS:
                self.decoders.popitem(last=False)
        self.calls["generate"] += 1
        if pad:
            seqs = torch.cat([inputs[:, :pad].to(seqs.device, seqs.dtype).expand(seqs.shape[0], pad), seqs], dim=1)
        return seqs.to(inputs.device)

    def get_logits(self, speech_conditioning_inputs, first_inputs, first_head, second_inputs=None, second_head=None,
                   get_attns=False, return_latent=False):  # fmt: skip
        with self.lock:
            if get_attns or not return_latent or second_inputs is None or self.status != "fast":
                return self._official["get_logits"](speech_conditioning_inputs, first_inputs, first_head,
                                                    second_inputs, second_head, get_attns, return_latent)  # fmt: skip
            fast = self.current()
            self._check_autocast(first_inputs.device, fast)
            with torch.no_grad(), _autocast_off(fast.device), nvtx_range("gpt.latent"):
                emb = torch.cat([speech_conditioning_inputs, first_inputs, second_inputs], dim=1).to(fast.device)
                h = fast.causal(fast.to_stream(emb))
                enc = fast.final(h[:, speech_conditioning_inputs.shape[1] :])
            self.calls["latent"] += 1
            return enc[:, : first_inputs.shape[1]], enc[:, -second_inputs.shape[1] :]

    def inference_speech(self, *args, **kwargs):
        with self.lock:
            if self.status == "fast":
                self.current()  # a refused change is reported before the conditioning encoders run
            return self._official["inference_speech"](*args, **kwargs)

    @contextlib.contextmanager
    def capture(self):
        """In the block, this thread's ``inference_speech`` calls build their prompt as the official code does and
        hand it over (a ``Prompt`` appended to the yielded list) instead of generating: the codes they return are
        the stop token alone, their conditioning latent the official one. For decoding many prompts in one pool
        (``gpt.batch.BatchDecoder``)."""
        prompts: list = []
        self._capturing.prompts = prompts
        try:
            yield prompts
        finally:
            self._capturing.prompts = None

    def post_init_gpt2_config(self, *args, **kwargs):
        with self.lock:
            self._gen._undo()
            self._offsets.clear()  # keyed by the inference model's id, which the new one may reuse
            out = self._official["post_init_gpt2_config"](*args, **kwargs)
            self._target_inference_model("after post_init_gpt2_config: ")
            return out

    def _position_offset(self, im, use_cache) -> int:
        """The official generate's mel positions (``official_position_offset``), probed once per inference model,
        kv_cache setting and use_cache argument."""
        key = (id(im), getattr(im, "kv_cache", None), use_cache)
        if key not in self._offsets:
            self._offsets[key] = official_position_offset(self.uv, use_cache)
        return self._offsets[key]

    def _check_autocast(self, device, fast: FastGPT) -> None:
        dev = torch.device(device)
        on = torch.is_autocast_enabled(dev.type)
        if not on:
            return
        auto = torch.get_autocast_dtype(dev.type)
        if fast.dtype == torch.float32 and auto != torch.float32:
            raise UnsupportedGeneration(
                f"fp32 GPT weights under {auto} autocast: IndexTTS2 halves the GPT when it runs it under half "
                "autocast (use_fp16 / use_bf16); this mix is not implemented"
            )
        if fast.dtype != torch.float32 and auto != fast.dtype:
            raise UnsupportedGeneration(
                f"{fast.dtype} GPT weights under {auto} autocast: the official GEMMs would run in {auto}, the fast "
                f"path runs the weights' dtype; cast the GPT to {auto} (or run it under {fast.dtype} autocast)"
            )

    # --- install / undo ------------------------------------------------------------------------------------------
    def _target_inference_model(self, why: str = "") -> None:
        reason = unsupported_reason(self.uv)
        if reason is None:
            self._gen._set(self.uv.inference_model, "generate", self.generate)
            self.status, self.detail = "fast", ""
            self.current()
        else:
            self.status, self.detail = "skipped", why + reason

    def install(self, note: str) -> None:
        uv = self.uv
        self._target_inference_model()
        for name in self._official:
            self._set(uv, name, getattr(self, name))
        self._note_in_repr(uv, note)

    def revert(self) -> None:
        with self.lock:
            self._gen._undo()
            self._undo()
            self.decoders.clear()
