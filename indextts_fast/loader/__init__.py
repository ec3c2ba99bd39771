"""Strict checkpoint loader: official IndexTTS2 checkpoints -> fast-pack safetensors -> kernel-layout weights.

    convert_checkpoint(src, out)   gpt.pth / s2mel.pth (or .safetensors exports with the same names) -> one
                                   fast-pack .safetensors in kernel layout, every transform applied once, with
                                   metadata (format version, source sha256, config, dtype policy, layout, version);
                                   written atomically, never over its source, never over an existing pack unless
                                   ``overwrite=True``.
    load_pack(path, device)        the pack -> FastGPTWeights / FastS2MelWeights: one read of the whole file into
                                   memory (or one host-to-device copy), every tensor a view of it, no transform.
    remap_live(module, kind)       a live official module (or its state dict) -> the same pack tensors, in the
                                   module's own dtype and device, identity transforms as views.

Kernel layouts (the contract the GEMM / attention / norm kernels are written against):
    * every GEMM weight is [N, K] row-major = nn.Linear's [out, in]; GPT-2 Conv1D [in, out] is transposed, so
      GPT qkv.w is [3C, C] with rows q | k | v (head h of q = rows h*64 .. h*64+63);
    * DiT wqkv stays [3C, C], rows q | k | v; SwiGLU w13 = cat([w1, w3], 0) [2I, C];
    * weight norm folded (torch._weight_norm: g * v / ||v||, norm over all dims but 0, no eps, the exact
      computation the official module runs at every forward); 1x1 convs squeezed to [out, in]; k-tap convs
      [out, in, k] -> [out, k*in], tap-major (column j*in + c = tap j of channel c);
    * DiT AdaLN project_layer weights (scale | shift) either per norm or stacked into one [(2L+1)*2C, C] GEMM
      (layer i attention_norm, layer i ffn_norm, ..., transformer.norm), ``stack_adaln``;
    * dtype per tensor class (``DEFAULT_POLICY``): the GPT all fp16, as IndexTTS2 runs it with ``use_fp16``
      (``gpt.half()`` rounds every tensor of UnifiedVoice, norms and embeddings included, so storing those in
      fp32 would not reproduce its tokens; ``gpt_policy("float32")`` reproduces the fp32 default); s2mel all
      fp32 (the official code runs it in fp32 either way).

Strictness: every table entry (tables.py) is matched by exactly one key of the expected shape and a floating
dtype; every key is mapped, carried (GPT conditioning encoders, conditioning.py) or on the explicit ignore list;
anything else raises CheckpointError naming the keys. Non-finite weights (also after the transform and the dtype
cast) are an error unless ``allow_nonfinite=True``. Model dimensions are read from the checkpoint's own shapes
and checked against config.yaml (config.py); a torch.save zip is checked record by record (containers.py).

Modules: errors (exception and warning types), tables (the key tables and ignore lists), containers (reading
the official files), config (dimensions, config.yaml, head counts), policy (dtypes), conditioning (the carried
encoders' checks), remap (rules -> entries, transforms, remap, inverse, live remap), pack (writing, reading and
validating fast packs), weights (the Fast*Weights dataclasses, load_pack).
"""

from __future__ import annotations

from . import tables
from .config import check_config, config_dims, load_config, model_dims
from .containers import PathLike, detect_kind, detect_version, file_sha256, read_checkpoint
from .errors import CheckpointError, CheckpointWarning, ConversionInterrupted
from .pack import PACK_FORMAT, PACK_VERSION, check_pack, convert_checkpoint, read_pack
from .policy import DEFAULT_POLICY, FLOAT_DTYPES, gpt_policy
from .remap import (
    Entry,
    RemapReport,
    check_checkpoint,
    expand_rules,
    inverse_remap,
    plan_checkpoint,
    remap_live,
    remap_state_dict,
)
from .tables import Rule
from .weights import (
    FastDiTLayer,
    FastDiTWeights,
    FastGPTLayer,
    FastGPTWeights,
    FastLengthRegulatorWeights,
    FastS2MelWeights,
    dit_weights,
    gpt_weights,
    load_pack,
)

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ConversionInterrupted",
    "PACK_FORMAT",
    "PACK_VERSION",
    "DEFAULT_POLICY",
    "FLOAT_DTYPES",
    "gpt_policy",
    "read_checkpoint",
    "detect_kind",
    "detect_version",
    "file_sha256",
    "model_dims",
    "load_config",
    "config_dims",
    "check_config",
    "Rule",
    "Entry",
    "expand_rules",
    "RemapReport",
    "plan_checkpoint",
    "remap_state_dict",
    "remap_live",
    "check_checkpoint",
    "inverse_remap",
    "convert_checkpoint",
    "read_pack",
    "check_pack",
    "load_pack",
    "gpt_weights",
    "dit_weights",
    "FastGPTLayer",
    "FastGPTWeights",
    "FastDiTLayer",
    "FastDiTWeights",
    "FastLengthRegulatorWeights",
    "FastS2MelWeights",
    "PathLike",
    "tables",
]
