"""tools/convert_checkpoint.py and tools/inspect_checkpoint.py, run in-process on tiny official checkpoints."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from indextts_fast import checkpoint as CK
from indextts_fast import loader as L
from indextts_fast import official

from . import loader_fixtures as lf

# tests that convert without config.yaml on purpose: the head-count warning is expected there
pytestmark = pytest.mark.filterwarnings("ignore:no config.yaml:UserWarning")

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def s2mel_pth(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    torch.save(lf.s2mel_container(official.build_s2mel()), d / "s2mel.pth")
    return d / "s2mel.pth"


def test_convert_tool(s2mel_pth, capsys):
    conv = _tool("convert_checkpoint")
    out = s2mel_pth.with_name("s2mel.fast.safetensors")
    assert conv.main([str(s2mel_pth), "--quiet"]) == 0  # default output name beside the source
    assert out.exists() and CK.load_pack(out).meta["model"] == "s2mel"
    assert conv.main([str(s2mel_pth)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    assert conv.main([str(s2mel_pth), "--overwrite", "--split-adaln"]) == 0
    text = capsys.readouterr().out
    assert "folded:  8 weight-norm pairs" in text and "ignored: 14 keys" in text and "wrote" in text
    assert CK.load_pack(out).dit.adaln_w is None


def test_convert_tool_gpt_dtype(tmp_path):
    conv = _tool("convert_checkpoint")
    torch.save(official.build_gpt_core()[1], tmp_path / "gpt.pth")
    assert (
        conv.main([str(tmp_path / "gpt.pth"), str(tmp_path / "g.safetensors"), "--gpt-dtype", "bfloat16", "--quiet"])
        == 0
    )
    w = CK.load_pack(tmp_path / "g.safetensors")
    assert w.layers[0].qkv_w.dtype == torch.bfloat16 and w.ln_f_w.dtype == torch.bfloat16


def test_inspect_tool(s2mel_pth, tmp_path, capsys):
    ins = _tool("inspect_checkpoint")
    assert ins.main([str(s2mel_pth)]) == 0
    text = capsys.readouterr().out
    assert "s2mel checkpoint, IndexTTS 2.0" in text and "would accept" in text
    assert ins.main([str(s2mel_pth), "--keys"]) == 0
    text = capsys.readouterr().out
    assert "mapped:wn_taps" in text and "dit.layers.3.w13" in text and "ignored" in text
    st = lf.s2mel_container(official.build_s2mel())
    st["net"]["cfm"]["estimator.bogus.weight"] = torch.randn(2)
    del st["net"]["cfm"]["estimator.conv1.bias"]
    torch.save(st, tmp_path / "bad.pth")
    assert ins.main([str(tmp_path / "bad.pth")]) == 1
    text = capsys.readouterr().out
    assert "cfm.estimator.bogus.weight" in text and "unknown" in text
    assert "MISSING cfm.estimator.conv1.bias" in text and "REFUSE" in text
    CK.convert_checkpoint(s2mel_pth, tmp_path / "p.safetensors")
    assert ins.main([str(tmp_path / "p.safetensors")]) == 0
    assert "indextts_fast fast pack" in capsys.readouterr().out


def test_inspect_tool_reports_conditioning_encoder_shapes(tmp_path, capsys):
    ins = _tool("inspect_checkpoint")
    sd = dict(official.build_unified_voice(post_init=False).state_dict())
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
    return official.build_gpt_core()[1]


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


@pytest.mark.parametrize("case", ["malformed", "binary", "python_tag", "heads_str", "text_tokens_str", "s2mel_int"])
def test_convert_tool_bad_config(gpt_sd, tmp_path, capsys, case):
    from .test_loader_errors import CONFIG_CASES, write_config

    model, contents, match = CONFIG_CASES[case]
    cfg = write_config(tmp_path / "config.yaml", contents)
    if model == "gpt":
        torch.save(gpt_sd, tmp_path / "src.pth")
    else:
        torch.save(lf.s2mel_container(official.build_s2mel()), tmp_path / "src.pth")
    assert _tool("convert_checkpoint").main([str(tmp_path / "src.pth"), "--config", str(cfg), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err, f"refused: {cfg}: ")
    assert __import__("re").search(match, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "src.pth"]


def test_convert_tool_real_write_failure(gpt_sd, tmp_path):
    """A real failure inside the safetensors writer: the tool runs with a file-size limit (RLIMIT_FSIZE) below the
    pack's size, so the write fails with EFBIG from the OS, as it fails with ENOSPC on a full disk."""
    import resource
    import subprocess
    import sys

    from .test_loader_errors import gpt_core_config

    torch.save(gpt_sd, tmp_path / "gpt.pth")
    cfg = gpt_core_config(tmp_path / "config.yaml")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    p = subprocess.run(
        [sys.executable, str(TOOLS / "convert_checkpoint.py"), str(tmp_path / "gpt.pth"), "--config", str(cfg), "-q"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, hard)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    line = _one_line(p.stderr, f"refused: output {tmp_path / 'gpt.fast.safetensors'}: cannot write the pack: ")
    assert "File too large" in line, line
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.yaml", "gpt.pth"]


_SLOW_WRITE = """
import importlib.util, sys, time
import safetensors.torch
real = safetensors.torch.save_file
def slow(tensors, filename, metadata=None):
    real(dict(list(tensors.items())[:2]), filename, metadata=metadata)  # a partial temporary file exists
    print("writing", flush=True)
    time.sleep(120)
safetensors.torch.save_file = slow
spec = importlib.util.spec_from_file_location("convert_checkpoint", sys.argv[1])
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)
sys.exit(conv.main(sys.argv[2:]))
"""


def test_convert_tool_sigterm_during_write(gpt_sd, tmp_path):
    """SIGTERM while the pack is written: the temporary file is removed and the tool exits with one line."""
    import signal
    import subprocess
    import sys

    from .test_loader_errors import gpt_core_config

    torch.save(gpt_sd, tmp_path / "gpt.pth")
    cfg = gpt_core_config(tmp_path / "config.yaml")
    out = tmp_path / "gpt.fast.safetensors"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, str(TOOLS / "convert_checkpoint.py"),
                          str(tmp_path / "gpt.pth"), "--config", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout.readline() == "writing\n", p.stderr.read()
        assert [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")], "no temporary file while writing"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, err)
    line = _one_line(err, "error: ")
    assert line == f"error: terminated by SIGTERM while writing {out}; its temporary file was removed, no pack written"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.yaml", "gpt.pth"]


def test_inspect_refuses_a_pack_that_load_pack_refuses(gpt_sd, tmp_path, capsys):
    from safetensors.torch import save_file

    torch.save(gpt_sd, tmp_path / "gpt.pth")
    CK.convert_checkpoint(tmp_path / "gpt.pth", tmp_path / "good.safetensors")
    tensors, meta = CK.read_pack(tmp_path / "good.safetensors")
    del tensors["h.1.fc.b"]
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)  # readable, but not what its metadata says
    with pytest.raises(L.CheckpointError, match=r"missing h\.1\.fc\.b"):
        CK.load_pack(tmp_path / "bad.safetensors")
    assert _tool("inspect_checkpoint").main([str(tmp_path / "bad.safetensors")]) == 2
    line = _one_line(capsys.readouterr().err, "error: ")
    assert line == f"error: {tmp_path / 'bad.safetensors'}: pack does not match its own metadata: missing h.1.fc.b"


def _bad_values(case):
    """(model, state dict with one bad value, the pack tensor the converter names)."""
    if case == "zero_norm_weight_v":
        sd = {k: v.clone() for k, v in lf.flat_s2mel(official.build_s2mel()).items()}
        sd["cfm.estimator.wavenet.in_layers.1.conv.conv.weight_v"][5] = 0  # ||v|| = 0 for one output channel
        return sd, "dit.wn.in.1.w"
    sd = {k: v.clone() for k, v in official.build_gpt_core()[1].items()}
    sd["gpt.h.0.attn.c_proj.weight"][2, 9] = {"nan": float("nan"), "inf": float("inf"), "fp16_overflow": 1e6}[case]
    return sd, "h.0.attn_out.w"


@pytest.mark.parametrize("case", ["nan", "inf", "fp16_overflow", "zero_norm_weight_v"])
def test_inspect_agrees_with_the_converter_on_values(tmp_path, capsys, case):
    """Non-finite values (also after the fp16 cast, or from folding a zero-norm weight_v) are refused by both tools;
    the fp16 overflow is accepted by both at --gpt-dtype float32."""
    from safetensors.torch import save_file

    conv, ins = _tool("convert_checkpoint"), _tool("inspect_checkpoint")
    sd, dst = _bad_values(case)
    src = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, src)
    assert conv.main([str(src), "--quiet"]) == 2
    assert f"non-finite values (NaN or inf, possibly after the dtype cast) in {dst}" in capsys.readouterr().err
    assert ins.main([str(src)]) == 1
    text = capsys.readouterr().out
    assert "REFUSE" in text and f"non-finite values (NaN or inf, possibly after the dtype cast) in {dst}" in text
    assert ins.main([str(src), "--json"]) == 1
    assert '"accepted": false' in capsys.readouterr().out
    if case == "fp16_overflow":
        assert ins.main([str(src), "--gpt-dtype", "float32"]) == 0
        assert "would accept" in capsys.readouterr().out
        assert conv.main([str(src), "--gpt-dtype", "float32", "--quiet"]) == 0


