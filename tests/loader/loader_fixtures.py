"""The official checkpoint files the loader tests read: containers (s2mel.pth's ``{'net': ...}``, its flat form) and
damaged torch.save zips (a real file edited record by record).

The modules whose weights go into these files come from the one official-model harness, ``indextts_fast.official``
(``build_unified_voice(post_init=False)``: the module as gpt.pth holds it, ``build_gpt_core``, ``build_s2mel``).
"""

from __future__ import annotations

import torch


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


# ----------------------------------------------------------------------------------------------------------------------
# IndexTTS-2.5 checkpoints at tiny sizes, built from the 2.5 module classes (indextts25-inference: the campplus-only
# UnifiedVoice, EnhancedCodec's decoding half, MyModel without gpt_layer) with seeded random weights, in the official
# containers. That package folds weight norm at load (its modules hold ``<name>.weight``); the official files hold
# (weight_g, weight_v) pairs, so every such pair is drawn at random and the live module given exactly the fold the
# package computes (torch._weight_norm), which makes the file remap and the live remap comparable bit for bit.
# ----------------------------------------------------------------------------------------------------------------------
TINY_CODEC = dict(codebook_size=64, hidden_size=32, codebook_dim=8, vocos_dim=16, vocos_intermediate_dim=24,
                  vocos_num_layers=2)  # fmt: skip


def import25(module: str):
    """``indextts25.<module>``; without the package, the test fails (tests/helpers.missing_official)."""
    import importlib

    from ..helpers import missing_official

    try:
        return importlib.import_module(f"indextts25.{module}")
    except ImportError as e:
        missing_official(e)


def seeded(module: torch.nn.Module, seed: int) -> None:
    """Every floating parameter and buffer N(0, 1) / sqrt(fan-in) from one seeded generator, save the fixed
    tables (the conformer's ``pos_enc.pe``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if p.is_floating_point() and not name.endswith("pos_enc.pe"):
                fan = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)


def _ns(d):
    import types

    return types.SimpleNamespace(**{k: _ns(v) if isinstance(v, dict) else v for k, v in d.items()})


def build_uv25(seed: int = 0):
    """The 2.5 UnifiedVoice at the tiny GPT sizes of the 2.0 harness, random weights, eval mode."""
    from indextts_fast import official

    uv = import25("gpt.model_v2").UnifiedVoice(**official.TINY_GPT, emo_condition_module=official.TINY_COND)
    seeded(uv, seed)
    return uv.eval()


def gpt25_file(uv, seed: int = 1) -> dict[str, torch.Tensor]:
    """gpt.pth of a 2.5 UnifiedVoice: its state dict plus the training-only text_head the released file carries
    (the 2.5 module does not build it)."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(uv.state_dict())
    V, C = sd["text_embedding.weight"].shape
    sd["text_head.weight"] = torch.randn(V, C, generator=g)
    sd["text_head.bias"] = torch.randn(V, generator=g)
    return sd


def _unfold(module: torch.nn.Module, bases, seed: int) -> dict[str, torch.Tensor]:
    """{base.weight_g, base.weight_v} drawn at random for each base; the module's ``base.weight`` set to their fold."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for base in bases:
            w = module.get_parameter(base + ".weight")
            v = torch.randn(w.shape, generator=g)
            gain = 1 + 0.1 * torch.randn((w.shape[0],) + (1,) * (w.dim() - 1), generator=g)
            w.copy_(torch._weight_norm(v, gain, 0))
            out[base + ".weight_g"], out[base + ".weight_v"] = gain, v
    return out


def _file_form(module: torch.nn.Module, pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    folded = {k[: -len("_g")] for k in pairs if k.endswith("_g")}
    return {**{k: v for k, v in module.state_dict().items() if k not in folded}, **pairs}


def build_s2mel25(seed: int = 0):
    """(the 2.5 MyModel at the tiny s2mel sizes of the 2.0 harness, the flat official s2mel.pth state of its
    models: weight-norm pairs where the 2.0 module code has them)."""
    from indextts_fast import official

    m = import25("s2mel.modules.commons").MyModel(_ns(official.s2mel_config())).eval()
    seeded(m, seed)
    # the convs the 2.0 module code weight-norms (the s2mel code is the same in both versions)
    wn = {k[: -len(".weight_g")] for k in flat_s2mel(official.build_s2mel()) if k.endswith(".weight_g")}
    flat = {f"{n}.{k}": v for n, sub in m.models.items() for k, v in sub.state_dict().items()}
    pairs = _unfold(m.models, sorted(b for b in wn if b + ".weight" in flat), seed + 1)
    return m, _file_form(m.models, pairs)


def s2mel25_container(flat: dict[str, torch.Tensor], seed: int = 2) -> dict:
    """The released 2.5 s2mel.pth form: {'net': {'cfm', 'length_regulator', 'gpt_layer'}, ...}; its gpt_layer (the
    6 tensors of 2.0's Linear 1280 -> 256 -> 128 -> 1024) is in the file although the 2.5 model never loads it."""
    g = torch.Generator().manual_seed(seed)
    net: dict[str, dict] = {}
    for k, v in flat.items():
        group, rest = k.split(".", 1)
        net.setdefault(group, {})[rest] = v
    sizes = [(256, 1280), (128, 256), (1024, 128)]
    net["gpt_layer"] = {f"{i}.{n}": torch.randn(*(s if n == "weight" else s[:1]), generator=g) / 16
                        for i, s in enumerate(sizes) for n in ("weight", "bias")}  # fmt: skip
    return {"net": net, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 3}


def build_codec25(seed: int = 0):
    """(the 2.5 EnhancedCodec at tiny sizes, random weights, out_project folded; the official codec.pth container
    {'model': state dict, ...} of the full codec: out_project as a weight-norm pair, plus the encoding half that
    decode never reads (encoder.* mirroring decoder.*, down, in_project))."""
    codec = import25("codec.models").EnhancedCodec(**TINY_CODEC).eval()
    seeded(codec, seed)
    sd = _file_form(codec, _unfold(codec, ["quantizer.quantizers.0.out_project"], seed + 1))
    g = torch.Generator().manual_seed(seed + 2)
    H, Q = TINY_CODEC["hidden_size"], TINY_CODEC["codebook_dim"]
    training = {"encoder." + k[len("decoder.") :]: torch.randn(v.shape, generator=g) for k, v in sd.items()
                if k.startswith("decoder.")}  # fmt: skip
    training.update({
        "down.weight": torch.randn(H, H, 3, generator=g), "down.bias": torch.randn(H, generator=g),
        "quantizer.quantizers.0.in_project.weight_g": torch.rand(Q, 1, 1, generator=g) + 0.5,
        "quantizer.quantizers.0.in_project.weight_v": torch.randn(Q, H, 1, generator=g),
        "quantizer.quantizers.0.in_project.bias": torch.randn(Q, generator=g),
    })  # fmt: skip
    container = {"model": {**sd, **training}, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}, "step": 7}
    return codec, container
