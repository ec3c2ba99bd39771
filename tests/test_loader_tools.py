"""tools/convert_checkpoint.py and tools/inspect_checkpoint.py, run in-process on tiny official checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from indextts_fast import loader as L

from . import loader_fixtures as lf

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def s2mel_pth(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    torch.save(lf.s2mel_container(lf.build_s2mel()), d / "s2mel.pth")
    return d / "s2mel.pth"


def test_convert_tool(s2mel_pth, capsys):
    conv = _tool("convert_checkpoint")
    out = s2mel_pth.with_name("s2mel.fast.safetensors")
    assert conv.main([str(s2mel_pth), "--quiet"]) == 0  # default output name beside the source
    assert out.exists() and L.load_pack(out).meta["model"] == "s2mel"
    assert conv.main([str(s2mel_pth)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    assert conv.main([str(s2mel_pth), "--overwrite", "--split-adaln"]) == 0
    text = capsys.readouterr().out
    assert "folded:  8 weight-norm pairs" in text and "ignored: 14 keys" in text and "wrote" in text
    assert L.load_pack(out).dit.adaln_w is None


def test_convert_tool_gpt_dtype(tmp_path):
    conv = _tool("convert_checkpoint")
    torch.save(lf.build_gpt_core()[1], tmp_path / "gpt.pth")
    assert (
        conv.main([str(tmp_path / "gpt.pth"), str(tmp_path / "g.safetensors"), "--gpt-dtype", "bfloat16", "--quiet"])
        == 0
    )
    w = L.load_pack(tmp_path / "g.safetensors")
    assert w.layers[0].qkv_w.dtype == torch.bfloat16 and w.ln_f_w.dtype == torch.bfloat16


def test_inspect_tool(s2mel_pth, tmp_path, capsys):
    ins = _tool("inspect_checkpoint")
    assert ins.main([str(s2mel_pth)]) == 0
    text = capsys.readouterr().out
    assert "s2mel checkpoint, IndexTTS 2.0" in text and "would accept" in text
    assert ins.main([str(s2mel_pth), "--keys"]) == 0
    text = capsys.readouterr().out
    assert "mapped:wn_taps" in text and "dit.layers.3.w13" in text and "ignored" in text
    st = lf.s2mel_container(lf.build_s2mel())
    st["net"]["cfm"]["estimator.bogus.weight"] = torch.randn(2)
    del st["net"]["cfm"]["estimator.conv1.bias"]
    torch.save(st, tmp_path / "bad.pth")
    assert ins.main([str(tmp_path / "bad.pth")]) == 1
    text = capsys.readouterr().out
    assert "cfm.estimator.bogus.weight" in text and "unknown" in text
    assert "MISSING cfm.estimator.conv1.bias" in text and "REFUSE" in text
    L.convert_checkpoint(s2mel_pth, tmp_path / "p.safetensors")
    assert ins.main([str(tmp_path / "p.safetensors")]) == 0
    assert "indextts_fast fast pack" in capsys.readouterr().out


def test_inspect_tool_reports_conditioning_encoder_shapes(tmp_path, capsys):
    ins = _tool("inspect_checkpoint")
    sd = dict(lf.build_unified_voice().state_dict())
    sd["conditioning_encoder.encoders.0.feed_forward.w_2.weight"] = torch.randn(64, 127)
    sd["perceiver_encoder.norm.gamma"] = torch.ones(64, dtype=torch.int64)  # remap refuses it: so must the plan
    torch.save(sd, tmp_path / "gpt.pth")
    assert ins.main([str(tmp_path / "gpt.pth")]) == 1
    text = capsys.readouterr().out
    assert "conditioning_encoder.encoders.0.feed_forward.w_2.weight" in text and "wrong-shape" in text
    assert "REFUSE" in text
    assert "perceiver_encoder.norm.gamma" in text and "wrong-dtype" in text


def _one_line(err: str, prefix: str) -> str:
    """The tool's whole stderr: one line starting with ``prefix``, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def gpt_sd():
    return lf.build_gpt_core()[1]


def test_tools_refuse_a_short_zip_record(gpt_sd, tmp_path, capsys):
    conv, ins = _tool("convert_checkpoint"), _tool("inspect_checkpoint")
    torch.save(gpt_sd, tmp_path / "good.pth")
    rec = lf.record_holding(tmp_path / "good.pth", gpt_sd["gpt.ln_f.weight"])
    lf.rewrite_zip(tmp_path / "good.pth", tmp_path / "gpt.pth", lambda n, d: d[:-64] if n == rec else d)
    src = str(tmp_path / "gpt.pth")
    assert conv.main([src, "--gpt-dtype", "float32", "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err, "refused: ")
    assert f"truncated or corrupt: record '{rec}' holds 192 bytes, the storage of gpt.ln_f.weight needs 256" in line
    assert ins.main([src]) == 2
    assert "truncated or corrupt" in _one_line(capsys.readouterr().err, "error: ")
    assert not (tmp_path / "gpt.fast.safetensors").exists()