def test_convert_tool_says_when_heads_are_assumed(gpt_sd, tmp_path, capsys):
    conv = _tool("convert_checkpoint")
    torch.save(gpt_sd, tmp_path / "gpt.pth")
    assert conv.main([str(tmp_path / "gpt.pth"), "--quiet"]) == 0
    line = _one_line(capsys.readouterr().err, "warning: ")
    assert "no config.yaml: the head count is in no tensor shape; heads = width 64 // 64 = 1 assumed" in line
    ins = _tool("inspect_checkpoint")
    assert ins.main([str(tmp_path / "gpt.pth")]) == 0
    assert "heads = width 64 // 64 = 1 assumed" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# Bad arguments, environment values and input files: one to three lines on stderr naming the problem, exit status 2,
# no traceback, from both tools.
# ----------------------------------------------------------------------------------------------------------------------
def _run_main(capsys, name, *argv):
    """(exit status, stderr) of the tool's main() run in-process (argparse's SystemExit included)."""
    try:
        rc = _tool(name).main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _refused_cleanly(rc, err, *names):
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and 1 <= len(lines) <= 3, (rc, err)
    for n in names:
        assert str(n) in err, (n, err)


def _bad_checkpoint(case, path):
    """A file named ``path`` that is no IndexTTS2 checkpoint: (the file or a stand-in, what the message names)."""
    if case == "list":
        torch.save([1, 2, 3], path)
        return path, "top level is a list, expected a dict"
    if case == "non_tensors":
        torch.save({"a": 1, "b": "x"}, path)
        return path, "non-tensor entries ['a', 'b']"
    if case == "pickled_module":
        torch.save({"gpt.h.0.ln_1.weight": torch.nn.Linear(2, 2)}, path)
        return path, "pickled Python objects that a weights-only load refuses"
    if case == "empty":
        path.write_bytes(b"")
        return path, "the file is empty (0 bytes)"
    if case == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy())
        return path, "not a torch.save zip archive"
    if case == "directory":
        path.mkdir()
        return path, "a directory, not a file"
    if case == "name_too_long":
        path = path.with_name("x" * 300 + ".pth")
        return path, "File name too long"
    if case == "not_utf8":
        torch.save(official.build_gpt_core()[1], path)
        path = path.rename(path.with_name(os.fsdecode(b"gpt\xff.pth")))
        return path, "the file name is not valid UTF-8"
    raise ValueError(case)


