"""Offline official ``IndexTTS2`` objects with tiny random weights: the end-to-end tests' objects (``IndexTTS2.infer()``
never enabled vs enabled) and what ``python -m indextts_fast serve --tiny`` serves.

``build("2.0" | "2.5", workdir)`` makes the class of ``indextts.infer_v2`` (IndexTTS-2: the official repository's
code, tts-webui-index-tts, or its transformers-5 refactor, indextts2-inference, whichever is installed) or of
``indextts25.infer_v2_5`` (IndexTTS-2.5) without its downloads and checkpoints: the instance is
created without running ``__init__`` (``object.__new__``) and every attribute ``infer`` / ``infer_generator`` reads
is set here. ``dtype=torch.float64`` gives the same object with the same weights in fp64: the high-precision
reference of the tolerance rule. ``Offline.infer`` runs the official ``infer`` under a fixed seed and returns what
it did (``Run``); ``Offline.replaying`` makes an object generate a recorded run's codes instead of sampling.

Official module classes, tiny, with seeded random weights (fp32 on CPU, or fp64):
- ``gpt``: UnifiedVoice, 2 layers 128 wide in 2 heads of 64 (the head size ``enable()`` takes; 64 wide in 4 heads
  of 16 would be refused), a 130-code vocabulary; 2.0 from ``indextts_fast.official.build_unified_voice``, 2.5
  indextts25's UnifiedVoice (CAMPPlus speaker prefix, language embedding, a 260-id text table);
  ``post_init_gpt2_config`` done (kv_cache=True on 2.0), as ``__init__`` does;
- ``semantic_codec``: 2.0 MaskGCT's RepCodec (``quantize``, ``quantizer.vq2emb``), 2.5 EnhancedCodec (``decode``),
  1024 wide in and out like w2v-BERT's features, a one-layer 32-wide Vocos backbone, one code per GPT code;
- ``s2mel``: MyModel with the DiT of ``s2mel_config("tiny")`` at head_dim 64 and a length regulator from 1024-wide
  content, ``setup_caches`` done; 2.0's ``gpt_layer`` is the official stack of three Linear layers at the tiny widths
  (the official module is hard-wired to a 1280-wide GPT);
- ``campplus_model``: CAMPPlus (80 fbank bins in, the DiT's style width out: 24 on 2.0, 192 on 2.5 where the GPT
  reads it too) with narrow dense blocks;
- ``bigvgan``: BigVGAN v2 (AMP blocks, snakebeta, 16 mels, upsampling 4x4x4x4 = the 256 hop), weight norm removed,
  with hooks (``record_vocoder``) that keep each segment's mel and wave (its input cast to the model's dtype);
- ``extract_features``: transformers' own SeamlessM4TFeatureExtractor at its defaults (w2v-BERT 2.0's 80 mel bins,
  stride 2), no download;
- ``mel_fn``: the official ``mel_spectrogram`` (n_fft 1024, hop 256, 16 mels, 22.05 kHz, center False);
- 2.5 ``tokenizer``: the official tiktoken construction (``get_encoding``) over a vocabulary file written into
  ``workdir`` (the 256 single bytes and no merge: one token per ASCII character, the language tokens after them),
  and 2.5's own TextNormalizer (run ``infer`` with text_normalization=False: WeTextProcessing and NeMo, which the
  normalization step loads, are not installed);
- 2.0 ``tokenizer``: the official TextTokenizer (its segment splitter included) over a SentencePiece stand-in.

Deterministic stand-ins (seeded, shape-correct, fp32, CPU):
- ``semantic_model`` (w2v-BERT 2.0, ``get_emb``'s model): ``hidden_states[17]`` = tanh of a seeded projection of
  the 160-dim features to 1024; ``semantic_mean`` / ``semantic_std`` seeded (the official ``get_emb`` uses them);
- the SentencePiece model (2.0; also where sentencepiece is installed: there is no model file): words cut into
  pieces of three characters ("▁" before a word's first), each punctuation mark a piece of its own, ids from the
  CRC-32 of a piece into the tiny text vocabulary (the official pre-tokenizer upper-cases the text first);
- 2.0's TextNormalizer: the text unchanged (the official one needs WeTextProcessing);
- packages the official modules import and that are not installed, registered in ``sys.modules`` only while the
  infer module is imported (the official modules imported then keep what they bound, e.g. the mel filters of
  ``s2mel.modules.audio``; the session's ``sys.modules`` entries are put back afterwards):
  ``librosa.load`` (the WAV reader below, linear-interpolation resampling), ``librosa.filters.mel`` (triangular
  filters on the HTK mel scale), ``torchaudio.transforms.Resample`` (linear interpolation),
  ``torchaudio.compliance.kaldi.fbank`` (log triangular-mel energies of 25 ms Hann frames every 10 ms),
  ``torchaudio.save`` (a 32-bit float WAV writer, 16-bit PCM round(32767 x) when asked for 16 bits),
  ``sentencepiece``; import-only (a call raises): ``scipy`` (``io.wavfile``), ``matplotlib``, ``modelscope``,
  ``torchaudio.functional``, ``librosa.util``. 2.5 needs librosa alone: indextts25 carries its own torch
  ``resample`` and ``kaldi_fbank``, which run as they are;
- ``emo_matrix`` / ``spk_matrix`` seeded (read only with ``emo_vector``); ``qwen_emo`` None.

Installed rather than stood in (light, pure Python): omegaconf (every code line imports it) and json5 (the official
repository's 2.0 maskgct_utils imports it). Without them the build raises OfficialCodeMissing with the pip command.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import math
import re
import struct
import sys
import types
import warnings
import wave
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
from torch import nn

from .official import (
    DIT_HEAD_DIM_64,
    GPT_HEAD_DIM_64,
    TINY_COND,
    TINY_GPT,
    OfficialCodeMissing,
    build_s2mel,
    build_unified_voice,
    import_official,
    s2mel_config,
)

__all__ = ["SR", "VERSIONS", "Offline", "Run", "build", "infer_module", "one_thread", "seed_weights", "read_wav",
           "write_pcm16_wav", "reference_audio", "stop_index"]  # fmt: skip

SR = 22050  # the official output rate (and the reference's)
VERSIONS = ("2.0", "2.5")
N_MELS, W2V_DIM = 16, 1024
GPT = dict(TINY_GPT, **GPT_HEAD_DIM_64)  # 2 layers, 128 wide, 2 heads of 64, codes 0..127, start 128, stop 129
TEXT_VOCAB_25 = 260  # the 2.5 tokenizer's ids: 256 bytes, <|endoftext|>, <|startoftranscript|>, <|en|> (258), ...
MEL_ARGS = dict(n_fft=1024, win_size=1024, hop_size=256, num_mels=N_MELS, sampling_rate=SR, fmin=0, fmax=None,
                center=False)  # fmt: skip
BIGVGAN = dict(num_mels=N_MELS, upsample_initial_channel=32, upsample_rates=[4, 4, 4, 4],
               upsample_kernel_sizes=[8, 8, 8, 8], resblock="1", resblock_kernel_sizes=[3],
               resblock_dilation_sizes=[[1, 3, 5]], activation="snakebeta", snake_logscale=True,
               use_tanh_at_final=False, use_bias_at_final=False)  # fmt: skip
CODEC = dict(codebook_size=GPT["number_mel_codes"], hidden_size=W2V_DIM, codebook_dim=8, vocos_dim=32,
             vocos_intermediate_dim=64, vocos_num_layers=1)  # fmt: skip
CAMPPLUS = dict(feat_dim=80, growth_rate=8, bn_size=2, init_channels=16)
MEL_STD = {"2.0": 16.0, "2.5": 1.5}  # the tiny CFMs' mels (s2mel weights of build_s2mel on 2.0, of seed_weights on 2.5)
EMO_NUM = [2] * 8  # rows of emo_matrix / spk_matrix per emotion
PIP_HINT = "pip install -c constraints-cpu.txt omegaconf json5"


# ----------------------------------------------------------------------------------------------------------------------
# Audio: a WAV reader / writers and the signal-processing stand-ins
# ----------------------------------------------------------------------------------------------------------------------
def write_pcm16_wav(path, wav: torch.Tensor, sr: int = SR) -> None:
    """``wav`` ([samples] or [channels, samples], in [-1, 1]) as a 16-bit PCM WAV: round(32767 x)."""
    wav = wav.detach().reshape(-1, wav.shape[-1]).to(torch.float64).cpu()
    pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).T.contiguous().numpy()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(wav.shape[0])
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.astype("<i2").tobytes())


def _write_float_wav(path, wav: torch.Tensor, sr: int) -> None:
    """``wav`` [channels, samples] as a 32-bit IEEE-float WAV (what torchaudio.save writes for a float tensor)."""
    data = wav.detach().to(torch.float32).cpu().T.contiguous().numpy().astype("<f4").tobytes()
    ch = wav.shape[0]
    fmt = struct.pack("<HHIIHH", 3, ch, sr, sr * ch * 4, ch * 4, 32)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def read_wav(path) -> tuple[torch.Tensor, int, int]:
    """(samples [channels, n] as float32, rate, bits) of a 16-bit PCM WAV (the int16 values) or a 32-bit float
    WAV."""
    raw = Path(path).read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV file")
    pos, fmt, fmt_ext, data = 12, None, b"", None
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt, fmt_ext = struct.unpack("<HHIIHH", body[:16]), body[24:26]
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, ch, sr, _, _, bits = fmt
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the format tag opens the sub-format GUID
        tag = struct.unpack("<H", fmt_ext[:2])[0]
    if (tag, bits) == (1, 16):
        x = np.frombuffer(data, "<i2").astype(np.float32)
    elif (tag, bits) == (3, 32):
        x = np.frombuffer(data, "<f4").astype(np.float32)
    else:
        raise ValueError(f"{path}: WAV format {tag} with {bits} bits is not read here")
    return torch.from_numpy(x.reshape(-1, ch).T.copy()), sr, bits


def _resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Linear interpolation from ``orig`` Hz to ``new`` Hz along the last axis (ceil(n * new / orig) samples)."""
    if int(orig) == int(new):
        return wav
    n = wav.shape[-1]
    m = math.ceil(n * new / orig)
    out = nn.functional.interpolate(wav.reshape(-1, 1, n), size=m, mode="linear", align_corners=False)
    return out.reshape(*wav.shape[:-1], m)


