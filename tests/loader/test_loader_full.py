"""The loader at IndexTTS-2's real sizes: full s2mel (DiT 512 x 13 x 8 heads, WaveNet 512 x 8, length regulator
512, gpt_layer) and the GPT-2 at full width and vocabularies (1280, 20 heads, real embedding tables) with 2 of its
24 layers (every layer has the same shapes; the 24-layer file is exercised by bench/bench_loader.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import official

from . import loader_fixtures as lf
from .test_loader import _assert_same_sd, dit_check, gpt_check, official_fp64

# tests that convert without config.yaml on purpose: the head-count warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:no config.yaml:UserWarning")


@pytest.fixture(scope="module")
def full_s2mel():
    return official.build_s2mel("full")


def _yaml(tmp_path, gpt_layers=24):
    yaml = pytest.importorskip("yaml")
    cfg = {"s2mel": official.s2mel_config("full"), **official.gpt_config("full")}
    cfg["gpt"]["layers"] = gpt_layers
    cfg["gpt"].pop("condition_type")  # the GPT-core files carry no conditioning encoders
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_full_s2mel(full_s2mel, tmp_path):
    torch.save(lf.s2mel_container(full_s2mel), tmp_path / "s2mel.pth")
    rep = CK.convert_checkpoint(tmp_path / "s2mel.pth", tmp_path / "s2mel.safetensors", config=_yaml(tmp_path))
    assert rep.dims == {"C": 512, "D": 512, "F": 80, "H": 512, "S": 192, "L": 13, "I": 1536, "W": 8, "K": 5,
                        "R": 512, "Q": 1024, "N": 4, "heads": 8}  # fmt: skip
    w = CK.load_pack(tmp_path / "s2mel.safetensors")
    d = w.dit
    # shapes of indextts2-hot-path.md section 3.3, in kernel layout
    assert d.layers[0].wqkv.shape == (1536, 512) and d.layers[12].w13.shape == (3072, 512)
    assert d.layers[0].w2.shape == (512, 1536) and d.adaln_w.shape == (27 * 1024, 512)
    assert [i for i, l in enumerate(d.layers) if l.skip_in_w is not None] == list(range(7, 13))
    assert d.merge_w.shape == (512, 864) and d.skip_linear_w.shape == (512, 592)
    assert d.wn_cond_w.shape == (8192, 512) and d.wn_in_w[0].shape == (1024, 2560)
    assert d.wn_res_skip_w[6].shape == (1024, 512) and d.wn_res_skip_w[7].shape == (512, 512)
    assert d.conv2_w.shape == (80, 512) and w.length_regulator.conv_w[0].shape == (512, 1536)
    assert [t.shape for t, _ in w.gpt_layer] == [(256, 1280), (128, 256), (1024, 128)]
    assert all(t.dtype == torch.float32 for t in (d.layers[3].w13, d.wn_in_w[2], d.norm_g))
    assert len(rep.folded) == 1 + 8 + 8 + 1
    # round trip
    sd = lf.flat_s2mel(full_s2mel)
    tensors, _ = CK.read_pack(tmp_path / "s2mel.safetensors")
    inv = CK.inverse_remap(tensors, "s2mel", rep.dims)
    pack2, _ = CK.remap_state_dict(inv)
    _assert_same_sd(pack2, tensors, "remap(inverse(pack)) at full size")
    folded = {s for _, srcs, op in rep.mapped if op.startswith("wn") for s in srcs}
    for k in inv:
        if k not in folded:
            assert torch.equal(inv[k], sd[k]), k
    # the estimator forward from the loaded weights vs the official DiT
    dit_check(full_s2mel, w, B=2, T=24, m64=official_fp64(full_s2mel, "full"))


def test_full_width_gpt(tmp_path):
    core, sd = official.build_gpt_core("full", layers=2)
    torch.save(sd, tmp_path / "gpt.pth")
    cfg = _yaml(tmp_path, gpt_layers=2)
    rep = CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "gpt.safetensors", config=cfg)
    assert rep.dims == {"C": 1280, "L": 2, "Vt": 12001, "Vm": 8194, "Pt": 602, "Pm": 1818, "E": 1024, "heads": 20}
    w = CK.load_pack(tmp_path / "gpt.safetensors")
    l1 = w.layers[1]
    assert l1.qkv_w.shape == (3840, 1280) and l1.qkv_w.dtype == torch.float16
    assert torch.equal(l1.qkv_w, core.gpt.h[1].attn.c_attn.weight.detach().t().half())
    assert l1.fc_w.shape == (5120, 1280) and l1.proj_w.shape == (1280, 5120)
    assert w.mel_head_w.shape == (8194, 1280) and w.mel_pos.shape == (1818, 1280)
    assert w.ln_f_w.dtype == torch.float16 and w.text_embedding.dtype == torch.float16  # as gpt.half()
    # forward at the fp32 policy vs the official chain gpt -> final_norm -> mel_head
    CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "gpt32.safetensors", config=cfg,
                         policy=CK.gpt_policy("float32"))  # fmt: skip
    w32 = CK.load_pack(tmp_path / "gpt32.safetensors")
    core64, _ = official.build_gpt_core("full", layers=2)
    core64.load_state_dict(sd)
    gpt_check(core, core64.double(), w32, torch.randn(1, 17, 1280))


def _full_unified_voice_meta():
    """The complete official UnifiedVoice at IndexTTS-2's config on the meta device: (speaker conformer config,
    emotion conformer config, state dict of names and shapes)."""
    mv = official.import_official("gpt.model_v2")
    cm, em = dict(official.FULL_COND), dict(official.FULL_EMO_COND)
    with torch.device("meta"):
        uv = mv.UnifiedVoice(**official.FULL_GPT, condition_type="conformer_perceiver", condition_module=cm,
                             emo_condition_module=em)  # fmt: skip
    return cm, em, uv.state_dict()


def test_full_unified_voice_key_plan():
    """The complete official UnifiedVoice at IndexTTS-2's config (built on the meta device: names and shapes, no
    memory): every one of its keys is mapped, carried or ignored, none is missing, every shape is as expected."""
    cm, em, sd = _full_unified_voice_meta()
    assert round(sum(v.numel() for v in sd.values()) / 1e9, 2) == 0.87  # indextts2-hot-path.md section 3.1
    plan = CK.plan_checkpoint(sd)
    acts = Counter(a for a, _ in plan["actions"].values())
    assert plan["missing"] == [] and plan["error"] is None
    assert acts == {"mapped:copy": 207, "mapped:t": 96, "carried": 360, "ignored": 2}, acts
    assert plan["dims"] == {"C": 1280, "L": 24, "Vt": 12001, "Vm": 8194, "Pt": 602, "Pm": 1818, "E": 1024,
                            "heads": 20}  # fmt: skip
    assert tuple(sd["gpt.h.7.attn.c_attn.weight"].shape) == (1280, 3840)
    assert plan["actions"]["gpt.h.7.attn.c_attn.weight"] == ("mapped:t", "h.7.qkv.w")
    assert tuple(sd["perceiver_encoder.layers.1.1.0.weight"].shape) == (3412, 1280)


def test_full_s2mel_key_plan():
    """The same for the complete official MyModel at IndexTTS-2's s2mel config, in both AdaLN layouts."""
    commons = official.import_official("s2mel.modules.commons")
    with torch.device("meta"):
        m = commons.MyModel(commons.recursive_munch(official.s2mel_config("full")), use_gpt_latent=True)
    sd = lf.flat_s2mel(m)
    for split in (False, True):
        plan = CK.plan_checkpoint(sd, stack_adaln=not split)
        refused = {k: v for k, v in plan["actions"].items() if v[0] not in ("ignored",) and ":" not in v[0]}
        assert plan["missing"] == [] and not refused, refused
    ignored = sorted(k for k, v in plan["actions"].items() if v[0] == "ignored")
    assert len(ignored) == 3 + 1 + 1 + 1 + 2 * 7 + 2  # x_embedder g/v/b, cond_embedder, content_mask, input_pos,
    # skip_in_linear of layers 0..6, length_regulator embedding + mask_token


def test_full_unified_voice_conditioning_encoders_consistent():
    """The carried conditioning encoders of the complete official UnifiedVoice at IndexTTS-2's config pass the
    completeness / shape checks (speaker conformer 6 blocks x 8 heads, emotion 4 x 4, perceivers 1280 / 1024)."""
    cm, em, sd = _full_unified_voice_meta()
    plan = CK.plan_checkpoint(sd)
    carried = [k for k, (a, _) in plan["actions"].items() if a == "carried"]
    cfg = official.gpt_config("full")
    cfg["gpt"].update(condition_module=cm, emo_condition_module=em)
    assert CK.conditioning._check_carried(sd, carried, plan["dims"], cfg) == ([], [], [])
    sd = dict(
        sd, **{"emo_conditioning_encoder.encoders.3.feed_forward.w_1.weight": torch.empty(2048, 512, device="meta")}
    )
    missing, wrong, unknown = CK.conditioning._check_carried(sd, carried, plan["dims"], cfg)
    assert wrong == ["emo_conditioning_encoder.encoders.3.feed_forward.w_1.weight [2048, 512] (expected [U,D] with "
                     "{'D': 512, 'U': 1024, 'h': 4, 'k': 15})"] and not missing and not unknown  # fmt: skip
