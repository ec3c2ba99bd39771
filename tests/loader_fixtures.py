"""Official IndexTTS2 modules with random weights, saved in the exact official containers (no downloads).

Tiny configs keep the tests fast; ``full=True`` builds the real sizes (GPT 1280 x 24 x 20 heads, DiT 512 x 13 x 8
heads, WaveNet 512 x 8, style 192, 80 mel bins, content 512). The full GPT is built as what the GPT hot path
reads: HF GPT2Model (as UnifiedVoice builds it) plus the embeddings, the heads and the emotion layers, not the
conformer / perceiver conditioning encoders (0.4 B parameters that the hot path never touches).
"""

from __future__ import annotations

import copy

import torch

from .helpers import official

TINY_GPT = dict(layers=2, model_dim=64, heads=4, max_text_tokens=32, max_mel_tokens=48, number_text_tokens=100,
                number_mel_codes=130, start_mel_token=128, stop_mel_token=129)  # fmt: skip
TINY_COND = dict(output_size=64, linear_units=128, attention_heads=4, num_blocks=1, input_layer="conv2d2",
                 perceiver_mult=2)  # fmt: skip
FULL_GPT = dict(layers=24, model_dim=1280, heads=20, max_text_tokens=600, max_mel_tokens=1815,
                number_text_tokens=12000, number_mel_codes=8194, start_mel_token=8192, stop_mel_token=8193)  # fmt: skip


def s2mel_config(full: bool = False) -> dict:
    """The s2mel section of IndexTTS-2's config.yaml (full) or a scaled-down copy (tiny)."""
    C, L, heads, F, D, S, H, W, R, Q = (512, 13, 8, 80, 512, 192, 512, 8, 512, 1024) if full else \
        (64, 5, 4, 16, 48, 24, 64, 3, 32, 40)  # fmt: skip
    return {
        "dit_type": "DiT",
        "reg_loss_type": "l1",
        "style_encoder": {"dim": S},
        "length_regulator": {
            "channels": R,
            "is_discrete": False,
            "in_channels": Q,
            "content_codebook_size": 2048 if full else 40,
            "sampling_ratios": [1, 1, 1, 1],
            "vector_quantize": False,
            "n_codebooks": 1,
            "quantizer_dropout": 0.0,
            "f0_condition": False,
            "n_f0_bins": 512,
        },  # fmt: skip
        "DiT": {
            "hidden_dim": C,
            "num_heads": heads,
            "depth": L,
            "class_dropout_prob": 0.1,
            "block_size": 8192,
            "in_channels": F,
            "style_condition": True,
            "final_layer_type": "wavenet",
            "target": "mel",
            "content_dim": D,
            "content_codebook_size": 1024 if full else 24,
            "content_type": "discrete",
            "f0_condition": False,
            "n_f0_bins": 512,
            "content_codebooks": 1,
            "is_causal": False,
            "long_skip_connection": True,
            "zero_prompt_speech_token": False,
            "time_as_token": False,
            "style_as_token": False,
            "uvit_skip_connection": True,
            "add_resblock_in_transformer": False,
        },
        "wavenet": {
            "hidden_dim": H,
            "num_layers": W,
            "kernel_size": 5,
            "dilation_rate": 1,
            "p_dropout": 0.2,
            "style_condition": True,
        },  # fmt: skip
    }


def gpt_config(full: bool = False) -> dict:
    g = dict(FULL_GPT if full else TINY_GPT)
    g["condition_type"] = "conformer_perceiver"
    return {"gpt": g}


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every floating parameter and buffer random (never zeros, never the init's ones / zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or name.endswith("freqs") or name.endswith("pos_enc.pe"):
                continue
            fan = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)


def build_unified_voice(seed: int = 0, **overrides):
    """Tiny official UnifiedVoice with random weights (all submodules, conditioning encoders included);
    ``overrides`` change UnifiedVoice arguments (e.g. max_mel_tokens)."""
    mv = official("gpt.model_v2")
    uv = mv.UnifiedVoice(**dict(TINY_GPT, **overrides), condition_type="conformer_perceiver",
                         condition_module=TINY_COND, emo_condition_module=TINY_COND).eval()  # fmt: skip
    _randomize(uv, seed)
    return uv