def _mel_filters(sr, n_fft, n_mels=128, fmin=0.0, fmax=None, **_) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters equally spaced on the HTK mel scale, each of unit area."""
    fmax = sr / 2 if fmax is None else fmax
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    tri = torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)).clamp(min=0)
    return (tri * 2.0 / (hi - lo)).numpy().astype(np.float32)


def _fbank(wav: torch.Tensor, num_mel_bins: int = 23, sample_frequency: float = 16000.0, **_) -> torch.Tensor:
    """[frames, num_mel_bins]: log triangular-mel energies of 25 ms Hann frames every 10 ms (mean removed)."""
    x = wav.reshape(-1)
    size, shift = int(sample_frequency * 0.025), int(sample_frequency * 0.010)
    n_fft = 1 << (size - 1).bit_length()
    frames = x.unfold(0, size, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    window = torch.hann_window(size, periodic=False, dtype=x.dtype)
    power = torch.fft.rfft(frames * window, n=n_fft).abs().pow(2)
    banks = torch.from_numpy(_mel_filters(sample_frequency, n_fft, num_mel_bins, 20.0)).to(x.dtype)
    return (power @ banks.T).clamp(min=torch.finfo(torch.float32).eps).log()


class _Resample:
    """torchaudio.transforms.Resample(orig_freq, new_freq): linear interpolation."""

    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000, **_):
        self.orig, self.new = int(orig_freq), int(new_freq)

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        return _resample(wav, self.orig, self.new)


def _librosa_load(path, sr=22050, mono=True, **_):
    """librosa.load: (float32 samples, rate), mixed to mono, resampled to ``sr`` (None: the file's rate)."""
    x, rate, bits = read_wav(path)
    if bits == 16:
        x = x / 32768.0
    x = x.mean(dim=0) if mono else x
    if sr is not None and int(sr) != rate:
        x, rate = _resample(x, rate, int(sr)), int(sr)
    return x.numpy().astype(np.float32), rate


def _torchaudio_save(path, wav, sample_rate, bits_per_sample=None, **_):
    """torchaudio.save: 16-bit PCM when asked for 16 bits, else 32-bit float."""
    (write_pcm16_wav if bits_per_sample == 16 else _write_float_wav)(path, wav, int(sample_rate))


def reference_audio(path, seconds: float = 0.8, seed: int = 0) -> Path:
    """A deterministic speaker reference: a few harmonics under an envelope plus seeded noise, 16-bit PCM, 22.05 kHz."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    f0 = 140.0 + 30.0 * torch.sin(2 * math.pi * 1.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    voice = sum(torch.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 * (1 - torch.cos(2 * math.pi * t / seconds))
    x = 0.4 * env * voice + 0.02 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    write_pcm16_wav(path, x.float())
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------------
# Text stand-ins (2.0)
# ----------------------------------------------------------------------------------------------------------------------
class _SentencePieceStandIn:
    """SentencePieceProcessor: words cut into three-character pieces ("▁" before the first), every punctuation mark
    a piece; ids from the CRC-32 of the piece into [3, vocab) (0 and 1 are the GPT's start / stop text ids, 2 unk)."""

    vocab_size = TINY_GPT["number_text_tokens"]

    def __init__(self, model_file=None, **_):
        self.model_file = model_file
        self._pieces: dict[int, str] = {}

    def GetPieceSize(self) -> int:  # noqa: N802 (SentencePiece's names)
        return self.vocab_size

    def unk_id(self) -> int:
        return 2

    def PieceToId(self, piece: str) -> int:  # noqa: N802
        i = 3 + zlib.crc32(piece.encode()) % (self.vocab_size - 3)
        self._pieces.setdefault(i, piece)
        return i

    def IdToPiece(self, ids):  # noqa: N802
        return [self.IdToPiece(i) for i in ids] if isinstance(ids, (list, tuple)) else self._pieces.get(ids, "<unk>")

    def Encode(self, text, out_type=int, **_):  # noqa: N802
        if isinstance(text, (list, tuple)):
            return [self.Encode(t, out_type=out_type) for t in text]
        pieces = []
        for word in re.findall(r"[^\W_]+|[^\w\s]", text):
            if not word[0].isalnum():
                pieces.append(word)
                continue
            chunks = [word[i : i + 3] for i in range(0, len(word), 3)]
            pieces += ["▁" + chunks[0], *chunks[1:]]
        return pieces if out_type is str else [self.PieceToId(p) for p in pieces]


class _NormalizerStandIn:
    """TextNormalizer: nothing to load, the text unchanged."""

    def load(self) -> None:
        return None

    def normalize(self, text: str) -> str:
        return text


# ----------------------------------------------------------------------------------------------------------------------
# The official modules, imported with the stand-ins of missing packages
# ----------------------------------------------------------------------------------------------------------------------
def _unused(what: str):
    def call(*_a, **_k):
        raise RuntimeError(f"{what} is an import-only stand-in of indextts_fast.offline (the official path called it)")

    return call


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__path__ = []
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _stand_in_tree(root: str) -> dict[str, types.ModuleType]:
    """The stand-in modules of one missing package (name -> module)."""
    if root == "librosa":
        filters = _module("librosa.filters", mel=_mel_filters)
        util = _module("librosa.util", normalize=_unused("librosa.util.normalize"))
        return {"librosa": _module("librosa", load=_librosa_load, filters=filters, util=util),
                "librosa.filters": filters, "librosa.util": util}  # fmt: skip
    if root == "torchaudio":
        fn = _module("torchaudio.functional.functional", _hz_to_mel=_unused("torchaudio.functional._hz_to_mel"),
                     _mel_to_hz=_unused("torchaudio.functional._mel_to_hz"))  # fmt: skip
        func = _module("torchaudio.functional", functional=fn, pitch_shift=_unused("torchaudio.functional.pitch_shift"))
        kaldi = _module("torchaudio.compliance.kaldi", fbank=_fbank)
        comp = _module("torchaudio.compliance", kaldi=kaldi)
        tr = _module("torchaudio.transforms", Resample=_Resample)
        top = _module("torchaudio", transforms=tr, compliance=comp, functional=func, save=_torchaudio_save,
                      load=_unused("torchaudio.load"))  # fmt: skip
        return {"torchaudio": top, "torchaudio.transforms": tr, "torchaudio.compliance": comp,
                "torchaudio.compliance.kaldi": kaldi, "torchaudio.functional": func,
                "torchaudio.functional.functional": fn}  # fmt: skip
    if root == "scipy":
        wav = _module("scipy.io.wavfile", read=_unused("scipy.io.wavfile.read"), write=_unused("scipy.io.wavfile"))
        io_ = _module("scipy.io", wavfile=wav)
        return {"scipy": _module("scipy", io=io_), "scipy.io": io_, "scipy.io.wavfile": wav}
    if root == "matplotlib":
        pylab = _module("matplotlib.pylab", subplots=_unused("matplotlib.pylab"))
        return {"matplotlib": _module("matplotlib", use=lambda *a, **k: None, pylab=pylab), "matplotlib.pylab": pylab}
    if root == "modelscope":
        return {"modelscope": _module("modelscope", AutoModelForCausalLM=SimpleNamespace(
            from_pretrained=_unused("modelscope.AutoModelForCausalLM")))}  # fmt: skip
    if root == "sentencepiece":
        return {"sentencepiece": _module("sentencepiece", SentencePieceProcessor=_SentencePieceStandIn)}
    raise KeyError(root)


# the packages each code line's infer module imports that get a stand-in where they are missing
_STAND_INS = {"2.0": ("librosa", "torchaudio", "scipy", "matplotlib", "modelscope", "sentencepiece"),
              "2.5": ("librosa",)}  # fmt: skip
_IMPORTED: dict[str, types.ModuleType] = {}


def _installed(name: str) -> bool:
    mod = sys.modules.get(name)
    if mod is not None:
        return getattr(mod, "__file__", None) is not None  # a stand-in module (ours, or official.py's) has no file
    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def _stand_ins(version: str):
    """The stand-ins of the missing packages in sys.modules for the block; the previous entries back after it."""
    added = {}
    for root in _STAND_INS[version]:
        if not _installed(root):
            added.update(_stand_in_tree(root))
    saved = {name: sys.modules.get(name) for name in added}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, prev in saved.items():
            if prev is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = prev


def infer_module(version: str) -> types.ModuleType:
    """``indextts.infer_v2`` (2.0) or ``indextts25.infer_v2_5`` (2.5), imported once."""
    if version in _IMPORTED:
        return _IMPORTED[version]
    import transformers  # noqa: F401  (first: it probes which packages are installed, without the stand-ins)

    if version == "2.5" and importlib.util.find_spec("indextts25") is None:
        raise OfficialCodeMissing("IndexTTS-2.5 module code: pip install --no-deps indextts25-inference==0.2.0")
    try:
        with _stand_ins(version), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = import_official("infer_v2") if version == "2.0" else importlib.import_module("indextts25.infer_v2_5")
    except ModuleNotFoundError as e:
        raise OfficialCodeMissing(f"the IndexTTS {version} infer module imports {e.name}, which is not installed "
                                  f"({PIP_HINT})") from e  # fmt: skip
    _IMPORTED[version] = mod
    return mod


def _sub(version: str, module: str) -> types.ModuleType:
    """A submodule of the code line (imported by its infer module already)."""
    infer_module(version)
    if version == "2.0":
        return import_official(module)
    return importlib.import_module(f"indextts25.{module}")


# ----------------------------------------------------------------------------------------------------------------------
# Weights and wrappers
# ----------------------------------------------------------------------------------------------------------------------
def seed_weights(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn from a generator seeded with ``seed``: matrices and kernels N(0, 1 / fan-in), 1-D
    weights (norm gains) 1 + N(0, 0.1^2), other vectors N(0, 0.1^2); BatchNorm running statistics too (variance
    in [0.5, 1.5]). Fixed tables (RoPE, positional encodings, anti-aliasing filters) stay as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return module.eval()


class W2VBertStandIn(nn.Module):
    """w2v-BERT 2.0 as ``get_emb`` calls it: ``hidden_states[17]`` = tanh(features @ W + b), 160 -> 1024."""

    def __init__(self, seed: int):
        super().__init__()
        self.proj = seed_weights(nn.Linear(160, W2V_DIM), seed)

    def forward(self, input_features, attention_mask=None, output_hidden_states=True):
        h = torch.tanh(self.proj(input_features.to(self.proj.weight.dtype)))
        return SimpleNamespace(hidden_states=(None,) * 17 + (h,))


class CastInputs(nn.Module):
    """An official module whose floating inputs are cast to its weights' dtype (the fp64 reference object: the
    official code hands some modules fp32 features, e.g. the fbank of fp32 audio)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        dt = next(self.inner.parameters()).dtype
        return self.inner(*(a.to(dt) if torch.is_tensor(a) and a.is_floating_point() else a for a in args))


def record_vocoder(net: nn.Module, log: dict) -> nn.Module:
    """BigVGAN, keeping each call's input mel and output wave in ``log`` through hooks (the module stays the BigVGAN
    that ``enable`` patches); the input is cast to the model's dtype (the fp64 reference object)."""
    dtype = next(net.parameters()).dtype

    def before(module, args):
        log["mels"].append(args[0].detach().clone())
        return (args[0].to(dtype), *args[1:])

    def after(module, args, wav):
        log["wavs"].append(wav.detach().clone())

    net.register_forward_pre_hook(before)
    net.register_forward_hook(after)
    return net


# ----------------------------------------------------------------------------------------------------------------------
# The objects
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """What one ``infer`` did. Per segment: ``codes`` (what ``gpt.inference_speech`` returned: the stop token and
    what follows it included), ``rng`` (torch's CPU generator state right after that generation: what the CFM's
    noise is drawn from), ``cut`` (the codes infer hands the semantic codec: the generation cut at its stop token
    [1, n]), ``mels`` (the vocoder's input: the CFM mel past the prompt), ``wavs`` (the vocoder's output).
    ``wav``: the written file [channels, samples] (float; 16-bit files as their integer values), ``bits`` its sample
    width; ``warnings``: what infer warned; ``result``: what infer returned."""

    codes: list
    rng: list
    cut: list
    mels: list
    wavs: list
    wav: torch.Tensor
    bits: int
    warnings: list
    result: object


def stop_index(codes: torch.Tensor, stop: int = GPT["stop_mel_token"]) -> Optional[int]:
    """The position of the first stop token in ``codes`` [1, n], or None when the generation ran out."""
    hits = (codes[0] == stop).nonzero()
    return int(hits[0, 0]) if len(hits) else None


class Offline:
    """One offline official IndexTTS2 object (``tts``), its speaker reference and its recorders."""

    def __init__(self, version: str, tts, prompt: Path, log: dict):
        self.version, self.tts, self.prompt, self.log = version, tts, prompt, log

    def infer(self, *, text: str, output_path, seed: int, **kwargs) -> Run:
        """``tts.infer(spk_audio_prompt=<the reference wav>, text=..., output_path=..., **kwargs)`` after
        ``torch.manual_seed(seed)`` (2.5: lang="en" and text_normalization=False unless given)."""
        for v in self.log.values():
            v.clear()
        if self.version == "2.5":
            kwargs = dict(dict(lang="en", text_normalization=False), **kwargs)
        torch.manual_seed(seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.tts.infer(spk_audio_prompt=str(self.prompt), text=text, output_path=str(output_path),
                                    **kwargs)  # fmt: skip
        wav, sr, bits = read_wav(output_path)
        assert sr == SR, sr
        log = {k: list(v) for k, v in self.log.items()}
        return Run(log["codes"], log["rng"], log["cut"], log["mels"], log["wavs"], wav, bits,
                   [str(w.message) for w in caught], result)  # fmt: skip

    @contextlib.contextmanager
    def replaying(self, run: Run):
        """In the block, the GPT's generate returns ``run``'s codes segment by segment (after the prompt, as the
        official generate does) and leaves torch's generator as ``run`` found it after each generation, instead of
        sampling: the rest of the official pipeline (the conditioning, the latent pass, s2mel, the vocoder) runs."""
        im = self.tts.gpt.inference_model
        queue = list(zip(run.codes, run.rng, strict=True))

        def generate(inputs, **_):
            codes, state = queue.pop(0)
            torch.set_rng_state(state)
            return torch.cat([inputs, codes.to(inputs)], dim=1)

        im.generate = generate
        try:
            yield
        finally:
            del im.generate
        assert not queue, f"{len(queue)} recorded generations were not replayed"


def _record_cut_codes(codec, name: str, log: dict) -> None:
    """``codec.<name>`` (an instance attribute around the method: 2.0's ``quantizer.vq2emb``, 2.5's ``decode``)
    keeps the codes infer hands it, which are the generation's cut at its stop token."""
    official = getattr(codec, name)

    def method(codes, *args, **kwargs):
        log["cut"].append(codes.detach().clone().reshape(1, -1))
        return official(codes, *args, **kwargs)

    setattr(codec, name, method)


def _record_generations(uv, log: dict) -> None:
    """``uv.inference_speech`` (an instance attribute around the class's method) keeps what each call returned and
    the generator state after it; the arguments pass unchanged."""
    official = uv.inference_speech

    def inference_speech(*args, **kwargs):
        out = official(*args, **kwargs)
        codes = out[0] if isinstance(out, tuple) else out
        log["codes"].append(codes.detach().clone())
        log["rng"].append(torch.get_rng_state())
        return out

    uv.inference_speech = inference_speech


def _bigvgan(version: str, seed: int) -> nn.Module:
    bv = _sub(version, "s2mel.modules.bigvgan.bigvgan")
    env = _sub(version, "s2mel.modules.bigvgan.env")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm's deprecation
        net = bv.BigVGAN(env.AttrDict(dict(BIGVGAN)), **({"use_cuda_kernel": False} if version == "2.0" else {}))
        if hasattr(net, "remove_weight_norm"):
            net.remove_weight_norm()
    seed_weights(net, seed).eval()
    # the output layer scaled for a wave of std 0.2 (measured before the final clamp to [-1, 1]) on a mel of the
    # scale of the tiny random-weight CFM's mels
    seen = []
    hook = net.conv_post.register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        net(MEL_STD[version] * torch.randn(1, N_MELS, 32, generator=torch.Generator().manual_seed(seed)))
        hook.remove()
        net.conv_post.weight.mul_(0.2 / float(seen[0].std()))
    return net


def _campplus(version: str, seed: int, style_dim: int) -> nn.Module:
    dtdnn = _sub(version, "s2mel.modules.campplus.DTDNN")
    torch.manual_seed(seed)
    return seed_weights(dtdnn.CAMPPlus(embedding_size=style_dim, **CAMPPLUS), seed)


def _common(tts, version: str, seed: int, dtype, style_dim: int, log: dict) -> None:
    """The attributes both code lines read alike."""
    from omegaconf import OmegaConf
    from transformers import SeamlessM4TFeatureExtractor

    g = torch.Generator().manual_seed(seed + 100)
    tts.device = "cpu"
    tts.dtype = None  # CPU: no autocast (use_fp16 / use_bf16 off)
    tts.stop_mel_token = GPT["stop_mel_token"]
    tts.extract_features = SeamlessM4TFeatureExtractor()
    tts.semantic_model = W2VBertStandIn(seed + 1).to(dtype)
    tts.semantic_mean = (0.1 * torch.randn(W2V_DIM, generator=g)).to(dtype)
    tts.semantic_std = (0.5 + torch.rand(W2V_DIM, generator=g)).to(dtype)
    campplus = _campplus(version, seed + 2, style_dim).to(dtype)
    tts.campplus_model = campplus if dtype == torch.float32 else CastInputs(campplus)
    vocoder = _bigvgan(version, seed + 3).to(dtype)
    tts.bigvgan = vocoder if log is None else record_vocoder(vocoder, log)
    tts.emo_num = list(EMO_NUM)
    rows = sum(EMO_NUM)
    tts.emo_matrix = torch.split(torch.randn(rows, GPT["model_dim"], generator=g).to(dtype), EMO_NUM)
    tts.spk_matrix = torch.split(torch.randn(rows, style_dim, generator=g).to(dtype), EMO_NUM)
    mel = _sub(version, "s2mel.modules.audio").mel_spectrogram
    tts.mel_fn = lambda x: mel(x, **MEL_ARGS)
    tts.cfg = OmegaConf.create({"version": version, "gpt": dict(GPT), "s2mel": s2mel_config("tiny")})
    tts.model_dir = None


def _build_20(workdir: Path, seed: int, dtype, log: dict):
    mod = infer_module("2.0")
    tts = object.__new__(mod.IndexTTS2)
    style_dim = s2mel_config("tiny")["style_encoder"]["dim"]
    _common(tts, "2.0", seed, dtype, style_dim, log)
    tts.use_fp16, tts.use_cuda_kernel, tts.model_version, tts.gr_progress, tts.qwen_emo = False, False, None, None, None
    tts.gpt = build_unified_voice("tiny", seed + 4, **GPT_HEAD_DIM_64).to(dtype)
    repcodec = import_official("utils.maskgct.models.codec.kmeans.repcodec_model")
    torch.manual_seed(seed + 5)
    tts.semantic_codec = seed_weights(repcodec.RepCodec(**CODEC), seed + 5).to(dtype)
    content = s2mel_config("tiny")["DiT"]["content_dim"]
    s2mel = build_s2mel("tiny", seed + 6, length_regulator={"in_channels": W2V_DIM, "channels": content},
                        **DIT_HEAD_DIM_64)  # fmt: skip
    C = GPT["model_dim"]
    s2mel.models["gpt_layer"] = seed_weights(nn.Sequential(nn.Linear(C, 32), nn.Linear(32, 16), nn.Linear(16, W2V_DIM)),
                                             seed + 7)  # fmt: skip
    tts.s2mel = s2mel.to(dtype).eval()
    vocab = workdir / "bpe.model"
    vocab.write_text("the SentencePiece stand-in of indextts_fast.offline reads no model file\n")
    tts.bpe_path = str(vocab)
    tts.normalizer = _NormalizerStandIn()
    front = import_official("utils.front")
    sentencepiece = front.SentencePieceProcessor  # the stand-in even where sentencepiece is installed: no model file
    front.SentencePieceProcessor = _SentencePieceStandIn
    try:
        tts.tokenizer = front.TextTokenizer(str(vocab), tts.normalizer)
    finally:
        front.SentencePieceProcessor = sentencepiece
    for name in ("cache_spk_cond", "cache_s2mel_style", "cache_s2mel_prompt", "cache_spk_audio_prompt",
                 "cache_emo_cond", "cache_emo_audio_prompt", "cache_mel"):  # fmt: skip
        setattr(tts, name, None)
    return tts


def _build_25(workdir: Path, seed: int, dtype, log: dict):
    mod = infer_module("2.5")
    tts = object.__new__(mod.IndexTTS2)
    _common(tts, "2.5", seed, dtype, 192, log)
    tts.use_bf16 = False
    mv = _sub("2.5", "gpt.model_v2")
    torch.manual_seed(seed + 4)
    uv = mv.UnifiedVoice(**dict(GPT, number_text_tokens=TEXT_VOCAB_25), emo_condition_module=dict(TINY_COND))
    seed_weights(uv, seed + 4)
    uv.post_init_gpt2_config()
    tts.gpt = uv.to(dtype).eval()
    codec = _sub("2.5", "codec.models")
    torch.manual_seed(seed + 5)
    tts.semantic_codec = seed_weights(codec.EnhancedCodec(**CODEC), seed + 5).to(dtype)
    import munch

    cfg = s2mel_config("tiny")
    cfg["DiT"].update(DIT_HEAD_DIM_64)
    cfg["style_encoder"]["dim"] = 192
    cfg["length_regulator"].update(in_channels=W2V_DIM, channels=cfg["DiT"]["content_dim"])
    commons = _sub("2.5", "s2mel.modules.commons")
    torch.manual_seed(seed + 6)
    s2mel = seed_weights(commons.MyModel(munch.munchify(cfg)), seed + 6)
    s2mel.models["cfm"].estimator.setup_caches(max_batch_size=1, max_seq_length=1024)
    tts.s2mel = s2mel.to(dtype).eval()
    ranks = "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    name = "multilingual_zh_ja_yue_char_del"
    (workdir / f"{name}.tiktoken").write_text(ranks)
    tts.model_dir = str(workdir)
    tts.tokenizer = _sub("2.5", "utils.tokenizer").get_encoding(name, model_dir=str(workdir))
    tts._ja_text_process = None
    tts.text_process = _sub("2.5", "utils.front").TextNormalizer(enable_glossary=True)
    tts._spk_cache, tts._emo_cache, tts._emovec_cache = {}, {}, {}
    return tts


def build(version: str, workdir, *, seed: int = 0, dtype=torch.float32, record: bool = True) -> Offline:
    """The offline official IndexTTS2 object of ``version`` ("2.0" or "2.5") with every weight drawn from ``seed``
    (the same weights for every ``dtype``), its speaker reference written into ``workdir``. ``record=False``: no
    recorders (a long-lived object, e.g. a server's: the recorders keep every call's tensors)."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = {"codes": [], "rng": [], "cut": [], "mels": [], "wavs": []} if record else None
    with torch.random.fork_rng(devices=[]):  # the constructors' default init must not move the caller's generator
        tts = (_build_20 if version == "2.0" else _build_25)(workdir, seed, dtype, log)
    if log is None:
        return Offline(version, tts, reference_audio(workdir / "speaker.wav", seed=seed), {})
    _record_generations(tts.gpt, log)
    if version == "2.0":
        _record_cut_codes(tts.semantic_codec.quantizer, "vq2emb", log)
    else:
        _record_cut_codes(tts.semantic_codec, "decode", log)
    return Offline(version, tts, reference_audio(workdir / "speaker.wav", seed=seed), log)


@contextlib.contextmanager
def one_thread():
    """torch's intra-op threads at one for the block: the tiny models' thousands of small ops run faster on one
    thread, and a busy machine does not slow them twentyfold (two threads spin-waiting at every op)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
