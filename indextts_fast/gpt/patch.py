"""The GPT side of ``indextts_fast.enable``: what is replaced on a live UnifiedVoice, and the replacements.

Two instance attributes, nothing else (no module is swapped, so ``state_dict()`` is untouched):
    uv.inference_model.generate   our decode loop (generate.py) instead of Hugging Face generate. The official
                                  ``inference_speech`` still builds the conditioning (conformer, perceiver,
                                  emotion vector, speed embeddings), the text embeddings and the prompt, in both
                                  code lines and whatever parameters a revision added ahead of them; only the
                                  generation itself changes hands.
    uv.get_logits                 the teacher-forced pass of ``UnifiedVoice.forward`` (``return_latent=True``) on
                                  our causal prefill; any other use (logits, attentions) runs the official code.
Both run with the caller's autocast disabled around our ops: their numerics are those of the official run
(model.py), whichever autocast is active.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import loader
from .._attrs import AttrPatch
from ..profiling import nvtx_range
from .generate import generate
from .model import FastGPT
from .sampling import UnsupportedGeneration, resolve_generation_args

__all__ = ["unsupported_reason", "is_indextts25", "build_fast_gpt", "GPTPatch"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16)


def is_indextts25(uv) -> bool:
    """An IndexTTS-2.5 UnifiedVoice (``spk_cond_mode="campplus"``: CAMPPlus speaker prefix, language embedding)."""
    return getattr(uv, "spk_cond_mode", "conformer") == "campplus" or hasattr(uv, "spk_emb_proj")


def unsupported_reason(uv) -> Optional[str]:
    """None when ``uv`` is the UnifiedVoice variant the fast GPT implements, else what differs (one line)."""
    if is_indextts25(uv):
        return "IndexTTS-2.5 (spk_cond_mode='campplus') is not supported yet"
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
    checks = {
        "activation_function": (getattr(cfg, "activation_function", None), "gelu_new"),
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
        return f"GPT weights of dtype {found} (supported: all float32, or all float16 as use_fp16 halves them)"
    return None


def build_fast_gpt(uv) -> FastGPT:
    """Kernel-layout views of the live UnifiedVoice (the loader's remap: Conv1D weights transposed, identity
    transforms as views of the live parameters), no file involved."""
    with torch.no_grad():
        tensors, report = loader.remap_live(uv, "gpt")
        tensors = {k: v.detach() for k, v in tensors.items()}
        w = loader.gpt_weights(tensors, report.dims, {"source": "live UnifiedVoice"})
    cfg = uv.gpt.config
    return FastGPT(w, n_heads=cfg.n_head, ln_eps=cfg.layer_norm_epsilon, final_norm_eps=uv.final_norm.eps)


def _autocast_off(device: torch.device):
    return torch.autocast(device.type, enabled=False)


class GPTPatch(AttrPatch):
    """The two replacements on one UnifiedVoice, and their exact undo."""

    def __init__(self, uv, fast: FastGPT, *, graphs: Optional[bool] = None):
        super().__init__()
        self.uv, self.fast, self.graphs = uv, fast, graphs
        self.engines: dict = {}  # rows -> the decode step (its KV cache, its loop states and graphs), reused
        self.calls = {"generate": 0, "latent": 0}
        self._orig_get_logits = uv.get_logits

    # --- the replacements --------------------------------------------------------------------------------------
    def generate(self, inputs=None, **kwargs):
        im = self.uv.inference_model
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
            raise UnsupportedGeneration("the fast decode loop needs the prompt ids as a 2-D tensor (inputs)")
        if inputs.shape[0] != 1:
            raise UnsupportedGeneration(f"batch {inputs.shape[0]}: the fast decode loop generates one prompt at a time")
        mask = kwargs.pop("attention_mask", None)
        if mask is not None and not bool(mask.all()):
            raise UnsupportedGeneration("attention_mask with padding (zeros): left-padded prompts are not supported")
        processors = kwargs.pop("logits_processor", None)
        if kwargs.pop("stopping_criteria", None):
            raise UnsupportedGeneration("stopping_criteria: custom stopping criteria are not supported")
        args, rest = resolve_generation_args(
            getattr(im, "generation_config", None), kwargs, inputs.shape[1], processors
        )
        if rest:
            raise UnsupportedGeneration(f"generation arguments the fast decode loop does not implement: {sorted(rest)}")
        prefix = getattr(im, "cached_mel_emb", None)
        if prefix is None or prefix.dim() != 3 or prefix.shape[0] != 1:
            raise UnsupportedGeneration("no stored prompt embeddings (inference_model.store_mel_emb was not called)")
        self._check_autocast(inputs.device)
        with torch.no_grad(), _autocast_off(self.fast.device):
            rows = args.num_beams
            seqs, self.engines[rows] = generate(self.fast, args, inputs, prefix, self.engines.get(rows),
                                                graphs=self.graphs)  # fmt: skip
        self.calls["generate"] += 1
        return seqs.to(inputs.device)

    def get_logits(self, speech_conditioning_inputs, first_inputs, first_head, second_inputs=None, second_head=None,
                   get_attns=False, return_latent=False):  # fmt: skip
        if get_attns or not return_latent or second_inputs is None:
            return self._orig_get_logits(
                speech_conditioning_inputs, first_inputs, first_head, second_inputs, second_head, get_attns,
                return_latent,
            )  # fmt: skip
        self._check_autocast(first_inputs.device)
        with torch.no_grad(), _autocast_off(self.fast.device), nvtx_range("gpt.latent"):
            emb = torch.cat([speech_conditioning_inputs, first_inputs, second_inputs], dim=1).to(self.fast.device)
            h = self.fast.causal(self.fast.to_stream(emb))
            enc = self.fast.final(h[:, speech_conditioning_inputs.shape[1] :])
        self.calls["latent"] += 1
        return enc[:, : first_inputs.shape[1]], enc[:, -second_inputs.shape[1] :]

    def _check_autocast(self, device) -> None:
        dev = torch.device(device)
        on = torch.is_autocast_enabled(dev.type)
        if on and self.fast.dtype == torch.float32 and torch.get_autocast_dtype(dev.type) != torch.float32:
            raise UnsupportedGeneration(
                f"fp32 GPT weights under {torch.get_autocast_dtype(dev.type)} autocast: IndexTTS2 halves the GPT "
                "when it runs it under fp16 autocast (use_fp16); this mix is not implemented"
            )

    # --- install / undo ----------------------------------------------------------------------------------------
    def install(self, note: str) -> None:
        uv = self.uv
        self._set(uv.inference_model, "generate", self.generate)
        self._set(uv, "get_logits", self.get_logits)
        self._note_in_repr(uv, note)

    def revert(self) -> None:
        self._undo()
        self.engines.clear()
