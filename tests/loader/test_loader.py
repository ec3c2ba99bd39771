"""Checkpoint loader at tiny sizes: table coverage against the official modules, bit-exact round trips, kernel
layouts, and forward passes from the loaded weights against the official module forwards."""

from __future__ import annotations

import json

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import loader as L
from indextts_fast import official
from indextts_fast.loader.tables import GPT_IGNORE, S2MEL_IGNORE

from ..helpers import assert_close_rel
from . import loader_fixtures as lf
from . import loader_refs as refs

# tests that convert without config.yaml on purpose: the head-count warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:no config.yaml:UserWarning")

F32 = CK.gpt_policy("float32")  # the GPT in fp32 (exact round trips / forwards)


@pytest.fixture(scope="module")
def uv():
    return official.build_unified_voice(post_init=False)


@pytest.fixture(scope="module")
def s2mel():
    return official.build_s2mel()


def _yaml(tmp_path, kind):
    """config.yaml for the tiny modules, as the official repository lays it out."""
    yaml = pytest.importorskip("yaml")
    p = tmp_path / f"config_{kind}.yaml"
    p.write_text(yaml.safe_dump({"s2mel": official.s2mel_config(), **official.gpt_config()}))
    return p


def _assert_same_sd(a: dict, b: dict, what: str):
    assert sorted(a) == sorted(b), f"{what}: key sets differ: {sorted(set(a) ^ set(b))[:8]}"
    bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, first {bad[:5]}"


# ----------------------------------------------------------------------------------------------------------------------
# Tables vs the official modules
# ----------------------------------------------------------------------------------------------------------------------
def test_gpt_tables_cover_official_state_dict(uv):
    sd = uv.state_dict()
    pack, rep = CK.remap_state_dict(sd, config=official.gpt_config())
    used = [s for _, srcs, _ in rep.mapped for s in srcs]
    accounted = used + rep.carried + [k for k, _ in rep.ignored]
    assert sorted(accounted) == sorted(sd), "every official key mapped, carried or ignored exactly once"
    assert len(set(accounted)) == len(accounted)
    assert [k for k, _ in rep.ignored] == ["text_head.weight", "text_head.bias"]
    assert rep.dims == {"C": 64, "L": 2, "Vt": 101, "Vm": 130, "Pt": 34, "Pm": 51, "E": 1024, "heads": 4}
    # the parameters UnifiedVoice uses in its GPT forward all come from the tables
    for name, _p in uv.gpt.named_parameters():
        assert f"gpt.{name}" in used, name


