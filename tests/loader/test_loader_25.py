"""IndexTTS-2.5 checkpoints at tiny sizes (loader_fixtures: the 2.5 module classes, seeded random weights, the
official containers): the 2.5 gpt.pth and codec.pth tables cover every key once, the 2.5 s2mel.pth's gpt_layer is
ignored and reported, the live remaps of the 2.5 modules give the 2.0 layouts, missing / misshaped keys and
2.0-vs-2.5 mixes are each one error naming the key, and the tools recognise 2.5."""

from __future__ import annotations

import os

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import loader as L
from indextts_fast import official
from indextts_fast.loader import tables

from ..helpers import assert_close_rel
from . import loader_fixtures as lf
from . import loader_refs as refs
from .test_loader_tools import _one_line, _refused_cleanly, _run_main, _tool

# conversions without config.yaml on purpose: the head-count warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:no config.yaml:UserWarning")

F32 = CK.gpt_policy("float32")
GPT_LAYER_KEYS = [f"gpt_layer.{i}.{n}" for i in range(3) for n in ("bias", "weight")]


@pytest.fixture(scope="module")
def uv25():
    return lf.build_uv25()


@pytest.fixture(scope="module")
def gpt25(uv25):
    return lf.gpt25_file(uv25)


@pytest.fixture(scope="module")
def s2mel25():
    return lf.build_s2mel25()


@pytest.fixture(scope="module")
def codec25():
    return lf.build_codec25()


@pytest.fixture(scope="module")
def uv20_sd():
    return official.build_unified_voice(post_init=False).state_dict()


@pytest.fixture
def model_dir(tmp_path, gpt25, s2mel25, codec25):
    """A 2.5 model directory: gpt.pth, s2mel.pth (with gpt_layer), codec.pth."""
    torch.save(gpt25, tmp_path / "gpt.pth")
    torch.save(lf.s2mel25_container(s2mel25[1]), tmp_path / "s2mel.pth")
    torch.save(codec25[1], tmp_path / "codec.pth")
    return tmp_path


def _accounted_once(rep, sd):
    used = [s for _, srcs, _ in rep.mapped for s in srcs]
    accounted = used + rep.carried + [k for k, _ in rep.ignored]
    assert sorted(accounted) == sorted(sd), f"not accounted: {sorted(set(sd) - set(accounted))[:6]}"
    assert len(set(accounted)) == len(accounted), "a key accounted twice"
    return used


# ----------------------------------------------------------------------------------------------------------------------
# Tables vs the 2.5 modules
# ----------------------------------------------------------------------------------------------------------------------
def test_gpt25_file_every_key_once(uv25, gpt25):
    pack, rep = CK.remap_state_dict(gpt25, config=official.gpt_config(), policy=F32)
    used = _accounted_once(rep, gpt25)
    assert rep.version == "2.5" and "spk_emb_proj present" in rep.version_reason
    assert "lang_embedding present" in rep.version_reason
    assert sorted(k for k, _ in rep.ignored) == ["text_head.bias", "text_head.weight"]
    assert rep.carried and all(
        k.startswith(("emo_conditioning_encoder.", "emo_perceiver_encoder.")) for k in rep.carried
    )
    for name, _ in uv25.named_parameters():  # every parameter of the 2.5 module: mapped or carried
        assert name in used or name in rep.carried, name
    assert "speed_emb" not in pack and not any(k.startswith("cond.conditioning_encoder") for k in pack)
    assert torch.equal(pack["spk_emb_proj.w"], gpt25["spk_emb_proj.weight"])
    assert torch.equal(pack["lang_embedding"], gpt25["lang_embedding.weight"])
    assert pack["lang_embedding"].shape == (107, 64)
    # the 2.5 default dtype is use_bf16's
    assert CK.remap_state_dict(gpt25)[0]["h.0.qkv.w"].dtype == torch.bfloat16


