"""The runtime loader: a live official IndexTTS2 module -> kernel-layout weights (what ``indextts_fast.enable``
needs, no file involved).

    remap_live(module, kind)       a live official module (or its state dict) -> {pack name: tensor}, strictly
                                   checked, in the module's own dtype and device, identity transforms as views;
                                   kind 'gpt' (UnifiedVoice, IndexTTS-2.0 or 2.5), 's2mel' (MyModel.models, a CFM
                                   or a DiT) or 'codec' (IndexTTS-2.5's EnhancedCodec).
    gpt_weights / dit_weights / codec_weights    those tensors -> FastGPTWeights / FastDiTWeights /
                                   FastCodecWeights.

The offline side (reading gpt.pth / s2mel.pth, config.yaml, the dtype policy, the fast pack, inspection) is
``indextts_fast.checkpoint``, used by tools/convert_checkpoint.py and tools/inspect_checkpoint.py; this package
never imports it.

Kernel layouts (the contract the GEMM / attention / norm kernels are written against):
    * every GEMM weight is [N, K] row-major = nn.Linear's [out, in]; GPT-2 Conv1D [in, out] is transposed, so
      GPT qkv.w is [3C, C] with rows q | k | v (head h of q = rows h*64 .. h*64+63);
    * DiT wqkv stays [3C, C], rows q | k | v; SwiGLU w13 = cat([w1, w3], 0) [2I, C];
    * weight norm folded (torch._weight_norm: g * v / ||v||, norm over all dims but 0, no eps, the exact
      computation the official module runs at every forward); 1x1 convs squeezed to [out, in]; k-tap convs
      [out, in, k] -> [out, k*in], tap-major (column j*in + c = tap j of channel c); depthwise convs
      [C, 1, k] -> [C, k];
    * DiT AdaLN project_layer weights (scale | shift) either per norm or stacked into one [(2L+1)*2C, C] GEMM
      (layer i attention_norm, layer i ffn_norm, ..., transformer.norm), ``stack_adaln``.

Strictness: every table entry (tables.py) is matched by exactly one key of the expected shape and a floating
dtype; every key is mapped, ignored (the explicit ignore list, the conditioning encoders that stay in the module,
aliases of mapped tensors) or refused: anything else raises CheckpointError naming the keys, as do non-finite
weights (after the transform) unless ``allow_nonfinite=True``. Model dimensions are read from the shapes (dims.py).

The IndexTTS version is read from the structure (dims.version_evidence: keys only one version has), never from a
version field; a state dict showing both versions, or another than the one expected, is a CheckpointError.

Modules: errors (exception and warning types), tables (the key tables per part and the ignore lists), dims (kind,
version, dimensions, head count), remap (rules -> entries, transforms, the steps of a strict remap, remap_live),
weights (the Fast*Weights dataclasses).
"""

from __future__ import annotations

from . import tables
from .dims import detect_kind, detect_version, model_dims, resolve_version, version_evidence
from .errors import CheckpointError, CheckpointWarning
from .remap import FLOAT_DTYPES, Entry, RemapReport, expand_rules, remap_live
from .tables import Rule
from .weights import (
    FastCodecBlock,
    FastCodecWeights,
    FastDiTLayer,
    FastDiTWeights,
    FastGPTLayer,
    FastGPTWeights,
    FastLengthRegulatorWeights,
    FastS2MelWeights,
    codec_weights,
    dit_weights,
    gpt_weights,
)

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "FLOAT_DTYPES",
    "detect_kind",
    "detect_version",
    "resolve_version",
    "version_evidence",
    "model_dims",
    "Rule",
    "Entry",
    "expand_rules",
    "RemapReport",
    "remap_live",
    "gpt_weights",
    "dit_weights",
    "codec_weights",
    "FastGPTLayer",
    "FastGPTWeights",
    "FastDiTLayer",
    "FastDiTWeights",
    "FastLengthRegulatorWeights",
    "FastS2MelWeights",
    "FastCodecBlock",
    "FastCodecWeights",
    "tables",
]
