"""The official IndexTTS2 module code, imported lazily, and the one harness of official models and inputs that the
tests, the demo and the benchmarks share.

``import_official("gpt.model_v2")`` imports one submodule of the installed official package without running its
``indextts/__init__`` (which pulls librosa, torchaudio and hub downloads at import): a stub package object with
the real ``__path__`` lets the pure-torch submodules import on their own. The same is done for the official
repository's vendored ``indextts.s2mel.dac`` package, whose ``__init__`` imports audiotools that the DiT never
uses. Both official code lines work: the official repository's code (tts-webui-index-tts, transformers 4.52) and
the transformers-5 refactor (indextts2-inference).

The harness:

- sizes: IndexTTS-2's config.yaml (``FULL_*``, ``s2mel_config("full")``) and one tiny copy (``TINY_*``,
  ``s2mel_config()``); ``GPT_HEAD_DIM_64`` / ``DIT_HEAD_DIM_64`` override the tiny widths to the head size the
  attention kernels take;
- builders of the official modules with random weights: ``build_unified_voice``, ``build_gpt_core`` (the GPT
  hot-path part alone, ``construct_gpt_core`` with the default init), ``build_s2mel``; tiny models get every weight
  from a seeded generator, full ones the official default init with what it leaves constant perturbed;
  ``build_models``: the pair ``enable()`` runs fast (tiny at head_dim 64), as the demo and the benchmark build it;
- inputs and calls as infer_v2 makes them: ``speech_inputs``, ``inference_speech``, ``teacher_forced_latents``,
  ``dit_inputs``, ``cfm_inputs``, ``cfm_run``, ``OFFICIAL_DEFAULTS``;
- IndexTTS-2.5: ``indextts25_prompt`` and ``generate25`` (the prompt its inference_speech hands generate, and that
  call), ``prompt_pass`` (generate's first forward on such a prompt), ``build_s2mel(version="2.5")``
  (indextts25-inference's s2mel), ``seeded_by_name`` (weights drawn per name, shared with
  tools/official25_fixtures.py);
- ``from_model_dir``: the official modules from a model directory's config.yaml and checkpoints (real weights).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types
import zlib
from pathlib import Path
from typing import Optional

import torch

__all__ = [
    "OfficialCodeMissing",
    "ModelDirError",
    "import_official",
    "official_line",
    "official_version",
    "FULL_GPT",
    "FULL_COND",
    "FULL_EMO_COND",
    "TINY_GPT",
    "TINY_COND",
    "GPT_HEAD_DIM_64",
    "DIT_HEAD_DIM_64",
    "gpt_config",
    "s2mel_config",
    "build_unified_voice",
    "GPTCore",
    "construct_gpt_core",
    "build_gpt_core",
    "build_s2mel",
    "BIGVGAN_V2",
    "build_bigvgan",
    "build_models",
    "indextts25_prompt",
    "generate25",
    "prompt_pass",
    "seeded_by_name",
    "OFFICIAL_DEFAULTS",
    "speech_inputs",
    "inference_speech",
    "teacher_forced_latents",
    "dit_inputs",
    "cfm_inputs",
    "cfm_run",
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


# ----------------------------------------------------------------------------------------------------------------------
# Sizes: IndexTTS-2's config.yaml (checkpoints/config.yaml) and a tiny copy the Triton interpreter runs in seconds
# ----------------------------------------------------------------------------------------------------------------------
FULL_GPT = dict(layers=24, model_dim=1280, heads=20, max_text_tokens=600, max_mel_tokens=1815, number_text_tokens=12000,
                number_mel_codes=8194, start_mel_token=8192, stop_mel_token=8193, start_text_token=0,
                stop_text_token=1)  # fmt: skip
FULL_COND = dict(output_size=512, linear_units=2048, attention_heads=8, num_blocks=6, input_layer="conv2d2",
                 perceiver_mult=2)  # fmt: skip
FULL_EMO_COND = dict(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4, input_layer="conv2d2",
                     perceiver_mult=2)  # fmt: skip
# tiny: 2 layers 64 wide (4 heads of 16), vocabularies and position tables that fit a few dozen codes
TINY_GPT = dict(layers=2, model_dim=64, heads=4, max_text_tokens=32, max_mel_tokens=48, number_text_tokens=100,
                number_mel_codes=130, start_mel_token=128, stop_mel_token=129)  # fmt: skip
TINY_COND = dict(output_size=64, linear_units=128, attention_heads=4, num_blocks=1, input_layer="conv2d2",
                 perceiver_mult=2)  # fmt: skip
# The tiny models at head_dim 64, the head size of IndexTTS-2 (the attention kernels take 64 and 128; enable() refuses
# other sizes): overrides of the tiny GPT and of the tiny DiT section, for whatever runs them on our path
GPT_HEAD_DIM_64 = dict(model_dim=128, heads=2)
DIT_HEAD_DIM_64 = dict(num_heads=1)


def gpt_config(size: str = "tiny") -> dict:
    """The gpt section of config.yaml for the UnifiedVoice of ``size`` (without its conditioning-module entries)."""
    return {"gpt": dict(FULL_GPT if _size(size) == "full" else TINY_GPT, condition_type="conformer_perceiver")}


def s2mel_config(size: str = "tiny") -> dict:
    """The s2mel section of IndexTTS-2's config.yaml (full) or a scaled-down copy (tiny: DiT width 64 with 4 heads of
    16, so the kernels' head_dim 64 is ``DIT_HEAD_DIM_64``)."""
    full = _size(size) == "full"
    C, L, heads, F, D, S, H, W, R, Q = (512, 13, 8, 80, 512, 192, 512, 8, 512, 1024) if full else \
        (64, 5, 4, 16, 48, 24, 64, 3, 32, 40)  # fmt: skip
    return {
        "dit_type": "DiT", "reg_loss_type": "l1", "style_encoder": {"dim": S},
        "length_regulator": {"channels": R, "is_discrete": False, "in_channels": Q,
                             "content_codebook_size": 2048 if full else 40, "sampling_ratios": [1, 1, 1, 1],
                             "vector_quantize": False, "n_codebooks": 1, "quantizer_dropout": 0.0,
                             "f0_condition": False, "n_f0_bins": 512},
        "DiT": {"hidden_dim": C, "num_heads": heads, "depth": L, "class_dropout_prob": 0.1, "block_size": 8192,
                "in_channels": F, "style_condition": True, "final_layer_type": "wavenet", "target": "mel",
                "content_dim": D, "content_codebook_size": 1024 if full else 24, "content_type": "discrete",
                "f0_condition": False, "n_f0_bins": 512, "content_codebooks": 1, "is_causal": False,
                "long_skip_connection": True, "zero_prompt_speech_token": False, "time_as_token": False,
                "style_as_token": False, "uvit_skip_connection": True, "add_resblock_in_transformer": False},
        "wavenet": {"hidden_dim": H, "num_layers": W, "kernel_size": 5, "dilation_rate": 1, "p_dropout": 0.2,
                    "style_condition": True},
    }  # fmt: skip