def test_gpt25_condition_type_in_config_is_ignored(gpt25):
    """The 2.5 config may still say condition_type: conformer_perceiver; no speaker conformer is demanded."""
    cfg = official.gpt_config()
    cfg["gpt"]["emo_condition_module"] = official.TINY_COND
    _, rep = CK.remap_state_dict(gpt25, config=cfg)
    assert rep.version == "2.5" and rep.heads_from == "config.yaml"


def test_live_gpt25_gives_the_2_0_layout(uv25, gpt25):
    """remap_live on a live 2.5 UnifiedVoice: the pack names of 2.0 less speed_emb plus spk_emb_proj and
    lang_embedding; the GPT-2 stack, norms, head and mel tables equal those of a 2.0 UnifiedVoice holding the same
    weights; the logits from the pack equal the 2.5 module's."""
    live, rep = L.remap_live(uv25, "gpt")
    assert rep.version == "2.5" and rep.heads_from == "module" and rep.dims["heads"] == 4
    uv20 = official.build_unified_voice(post_init=False)
    shared = {k: v for k, v in uv25.state_dict().items() if k in uv20.state_dict()}
    uv20.load_state_dict(shared, strict=False)
    live20, _ = L.remap_live(uv20, "gpt")
    assert set(live) == (set(live20) - {"speed_emb"}) | {"spk_emb_proj.w", "spk_emb_proj.b", "lang_embedding"}
    for k in set(live) & set(live20):
        assert torch.equal(live[k], live20[k]), k
    ref, _ = CK.remap_state_dict(gpt25, policy=F32, config=official.gpt_config())
    assert all(torch.equal(live[k], ref[k]) for k in live)
    kept = sorted(k for k, why in rep.ignored if "stays in the official module" in why)
    assert kept == sorted(k[len("cond.") :] for k in ref if k.startswith("cond.")) and len(kept) == 56
    w = L.gpt_weights(live, rep.dims)
    assert w.version == "2.5" and w.speed_emb is None and w.spk_emb_proj_w.shape == (64, 192)
    x = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(3))
    m64 = lf.build_uv25().double()
    m64.load_state_dict(uv25.state_dict())
    logits = lambda m, x: m.mel_head(m.final_norm(m.gpt(inputs_embeds=x).last_hidden_state))  # noqa: E731
    with torch.no_grad():
        assert_close_rel(refs.gpt_forward(w, x), logits(uv25, x), logits(m64, x.double()), "2.5 GPT logits")
    post = lf.build_uv25()
    post.post_init_gpt2_config()  # inference_model.* and gpt.wte: aliases of mapped tensors, ignored
    again, rep2 = L.remap_live(post, "gpt")
    assert sorted(again) == sorted(live) and all(torch.equal(again[k], live[k]) for k in live)
    aliases = [k for k, why in rep2.ignored if why.startswith("alias of")]
    assert "gpt.wte.weight" in aliases and any(k.startswith("inference_model.") for k in aliases)


def test_live_25_cfm_equals_the_file_remap(s2mel25):
    """The 2.5 package's MyModel holds its DiT's weight norm folded; remap_live reads those tensors in place of the
    pairs and gives, bit for bit, the pack of the official file (weight_g, weight_v) it was folded from."""
    m, flat = s2mel25
    live, rep = L.remap_live(m.models["cfm"].estimator, "s2mel", parts=("cfm",))
    ref, ref_rep = CK.remap_state_dict(flat, config={"s2mel": official.s2mel_config()}, version="2.5")
    assert sorted(live) == sorted(k for k in ref if k.startswith("dit."))
    assert all(torch.equal(live[k], ref[k]) for k in live)
    assert rep.dims["W"] == 3 and rep.dims["K"] == 5 and not rep.folded and ref_rep.folded
    cfm, _ = L.remap_live(m.models["cfm"], "s2mel")  # the CFM itself: the same
    assert sorted(cfm) == sorted(live) and all(torch.equal(cfm[k], live[k]) for k in live)
    whole, rep2 = L.remap_live(m.models, "s2mel")
    assert sorted(whole) == sorted(ref) and rep2.version == "2.5 (no gpt_layer)"
    assert any("x_embedder.weight" in k for k, _ in rep2.ignored)  # the folded x_embedder: still ignored