def test_s2mel_tables_cover_official_state_dict(s2mel):
    sd = lf.flat_s2mel(s2mel)
    for stack in (True, False):
        pack, rep = CK.remap_state_dict(sd, config=official.s2mel_config(), stack_adaln=stack)
        used = [s for _, srcs, _ in rep.mapped for s in srcs]
        accounted = used + [k for k, _ in rep.ignored]
        assert sorted(accounted) == sorted(sd) and len(set(accounted)) == len(accounted)
    # every ignore rule names something the official module really has (no dead entries)
    ignored = [k for k, _ in rep.ignored]
    for pattern, _ in S2MEL_IGNORE:
        assert any(__import__("re").fullmatch(pattern, k) for k in ignored), pattern
    # skip_in_linear is used exactly by the layers that pop a skip (official: i > n_layer // 2)
    Lyr = rep.dims["L"]
    receive = [i for i in range(Lyr) if f"dit.layers.{i}.skip_in.w" in pack]
    assert receive == [i for i in range(Lyr) if i > Lyr // 2]


def test_gpt_ignore_list_entries_are_documented_aliases():
    """attn.bias / masked_bias (transformers < 4.4x buffers) and gpt.wte (alias) are absent from the
    transformers-5 module, so they are matched by the ignore list rather than the module's keys."""
    pats = [p for p, _ in GPT_IGNORE]
    import re

    for k in ("gpt.h.3.attn.bias", "gpt.h.0.attn.masked_bias", "gpt.wte.weight", "text_head.bias"):
        assert any(re.fullmatch(p, k) for p in pats), k
    for k in ("gpt.h.3.attn.c_attn.bias", "gpt.h.0.attn.c_proj.bias"):  # the real biases are never ignored
        assert not any(re.fullmatch(p, k) for p in pats), k


# ----------------------------------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------------------------------
def test_gpt_round_trip_bit_exact(uv):
    sd = uv.state_dict()
    pack, rep = CK.remap_state_dict(sd, policy=F32)
    inv = CK.inverse_remap(pack, "gpt", rep.dims)
    keep = {k: v for k, v in sd.items() if not k.startswith("text_head.")}
    _assert_same_sd(inv, keep, "inverse(remap(sd))")
    pack2, _ = CK.remap_state_dict(inv, policy=F32)
    _assert_same_sd(pack2, pack, "remap(inverse(pack))")


def test_gpt_round_trip_fp16_policy(uv):
    """Default GPT policy: every tensor fp16, as the official use_fp16 (.half()); the inverse gives those values."""
    sd = uv.state_dict()
    pack, rep = CK.remap_state_dict(sd)
    assert pack["h.0.qkv.w"].dtype == torch.float16 and pack["h.0.ln1.w"].dtype == torch.float16
    assert pack["mel_embedding"].dtype == torch.float16 and pack["mel_head.b"].dtype == torch.float16
    inv = CK.inverse_remap(pack, "gpt", rep.dims)
    assert all(t.dtype == torch.float16 for t in pack.values())
    want = {k: v.half().float() for k, v in sd.items() if not k.startswith("text_head.")}
    _assert_same_sd(inv, want, "inverse(remap_fp16(sd))")


@pytest.mark.parametrize("stack", [True, False], ids=["stacked_adaln", "split_adaln"])
def test_s2mel_round_trip(s2mel, stack):
    sd = lf.flat_s2mel(s2mel)
    pack, rep = CK.remap_state_dict(sd, stack_adaln=stack)
    inv = CK.inverse_remap(pack, "s2mel", rep.dims, stack_adaln=stack)
    ign = {k for k, _ in rep.ignored}
    folded = {s for _, srcs, op in rep.mapped if op.startswith("wn") for s in srcs}
    exact = {k: v for k, v in sd.items() if k not in ign and k not in folded}
    _assert_same_sd({k: inv[k] for k in exact}, exact, "inverse(remap(sd)), non-folded tensors")
    # weight-norm pairs are not unique (g, v) ~ (a g, a v); the inverse (||w||, w) refolds to w bit-exactly
    pack2, _ = CK.remap_state_dict(inv, stack_adaln=stack)
    _assert_same_sd(pack2, pack, "remap(inverse(pack))")


def test_weight_norm_fold_matches_official(s2mel):
    """The folded weights equal the official modules' effective weights (the weight_norm hook's result)."""
    sd = lf.flat_s2mel(s2mel)
    pack, rep = CK.remap_state_dict(sd)
    est = s2mel.models["cfm"].estimator
    lin = est.final_layer.linear
    with torch.no_grad():
        lin(torch.randn(1, lin.in_features))  # the weight_norm pre-forward hook sets .weight = g * v / ||v||
    assert torch.equal(pack["dit.final.linear.w"], lin.weight)
    conv = est.wavenet.in_layers[1].conv.conv
    g, v = conv.weight_g.detach(), conv.weight_v.detach()
    w_ref = torch._weight_norm(v, g, 0)
    K = v.shape[-1]
    assert torch.equal(pack["dit.wn.in.1.w"], w_ref.permute(0, 2, 1).reshape(v.shape[0], K * v.shape[1]))
    # the explicit formula g * v / ||v|| (no eps) agrees to rounding
    explicit = g * v / v.norm(dim=(1, 2), keepdim=True)
    assert (explicit - w_ref).abs().max() <= 4 * torch.finfo(torch.float32).eps * w_ref.abs().max()


# ----------------------------------------------------------------------------------------------------------------------
# Kernel layouts and files
# ----------------------------------------------------------------------------------------------------------------------
def test_gpt_kernel_layout(uv, tmp_path):
    torch.save({"model": uv.state_dict()}, tmp_path / "gpt.pth")
    rep = CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "gpt.safetensors", config=_yaml(tmp_path, "gpt"))
    w = CK.load_pack(tmp_path / "gpt.safetensors")
    assert isinstance(w, L.FastGPTWeights) and len(w.layers) == 2
    a = uv.gpt.h[1].attn.c_attn.weight.detach()  # Conv1D [C, 3C], columns q | k | v
    C = 64
    assert w.layers[1].qkv_w.shape == (3 * C, C)
    assert torch.equal(w.layers[1].qkv_w, a.t().contiguous().half())
    assert torch.equal(w.layers[1].qkv_w[C : 2 * C], a[:, C : 2 * C].t().half())  # rows C..2C = k
    assert torch.equal(w.layers[0].fc_w, uv.gpt.h[0].mlp.c_fc.weight.detach().t().half())
    assert torch.equal(w.mel_head_w, uv.mel_head.weight.detach().half())
    assert torch.equal(w.ln_f_w, uv.gpt.ln_f.weight.detach().half())
    assert torch.equal(w.cond["perceiver_encoder.latents"], uv.perceiver_encoder.latents.detach().half())
    assert len(w.cond) == len(rep.carried) == 110
    assert (tmp_path / "gpt.safetensors").stat().st_mode & 0o644 == 0o644  # not mkstemp's 0600
    meta = w.meta
    assert meta["model"] == "gpt" and meta["format_version"] == str(CK.PACK_VERSION)
    assert meta["source_sha256"] == CK.file_sha256(tmp_path / "gpt.pth")
    assert json.loads(meta["dtype_policy"])["gemm_w"] == "float16"
    assert json.loads(meta["config"])["heads"] == 4 and meta["heads_from"] == "config.yaml"