def _size(size: str) -> str:
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return size


# ----------------------------------------------------------------------------------------------------------------------
# Random weights. Tiny: every floating parameter and buffer drawn anew from a generator seeded with ``seed`` (test
# constants such as the stop-token biases of tests/gpt were tuned on exactly these weights: keep the scheme). Full:
# the official default init (drawn from torch's global generator, seeded with ``seed`` before the constructors run),
# with what it leaves constant perturbed so that no norm is an identity and no bias a zero.
# ----------------------------------------------------------------------------------------------------------------------
def _randomize(module: torch.nn.Module, seed: int, *, conv_fan_in: bool = False) -> None:
    """Every floating parameter and buffer N(0, 1) / sqrt(fan-in) (never zeros, never the init's ones and zeros),
    save the fixed tables (RoPE ``freqs``, the conformer's ``pos_enc.pe``). The fan-in is the last dimension;
    ``conv_fan_in``: a convolution's is its input channels times its taps. indextts25-inference folds weight norm
    at load, so its convolutions hold plain weights: drawn with the taps as fan-in they would be sqrt(channels)
    too large and its WaveNet chaotic (fp32 and fp64 apart by the size of the output), where the official
    weight-normed ones are normalized per output channel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or name.endswith("freqs") or name.endswith("pos_enc.pe"):
                continue
            fan = (p[0].numel() if conv_fan_in and p.dim() > 2 else p.shape[-1]) if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)


def seeded_by_name(module: torch.nn.Module, seed: int, *, stop_bias: float = 0.0, stop_token=None) -> None:
    """Every floating parameter N(0, 1) / sqrt(fan-in), each drawn from its own generator seeded with ``seed`` and
    the CRC-32 of its name: a parameter gets the same values in any module that names it the same, whatever else
    the module holds (the official 2.5 UnifiedVoice of tools/official25_fixtures.py and a 2.0 one here share the
    GPT-2 stack, the mel tables and the heads). LayerNorm gains are 1 + N(0, 0.1^2). ``stop_bias`` is added to the
    mel head's bias at ``stop_token``."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if _is_norm_gain(name, p):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)
        if stop_bias:
            module.mel_head.bias[stop_token] += stop_bias


