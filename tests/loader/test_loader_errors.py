"""Malformed inputs: each one is refused with a message naming the problem; no pack (and no temporary file) is
left behind and the source file is untouched."""

from __future__ import annotations

import os

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import loader as L
from indextts_fast import official

from . import loader_fixtures as lf

# tests that convert without config.yaml on purpose: the head-count warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:no config.yaml:UserWarning")


@pytest.fixture(scope="module")
def gpt_sd():
    return official.build_gpt_core()[1]


@pytest.fixture(scope="module")
def s2mel():
    return official.build_s2mel()


def _refused(src, out, match, **kw):
    """convert_checkpoint(src, out) raises CheckpointError matching ``match``; nothing is written; src unchanged."""
    before = CK.file_sha256(src) if os.path.isfile(src) else None
    out_before = out.read_bytes() if out.exists() else None
    with pytest.raises(L.CheckpointError, match=match) as ei:
        CK.convert_checkpoint(src, out, **kw)
    if out_before is None:
        assert not out.exists(), "a refused conversion left an output file"
    else:
        assert out.read_bytes() == out_before, "a refused conversion changed the existing file"
    if out.parent.is_dir():
        assert not [f for f in os.listdir(out.parent) if f.endswith(".tmp")], "temporary file left behind"
    if before is not None:
        assert CK.file_sha256(src) == before, "the source checkpoint changed"
    return str(ei.value)


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_truncated_file(gpt_sd, tmp_path):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 3 // 5])
    msg = _refused(src, tmp_path / "gpt.safetensors", "truncated, corrupt")
    assert "gpt.pth" in msg


@pytest.mark.parametrize(
    "case, match",
    [
        ("list", "wrong container: top level is a list"),
        ("net_tensor", r"wrong container: state\['net'\] is a Tensor"),
        ("net_no_cfm", r"state\['net'\] lacks the module\(s\) \['cfm'\]"),
        ("unrelated", "wrong container: neither a gpt.pth"),
        ("nested", r"wrong container: .*non-tensor entries \['gpt.h'\]"),
        ("pickled_object", "cannot read the checkpoint"),
    ],
)
def test_wrong_container(gpt_sd, s2mel, tmp_path, case, match):
    t = torch.randn(3)
    obj = {
        "list": [t],
        "net_tensor": {"net": t},
        "net_no_cfm": {"net": {"length_regulator": s2mel.models["length_regulator"].state_dict()}},
        "unrelated": {"encoder.weight": t},
        "nested": {"gpt.h": {"0": t}},
        "pickled_object": {"model": gpt_sd, "extra": official.GPTCore({})},  # not loadable with weights_only=True
    }[case]
    _refused(_save(obj, tmp_path / "x.pth"), tmp_path / "x.safetensors", match)


def test_missing_key(gpt_sd, s2mel, tmp_path):
    sd = dict(gpt_sd)
    del sd["gpt.h.1.mlp.c_fc.bias"]
    _refused(
        _save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors", r"missing keys: gpt\.h\.1\.mlp\.c_fc\.bias$"
    )
    st = lf.s2mel_container(s2mel)
    del st["net"]["cfm"]["estimator.wavenet.in_layers.2.conv.conv.weight_g"]
    _refused(_save(st, tmp_path / "s2mel.pth"), tmp_path / "s2mel.safetensors",
             r"missing keys: cfm\.estimator\.wavenet\.in_layers\.2\.conv\.conv\.weight_g")  # fmt: skip


def test_unknown_extra_key(gpt_sd, tmp_path):
    sd = dict(gpt_sd)
    sd["gpt.h.0.attn.c_attn.lora_A"] = torch.randn(4, 64)
    _refused(_save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors",
             r"unknown keys .*: gpt\.h\.0\.attn\.c_attn\.lora_A")  # fmt: skip


