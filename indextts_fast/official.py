"""The official IndexTTS2 module code, imported lazily, and IndexTTS2-shaped official models for the demo.

``import_official("gpt.model_v2")`` imports one submodule of the installed official package without running its
``indextts/__init__`` (which pulls librosa, torchaudio and hub downloads at import): a stub package object with
the real ``__path__`` lets the pure-torch submodules import on their own. The same is done for the official
repository's vendored ``indextts.s2mel.dac`` package, whose ``__init__`` imports audiotools that the DiT never
uses. Both official code lines work: the official repository's code (tts-webui-index-tts, transformers 4.52) and
the transformers-5 refactor (indextts2-inference).

The builders make the official modules at IndexTTS-2's sizes (``size="full"``) or a small copy (``"tiny"``) with
random weights, or read config.yaml and the checkpoints of a model directory (``from_model_dir``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Optional

import torch

__all__ = [
    "OfficialCodeMissing",
    "ModelDirError",
    "import_official",
    "official_line",
    "build_unified_voice",
    "build_s2mel",
    "from_model_dir",
]

INSTALL_HINT = (
    "pip install --no-deps indextts2-inference==2.1.1 (or tts-webui-index-tts==2.0.1 with transformers 4.52.1)"
)


class OfficialCodeMissing(ImportError):
    """The official IndexTTS2 package (module code) is not installed."""


def _stub_package(name: str, locations) -> None:
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = list(locations)
        pkg.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        pkg.__spec__.submodule_search_locations = pkg.__path__
        sys.modules[name] = pkg


def import_official(module: str):
    """``indextts.<module>`` from the installed official code, without the package's heavy ``__init__``."""
    spec = importlib.util.find_spec("indextts") if "indextts" not in sys.modules else sys.modules["indextts"].__spec__
    if spec is None or not spec.submodule_search_locations:
        raise OfficialCodeMissing(f"the official IndexTTS2 code is not installed: {INSTALL_HINT}")
    if importlib.util.find_spec("torchaudio") is None and "torchaudio" not in sys.modules:
        # utils/common.py imports torchaudio for audio I/O the module code used here never calls; transformers
        # probes it with find_spec, hence a spec
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
    _stub_package("indextts", spec.submodule_search_locations)
    dac = Path(list(spec.submodule_search_locations)[0]) / "s2mel" / "dac"
    if dac.is_dir():  # the official repository's vendored DAC: its __init__ imports audiotools
        _stub_package("indextts.s2mel.dac", [str(dac)])
        _stub_package("indextts.s2mel.dac.nn", [str(dac / "nn")])
    return importlib.import_module(f"indextts.{module}")


def official_line() -> str:
    """ "repository" (the official repository's code, with its vendored transformers-4.52 generation utilities)
    or "refactor" (indextts2-inference on transformers 5)."""
    import_official("gpt.model_v2")
    return "repository" if importlib.util.find_spec("indextts.gpt.transformers_generation_utils") else "refactor"


# IndexTTS-2's config.yaml (checkpoints/config.yaml), the parts the modules are built from
FULL_GPT = dict(layers=24, model_dim=1280, heads=20, max_text_tokens=600, max_mel_tokens=1815, number_text_tokens=12000,
                number_mel_codes=8194, start_mel_token=8192, stop_mel_token=8193, start_text_token=0,
                stop_text_token=1)  # fmt: skip
FULL_COND = dict(output_size=512, linear_units=2048, attention_heads=8, num_blocks=6, input_layer="conv2d2",
                 perceiver_mult=2)  # fmt: skip
FULL_EMO_COND = dict(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4, input_layer="conv2d2",
                     perceiver_mult=2)  # fmt: skip
# tiny: head_dim 64 (the attention kernels take 64 and 128) at widths the Triton interpreter runs in seconds
TINY_GPT = dict(layers=2, model_dim=128, heads=2, max_text_tokens=32, max_mel_tokens=80, number_text_tokens=100,
                number_mel_codes=130, start_mel_token=128, stop_mel_token=129)  # fmt: skip
TINY_COND = dict(output_size=64, linear_units=128, attention_heads=4, num_blocks=1, input_layer="conv2d2",
                 perceiver_mult=2)  # fmt: skip