def _is_norm_gain(name: str, p: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 2)
    return p.dim() == 1 and leaf[-1] == "weight" and any(k in leaf[-2] for k in ("ln", "norm"))


def _perturb_defaults(module: torch.nn.Module, seed: int) -> None:
    """The default init kept, but weight-norm gains (``weight_g``, equal to |v| at init: the norm a no-op) scaled by
    1 + N(0, 0.1^2), and every parameter the init leaves constant (norm gains 1, biases 0, zeroed embeddings such as
    ``speed_emb``) shifted by N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            r = 0.1 * torch.randn(p.shape, generator=g)
            if name.endswith("weight_g"):
                p.mul_(1 + r)
            elif bool((p == p.reshape(-1)[0]).all()):
                p.add_(r)


def _random_weights(module: torch.nn.Module, size: str, seed: int) -> None:
    (_perturb_defaults if size == "full" else _randomize)(module, seed)


# ----------------------------------------------------------------------------------------------------------------------
# Builders: the official modules with random weights
# ----------------------------------------------------------------------------------------------------------------------
def build_unified_voice(size: str = "tiny", seed: int = 0, *, stop_bias: float = 0.0, post_init: bool = True,
                        half: bool = False, **overrides):  # fmt: skip
    """The official UnifiedVoice at ``size`` (``overrides``: UnifiedVoice arguments, e.g. ``**GPT_HEAD_DIM_64`` or
    max_mel_tokens) with random weights, every submodule (the conditioning encoders too), in eval mode.

    ``stop_bias`` is added to the stop token's head bias (-4: random-weight generations then run their full
    length). ``post_init``: ``post_init_gpt2_config(kv_cache=True)`` done, as IndexTTS2 does after loading (False:
    the module as its gpt.pth holds it, no ``inference_model``); ``half``: IndexTTS2's use_fp16 (halved, then
    post_init_gpt2_config(half=True)).
    """
    mv = import_official("gpt.model_v2")
    full = _size(size) == "full"
    torch.manual_seed(seed)
    uv = mv.UnifiedVoice(**dict(FULL_GPT if full else TINY_GPT, **overrides), condition_type="conformer_perceiver",
                         condition_module=FULL_COND if full else TINY_COND,
                         emo_condition_module=FULL_EMO_COND if full else TINY_COND).eval()  # fmt: skip
    _random_weights(uv, size, seed)
    if stop_bias:
        with torch.no_grad():
            uv.mel_head.bias[uv.stop_mel_token] += stop_bias
    if half:
        uv.half()
    if post_init:
        uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=half)
    return uv.eval()


class GPTCore(torch.nn.Module):
    """The GPT hot-path part of UnifiedVoice under the same state_dict names: ``gpt`` (HF GPT2Model), the embeddings,
    the heads and the emotion layers, not the conformer / perceiver conditioning encoders (0.4 B parameters at full
    size that the hot path never touches)."""

    def __init__(self, parts: dict):
        super().__init__()
        for k, m in parts.items():
            setattr(self, k, m)

    def forward(self, x):  # the official chain: gpt (incl. ln_f) -> final_norm -> mel_head
        h = self.gpt(inputs_embeds=x, return_dict=True).last_hidden_state
        return self.mel_head(self.final_norm(h))


def construct_gpt_core(size: str = "tiny", **sizes) -> GPTCore:
    """The official constructors only (default init, no randomization): GPT2Model via
    ``model_v2.build_hf_gpt_transformer`` plus the nn.Embedding / nn.Linear / nn.LayerNorm modules UnifiedVoice.__init__
    creates, under its names. ``sizes`` override entries of TINY_GPT / FULL_GPT (layers, model_dim, heads, ...)."""
    mv = import_official("gpt.model_v2")
    c = dict(FULL_GPT if _size(size) == "full" else TINY_GPT, **sizes)
    C = c["model_dim"]
    gpt, mel_pos, text_pos, _, _ = mv.build_hf_gpt_transformer(
        c["layers"], C, c["heads"], c["max_mel_tokens"] + 2 + 1, c["max_text_tokens"] + 2, False
    )
    parts = {
        "gpt": gpt,
        "mel_pos_embedding": mel_pos,
        "text_pos_embedding": text_pos,
        "text_embedding": torch.nn.Embedding(c["number_text_tokens"] + 1, C),
        "mel_embedding": torch.nn.Embedding(c["number_mel_codes"], C),
        "emo_layer": torch.nn.Linear(C, C),
        "emovec_layer": torch.nn.Linear(1024, C),
        "final_norm": torch.nn.LayerNorm(C),
        "text_head": torch.nn.Linear(C, c["number_text_tokens"] + 1),
        "mel_head": torch.nn.Linear(C, c["number_mel_codes"]),
        "speed_emb": torch.nn.Embedding(2, C),
    }
    return GPTCore(parts).eval()


def build_gpt_core(size: str = "tiny", seed: int = 0, **sizes) -> tuple[GPTCore, dict]:
    """``construct_gpt_core`` with random weights: (the module, its state dict)."""
    torch.manual_seed(seed)
    core = construct_gpt_core(size, **sizes)
    _random_weights(core, size, seed)
    return core, core.state_dict()


def build_s2mel(size: str = "tiny", seed: int = 0, *, setup_caches: bool = True, wavenet: Optional[dict] = None,
                length_regulator: Optional[dict] = None, version: str = "2.0", **dit):  # fmt: skip
    """The official s2mel MyModel(use_gpt_latent=True) = {cfm, length_regulator, gpt_layer} with random weights, in
    eval mode. ``dit`` overrides entries of the config's DiT section (e.g. ``**DIT_HEAD_DIM_64``, depth=3),
    ``wavenet`` and ``length_regulator`` entries of those sections. ``setup_caches``: the DiT's ``setup_caches`` done
    (its RoPE table, in the model's dtype: pass False to set them up after a cast; the causal mask it also builds,
    max_seq_length squared, is unused by IndexTTS-2's non-causal DiT, hence a small max_seq_length).
    ``version`` "2.5": IndexTTS-2.5's MyModel = {cfm, length_regulator} (no gpt_layer) from ``indextts25-inference``
    (derived from the official ee40fa7: the same s2mel code and config dims as 2.0)."""
    cfg = s2mel_config(size)
    cfg["DiT"].update(dit)
    cfg["wavenet"].update(wavenet or {})
    cfg["length_regulator"].update(length_regulator or {})
    torch.manual_seed(seed)
    if version == "2.5":
        commons = _import_indextts25("s2mel.modules.commons")
        m = commons.MyModel(_attrs(cfg)).eval()
    elif version == "2.0":
        commons = import_official("s2mel.modules.commons")
        m = commons.MyModel(commons.recursive_munch(cfg), use_gpt_latent=True).eval()
    else:
        raise ValueError(f"version must be '2.0' or '2.5', not {version!r}")
    if version == "2.5" and size == "tiny":
        _randomize(m, seed, conv_fan_in=True)
    else:
        _random_weights(m, size, seed)
    if setup_caches:
        m.models["cfm"].estimator.setup_caches(max_batch_size=2, max_seq_length=512)
    return m


# BigVGAN v2 (nvidia/bigvgan_v2_22khz_80band_256x, its config.json) and a tiny copy: two stages (4 and 2 channels),
# two AMP kernel sizes, the same 256 hop
BIGVGAN_V2 = dict(num_mels=80, upsample_initial_channel=1536, upsample_rates=[4, 4, 2, 2, 2, 2],
                  upsample_kernel_sizes=[8, 8, 4, 4, 4, 4], resblock="1", resblock_kernel_sizes=[3, 7, 11],
                  resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], activation="snakebeta",
                  snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False)  # fmt: skip
BIGVGAN_TINY = dict(BIGVGAN_V2, upsample_initial_channel=8, upsample_rates=[16, 16],
                    upsample_kernel_sizes=[32, 32], resblock_kernel_sizes=[3, 5],
                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])  # fmt: skip


# The official repository's bigvgan/utils.py imports matplotlib and scipy (plots, wav files) and its meldataset.py
# librosa (mel extraction): none of it runs in the forward, and tools/dev.sh installs the module code without its
# requirements. Where one is missing, an import-only stand-in (calling anything in it raises) serves that import.
_IMPORT_ONLY = {"matplotlib": ("pylab",), "scipy": ("io", "io.wavfile"), "librosa": ("util", "filters")}


class _ImportOnly(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if self.__name__ == "matplotlib" and name == "use":  # matplotlib.use("Agg") runs at the import
            return lambda *a, **k: None

        def missing(*a, **k):
            raise RuntimeError(f"{self.__name__}.{name}: not installed (an import-only stand-in)")

        return missing


@contextlib.contextmanager
def _import_only_stand_ins():
    added = []
    for root, subs in _IMPORT_ONLY.items():
        if root in sys.modules or importlib.util.find_spec(root) is not None:
            continue
        for name in (root, *(f"{root}.{sub}" for sub in subs)):
            mod = sys.modules[name] = _ImportOnly(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            parent, _, leaf = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], leaf, mod)
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def build_bigvgan(size: str = "tiny", seed: int = 0, *, version: str = "2.0", **config):
    """The official BigVGAN with weight norm removed (as infer_v2 loads it), eval mode, seeded weights: its default
    init (torch's generator seeded with ``seed``), every Snake alpha and beta drawn N(0, 0.3) (log scale: not the
    init's zeros), and the output layer scaled to a wave of RMS 0.3 on a unit-std mel of 24 frames (before the
    final clamp: the wave has a DC offset, so its std would not keep it off the clamp). ``config`` overrides
    entries of BIGVGAN_V2 / BIGVGAN_TINY; ``version`` "2.5": indextts25-inference's copy of the same code.
    The CUDA activation is never built (``use_cuda_kernel=False`` where the class takes it)."""
    import inspect

    cfg = dict(BIGVGAN_V2 if _size(size) == "full" else BIGVGAN_TINY, **config)
    if version == "2.5":
        bv, env = _import_indextts25("s2mel.modules.bigvgan.bigvgan"), _import_indextts25("s2mel.modules.bigvgan.env")
    elif version == "2.0":
        with _import_only_stand_ins():
            bv, env = import_official("s2mel.modules.bigvgan.bigvgan"), import_official("s2mel.modules.bigvgan.env")
    else:
        raise ValueError(f"version must be '2.0' or '2.5', not {version!r}")
    torch.manual_seed(seed)
    kw = {"use_cuda_kernel": False} if "use_cuda_kernel" in inspect.signature(bv.BigVGAN).parameters else {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm's deprecation
        net = bv.BigVGAN(env.AttrDict(cfg), **kw)
        if hasattr(net, "remove_weight_norm"):
            net.remove_weight_norm()
    net.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".alpha") or name.endswith(".beta"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        mel = torch.randn(1, cfg["num_mels"], 24, generator=g)
        seen = []
        hook = net.conv_post.register_forward_hook(lambda m, i, out: seen.append(out))
        net(mel)
        hook.remove()
        net.conv_post.weight.mul_(0.3 / float(seen[0].pow(2).mean().sqrt()))
    return net


class _Attrs(dict):
    """A config section read by attribute (as the official code reads its munched config.yaml)."""

    __getattr__ = dict.__getitem__


def _attrs(d):
    return _Attrs({k: _attrs(v) for k, v in d.items()}) if isinstance(d, dict) else d


def _import_indextts25(module: str):
    try:
        return importlib.import_module(f"indextts25.{module}")
    except ImportError as e:
        raise OfficialCodeMissing(
            f"IndexTTS-2.5's module code is not installed ({e}); pip install --no-deps indextts25-inference==0.2.0"
        ) from e


def build_models(size: str = "tiny", seed: int = 0, *, half: bool = False):
    """(UnifiedVoice, MyModel) as ``enable()`` runs them on our path, with random weights: at IndexTTS-2's sizes, or
    the tiny ones at head_dim 64 (``GPT_HEAD_DIM_64``, ``DIT_HEAD_DIM_64``) with max_mel_tokens 64 (room for the
    demo's 50 greedy codes) and, as at full size, a length regulator as wide as the DiT's content input (its output
    is the CFM's condition); the stop token made unlikely (``stop_bias=-4``), so that generations run their full
    length; ``half``: the GPT as IndexTTS2's use_fp16 has it. What the demo and bench/bench_e2e.py run."""
    if _size(size) == "full":
        return build_unified_voice(size, seed, stop_bias=-4.0, half=half), build_s2mel(size, seed)
    uv = build_unified_voice(size, seed, stop_bias=-4.0, half=half, max_mel_tokens=64, **GPT_HEAD_DIM_64)
    lr = {"channels": s2mel_config(size)["DiT"]["content_dim"]}
    return uv, build_s2mel(size, seed, length_regulator=lr, **DIT_HEAD_DIM_64)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs and calls, as infer_v2 makes them
# ----------------------------------------------------------------------------------------------------------------------
# the official infer_v2 defaults (generation_kwargs of IndexTTS2.infer), as inference_speech receives them
OFFICIAL_DEFAULTS = dict(do_sample=True, top_p=0.8, top_k=30, temperature=0.8, num_return_sequences=1,
                         length_penalty=0.0, num_beams=3, repetition_penalty=10.0)  # fmt: skip


def indextts25_prompt(uv, text: torch.Tensor, *, seed: int = 3, lang: bool = True):
    """The prompt IndexTTS-2.5's ``inference_speech`` hands generate, built on ``uv`` (any UnifiedVoice: the GPT-2
    stack, its tables and the generate are the same in 2.0 and 2.5): (prefix [1, S, C], ids [1, S + 1], mask).

    The layout of the official ``prepare_gpt_inputs`` in campplus mode: one conditioning row (the CAMPPlus
    projection plus the emotion vector: here a seeded random row), two zero rows, the text rows (start id, the
    text without its start/stop ids, stop id; embedding + text position, plus a language row when ``lang``), one
    masked zero row on the left per stripped id. ``text`` [1, L] is used as infer_v2_5 passes it: with its stop
    id appended. The prefix comes from this line's own ``prepare_gpt_inputs`` (which 2.5 shares); the language row
    (``lang_embedding[lang]``, here seeded random) is added to the text rows after it, as the official adds it to
    ``text_embedding + text_pos``."""
    w = uv.mel_embedding.weight
    g = torch.Generator().manual_seed(seed)
    C = w.shape[1]
    cond = (torch.randn(1, 1, C, generator=g) * 0.5).to(w.device, w.dtype)
    conds = torch.cat([cond, torch.zeros(1, 2, C, dtype=w.dtype, device=w.device)], dim=1)
    text = torch.nn.functional.pad(text, (0, 1), value=uv.stop_text_token)
    with torch.no_grad():
        ids, prefix, mask = uv.prepare_gpt_inputs(conds, text.to(w.device))
        if lang:
            pad = int((mask[0] == 0).sum())
            prefix[:, pad + 3 :] += (torch.randn(C, generator=g) * 0.5).to(prefix.device, prefix.dtype)
    return prefix, ids, mask


def generate25(uv, prompt, steps: int, *, seed: int = 7, **gen):
    """``inference_model.generate`` on an IndexTTS-2.5 prompt (``indextts25_prompt``) as ``inference_speech`` calls
    it (bos/pad/eos the mel start/stop, at most ``steps`` codes), under ``torch.manual_seed(seed)``: the codes."""
    from transformers import LogitsProcessorList

    prefix, ids, mask = prompt
    im = uv.inference_model
    im.store_mel_emb(prefix)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = im.generate(ids, bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token,
                          eos_token_id=uv.stop_mel_token, attention_mask=mask, max_length=ids.shape[1] + steps,
                          logits_processor=LogitsProcessorList(), **gen)  # fmt: skip
    return out[:, ids.shape[1] :]


def prompt_pass(uv, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """The official inference model's first forward of a generation on a stored prompt (the prefill generate
    makes, under whatever autocast the caller holds): (``gpt.ln_f`` output, logits) at the last position."""
    im, got = uv.inference_model, {}

    def keep(module, args, out):
        got.setdefault("hidden", out[0][:, -1])

    hook = im.transformer.register_forward_hook(keep)
    try:
        im.store_mel_emb(prefix)
        with torch.no_grad():
            step = im.prepare_inputs_for_generation(ids, attention_mask=mask, use_cache=True)
            out = im(**step, return_dict=True)
    finally:
        hook.remove()
    return got["hidden"], out.logits[:, -1]


def speech_inputs(seed: int = 1, frames: int = 37, text_len: int = 9, device="cpu"):
    """(spk, text): a speaker reference's w2v-BERT features [1, frames, 1024] (fp32) and text ids [1, text_len]
    (int32, in 2..98: inside every size's text vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    spk = torch.randn(1, frames, 1024, generator=g)
    text = torch.randint(2, 99, (1, text_len), generator=g, dtype=torch.int32)
    return spk.to(device), text.to(device)


def inference_speech(uv, spk, text, steps: int, *, seed: int = 7, **gen):
    """``uv.inference_speech`` as infer_v2 calls it (the emotion from the speaker reference, the lengths
    ``spk.shape[-1]``), at most ``steps`` codes, under ``torch.manual_seed(seed)``: what it returns (codes, latent)."""
    torch.manual_seed(seed)
    lens = torch.tensor([spk.shape[-1]], device=spk.device)
    with torch.no_grad():
        return uv.inference_speech(spk, text, emo_speech_condition=spk, cond_lengths=lens, emo_cond_lengths=lens,
                                   max_generate_length=steps, **gen)  # fmt: skip


def teacher_forced_latents(uv, spk, text, codes):
    """The teacher-forced GPT pass infer_v2 makes for s2mel (``uv.forward`` on the conditioning, the emotion vector
    and the codes) on ``spk`` as given (its dtype is the call's): latents [1, codes, model_dim]."""
    dev = spk.device
    lens = torch.tensor([spk.shape[-1]], device=dev)
    with torch.no_grad():
        cond = uv.get_conditioning(spk.transpose(1, 2), lens)
        emo = uv.get_emovec(spk, lens)
        return uv(cond, text, torch.tensor([text.shape[-1]], device=dev), codes,
                  torch.tensor([codes.shape[-1]], device=dev), spk, cond_mel_lengths=lens, emo_cond_mel_lengths=lens,
                  emo_vec=emo, use_speed=torch.zeros(1, dtype=torch.long, device=dev))  # fmt: skip


def _style_dim(dit) -> int:
    return dit.cond_x_merge_linear.in_features - dit.cond_projection.out_features - 2 * dit.in_channels


def dit_inputs(dit, *, batch: int = 2, frames: int = 37, seed: int = 5, x_lens=None):
    """The DiT estimator's arguments (x, prompt_x, x_lens, t, style, cond) at the CFM's CFG batch; ``x_lens`` one
    length per row (default: one length, ``frames``)."""
    g = torch.Generator().manual_seed(seed)
    Fc, D = dit.in_channels, dit.cond_projection.in_features
    x = torch.randn(batch, Fc, frames, generator=g)
    prompt_x = torch.randn(batch, Fc, frames, generator=g)
    t = torch.rand(batch, generator=g)
    style = torch.randn(batch, _style_dim(dit), generator=g)
    cond = torch.randn(batch, frames, D, generator=g)
    lens = torch.tensor([frames] if x_lens is None else list(x_lens))
    return x, prompt_x, lens, t, style, cond


def cfm_inputs(cfm, *, frames: int = 37, prompt: int = 11, seed: int = 9, device="cpu", dtype=torch.float32):
    """The CFM's arguments as infer_v2 passes them: (mu [1, frames, content], x_lens, prompt mel [1, mels, prompt],
    style [1, style]), drawn in fp32 and then cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    dit = cfm.estimator
    mu = torch.randn(1, frames, dit.cond_projection.in_features, generator=g)
    prompt_mel = torch.randn(1, dit.in_channels, prompt, generator=g)
    style = torch.randn(1, _style_dim(dit), generator=g)
    mu, prompt_mel, style = (t.to(device=device, dtype=dtype) for t in (mu, prompt_mel, style))
    return mu, torch.tensor([frames], device=device), prompt_mel, style


def cfm_run(cfm, inputs, *, seed: int = 21, steps: int = 25, rate: float = 0.7):
    """``cfm.inference`` as infer_v2 calls it (25 Euler steps, CFG rate 0.7) under ``torch.manual_seed(seed)``."""
    mu, x_lens, prompt_mel, style = inputs
    torch.manual_seed(seed)
    with torch.no_grad():
        return cfm.inference(mu, x_lens, prompt_mel, style, None, steps, inference_cfg_rate=rate)


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