def test_codec_every_key_once_and_decode(codec25):
    codec, container = codec25
    sd = container["model"]
    pack, rep = CK.remap_state_dict(sd)
    used = _accounted_once(rep, sd)
    assert rep.version == "2.5" and rep.kind == "codec" and rep.heads_from == "none"
    assert rep.dims == {"V": 64, "Q": 8, "H": 32, "D": 16, "I": 24, "L": 2}
    assert rep.folded == ["codec.out_proj.w"] and not rep.carried
    whys = {why for _, why in rep.ignored}
    assert {k.split(".")[0] for k, _ in rep.ignored} == {"encoder", "down", "quantizer"} and len(whys) == 3
    assert all(not k.startswith(("encoder.", "down.")) and "in_project" not in k for k in used)
    assert all(t.dtype == torch.float32 for t in pack.values())
    live, lrep = L.remap_live(codec, "codec")
    assert sorted(live) == sorted(pack) and all(torch.equal(live[k], pack[k]) for k in live)
    ops = {dst: op for dst, _, op in lrep.mapped}
    assert ops["codec.out_proj.w"] == "k1" and ops["codec.embed.w"] == "taps" and ops["codec.blocks.0.dw.w"] == "dw"
    c = L.codec_weights(live, lrep.dims)
    assert c.embed_w.shape == (16, 7 * 32) and c.blocks[1].dw_w.shape == (16, 7) and c.up_w.shape == (32, 96)
    codes = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    c64 = lf.build_codec25()[0].double()
    c64.load_state_dict(codec.state_dict())
    with torch.no_grad():
        low, high = codec.decode(codes), c64.decode(codes)
        assert_close_rel(refs.codec_decode(c, codes), low, high, "codec decode")


def test_packs_round_trip(tmp_path, gpt25, codec25):
    """2.5 gpt and codec packs: written, checked and loaded as load_pack does; the inverse remap gives the
    official tensors back."""
    torch.save(gpt25, tmp_path / "gpt.pth")
    torch.save(codec25[1], tmp_path / "codec.pth")
    rep = CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "g.safetensors", policy=F32)
    w = CK.load_pack(tmp_path / "g.safetensors")
    assert w.meta["indextts_version"] == "2.5" and w.version == "2.5" and w.speed_emb is None
    assert torch.equal(w.spk_emb_proj_w, gpt25["spk_emb_proj.weight"]) and len(w.cond) == len(rep.carried)
    tensors, _ = CK.read_pack(tmp_path / "g.safetensors")
    back = CK.inverse_remap(tensors, "gpt", rep.dims, version="2.5")
    assert set(back) == set(gpt25) - {"text_head.weight", "text_head.bias"}
    assert all(torch.equal(back[k], gpt25[k]) for k in back)
    crep = CK.convert_checkpoint(tmp_path / "codec.pth", tmp_path / "c.safetensors")
    c = CK.load_pack(tmp_path / "c.safetensors")
    assert isinstance(c, L.FastCodecWeights) and c.meta["model"] == "codec" and c.meta["heads_from"] == "none"
    tensors, _ = CK.read_pack(tmp_path / "c.safetensors")
    again, _ = CK.remap_state_dict(CK.inverse_remap(tensors, "codec", crep.dims))
    assert sorted(again) == sorted(tensors) and all(torch.equal(again[k], tensors[k]) for k in again)


# ----------------------------------------------------------------------------------------------------------------------
# s2mel.pth of 2.5: gpt_layer ignored, named in the report
# ----------------------------------------------------------------------------------------------------------------------
def test_s2mel25_gpt_layer_ignored_and_reported(tmp_path, s2mel25):
    torch.save(lf.s2mel25_container(s2mel25[1]), tmp_path / "s2mel.pth")
    rep = CK.convert_checkpoint(tmp_path / "s2mel.pth", tmp_path / "s.safetensors", version="2.5")
    ignored = dict(rep.ignored)
    assert sorted(k for k in ignored if k.startswith("gpt_layer.")) == GPT_LAYER_KEYS
    assert {ignored[k] for k in GPT_LAYER_KEYS} == {tables.S2MEL_25_IGNORE}
    assert "IndexTTS-2.5 never loads it" in rep.summary() and rep.version == "2.5"
    w = CK.load_pack(tmp_path / "s.safetensors")
    assert w.gpt_layer is None and w.meta["indextts_version"] == "2.5"
    # not told the version, the same file is read as 2.0 would read it: gpt_layer used as before
    rep20 = CK.convert_checkpoint(tmp_path / "s2mel.pth", tmp_path / "s20.safetensors")
    assert rep20.version == "2.0" and not any(k.startswith("gpt_layer.") for k, _ in rep20.ignored)
    assert CK.load_pack(tmp_path / "s20.safetensors").gpt_layer is not None