def test_s2mel_kernel_layout_and_containers(s2mel, tmp_path):
    torch.save(lf.s2mel_container(s2mel, module_prefix=True), tmp_path / "s2mel.pth")
    CK.convert_checkpoint(tmp_path / "s2mel.pth", tmp_path / "a.safetensors", config=None)
    a = CK.load_pack(tmp_path / "a.safetensors")
    # the same weights as a flat .safetensors export (the 'cfm.estimator....' naming) give the same pack
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in lf.flat_s2mel(s2mel).items()}, tmp_path / "s2mel_export.safetensors")
    CK.convert_checkpoint(tmp_path / "s2mel_export.safetensors", tmp_path / "b.safetensors")
    tb, _ = CK.read_pack(tmp_path / "b.safetensors")
    ta, _ = CK.read_pack(tmp_path / "a.safetensors")
    _assert_same_sd(ta, tb, ".pth vs .safetensors source")
    est = s2mel.models["cfm"].estimator
    C, I = 64, 256
    l4 = est.transformer.layers[4]
    assert torch.equal(a.dit.layers[4].w13, torch.cat([l4.feed_forward.w1.weight, l4.feed_forward.w3.weight]))
    assert torch.equal(a.dit.layers[4].wqkv, l4.attention.wqkv.weight) and a.dit.layers[4].w13.shape == (2 * I, C)
    assert a.dit.adaln_w.shape == ((2 * 5 + 1) * 2 * C, C)
    assert torch.equal(a.dit.layers[2].ffn_norm_w, est.transformer.layers[2].ffn_norm.project_layer.weight)
    assert torch.equal(a.dit.norm_b, est.transformer.norm.project_layer.bias)
    assert a.dit.layers[2].ffn_norm_w.data_ptr() == a.dit.adaln_w[4 * C * 2 + 2 * C :].data_ptr()  # a view
    assert a.dit.layers[1].skip_in_w is None and a.dit.layers[4].skip_in_w is not None
    assert torch.equal(a.dit.conv2_w, est.conv2.weight[:, :, 0])
    lr = s2mel.models["length_regulator"]
    assert torch.equal(a.length_regulator.conv_w[2], lr.model[6].weight.permute(0, 2, 1).reshape(32, 96))
    assert torch.equal(a.length_regulator.gn_w[3], lr.model[10].weight)


# ----------------------------------------------------------------------------------------------------------------------
# Forward passes from the loaded weights vs the official modules
# ----------------------------------------------------------------------------------------------------------------------
def official_logits(m, x):
    """The official chain: GPT2Model (blocks + ln_f) -> final_norm -> mel_head."""
    return m.mel_head(m.final_norm(m.gpt(inputs_embeds=x).last_hidden_state))


