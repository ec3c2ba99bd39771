"""The offline checkpoint side: official IndexTTS2 checkpoints -> fast-pack safetensors -> kernel-layout weights,
and their inspection (tools/convert_checkpoint.py, tools/inspect_checkpoint.py, official.from_model_dir). The
runtime (``indextts_fast.enable``) never imports it: it remaps the live module with ``indextts_fast.loader``.
IndexTTS-2.0 and 2.5 are told apart by structure (loader.dims), per file and per model directory.

    convert_checkpoint(src, out)   gpt.pth / s2mel.pth / codec.pth (or .safetensors exports with the same names)
                                   -> one fast-pack .safetensors in kernel layout, every transform applied once, with
                                   metadata (format version, source sha256, config, dtype policy, layout, version);
                                   written atomically, never over its source, never over an existing pack unless
                                   ``overwrite=True``.
    convert_model_dir(dir)         every checkpoint of a model directory, after check_model_dir: one version.
    load_pack(path, device)        the pack -> FastGPTWeights / FastS2MelWeights / FastCodecWeights: one read of the
                                   whole file into memory (or one host-to-device copy), every tensor a view of it,
                                   no transform.
    remap_state_dict(sd)           a checkpoint's flat state dict -> the pack tensors (check_checkpoint: the same
                                   checks, nothing kept; plan_checkpoint: what happens to each key).

The remap is indextts_fast.loader's (its key tables, transforms and strict checks), composed here with a dtype
policy per tensor class (policy.py: the GPT fp16 as IndexTTS2's ``use_fp16`` runs it, 2.5's bf16 as its
``use_bf16``, s2mel and codec fp32), the GPT's
conditioning encoders carried verbatim (conditioning.py: complete, shapes consistent) and config.yaml (config.py:
read safely, every field typed, dimensions and head counts checked). A torch.save zip is checked record by record
(containers.py); a pack's untrusted header and metadata are validated before use (pack.py).

Modules: containers (reading the official files), config (config.yaml), policy (dtypes), conditioning (the
carried encoders' tables and checks), remap (the file remap, the config-checked live remap, the plan, the
inverse), pack (writing, reading, validating and loading fast packs), modeldir (a model directory's files and
their versions).
"""

from __future__ import annotations

from ..loader.errors import CheckpointError, CheckpointWarning
from .config import check_config, config_dims, load_config
from .containers import PathLike, file_sha256, read_checkpoint
from .modeldir import check_model_dir, convert_model_dir, model_dir_files
from .pack import PACK_FORMAT, PACK_VERSION, ConversionInterrupted, check_pack, convert_checkpoint, load_pack, read_pack
from .policy import DEFAULT_POLICY, gpt_policy
from .remap import check_checkpoint, inverse_remap, plan_checkpoint, remap_live, remap_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ConversionInterrupted",
    "PACK_FORMAT",
    "PACK_VERSION",
    "DEFAULT_POLICY",
    "gpt_policy",
    "read_checkpoint",
    "file_sha256",
    "PathLike",
    "load_config",
    "config_dims",
    "check_config",
    "remap_state_dict",
    "check_checkpoint",
    "remap_live",
    "plan_checkpoint",
    "inverse_remap",
    "convert_checkpoint",
    "read_pack",
    "check_pack",
    "load_pack",
    "model_dir_files",
    "check_model_dir",
    "convert_model_dir",
]