def test_model_dir_versions(model_dir):
    version, files = CK.check_model_dir(model_dir)
    assert version == "2.5" and list(files) == ["gpt.pth", "s2mel.pth", "codec.pth"]
    assert files["gpt.pth"].startswith("IndexTTS-2.5 (spk_emb_proj present, lang_embedding present")
    assert files["s2mel.pth"] == "IndexTTS-2.5 (gpt_layer present and ignored: IndexTTS-2.5 never loads it)"
    reports = CK.convert_model_dir(model_dir)
    assert {p.name for p in reports} == {"gpt.fast.safetensors", "s2mel.fast.safetensors", "codec.fast.safetensors"}
    assert CK.load_pack(model_dir / "s2mel.fast.safetensors").gpt_layer is None  # the directory made it 2.5


# ----------------------------------------------------------------------------------------------------------------------
# Errors: one each, naming the key
# ----------------------------------------------------------------------------------------------------------------------
def _refuse(sd, match, **kw):
    with pytest.raises(L.CheckpointError, match=match) as ei:
        CK.remap_state_dict(sd, **kw)
    return str(ei.value)


def test_gpt25_missing_and_misshaped_keys(gpt25):
    sd = dict(gpt25)
    del sd["spk_emb_proj.bias"]
    _refuse(sd, r"^gpt checkpoint rejected: missing keys: spk_emb_proj\.bias$")
    sd = dict(gpt25)
    del sd["lang_embedding.weight"]  # spk_emb_proj still shows 2.5
    _refuse(sd, r"^gpt checkpoint rejected: missing keys: lang_embedding\.weight$")
    sd = dict(gpt25, **{"lang_embedding.weight": torch.randn(106, 64)})
    _refuse(sd, r"^gpt checkpoint rejected: wrong shape: lang_embedding\.weight \[106, 64\] \(expected \[107, 64\]\)$")
    sd = dict(gpt25, **{"spk_emb_proj.weight": torch.randn(64, 80)})
    _refuse(sd, r"^gpt checkpoint rejected: wrong shape: spk_emb_proj\.weight \[64, 80\] \(expected \[64, 192\]\)$")
    sd = {k: v for k, v in gpt25.items() if not k.startswith("emo_perceiver_encoder.")}
    _refuse(sd, r"missing keys: emo_perceiver_encoder\.\* \(IndexTTS-2\.5 emotion encoder\)$")


def test_codec_missing_misshaped_unknown_keys(codec25):
    sd = dict(codec25[1]["model"])
    del sd["decoder.0.convnext.1.gamma"]
    _refuse(sd, r"^codec checkpoint rejected: missing keys: decoder\.0\.convnext\.1\.gamma$")
    sd = dict(codec25[1]["model"], **{"up.weight": torch.randn(32, 32, 5)})
    _refuse(sd, r"^codec checkpoint rejected: wrong shape: up\.weight \[32, 32, 5\] \(expected \[32, 32, 3\]\)$")
    sd = dict(codec25[1]["model"], **{"quantizer.quantizers.1.codebook.weight": torch.randn(64, 8)})
    _refuse(sd, r"^codec checkpoint rejected: unknown keys .*: quantizer\.quantizers\.1\.codebook\.weight$")
    sd = dict(codec25[1]["model"])
    del sd["quantizer.quantizers.0.out_project.weight_v"]
    _refuse(sd, r"missing keys: quantizer\.quantizers\.0\.out_project\.weight_v$")


