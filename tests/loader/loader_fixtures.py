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
