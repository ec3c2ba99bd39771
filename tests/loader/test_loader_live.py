"""remap_live: pack tensors from live official modules (tiny UnifiedVoice, MyModel, a lone DiT), against
remap_state_dict on the same weights."""

from __future__ import annotations

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import loader as L
from indextts_fast import official

from . import loader_fixtures as lf

F32 = CK.gpt_policy("float32")
IDENTITY_OPS = ("copy", "k1")


@pytest.fixture(scope="module")
def uv():
    return official.build_unified_voice(post_init=False)


@pytest.fixture(scope="module")
def s2mel():
    return official.build_s2mel()


def _same(live: dict, ref: dict, what: str):
    assert sorted(live) == sorted(ref), f"{what}: names differ: {sorted(set(live) ^ set(ref))[:8]}"
    bad = [k for k in ref if live[k].dtype != ref[k].dtype or not torch.equal(live[k], ref[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, first {bad[:5]}"


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_live_gpt_equals_the_file_remap(uv):
    live, rep = L.remap_live(uv, "gpt")
    ref, ref_rep = CK.remap_state_dict(uv.state_dict(), policy=F32, config=official.gpt_config())
    _same(live, {k: v for k, v in ref.items() if not k.startswith("cond.")}, "remap_live(uv) vs remap_state_dict")
    assert rep.dims == ref_rep.dims and rep.heads_from == "module" and rep.dims["heads"] == 4
    kept_in_module = sorted(k for k, why in rep.ignored if "stays in the official module" in why)
    assert rep.carried == [] and kept_in_module == ref_rep.carried and len(kept_in_module) == 110
    assert rep.mapped == ref_rep.mapped


def test_live_identity_transforms_are_views(uv, s2mel):
    params = dict(uv.named_parameters())
    live, rep = L.remap_live(uv, "gpt")
    for dst, srcs, op in rep.mapped:
        assert _shares(live[dst], params[srcs[0]]) == (op in IDENTITY_OPS), (dst, op)
    before = uv.mel_embedding.weight[3, 5].item()
    with torch.no_grad():  # a view follows the module
        uv.mel_embedding.weight[3, 5] = 7.0
    try:
        assert live["mel_embedding"][3, 5] == 7.0
    finally:
        with torch.no_grad():
            uv.mel_embedding.weight[3, 5] = before
    est = s2mel.models["cfm"].estimator
    live, rep = L.remap_live(s2mel.models, "s2mel")
    assert ("dit.conv2.w", ("cfm.estimator.conv2.weight",), "k1") in rep.mapped
    assert _shares(live["dit.conv2.w"], est.conv2.weight) and live["dit.conv2.w"].shape == (16, 64)
    assert not _shares(live["dit.wn.in.0.w"], est.wavenet.in_layers[0].conv.conv.weight_v)  # folded: new
    assert not any(t.requires_grad for t in live.values())


def test_live_fp16_gpt_stays_fp16(uv):
    uv16 = official.build_unified_voice(post_init=False).half()
    live, rep = L.remap_live(uv16, "gpt")
    assert {t.dtype for t in live.values()} == {torch.float16}
    ref, _ = CK.remap_state_dict(uv.state_dict(), config=official.gpt_config())  # default policy: all fp16
    _same(live, {k: v for k, v in ref.items() if not k.startswith("cond.")}, "fp16 live vs fp16 policy")


@pytest.mark.parametrize("stack", [True, False], ids=["stacked_adaln", "split_adaln"])
def test_live_s2mel_equals_the_file_remap(s2mel, stack):
    cfg = {"s2mel": official.s2mel_config()}
    live, rep = L.remap_live(s2mel.models, "s2mel", stack_adaln=stack)
    ref, ref_rep = CK.remap_state_dict(lf.flat_s2mel(s2mel), config=cfg, stack_adaln=stack)
    _same(live, ref, "remap_live(MyModel.models) vs remap_state_dict")
    assert rep.dims == ref_rep.dims and rep.heads_from == "module"
    live_sd, _ = CK.remap_live(s2mel.models.state_dict(), "s2mel", config=cfg, stack_adaln=stack)  # a state dict
    _same(live_sd, ref, "remap_live(MyModel.models.state_dict())")


def test_live_lone_dit(s2mel):
    est = s2mel.models["cfm"].estimator
    ref, ref_rep = CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": official.s2mel_config()})
    dit_ref = {k: v for k, v in ref.items() if k.startswith("dit.")}
    for parts in (("cfm",), None):  # a lone DiT defaults to the estimator
        live, rep = L.remap_live(est, "s2mel", parts=parts)
        _same(live, dit_ref, f"remap_live(DiT, parts={parts})")
        assert rep.dims == {k: v for k, v in ref_rep.dims.items() if k not in ("R", "Q", "N")}
    live, _ = L.remap_live(s2mel.models["cfm"], "s2mel")  # a CFM: keys estimator.*
    _same(live, dit_ref, "remap_live(CFM)")


@pytest.mark.parametrize("case", ["extra", "missing", "wrong_shape"])
def test_live_lone_dit_strict(s2mel, case):
    sd = dict(s2mel.models["cfm"].estimator.state_dict())
    if case == "extra":
        sd["lora.weight"] = torch.randn(4, 64)
        match = r"unknown keys .*: cfm\.estimator\.lora\.weight$"
    elif case == "missing":
        del sd["transformer.layers.2.attention.wo.weight"]
        match = r"missing keys: cfm\.estimator\.transformer\.layers\.2\.attention\.wo\.weight$"
    else:
        sd["conv1.bias"] = torch.randn(65)
        match = r"wrong shape: cfm\.estimator\.conv1\.bias \[65\] \(expected \[64\]\)"
    with pytest.raises(L.CheckpointError, match=r"^live s2mel checkpoint rejected: " + match):
        CK.remap_live(sd, "s2mel", parts=("cfm",), config={"s2mel": official.s2mel_config()})


def test_live_parts(s2mel):
    ref, _ = CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": official.s2mel_config()})
    live, rep = L.remap_live(s2mel.models, "s2mel", parts=("length_regulator", "gpt_layer"))
    _same(live, {k: v for k, v in ref.items() if k.startswith(("lr.", "gpt_layer."))}, "parts=lr+gpt_layer")
    outside = [k for k, why in rep.ignored if why.startswith("outside parts")]
    assert outside and all(k.startswith("cfm.") for k in outside)
    no_gl = {k: v for k, v in s2mel.models.state_dict().items() if not k.startswith("gpt_layer.")}
    with pytest.raises(L.CheckpointError, match=r"missing keys: gpt_layer\.0\.bias, gpt_layer\.0\.weight"):
        L.remap_live(no_gl, "s2mel", parts=("gpt_layer",))
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        L.remap_live(s2mel.models, "s2mel", parts=("dit",))
    with pytest.raises(L.CheckpointError, match=r"the keys models\.\* are MyModel's own; pass MyModel\.models"):
        L.remap_live(s2mel, "s2mel")


def test_live_unified_voice_after_post_init(uv):
    """IndexTTS2 calls post_init_gpt2_config, which adds inference_model.* (the same modules again) and gpt.wte
    (mel_embedding): those are aliases of mapped tensors; a tensor of its own under such a name is not."""
    uv2 = official.build_unified_voice(post_init=False)
    uv2.post_init_gpt2_config(kv_cache=True)
    live, rep = L.remap_live(uv2, "gpt")
    ref, _ = L.remap_live(uv, "gpt")
    _same(live, ref, "after post_init_gpt2_config")
    aliases = [k for k, why in rep.ignored if why.endswith("(the same tensor)")]
    assert len(aliases) == sum(k.startswith("inference_model.") for k in uv2.state_dict()) > 0
    sd = dict(uv2.state_dict())
    sd["inference_model.lm_head.1.weight"] = sd["inference_model.lm_head.1.weight"].clone()  # no longer the same
    with pytest.raises(L.CheckpointError, match=r"unknown keys .*: inference_model\.lm_head\.1\.weight$"):
        CK.remap_live(sd, "gpt", config=official.gpt_config())


def test_live_values_checked(uv):
    sd = {k: v.clone() for k, v in uv.state_dict().items()}
    sd["gpt.h.1.attn.c_attn.weight"][0, 0] = float("nan")
    with pytest.raises(L.CheckpointError, match=r"non-finite values .* h\.1\.qkv\.w"):
        CK.remap_live(sd, "gpt", config=official.gpt_config())
    sd = dict(uv.state_dict())
    sd["gpt.h.0.ln_2.bias"] = torch.zeros(63)
    with pytest.raises(L.CheckpointError, match=r"wrong shape: gpt\.h\.0\.ln_2\.bias \[63\]"):
        CK.remap_live(sd, "gpt", config=official.gpt_config())


@pytest.mark.gpu
def test_live_keeps_the_device(uv, s2mel):
    uv16 = official.build_unified_voice(post_init=False).half().cuda()
    live, rep = L.remap_live(uv16, "gpt")
    assert {(t.device.type, t.dtype) for t in live.values()} == {("cuda", torch.float16)}
    assert _shares(live["h.0.ln1.w"], uv16.gpt.h[0].ln_1.weight)
    ref, _ = L.remap_live(uv, "gpt")
    _same({k: v.cpu() for k, v in live.items()}, {k: v.half() for k, v in ref.items()}, "CUDA fp16 vs CPU")
    models = official.build_s2mel().models.cuda()
    live, _ = L.remap_live(models, "s2mel")
    assert {t.device.type for t in live.values()} == {"cuda"}
    cpu, _ = L.remap_live(s2mel.models, "s2mel")
    folded = [k for k in cpu if k.startswith("dit.wn.") or k in ("dit.final.linear.w",)]
    _same({k: v.cpu() for k, v in live.items() if k not in folded}, {k: v for k, v in cpu.items() if k not in folded},
          "CUDA vs CPU, unfolded tensors")  # fmt: skip
    for k in folded:  # weight norm folded on the device: the same formula, device rounding
        torch.testing.assert_close(live[k].cpu(), cpu[k], rtol=1e-6, atol=1e-6)