def test_wrong_shape(gpt_sd, s2mel, tmp_path):
    sd = dict(gpt_sd)
    sd["gpt.h.0.attn.c_attn.weight"] = sd["gpt.h.0.attn.c_attn.weight"].t().contiguous()  # an [out, in] export
    _refused(_save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors",
             r"wrong shape: gpt\.h\.0\.attn\.c_attn\.weight \[192, 64\] \(expected \[64, 192\]\)")  # fmt: skip
    st = lf.s2mel_container(s2mel)
    cfm = st["net"]["cfm"]
    cfm["estimator.transformer.layers.1.feed_forward.w3.weight"] = torch.randn(255, 64)
    _refused(_save(st, tmp_path / "s2mel.pth"), tmp_path / "s2mel.safetensors",
             r"wrong shape: cfm\.estimator\.transformer\.layers\.1\.feed_forward\.w3\.weight \[255, 64\]")  # fmt: skip


def test_wrong_dtype(gpt_sd, tmp_path):
    sd = dict(gpt_sd)
    sd["gpt.h.1.ln_1.weight"] = torch.randint(0, 5, (64,), dtype=torch.int32)
    _refused(_save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors",
             r"wrong dtype \(expected float32/float16/bfloat16\): gpt\.h\.1\.ln_1\.weight int32")  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e6], ids=["nan", "inf", "fp16_overflow"])
def test_nonfinite_weights(gpt_sd, tmp_path, bad):
    sd = {k: v.clone() for k, v in gpt_sd.items()}
    sd["gpt.h.1.mlp.c_fc.weight"][3, 7] = bad  # 1e6 is finite in fp32 but inf after the fp16 GEMM-weight cast
    src = _save(sd, tmp_path / "gpt.pth")
    out = tmp_path / "gpt.safetensors"
    _refused(src, out, r"non-finite values .* h\.1\.fc\.w \(from gpt\.h\.1\.mlp\.c_fc\.weight\)")
    with pytest.warns(UserWarning, match="non-finite weights allowed"):
        rep = CK.convert_checkpoint(src, out, allow_nonfinite=True)
    assert rep.nonfinite and "h.1.fc.w" in rep.nonfinite[0]
    w = CK.load_pack(out)
    assert "h.1.fc.w" in w.meta["nonfinite"]
    assert not torch.isfinite(w.layers[1].fc_w[7, 3])


def test_existing_output(gpt_sd, tmp_path):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    out = tmp_path / "gpt.safetensors"
    out.write_bytes(b"an existing file")
    _refused(src, out, "already exists; pass overwrite=True")
    CK.convert_checkpoint(src, out, overwrite=True)
    assert CK.load_pack(out).meta["source_sha256"] == CK.file_sha256(src)


def test_output_equal_to_input(gpt_sd, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "gpt.safetensors"
    save_file({k: v.contiguous() for k, v in gpt_sd.items()}, src)
    for out in (src, tmp_path / "." / "gpt.safetensors"):
        msg = _refused(src, out, "is the source checkpoint itself", overwrite=True)
        assert "gpt.safetensors" in msg
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    _refused(src, link, "is the source checkpoint itself", overwrite=True)
    pth = _save(gpt_sd, tmp_path / "gpt.pth")
    _refused(pth, pth, "is the source checkpoint itself", overwrite=True)
    hard = tmp_path / "hard.safetensors"  # another name for the same inode
    os.link(src, hard)
    _refused(src, hard, "is the source checkpoint itself", overwrite=True)
    _refused(hard, src, "is the source checkpoint itself", overwrite=True)


def test_unreadable_path(gpt_sd, tmp_path):
    _refused(tmp_path / "nope.pth", tmp_path / "out.safetensors", "nope.pth: no such file")
    (tmp_path / "adir.pth").mkdir()
    _refused(tmp_path / "adir.pth", tmp_path / "out.safetensors", "adir.pth: unreadable")
    os.mkfifo(tmp_path / "fifo.pth")  # opening it would block until a writer appears
    _refused(tmp_path / "fifo.pth", tmp_path / "out.safetensors", "fifo.pth: unreadable .*not a regular file")
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    _refused(src, tmp_path / "no_dir" / "out.safetensors", "output directory .*no_dir does not exist")
    if os.geteuid() != 0:  # root reads through mode 000
        src.chmod(0)
        try:
            _refused(src, tmp_path / "out.safetensors", "gpt.pth: unreadable")
        finally:
            src.chmod(0o644)


def test_bad_pack_on_load(gpt_sd, tmp_path):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    out = tmp_path / "gpt.safetensors"
    CK.convert_checkpoint(src, out)
    data = out.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(L.CheckpointError, match="truncated"):
        CK.load_pack(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in gpt_sd.items()}, tmp_path / "plain.safetensors")
    with pytest.raises(L.CheckpointError, match="not an indextts_fast pack"):
        CK.load_pack(tmp_path / "plain.safetensors")
    with pytest.raises(L.CheckpointError, match="no such file"):
        CK.load_pack(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# Untrusted fast packs: a crafted header is refused with a CheckpointError naming the problem, never another
# exception, and nothing is allocated from an unchecked size.
# ----------------------------------------------------------------------------------------------------------------------
def _pack_parts(path):
    import json
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write_pack(path, header, body, raw=None):
    import json
    import struct

    h = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)
    return path