BAD_CHECKPOINTS = ["list", "non_tensors", "pickled_module", "empty", "random_bytes", "directory", "name_too_long",
                   "not_utf8"]  # fmt: skip


@pytest.mark.parametrize("tool", ["convert_checkpoint", "inspect_checkpoint"])
@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_tools_refuse_a_bad_checkpoint_file(tmp_path, capsys, tool, case):
    src, problem = _bad_checkpoint(case, tmp_path / "gpt.pth")
    rc, err = _run_main(capsys, tool, src)
    _refused_cleanly(rc, err, problem, tmp_path)  # the message names the file by its path
    assert sorted(p.name for p in tmp_path.iterdir()) == ([src.name] if os.path.exists(src) else []), "a file written"


@pytest.mark.parametrize("tool", ["convert_checkpoint", "inspect_checkpoint"])
def test_tools_refuse_an_unreadable_file(gpt_sd, tmp_path, capsys, monkeypatch, tool):
    src = tmp_path / "gpt.pth"
    torch.save(gpt_sd, src)
    src.chmod(0)
    if os.geteuid() == 0:  # root reads through mode 000: what any other user meets, from os.access
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != src and real(p, mode, **kw))
    try:
        rc, err = _run_main(capsys, tool, src)
    finally:
        src.chmod(0o644)
    _refused_cleanly(rc, err, f"{src}: unreadable (permission denied)")


