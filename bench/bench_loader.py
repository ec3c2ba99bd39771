"""Checkpoint loader, CPU: files-to-ready time of the fast pack against the official path, same run.

Files: a full-size random GPT-2 of UnifiedVoice (24 x 1280, 20 heads, real vocabularies and position tables,
without the conformer / perceiver conditioning encoders) saved as gpt.pth, and a full-size random s2mel
(DiT 512 x 13, WaveNet 512 x 8, length regulator, gpt_layer) in the official s2mel.pth container.

    official  construct the official modules, torch.load the .pth, load_state_dict, .half() for the GPT
              (indextts.utils.checkpoint.load_checkpoint / indextts.s2mel.modules.commons.load_checkpoint2)
    fastpack  load_pack(): one read of the pack into memory, every tensor in kernel layout (no module, no
              random init, no transform); the result holds every weight resident in RAM
    read      the floor of any loader: read the pack's bytes into a fresh buffer, nothing else
    convert   the one-time conversion (read, validate, transform, sha256, atomic write)

The zip record checks of a torch.save source (every storage's record size, every record's CRC-32) are timed on
their own on a 105 MB synthetic checkpoint, next to the source's sha256 and torch.load(mmap=True) of the same
file (``-k record_checks``).

Run: ``pytest bench/bench_loader.py --benchmark-enable -s`` (CPU only; both files sit in the page cache after
the warm-up round, so this measures warm-cache loading, not disk bandwidth).
"""

from __future__ import annotations

import gc
import os
import platform

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import official
from tests.loader.loader_fixtures import s2mel_container

ROUNDS = 5


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, cpu"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import yaml

    d = tmp_path_factory.mktemp("loader_bench")
    core, sd = official.build_gpt_core("full")
    torch.save(sd, d / "gpt.pth")
    del core, sd
    m = official.build_s2mel("full")
    torch.save(s2mel_container(m), d / "s2mel.pth")
    del m
    gc.collect()
    cfg = {"s2mel": official.s2mel_config("full"), **official.gpt_config("full")}
    cfg["gpt"].pop("condition_type")  # the GPT file carries no conditioning encoders
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    for k in ("gpt", "s2mel"):
        CK.convert_checkpoint(d / f"{k}.pth", d / f"{k}.fast.safetensors", config=d / "config.yaml")
    return d


def official_gpt(path):
    core = official.construct_gpt_core("full")
    official.import_official("utils.checkpoint").load_checkpoint(core, str(path))
    return core.half()


def official_s2mel(path):
    commons = official.import_official("s2mel.modules.commons")
    model = commons.MyModel(commons.recursive_munch(official.s2mel_config("full")), use_gpt_latent=True)
    commons.load_checkpoint2(model, None, str(path), load_only_params=True, ignore_modules=[], is_distributed=False)
    return model.eval()


def read_floor(path):
    buf = torch.empty(os.path.getsize(path), dtype=torch.uint8)
    with open(path, "rb") as f:
        f.readinto(memoryview(buf.numpy()))
    return buf


def _run(benchmark, fn, group, provider, nbytes=None):
    benchmark.group = group
    benchmark.extra_info.update({"provider": provider, "machine": _machine(), "threads": torch.get_num_threads()})
    if nbytes:
        benchmark.extra_info["file_mib"] = round(nbytes / 2**20, 1)

    def once():
        out = fn()
        del out
        gc.collect()

    benchmark.pedantic(once, warmup_rounds=1, rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("provider", ["official", "fastpack", "read"])
def test_gpt_files_to_ready(benchmark, files, provider):
    if provider == "official":
        fn = lambda: official_gpt(files / "gpt.pth")
    elif provider == "read":
        fn = lambda: read_floor(files / "gpt.fast.safetensors")
    else:

        def fn():
            w = CK.load_pack(files / "gpt.fast.safetensors")
            assert w.layers[23].proj_w.dtype == torch.float16 and w.layers[23].proj_w.shape == (1280, 5120)
            return w

    _run(benchmark, fn, "loader/gpt 24x1280", provider, os.path.getsize(files / "gpt.pth"))


@pytest.mark.parametrize("provider", ["official", "fastpack", "read"])
def test_s2mel_files_to_ready(benchmark, files, provider):
    if provider == "official":
        fn = lambda: official_s2mel(files / "s2mel.pth")
    elif provider == "read":
        fn = lambda: read_floor(files / "s2mel.fast.safetensors")
    else:

        def fn():
            w = CK.load_pack(files / "s2mel.fast.safetensors")
            assert w.dit.layers[12].w13.shape == (3072, 512)
            return w

    _run(benchmark, fn, "loader/s2mel DiT 512x13", provider, os.path.getsize(files / "s2mel.pth"))


@pytest.mark.parametrize("model", ["gpt", "s2mel"])
def test_convert(benchmark, files, model):
    benchmark.group = f"loader/convert {model}"
    benchmark.extra_info.update({"provider": "convert", "machine": _machine()})
    out = files / f"{model}.again.safetensors"
    benchmark.pedantic(
        lambda: CK.convert_checkpoint(files / f"{model}.pth", out, config=files / "config.yaml", overwrite=True),
        rounds=1,
        iterations=1,
    )


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory):
    """25 fp32 tensors of 2**20 values: a 105 MB torch.save zip."""
    path = tmp_path_factory.mktemp("record_checks") / "ck.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({f"w{i}": torch.randn(1 << 20, generator=g) for i in range(25)}, path)
    return path


@pytest.mark.parametrize("provider", ["record_checks", "sha256", "torch_load_mmap"])
def test_record_checks(benchmark, synthetic_ckpt, provider):
    from pathlib import Path

    fn = {
        "record_checks": lambda: CK.containers._check_zip_records(Path(synthetic_ckpt)),
        "sha256": lambda: CK.file_sha256(synthetic_ckpt),
        "torch_load_mmap": lambda: torch.load(synthetic_ckpt, mmap=True, weights_only=True),
    }[provider]
    benchmark.group = "loader/record checks 105 MB"
    benchmark.extra_info.update({"provider": provider, "machine": _machine(), "file_mib": 100})
    benchmark.pedantic(fn, warmup_rounds=1, rounds=ROUNDS, iterations=1)  # no gc per round: nothing big is kept