def _transpose_first_matrix(h):
    k = next(k for k, v in h.items() if k != "__metadata__" and len(v["shape"]) == 2 and len(set(v["shape"])) == 2)
    h[k]["shape"] = h[k]["shape"][::-1]


def _mutations():
    import json

    def meta(h, **kw):
        h["__metadata__"].update(kw)

    def first(h):
        return next(k for k in h if k != "__metadata__")

    def entry(h, **kw):
        h[first(h)].update(kw)

    def dims(h, **kw):
        d = json.loads(h["__metadata__"]["config"])
        d.update(kw)
        h["__metadata__"]["config"] = json.dumps(d)

    return {
        "header_not_object": (lambda h: [1, 2], "header is a list"),
        "metadata_not_strings": (lambda h: h.update(__metadata__={"format": 1}), "corrupt metadata"),
        "entry_not_object": (lambda h: h.update({first(h): "x"}), "corrupt entry"),
        "entry_no_offsets": (lambda h: h[first(h)].pop("data_offsets") and None, "corrupt entry"),
        "negative_shape": (lambda h: entry(h, shape=[-1] * len(h[first(h)]["shape"])), "corrupt entry"),
        "float_shape": (lambda h: entry(h, shape=[1.5]), "corrupt entry"),
        "string_offsets": (
            lambda h: entry(h, data_offsets=[str(o) for o in h[first(h)]["data_offsets"]]),
            "corrupt entry",
        ),  # fmt: skip
        "unknown_dtype": (lambda h: entry(h, dtype="F8_E9M9"), "corrupt entry"),
        "overlapping_offsets": (lambda h: h.update(dup=dict(h[first(h)])), "gap or overlap"),
        "config_not_json": (lambda h: meta(h, config="{"), "metadata incomplete or corrupt"),
        "config_not_dims": (lambda h: meta(h, config="[1]"), "is not the integer dimensions"),
        "config_string_dim": (lambda h: dims(h, C="64"), "is not the integer dimensions"),
        "config_huge_layers": (lambda h: dims(h, L=10**9), "more layers than the pack has"),
        "policy_not_dtype": (
            lambda h: meta(h, dtype_policy=json.dumps(dict.fromkeys(CK.DEFAULT_POLICY["gpt"], "load"))),
            "corrupt pack metadata: dtype_policy",
        ),  # fmt: skip
        "layout_not_object": (lambda h: meta(h, layout="3"), "corrupt pack metadata: layout"),
        "foreign_cond_key": (lambda h: h.update({"cond.evil": h.pop(first(h))}), r"extra .*cond\.evil"),
        "dtype_relabelled": (
            lambda h: entry(h, dtype="BF16"),
            r"wrong .* torch\.bfloat16 \(expected .* torch\.float16\)",
        ),
        "shape_transposed": (lambda h: _transpose_first_matrix(h), r"does not match its own metadata: .*wrong"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_crafted_pack_header(gpt_sd, tmp_path, case):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    good = tmp_path / "gpt.safetensors"
    CK.convert_checkpoint(src, good)
    header, body = _pack_parts(good)
    mutate, match = _mutations()[case]
    header = mutate(header) or header
    bad = _write_pack(tmp_path / "bad.safetensors", header, body)
    with pytest.raises(L.CheckpointError, match=match) as ei:
        CK.load_pack(bad)
    assert "bad.safetensors" in str(ei.value)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"[" * 100_000 + b"]" * 100_000, "bad header: RecursionError"),
        (b"\xff\xfe{}", "bad header"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "not an indextts_fast pack"),
    ],
    ids=["deeply_nested", "not_utf8", "no_metadata"],
)
def test_crafted_pack_raw_header(tmp_path, raw, match):
    bad = _write_pack(tmp_path / "bad.safetensors", None, b"\0" * 8, raw=raw)
    with pytest.raises(L.CheckpointError, match=match):
        CK.load_pack(bad)