def gpt_check(m, m64, w, x):
    """out: our forward from the pack (fp32); low: the official modules (fp32); high: the official modules in fp64."""
    with torch.no_grad():
        low = official_logits(m, x)
        out = refs.gpt_forward(w, x)
        high = official_logits(m64, x.double())
    assert_close_rel(out, low, high, "GPT logits")


def _uv64(uv):
    m = official.build_unified_voice(post_init=False)
    m.load_state_dict(uv.state_dict())
    return m.double()


def test_gpt_forward_matches_official(uv, tmp_path):
    torch.save(uv.state_dict(), tmp_path / "gpt.pth")
    CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "gpt.safetensors", policy=F32, config=_yaml(tmp_path, "gpt"))
    w = CK.load_pack(tmp_path / "gpt.safetensors")
    gpt_check(uv, _uv64(uv), w, torch.randn(2, 37, 64))


def test_gpt_forward_check_catches_wrong_layout(uv):
    """The classic port bug: reading Conv1D [in, out] as nn.Linear [out, in] without the transpose."""
    sd = uv.state_dict()
    pack, rep = CK.remap_state_dict(sd, policy=F32, config=official.gpt_config())
    C = 64
    pack["h.1.qkv.w"] = sd["gpt.h.1.attn.c_attn.weight"].reshape(3 * C, C).clone()
    w = L.weights._build_gpt(pack, rep.dims, {})
    x = torch.randn(2, 9, 64)
    with pytest.raises(AssertionError, match="GPT logits"):
        gpt_check(uv, _uv64(uv), w, x)


def official_fp64(model, size="tiny"):
    """The same official s2mel modules in fp64 (the tolerance rule's high-precision oracle), its DiT caches set up
    after the cast (by dit_check: the RoPE table in fp64)."""
    m64 = official.build_s2mel(size, setup_caches=False)
    m64.load_state_dict(model.state_dict())
    return m64.double()


def dit_check(model, w, B=2, T=19, m64=None):
    est = model.models["cfm"].estimator
    est64 = (m64 or official_fp64(model)).models["cfm"].estimator
    est.setup_caches(B, T)
    est64.setup_caches(B, T)
    x, prompt, lens, t, style, mu = official.dit_inputs(est, batch=B, frames=T, seed=1, x_lens=[T] * B)
    with torch.no_grad():
        low = est(x, prompt, lens, t, style, mu)
        out = refs.dit_forward(w, x, prompt, t, style, mu)
        high = est64(*(u.double() for u in (x, prompt)), lens, t.double(), style.double(), mu.double())
    assert_close_rel(out, low, high, "DiT estimator output")


@pytest.mark.parametrize("stack", [True, False], ids=["stacked_adaln", "split_adaln"])
def test_dit_forward_matches_official(s2mel, stack):
    pack, rep = CK.remap_state_dict(lf.flat_s2mel(s2mel), stack_adaln=stack, config={"s2mel": official.s2mel_config()})
    w = L.weights._build_s2mel(pack, rep.dims, {}, stack)
    dit_check(s2mel, w)


def test_dit_forward_check_catches_swapped_swiglu(s2mel):
    pack, rep = CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": official.s2mel_config()})
    w13 = pack["dit.layers.3.w13"]
    pack["dit.layers.3.w13"] = torch.cat(w13.chunk(2, dim=0)[::-1])  # w3 | w1
    w = L.weights._build_s2mel(pack, rep.dims, {}, True)
    with pytest.raises(AssertionError, match="DiT estimator output"):
        dit_check(s2mel, w)


def test_length_regulator_and_gpt_layer_match_official(s2mel):
    pack, rep = CK.remap_state_dict(lf.flat_s2mel(s2mel))
    w = L.weights._build_s2mel(pack, rep.dims, {}, True)
    lr = s2mel.models["length_regulator"]
    m64 = official_fp64(s2mel)
    x = torch.randn(2, 11, 40)
    T = 23
    with torch.no_grad():
        low = lr(x, ylens=torch.tensor([T, T]))[0]
        out = refs.length_regulator_forward(w, x, T)
        high = m64.models["length_regulator"](x.double(), ylens=torch.tensor([T, T]))[0]
    assert_close_rel(out, low, high, "length regulator")
    z = torch.randn(3, 5, 1280)
    with torch.no_grad():
        low = s2mel.models["gpt_layer"](z)
        out = refs.gpt_layer_forward(w, z)
        high = m64.models["gpt_layer"](z.double())
    assert_close_rel(out, low, high, "gpt_layer")