def test_gpt_version_mismatches(gpt25, uv20_sd):
    # 2.5 structure with the 2.0 speaker conformer in it
    sd = {**gpt25, **{k: v for k, v in uv20_sd.items() if k.startswith("conditioning_encoder.")}}
    msg = _refuse(sd, "mixes IndexTTS-2.0 and IndexTTS-2.5 structure")
    assert "2.5 by spk_emb_proj present, lang_embedding present; 2.0 by conditioning_encoder.* present" in msg
    # a 2.0 gpt.pth with 2.5's text table (the released row counts)
    sd = dict(uv20_sd, **{"text_embedding.weight": torch.zeros(60510, 64)})
    msg = _refuse(sd, "mixes IndexTTS-2.0 and IndexTTS-2.5")
    assert "2.5 by text_embedding 60510 rows" in msg and "speed_emb present" in msg
    # a whole file of one version where the other is expected
    msg = _refuse(gpt25, r"^gpt checkpoint is IndexTTS-2\.5 \(spk_emb_proj present", version="2.0")
    assert msg.endswith("but IndexTTS-2.0 was expected") and "no conditioning_encoder / perceiver_encoder" in msg
    _refuse(uv20_sd, r"^gpt checkpoint is IndexTTS-2\.0 \(conditioning_encoder\.\* present.*2\.5 was expected$",
            version="2.5")  # fmt: skip
    # neither version's keys: read as 2.0, and the message says so
    sd = {k: v for k, v in gpt25.items() if not k.startswith(("spk_emb_proj.", "lang_embedding."))}
    _refuse(sd, r"^gpt \(read as IndexTTS-2\.0: it has neither .*\) checkpoint rejected: missing keys: "
            r"speed_emb\.weight$")  # fmt: skip
    with pytest.raises(L.CheckpointError, match=r"^live gpt is IndexTTS-2\.5 .* but IndexTTS-2\.0 was expected$"):
        L.remap_live(lf.build_uv25(), "gpt", version="2.0")


def test_codec_where_2_0_is_expected(codec25):
    _refuse(codec25[1]["model"], r"^codec checkpoint is IndexTTS-2\.5 \(a codec checkpoint: only IndexTTS-2\.5 has "
            r"one\), but IndexTTS-2\.0 was expected$", version="2.0")  # fmt: skip