BAD_CONFIGS = {  # the YAML, what the message names
    "invalid_yaml": ("gpt: [1, 2\n", "not valid YAML"),
    "yaml_list": ("- 1\n- 2\n", "not a YAML mapping (a list at the top level)"),
    "no_gpt_section": ("s2mel: {}\n", "no 'gpt' section"),
}


@pytest.mark.parametrize("tool", ["convert_checkpoint", "inspect_checkpoint"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_tools_refuse_a_bad_config(gpt_sd, tmp_path, capsys, tool, case):
    contents, problem = BAD_CONFIGS[case]
    torch.save(gpt_sd, tmp_path / "gpt.pth")
    (tmp_path / "config.yaml").write_text(contents)
    rc, err = _run_main(capsys, tool, tmp_path / "gpt.pth", "--config", tmp_path / "config.yaml")
    _refused_cleanly(rc, err, f"{tmp_path / 'config.yaml'}: ", problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "gpt.pth"]


@pytest.mark.parametrize(
    "tool, argv, problem",
    [
        ("convert_checkpoint", ["{gpt}", "--gpt-dtype", "float8"], "argument --gpt-dtype: invalid choice: 'float8'"),
        ("inspect_checkpoint", ["{gpt}", "--gpt-dtype", "float8"], "argument --gpt-dtype: invalid choice: 'float8'"),
        ("convert_checkpoint", [], "the following arguments are required: src"),
        ("inspect_checkpoint", [], "the following arguments are required: path"),
        ("convert_checkpoint", ["{gpt}", "--bogus"], "unrecognized arguments: --bogus"),
        ("inspect_checkpoint", ["{gpt}", "out.safetensors"], "unrecognized arguments: out.safetensors"),
        ("convert_checkpoint", [""], ".: unreadable (a directory, not a file)"),
        ("convert_checkpoint", ["/"], "/: unreadable (a directory, not a file)"),
        ("convert_checkpoint", ["{gpt}", "{tmp}/" + "y" * 300 + ".safetensors"], "File name too long"),
        ("convert_checkpoint", ["{gpt}", "{tmp}/out.pth"], "a fast pack is a .safetensors file"),
        ("convert_checkpoint", ["{gpt}", "{tmp}/nodir/out.safetensors"], "nodir does not exist"),
        ("inspect_checkpoint", ["{gpt}", "--config", "{tmp}/none.yaml"], "none.yaml: no such file"),
    ],
)
def test_tools_refuse_bad_arguments(gpt_sd, tmp_path, capsys, tool, argv, problem):
    torch.save(gpt_sd, tmp_path / "gpt.pth")
    argv = [a.format(gpt=tmp_path / "gpt.pth", tmp=tmp_path) for a in argv]
    rc, err = _run_main(capsys, tool, *argv)
    _refused_cleanly(rc, err, problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt.pth"]


def _run_tool(name, *argv, env=None, cwd=None):
    """The tool run as a program (environment variables are read when it starts)."""
    import subprocess
    import sys

    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)  # fmt: skip


def test_tools_ignore_the_backend_variable(gpt_sd, tmp_path):
    """INDEXTTS_FAST_BACKEND=bogus: the op backend, which no tool uses, changes nothing (no traceback either way)."""
    from .test_loader_errors import gpt_core_config

    torch.save(gpt_sd, tmp_path / "gpt.pth")
    cfg = gpt_core_config(tmp_path / "config.yaml")
    env = {"INDEXTTS_FAST_BACKEND": "bogus"}
    p = _run_tool("convert_checkpoint", tmp_path / "gpt.pth", "--config", cfg, env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    p = _run_tool("inspect_checkpoint", tmp_path / "gpt.fast.safetensors", env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    p = _run_tool("inspect_checkpoint", tmp_path / "nope.pth", env=env)
    _refused_cleanly(p.returncode, p.stderr, "nope.pth: no such file")


@pytest.mark.parametrize("tool", ["convert_checkpoint", "inspect_checkpoint"])
def test_tools_refuse_a_tqdm_variable_torch_cannot_import_with(gpt_sd, tmp_path, tool):
    """TQDM_MININTERVAL=abc: torch imports tqdm, which reads it and fails; refused naming the variable."""
    torch.save(gpt_sd, tmp_path / "gpt.pth")
    p = _run_tool(tool, tmp_path / "gpt.pth", env={"TQDM_MININTERVAL": "abc"})
    _refused_cleanly(p.returncode, p.stderr, "TQDM_MININTERVAL='abc'", "could not convert string to float: 'abc'")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["gpt.pth"]