def test_config_check(uv, s2mel):
    cfg = official.gpt_config()
    CK.remap_state_dict(uv.state_dict(), config=cfg)
    cfg["gpt"]["heads"] = 8
    pack, rep = CK.remap_state_dict(uv.state_dict(), config=cfg)
    assert rep.dims["heads"] == 8  # heads are not in any shape: the config decides
    cfg["gpt"]["heads"] = 3  # a head count that cannot split the width is refused, not divided by
    with pytest.raises(L.CheckpointError, match="config.yaml: field gpt.heads = 3 does not divide the width 64"):
        CK.remap_state_dict(uv.state_dict(), config=cfg)
    for bad in (0, "4", 2.0, True):  # not a positive integer: named as such, not as a width that does not divide
        cfg["gpt"]["heads"] = bad
        with pytest.raises(L.CheckpointError, match=r"field gpt\.heads is .*, expected a positive integer"):
            CK.remap_state_dict(uv.state_dict(), config=cfg)
    cfg["gpt"]["heads"] = 8
    cfg["gpt"]["layers"] = 3
    with pytest.raises(L.CheckpointError, match="L: checkpoint 2 vs config 3"):
        CK.remap_state_dict(uv.state_dict(), config=cfg)
    cfg = official.gpt_config()  # mel positions = max_mel_tokens + 2 + max_conditioning_inputs (official UnifiedVoice)
    cfg["gpt"]["max_conditioning_inputs"] = 2
    with pytest.raises(L.CheckpointError, match="Pm: checkpoint 51 vs config 52"):
        CK.remap_state_dict(uv.state_dict(), config=cfg)
    scfg = official.s2mel_config()
    scfg["wavenet"]["kernel_size"] = 3
    with pytest.raises(L.CheckpointError, match="K: checkpoint 5 vs config 3"):
        CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": scfg})
    scfg = official.s2mel_config()
    scfg["DiT"]["time_as_token"] = True
    with pytest.raises(L.CheckpointError, match="time_as_token"):
        CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": scfg})
    # variants whose keys and shapes are identical but whose math differs are refused too
    for section, flag, value in (("DiT", "is_causal", True), ("wavenet", "dilation_rate", 2)):
        scfg = official.s2mel_config()
        scfg[section][flag] = value
        with pytest.raises(L.CheckpointError, match=f"{section}.{flag}"):
            CK.remap_state_dict(lf.flat_s2mel(s2mel), config={"s2mel": scfg})


def test_config_yaml_file(s2mel, tmp_path):
    yaml = pytest.importorskip("yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"s2mel": official.s2mel_config(), **official.gpt_config()}))
    torch.save(lf.s2mel_container(s2mel), tmp_path / "s2mel.pth")
    rep = CK.convert_checkpoint(tmp_path / "s2mel.pth", tmp_path / "s2mel.safetensors", config=tmp_path / "config.yaml")
    assert rep.dims["heads"] == 4 and rep.dims["N"] == 4


def test_indextts25_gpt_detected_and_refused(uv):
    sd = dict(uv.state_dict())
    sd["spk_emb_proj.weight"] = torch.randn(64, 192)
    assert L.detect_version("gpt", sd) == "2.5"
    with pytest.raises(L.CheckpointError, match=r"2\.5.*spk_emb_proj"):
        CK.remap_state_dict(sd)


def test_old_transformers_buffers_and_wte_alias_are_ignored(uv):
    """gpt.pth files saved with older transformers carry attn.bias / attn.masked_bias buffers, and some carry
    gpt.wte.weight (the mel_embedding alias); they are ignored and reported, never mapped."""
    sd = dict(uv.state_dict())
    sd["gpt.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
    sd["gpt.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    sd["gpt.wte.weight"] = sd["mel_embedding.weight"]
    pack, rep = CK.remap_state_dict(sd)
    assert sorted(k for k, _ in rep.ignored) == sorted(
        ["gpt.h.0.attn.bias", "gpt.h.1.attn.masked_bias", "gpt.wte.weight", "text_head.weight", "text_head.bias"]
    )
    assert torch.equal(pack["h.0.qkv.b"], sd["gpt.h.0.attn.c_attn.bias"].half())