def test_pack_header_length_limit(tmp_path, monkeypatch):
    """A header length beyond the format's limit is refused before it is read (small limit to keep the test fast)."""
    monkeypatch.setattr(CK.pack, "_MAX_HEADER", 64)
    bad = _write_pack(tmp_path / "bad.safetensors", None, b"", raw=b"{" + b" " * 100 + b"}")
    with pytest.raises(L.CheckpointError, match="header length 102 > 64"):
        CK.load_pack(bad)


def test_s2mel_groups_naming_one_key_twice(s2mel, tmp_path):
    """net['cfm.estimator']['conv1.bias'] flattens to the same name as net['cfm']['estimator.conv1.bias']: refused,
    never one silently replacing the other."""
    st = lf.s2mel_container(s2mel)
    st["net"]["cfm.estimator"] = {"conv1.bias": torch.randn_like(st["net"]["cfm"]["estimator.conv1.bias"])}
    _refused(_save(st, tmp_path / "s2mel.pth"), tmp_path / "s2mel.safetensors",
             r"holds the key cfm\.estimator\.conv1\.bias twice")  # fmt: skip


def test_ignored_names_beyond_the_last_layer(gpt_sd, s2mel, tmp_path):
    """The ignore list covers layers the model has: a skip_in_linear or attn.bias of a layer past the last one is
    an unknown key (a deeper checkpoint, or keys from another model), not something to drop silently."""
    sd = dict(gpt_sd)
    sd["gpt.h.2.attn.bias"] = torch.ones(1, 1, 4, 4)  # the tiny GPT has layers 0, 1
    _refused(_save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors", r"unknown keys .*gpt\.h\.2\.attn\.bias")
    st = lf.s2mel_container(s2mel)
    st["net"]["cfm"]["estimator.transformer.layers.5.skip_in_linear.weight"] = torch.randn(64, 128)  # 5 layers: 0..4
    _refused(_save(st, tmp_path / "s2mel.pth"), tmp_path / "s2mel.safetensors",
             r"unknown keys .*layers\.5\.skip_in_linear\.weight")  # fmt: skip
    plan = CK.plan_checkpoint(
        lf.flat_s2mel(s2mel) | {"cfm.estimator.transformer.layers.5.skip_in_linear.bias": torch.randn(64)}
    )
    assert plan["actions"]["cfm.estimator.transformer.layers.5.skip_in_linear.bias"][0] == "unknown"


def _other_writer(monkeypatch, out, names=("replace", "link")):
    """Another process creates ``out`` just before our conversion commits its pack (the rename / link)."""
    for name in names:
        real = getattr(os, name)

        def racing(a, b, *args, _real=real, **kw):
            if os.fspath(b) == os.fspath(out) and not os.path.lexists(out):
                with open(out, "wb") as f:
                    f.write(b"written by another process")
            return _real(a, b, *args, **kw)

        monkeypatch.setattr(os, name, racing)


def test_output_created_during_conversion_is_kept(gpt_sd, tmp_path, monkeypatch):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    out = tmp_path / "gpt.safetensors"
    _other_writer(monkeypatch, out)
    with pytest.raises(L.CheckpointError, match="already exists"):
        CK.convert_checkpoint(src, out)
    assert out.read_bytes() == b"written by another process", "an existing file was replaced without overwrite"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), OSError(28, "No space left on device")], ids=["interrupt", "enospc"]
)
def test_failed_write_leaves_nothing(gpt_sd, tmp_path, monkeypatch, exc):
    """A failure while the pack is being written (Ctrl-C, disk full) removes the partial file; no output appears."""
    import safetensors.torch

    src = _save(gpt_sd, tmp_path / "gpt.pth")
    out = tmp_path / "gpt.safetensors"
    real = safetensors.torch.save_file

    def partial_then_fail(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[:3]), filename, metadata=metadata)
        raise exc

    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail)
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            CK.convert_checkpoint(src, out)
    else:
        _refused(src, out, "cannot write the pack: .*No space left")
    assert not out.exists() and os.listdir(tmp_path) == ["gpt.pth"]