def construct_gpt_core(full: bool = False, layers=None, **sizes) -> GPTCore:
    """The official constructors only (default init, no extra randomization): the GPT hot-path part of
    UnifiedVoice at real or tiny size: GPT2Model via model_v2.build_hf_gpt_transformer plus the nn.Embedding /
    nn.Linear / nn.LayerNorm heads that UnifiedVoice.__init__ creates, under the same names. ``sizes`` overrides
    entries of TINY_GPT / FULL_GPT (model_dim, heads, ...)."""
    mv = official("gpt.model_v2")
    c = dict(FULL_GPT if full else TINY_GPT, **sizes)
    if layers is not None:
        c["layers"] = layers
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


def build_gpt_core(full: bool = False, seed: int = 0, layers=None, **sizes):
    """construct_gpt_core with random weights everywhere (LayerNorms and speed_emb included).
    Returns (GPTCore module, its state dict); ``layers`` overrides the layer count (full width, fewer layers)."""
    torch.manual_seed(seed)
    core = construct_gpt_core(full, layers, **sizes)
    if not full:
        _randomize(core, seed)
    else:  # default inits are random except LayerNorm (ones / zeros) and speed_emb (zeros): perturb those
        with torch.no_grad():
            for pn, p in core.named_parameters():
                if "ln_" in pn or pn.startswith("final_norm") or pn.startswith("speed_emb"):
                    p.add_(torch.randn_like(p) * 0.1)
    return core, core.state_dict()


class GPTCore(torch.nn.Module):
    """A container whose state_dict names equal UnifiedVoice's for the GPT hot-path parts."""

    def __init__(self, parts: dict):
        super().__init__()
        for k, m in parts.items():
            setattr(self, k, m)

    def forward(self, x):  # the official chain: gpt (incl. ln_f) -> final_norm -> mel_head
        h = self.gpt(inputs_embeds=x, return_dict=True).last_hidden_state
        return self.mel_head(self.final_norm(h))


def build_s2mel(full: bool = False, seed: int = 0, wavenet=None, **dit):
    """Official MyModel(use_gpt_latent=True) = {'cfm', 'length_regulator', 'gpt_layer'} with random weights;
    ``dit`` overrides entries of the config's DiT section (e.g. num_heads=1: head_dim 64 at the tiny width),
    ``wavenet`` entries of its wavenet section."""
    commons = official("s2mel.modules.commons")
    cfg = s2mel_config(full)
    cfg["DiT"].update(dit)
    cfg["wavenet"].update(wavenet or {})
    args = commons.recursive_munch(cfg)
    torch.manual_seed(seed)
    m = commons.MyModel(args, use_gpt_latent=True).eval()
    if not full:
        _randomize(m, seed)
    else:
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith("norm.weight") or "weight_g" in n:
                    p.mul_(1 + 0.1 * torch.randn_like(p))
    return m


def s2mel_container(model, module_prefix: bool = False, extra: bool = True) -> dict:
    """The official s2mel.pth container: {'net': {name: state_dict}, 'optimizer': ..., 'epoch': ...}."""
    net = {}
    for name, sub in model.models.items():
        sd = sub.state_dict()
        net[name] = {("module." + k if module_prefix else k): v for k, v in sd.items()}
    state = {"net": net}
    if extra:
        state.update({"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 3, "iters": 1000})
    return state


def flat_s2mel(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, sub in model.models.items() for k, v in sub.state_dict().items()}


def clone_sd(sd):
    return copy.copy({k: v.clone() for k, v in sd.items()})


# ----------------------------------------------------------------------------------------------------------------------
# Damaged torch.save zips (a real file edited record by record)
# ----------------------------------------------------------------------------------------------------------------------
def record_holding(path, tensor: torch.Tensor) -> str:
    """The name of the zip record of a torch.save file whose bytes are exactly ``tensor``'s."""
    import zipfile

    want = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as zf:
        hits = [i.filename for i in zf.infolist() if "/data/" in i.filename and zf.read(i) == want]
    assert len(hits) == 1, hits
    return hits[0]


def rewrite_zip(src, dst, edit) -> None:
    """Rewrite a torch.save zip with ``edit(name, data) -> data`` applied to every record; zipfile writes a
    consistent directory (offsets, sizes and CRC-32s recomputed), so only the edited record is damaged."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info)))


def flip_record_byte(path, name: str, offset: int) -> None:
    """Flip the low bit of one byte inside a record's data, in place; the zip directory (and its CRC) is kept."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + n_name + n_extra + offset)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