def test_model_dir_mixing_versions(tmp_path, uv20_sd, gpt25, s2mel25, codec25):
    torch.save(uv20_sd, tmp_path / "gpt.pth")
    torch.save(lf.s2mel_container(official.build_s2mel()), tmp_path / "s2mel.pth")
    torch.save(codec25[1], tmp_path / "codec.pth")
    with pytest.raises(L.CheckpointError, match="checkpoints of two IndexTTS versions") as ei:
        CK.convert_model_dir(tmp_path)
    msg = str(ei.value)
    assert "gpt.pth is IndexTTS-2.0 (conditioning_encoder.* present" in msg
    assert "codec.pth is IndexTTS-2.5 (a codec checkpoint: only IndexTTS-2.5 has one)" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec.pth", "gpt.pth", "s2mel.pth"]
    (tmp_path / "codec.pth").unlink()
    torch.save(gpt25, tmp_path / "gpt.pth")
    with pytest.raises(L.CheckpointError, match=r"gpt\.pth is IndexTTS-2\.5 .* but there is no codec\.pth"):
        CK.check_model_dir(tmp_path)
    torch.save(codec25[1], tmp_path / "gpt.pth")  # a file that is not what its name says
    with pytest.raises(L.CheckpointError, match=r"gpt\.pth: holds a codec checkpoint, not the gpt checkpoint"):
        CK.check_model_dir(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# The tools
# ----------------------------------------------------------------------------------------------------------------------
def test_inspect_recognises_25(model_dir, capsys):
    ins = _tool("inspect_checkpoint")
    assert ins.main([str(model_dir / "gpt.pth")]) == 0
    out = capsys.readouterr().out
    assert "gpt checkpoint, IndexTTS 2.5" in out and "would accept" in out
    assert "version: IndexTTS-2.5 (spk_emb_proj present, lang_embedding present" in out
    assert ins.main([str(model_dir / "codec.pth"), "--keys"]) == 0
    out = capsys.readouterr().out
    assert "codec checkpoint, IndexTTS 2.5" in out and "mapped:wn" in out and "encoder: the encoding half" in out
    assert ins.main([str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{model_dir}: model directory, IndexTTS-2.5" in out
    assert "s2mel.pth: IndexTTS-2.5 (gpt_layer present and ignored" in out and out.count("would accept") == 3
    assert ins.main([str(model_dir / "s2mel.pth"), "--version", "2.5", "--keys"]) == 0
    assert "gpt_layer.0.weight" in (out := capsys.readouterr().out) and "IndexTTS-2.5 never loads it" in out


def test_convert_recognises_25(model_dir, tmp_path_factory, capsys):
    conv = _tool("convert_checkpoint")
    out_dir = tmp_path_factory.mktemp("packs")
    assert conv.main([str(model_dir), str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{model_dir}: model directory, IndexTTS-2.5" in out and "6 x gpt_layer: IndexTTS-2.5 never loads" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["codec.fast.safetensors", "gpt.fast.safetensors",
                                                         "s2mel.fast.safetensors"]  # fmt: skip
    g = CK.load_pack(out_dir / "gpt.fast.safetensors")
    assert g.version == "2.5" and g.layers[0].qkv_w.dtype == torch.bfloat16 and g.lang_embedding is not None
    assert conv.main([str(model_dir / "codec.pth"), str(out_dir / "codec1.safetensors"), "--quiet"]) == 0
    assert CK.load_pack(out_dir / "codec1.safetensors").codebook.shape == (64, 8)


def test_tools_reject_a_broken_25_file(model_dir, codec25, capsys):
    before = sorted(p.name for p in model_dir.iterdir())
    sd = dict(codec25[1]["model"])
    del sd["decoder.1.bias"]
    torch.save({"model": sd}, model_dir / "broken.pth")
    rc, err = _run_main(capsys, "convert_checkpoint", model_dir / "broken.pth")
    _refused_cleanly(rc, err, "codec checkpoint rejected: missing keys: decoder.1.bias")
    rec = lf.record_holding(model_dir / "codec.pth", codec25[1]["model"]["up.weight"])
    lf.rewrite_zip(model_dir / "codec.pth", model_dir / "short.pth", lambda n, d: d[:-64] if n == rec else d)
    rc, err = _run_main(capsys, "inspect_checkpoint", model_dir / "short.pth")
    _refused_cleanly(rc, err, "truncated or corrupt", "up.weight")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(before + ["broken.pth", "short.pth"])


def test_tools_reject_a_mixed_model_dir(model_dir, uv20_sd, capsys):
    torch.save(uv20_sd, model_dir / "gpt.pth")
    for tool, prefix in (("convert_checkpoint", "refused: "), ("inspect_checkpoint", "error: ")):
        rc, err = _run_main(capsys, tool, model_dir)
        _refused_cleanly(rc, err, "gpt.pth is IndexTTS-2.0", "codec.pth is IndexTTS-2.5")
        _one_line(err, prefix)
    assert sorted(p.name for p in model_dir.iterdir()) == ["codec.pth", "gpt.pth", "s2mel.pth"]


def test_a_failed_directory_conversion_leaves_no_pack(model_dir, codec25, capsys):
    """The codec fails after the gpt and s2mel packs were written: they are removed again."""
    sd = dict(codec25[1]["model"], **{"up.weight": torch.randn(32, 32, 5)})
    torch.save({"model": sd}, model_dir / "codec.pth")
    rc, err = _run_main(capsys, "convert_checkpoint", model_dir, "--quiet")
    _refused_cleanly(rc, err, "wrong shape: up.weight [32, 32, 5] (expected [32, 32, 3])")
    assert sorted(os.listdir(model_dir)) == ["codec.pth", "gpt.pth", "s2mel.pth"]