def test_unwritable_output_directory(gpt_sd, tmp_path, monkeypatch):
    """The temporary file cannot be created (read-only directory): a CheckpointError naming the output."""
    import tempfile

    src = _save(gpt_sd, tmp_path / "gpt.pth")

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", kw.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    _refused(
        src, tmp_path / "gpt.safetensors", r"output .*gpt\.safetensors: cannot write the pack: .*Permission denied"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Conditioning encoders (carried verbatim): complete, with shapes consistent with their own widths and the GPT's
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uv_sd():
    return official.build_unified_voice(post_init=False).state_dict()


def _cond_case(sd, case):
    sd = dict(sd)
    if case == "wrong_shape_in_a_block":
        sd["conditioning_encoder.encoders.0.self_attn.linear_q.weight"] = torch.randn(64, 63)
        return sd, r"wrong shape: conditioning_encoder\.encoders\.0\.self_attn\.linear_q\.weight \[64, 63\]"
    if case == "missing_block_tensor":
        del sd["emo_conditioning_encoder.encoders.0.norm_ff.bias"]
        return sd, r"missing keys: emo_conditioning_encoder\.encoders\.0\.norm_ff\.bias"
    if case == "partial_extra_block":
        sd["conditioning_encoder.encoders.1.self_attn.linear_q.weight"] = torch.randn(64, 64)
        return sd, r"missing keys: .*conditioning_encoder\.encoders\.1\.conv_module\.depthwise_conv\.bias"
    if case == "perceiver_width":
        sd["perceiver_encoder.latents"] = torch.randn(32, 65)
        return sd, r"wrong shape: .*perceiver_encoder\.latents \[32, 65\]"
    if case == "encoder_absent":
        for k in [k for k in sd if k.startswith("emo_perceiver_encoder.")]:
            del sd[k]
        return sd, r"missing keys: emo_perceiver_encoder\.\* \(config: conformer_perceiver\)"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["wrong_shape_in_a_block", "missing_block_tensor", "partial_extra_block", "perceiver_width", "encoder_absent"],
)
def test_conditioning_encoders_checked(uv_sd, tmp_path, case):
    yaml = pytest.importorskip("yaml")
    cfg = official.gpt_config()
    cfg["gpt"]["condition_module"] = dict(official.TINY_COND)
    cfg["gpt"]["emo_condition_module"] = dict(official.TINY_COND)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    sd, match = _cond_case(uv_sd, case)
    _refused(_save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors", match, config=tmp_path / "config.yaml")


def test_conditioning_encoder_config_sizes(uv_sd):
    cfg = official.gpt_config()
    cfg["gpt"]["condition_module"] = dict(official.TINY_COND, num_blocks=2)
    with pytest.raises(L.CheckpointError, match=r"conditioning_encoder: blocks = 1 in the checkpoint, 2 in config"):
        CK.remap_state_dict(uv_sd, config=cfg)


def test_misaligned_pack_entries_are_copied(tmp_path):
    """Offsets that are not a multiple of the element size (legal in the format) are read through a copy."""
    import json

    meta = {"format": CK.PACK_FORMAT, "format_version": str(CK.PACK_VERSION)}
    a = torch.tensor([1.5], dtype=torch.float16)
    b = torch.tensor([3.25, -7.0], dtype=torch.float32)
    header = {"__metadata__": meta, "a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}}  # fmt: skip
    body = a.view(torch.uint8).numpy().tobytes() + b.view(torch.uint8).numpy().tobytes()
    path = _write_pack(tmp_path / "p.safetensors", None, body, raw=json.dumps(header).encode())
    t, _ = CK.read_pack(path)
    assert torch.equal(t["a"], a) and torch.equal(t["b"], b)


def test_nonfinite_conditioning_encoder_weight(tmp_path):
    sd = {k: v.clone() for k, v in official.build_unified_voice(post_init=False).state_dict().items()}
    sd["perceiver_encoder.latents"][5, 3] = float("nan")
    _refused(
        _save(sd, tmp_path / "gpt.pth"), tmp_path / "gpt.safetensors", r"non-finite values .*perceiver_encoder\.latents"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Damaged zip records: torch.load(mmap=True) checks neither a record's size against its storage nor its CRC-32
# ----------------------------------------------------------------------------------------------------------------------
def _damaged_source(case, gpt_sd, s2mel, tmp_path):
    """(source with one record cut 64 bytes short, the record, the tensor's path in the file, bytes it needs,
    convert_checkpoint kwargs)."""
    if case == "s2mel_fp32":
        obj = lf.s2mel_container(s2mel)
        t, where, kw = obj["net"]["cfm"]["estimator.conv1.weight"], "net/cfm/estimator.conv1.weight", {}
    else:
        obj = dict(gpt_sd)
        t, where = obj["gpt.h.1.mlp.c_fc.weight"], "gpt.h.1.mlp.c_fc.weight"
        kw = {"policy": CK.gpt_policy("float32")} if case == "gpt_fp32" else {}
    good = _save(obj, tmp_path / "good.pth")
    rec = lf.record_holding(good, t)
    n = t.numel() * t.element_size()
    src = tmp_path / "short.pth"
    lf.rewrite_zip(good, src, lambda name, data: data[:-64] if name == rec else data)
    return src, rec, where, n, kw


@pytest.mark.parametrize("case", ["s2mel_fp32", "gpt_fp32", "gpt_fp16"])
def test_short_zip_record(gpt_sd, s2mel, tmp_path, case):
    """A record shorter than its storage: the mmap'd storage runs past it into the next records and the zip
    directory. An fp32 pack of those bytes was written (exit 0); an fp16 one was refused as 'non-finite'."""
    src, rec, where, n, kw = _damaged_source(case, gpt_sd, s2mel, tmp_path)
    msg = _refused(src, tmp_path / "out.safetensors", "truncated or corrupt", **kw)
    assert msg == (
        f"{src}: truncated or corrupt: record '{rec}' holds {n - 64} bytes, the storage of {where} needs {n}"
    )


def test_flipped_bit_in_tensor_data(gpt_sd, tmp_path):
    """One bit flipped inside a tensor's bytes (the value stays finite): the record's CRC-32 no longer matches."""
    src = _save(dict(gpt_sd), tmp_path / "gpt.pth")
    rec = lf.record_holding(src, gpt_sd["gpt.h.0.attn.c_proj.weight"])
    lf.flip_record_byte(src, rec, 4 * 100)  # the lowest mantissa byte of element 100
    msg = _refused(src, tmp_path / "gpt.safetensors", "CRC-32")
    assert msg == f"{src}: corrupt: record '{rec}' (gpt.h.0.attn.c_proj.weight) fails its CRC-32 check"


# ----------------------------------------------------------------------------------------------------------------------
# config.yaml: unreadable, unparsable or wrong-typed is a CheckpointError naming the file and the field
# ----------------------------------------------------------------------------------------------------------------------
def _gpt_cfg(**fields):
    cfg = official.gpt_config()
    cfg["gpt"].update(fields)
    return cfg


# case -> (model, config.yaml contents: text, bytes or a mapping to dump, expected message after "<file>: ")
CONFIG_CASES = {
    "malformed": ("gpt", "gpt: [1, 2\n", r"not valid YAML: .* \(line 2, column 1\)"),
    "binary": ("gpt", b"\x00\xff\xfe PK\x03\x04 \x89PNG", r"not valid YAML: .*"),
    "python_tag": (
        "gpt",
        "gpt: !!python/object/apply:os.system ['echo hacked']\n",
        r"a YAML tag that constructs a Python object is not accepted "
        r"\('tag:yaml\.org,2002:python/object/apply:os\.system', line 1\)",
    ),
    "not_a_mapping": ("gpt", "- 1\n- 2\n", r"not a YAML mapping \(a list at the top level\)"),
    "text_tokens_str": (
        "gpt",
        _gpt_cfg(number_text_tokens="100"),
        r"field gpt\.number_text_tokens is '100' \(str\), expected a non-negative integer",
    ),
    "heads_str": ("gpt", _gpt_cfg(heads="4"), r"field gpt\.heads is '4' \(str\), expected a positive integer"),
    "heads_zero": ("gpt", _gpt_cfg(heads=0), r"field gpt\.heads is 0 \(int\), expected a positive integer"),
    "gpt_list": ("gpt", {"gpt": [1, 2]}, r"field gpt is \[1, 2\] \(list\), expected a mapping"),
    "cond_list": (
        "gpt",
        _gpt_cfg(condition_module=[64]),
        r"field gpt\.condition_module is \[64\] \(list\), expected a mapping",
    ),
    "cond_size_str": (
        "gpt",
        _gpt_cfg(condition_module=dict(official.TINY_COND, num_blocks="1")),
        r"field gpt\.condition_module\.num_blocks is '1' \(str\), expected a non-negative integer",
    ),
    "s2mel_int": ("s2mel", {"s2mel": 5}, r"field s2mel is 5 \(int\), expected a mapping"),
    "dit_list": (
        "s2mel",
        {"s2mel": dict(official.s2mel_config(), DiT=[1, 2])},
        r"field s2mel\.DiT is \[1, 2\] \(list\), expected a mapping",
    ),
    "flag_str": (
        "s2mel",
        {"s2mel": dict(official.s2mel_config(), DiT=dict(official.s2mel_config()["DiT"], is_causal="no"))},
        r"field s2mel\.DiT\.is_causal is 'no' \(str\), expected true or false",
    ),
    "ratios_int": (
        "s2mel",
        {
            "s2mel": dict(
                official.s2mel_config(),
                length_regulator=dict(official.s2mel_config()["length_regulator"], sampling_ratios=4),
            )
        },
        r"field s2mel\.length_regulator\.sampling_ratios is 4 \(int\), expected a list",
    ),  # fmt: skip
}


def write_config(path, contents):
    yaml = pytest.importorskip("yaml")
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif isinstance(contents, str):
        path.write_text(contents)
    else:
        path.write_text(yaml.safe_dump(contents))
    return path


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_yaml(gpt_sd, s2mel, tmp_path, case):
    model, contents, match = CONFIG_CASES[case]
    cfg = write_config(tmp_path / "config.yaml", contents)
    obj = gpt_sd if model == "gpt" else lf.s2mel_container(s2mel)
    src = _save(obj, tmp_path / f"{model}.pth")
    msg = _refused(src, tmp_path / "out.safetensors", match, config=cfg)
    assert msg.startswith(f"{cfg}: ") and "\n" not in msg, msg


class _Blocked(Exception):
    pass


def _alarm(seconds):
    """Raise _Blocked in the main thread after ``seconds`` (a blocking open() is interrupted, not hung)."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def guard():
        def fire(signum, frame):
            raise _Blocked(f"still blocked after {seconds} s")

        old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    return guard()


def test_config_fifo_does_not_block(gpt_sd, tmp_path):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    os.mkfifo(tmp_path / "config.yaml")  # opening it would block until a writer appears
    with _alarm(20):
        _refused(src, tmp_path / "gpt.safetensors", r"config\.yaml: unreadable \(not a regular file\)",
                 config=tmp_path / "config.yaml")  # fmt: skip
    _refused(src, tmp_path / "gpt.safetensors", r"nope\.yaml: no such file", config=tmp_path / "nope.yaml")


def _safetensor_error(msg):
    from safetensors import SafetensorError

    return SafetensorError(msg)


def test_safetensors_write_error_leaves_nothing(gpt_sd, tmp_path, monkeypatch):
    """The safetensors writer reports a full disk as a SafetensorError, not an OSError."""
    import safetensors.torch

    src = _save(gpt_sd, tmp_path / "gpt.pth")
    real = safetensors.torch.save_file

    def partial_then_full(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[:3]), filename, metadata=metadata)
        raise _safetensor_error("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_full)
    msg = _refused(src, tmp_path / "gpt.safetensors", "cannot write the pack")
    assert msg == (
        f"output {tmp_path / 'gpt.safetensors'}: cannot write the pack: Error while serializing: I/O error: No space "
        "left on device (os error 28)"
    )
    assert os.listdir(tmp_path) == ["gpt.pth"]


def gpt_core_config(path, **fields):
    """config.yaml for build_gpt_core's GPT (no conditioning encoders), with ``fields`` of its gpt section changed."""
    cfg = _gpt_cfg(**fields)
    cfg["gpt"].pop("condition_type")
    return write_config(path, cfg)


# ----------------------------------------------------------------------------------------------------------------------
# Head counts: in no tensor shape
# ----------------------------------------------------------------------------------------------------------------------
def test_heads_without_config_warns(gpt_sd, tmp_path):
    src = _save(gpt_sd, tmp_path / "gpt.pth")
    with pytest.warns(UserWarning, match=r"no config\.yaml: the head count is in no tensor shape; heads = width 64 "
                                         r"// 64 = 1 assumed \(IndexTTS2's head_dim\)"):  # fmt: skip
        rep = CK.convert_checkpoint(src, tmp_path / "gpt.safetensors")
    assert rep.dims["heads"] == 1 and rep.heads_from == "width // 64"
    assert CK.load_pack(tmp_path / "gpt.safetensors").meta["heads_from"].startswith("width // 64")


def test_heads_required_when_width_is_not_a_multiple_of_64(tmp_path):
    core, sd = official.build_gpt_core(model_dim=80, heads=5)
    src = _save(sd, tmp_path / "gpt.pth")
    _refused(src, tmp_path / "gpt.safetensors", r"^gpt checkpoint: the width 80 is not a multiple of 64, so the head "
             r"count cannot be derived from the shapes; pass config\.yaml \(config=, --config\)")  # fmt: skip
    cfg = CK.load_config(gpt_core_config(tmp_path / "c.yaml", model_dim=80, heads=5))
    rep = CK.convert_checkpoint(src, tmp_path / "gpt.safetensors", config=cfg.source)
    assert rep.dims["heads"] == 5 and rep.heads_from == "config.yaml"
    cfg["gpt"].pop("heads")  # a config without a head count does not help
    with pytest.raises(L.CheckpointError, match=r"the width 80 is not a multiple of 64.* with gpt\.heads$"):
        CK.remap_state_dict(sd, config=cfg)


def test_gpt_policy_is_exported():
    ns = {}
    exec("from indextts_fast.checkpoint import *", ns)
    assert ns["gpt_policy"]("float32") == dict.fromkeys(CK.DEFAULT_POLICY["gpt"], "float32")