def s2mel_config(size: str = "tiny") -> dict:
    """The s2mel section of IndexTTS-2's config.yaml (full) or a small copy (tiny: width 64, one head of 64)."""
    full = size == "full"
    C, L, heads, F, D, S, H, W, R, Q = (512, 13, 8, 80, 512, 192, 512, 8, 512, 1024) if full else \
        (64, 5, 1, 16, 48, 24, 64, 3, 48, 40)  # fmt: skip
    return {
        "dit_type": "DiT", "reg_loss_type": "l1", "style_encoder": {"dim": S},
        "length_regulator": {"channels": R, "is_discrete": False, "in_channels": Q, "content_codebook_size": 2048,
                             "sampling_ratios": [1, 1, 1, 1], "vector_quantize": False, "n_codebooks": 1,
                             "quantizer_dropout": 0.0, "f0_condition": False, "n_f0_bins": 512},
        "DiT": {"hidden_dim": C, "num_heads": heads, "depth": L, "class_dropout_prob": 0.1, "block_size": 8192,
                "in_channels": F, "style_condition": True, "final_layer_type": "wavenet", "target": "mel",
                "content_dim": D, "content_codebook_size": 1024, "content_type": "discrete", "f0_condition": False,
                "n_f0_bins": 512, "content_codebooks": 1, "is_causal": False, "long_skip_connection": True,
                "zero_prompt_speech_token": False, "time_as_token": False, "style_as_token": False,
                "uvit_skip_connection": True, "add_resblock_in_transformer": False},
        "wavenet": {"hidden_dim": H, "num_layers": W, "kernel_size": 5, "dilation_rate": 1, "p_dropout": 0.2,
                    "style_condition": True},
    }  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int, gains_near_one: bool) -> None:
    """Random weights with unit-scale activations (1/sqrt(fan-in)); norm gains near 1 at full size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            r = torch.randn(p.shape, generator=g)
            if gains_near_one and (name.endswith("norm.weight") or name.endswith("ln_1.weight")
                                   or name.endswith("ln_2.weight") or name.endswith("ln_f.weight")):  # fmt: skip
                p.copy_(1 + 0.1 * r)
            elif p.dim() > 1:
                p.copy_(r / p.shape[-1] ** 0.5 if p.dim() == 2 else r / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * r if gains_near_one else r / max(p.shape[-1], 1) ** 0.5)


def build_unified_voice(size: str = "tiny", seed: int = 0, *, stop_bias: float = -4.0, **overrides):
    """An official UnifiedVoice with random weights, ``post_init_gpt2_config(kv_cache=True)`` done, in eval mode.

    ``stop_bias`` is added to the stop token's head bias so that random-weight generations run their full length.
    """
    mv = import_official("gpt.model_v2")
    full = size == "full"
    cfg = dict(FULL_GPT if full else TINY_GPT, **overrides)
    torch.manual_seed(seed)
    uv = mv.UnifiedVoice(**cfg, condition_type="conformer_perceiver", condition_module=FULL_COND if full else TINY_COND,
                         emo_condition_module=FULL_EMO_COND if full else TINY_COND)  # fmt: skip
    _randomize(uv, seed, gains_near_one=full)
    with torch.no_grad():
        uv.mel_head.bias[uv.stop_mel_token] += stop_bias
    uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
    return uv.eval()


def build_s2mel(size: str = "tiny", seed: int = 0):
    """The official s2mel MyModel (cfm, length_regulator, gpt_layer) with random weights, caches set up."""
    commons = import_official("s2mel.modules.commons")
    torch.manual_seed(seed)
    m = commons.MyModel(commons.recursive_munch(s2mel_config(size)), use_gpt_latent=True)
    _randomize(m, seed, gains_near_one=size == "full")
    m.models["cfm"].estimator.setup_caches(max_batch_size=2, max_seq_length=8192)
    return m.eval()


class ModelDirError(ValueError):
    """A model directory whose files cannot be used; the message names the file and the problem."""


def from_model_dir(model_dir, device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(UnifiedVoice, MyModel, config) built from ``model_dir``'s config.yaml, with the weights of its gpt.pth
    and s2mel.pth read by the strict container reader (record sizes and CRC-32 checked). A file that is missing,
    unreadable, not what its name says, or without the weights the config's model has raises ModelDirError naming
    it (the official load_checkpoint is non-strict: a foreign checkpoint would silently leave random weights)."""
    from . import checkpoint

    d = Path(model_dir)
    for name in ("config.yaml", "gpt.pth", "s2mel.pth"):
        if not (d / name).is_file():
            raise ModelDirError(f"{d}: no {name}")

    def read(name, fn):
        try:
            return fn(d / name)
        except (checkpoint.CheckpointError, OSError, ValueError) as e:
            raise ModelDirError(f"{d / name}: {e}") from None

    cfg = read("config.yaml", checkpoint.load_config)
    mv = import_official("gpt.model_v2")
    commons = import_official("s2mel.modules.commons")
    try:
        uv = mv.UnifiedVoice(**cfg["gpt"])
        s2 = commons.MyModel(commons.recursive_munch(cfg["s2mel"]), use_gpt_latent=True)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{d / 'config.yaml'}: the official modules cannot be built from it ({e})") from None
    _, gpt_sd = read("gpt.pth", checkpoint.read_checkpoint)
    missing, _ = uv.load_state_dict(gpt_sd, strict=False)  # non-strict, as the official load_checkpoint
    if missing:
        raise ModelDirError(f"{d / 'gpt.pth'}: not this config's IndexTTS2 GPT: it lacks {len(missing)} of its "
                            f"weights ({', '.join(missing[:3])}, ...)")  # fmt: skip
    uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
    _, flat = read("s2mel.pth", checkpoint.read_checkpoint)
    for key, sub in s2.models.items():
        try:
            sub.load_state_dict({k[len(key) + 1 :]: v for k, v in flat.items() if k.startswith(key + ".")})
        except RuntimeError as e:
            raise ModelDirError(f"{d / 's2mel.pth'}: not this config's s2mel {key}: {str(e).splitlines()[0]}") from None
    s2.models["cfm"].estimator.setup_caches(max_batch_size=2, max_seq_length=8192)
    return uv.to(device).eval(), s2.to(device).eval(), cfg


def official_version() -> Optional[str]:
    import importlib.metadata as md

    for dist in ("tts-webui-index-tts", "indextts2-inference", "indextts"):
        try:
            return f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    return None
