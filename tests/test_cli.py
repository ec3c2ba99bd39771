"""The command lines' contracts: ``python -m indextts_fast demo | synth | ops | serve``.

demo: a header, one table row per stage (backend, parity, official and our times, speed-up) and the verdict; exit
0 when every stage agrees, 1 when one does not. Every command: a bad argument, environment value or input file is
one to three lines on stderr naming the problem, exit status 2, no traceback. The demo's stages run here on the
torch references (its kernels are the ones the kernel and enable tests run in the interpreter); ``ops`` runs every
kernel in the interpreter, as the README shows.
"""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from indextts_fast import __main__ as cli
from indextts_fast import demo, official

from .loader.loader_fixtures import s2mel_container


def _run(*args, env=None, timeout=600):
    e = {k: v for k, v in os.environ.items() if k not in ("INDEXTTS_FAST_BACKEND", "TRITON_INTERPRET")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "indextts_fast", *args], capture_output=True, text=True, env=e,
                          timeout=timeout)  # fmt: skip


def _refused(rc, err, *names):
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and 1 <= len(lines) <= 3, (rc, err)
    for n in names:
        assert str(n) in err, (n, err)


def test_demo_table_and_verdict(capsys, monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    assert demo.main(["--stages", "greedy,defaults,latent,cfm"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = lines[[i for i, line in enumerate(lines) if line.startswith("stage ")][0] + 1 : -1]
    assert all(r.split()[-5] == "torch" or " torch " in r for r in rows), out
    assert [r.split()[0] for r in rows] == ["gpt.generate", "gpt.generate", "gpt.latent", "s2mel.cfm"], out
    assert "tokens identical" in rows[0] and "tokens identical" in rows[1], out
    assert " <= " in rows[2] and " <= " in rows[3], out
    assert all(r.rstrip().endswith("x") for r in rows), out  # the speed-up column
    assert out.rstrip().endswith("every stage agrees") and "compute emo vec" not in out, out


def test_demo_says_when_a_stage_disagrees(capsys, monkeypatch):
    """A wrong token is reported as such (exit 1): the parity column is a check that can fail."""
    from indextts_fast.gpt.decode import Decoder

    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    right = Decoder.generate
    monkeypatch.setattr(Decoder, "generate", lambda self, *a, **k: right(self, *a, **k).index_fill(1,
                        torch.tensor([-1]), 0))  # fmt: skip
    assert demo.main(["--stages", "greedy"]) == 1
    out = capsys.readouterr().out
    assert "TOKENS DIFFER" in out and out.rstrip().endswith("SOME STAGES DISAGREE"), out


@pytest.mark.parametrize(
    "argv, env, names",
    [
        (["demo", "--device", "bogus"], {}, ["demo: --device 'bogus' is not a device"]),
        (["demo", "--device", "cuda:7"], {}, ["demo: --device cuda:7: no such CUDA device"]),
        (["demo", "--stages", "greedy,warp"], {}, ["unknown stage 'warp'"]),
        (["demo"], {"INDEXTTS_FAST_BACKEND": "bogus"}, ["INDEXTTS_FAST_BACKEND='bogus' is not one of auto, triton"]),
        (["ops"], {"INDEXTTS_FAST_BACKEND": "bogus"}, ["INDEXTTS_FAST_BACKEND='bogus'"]),
        (["bogus"], {}, ["unknown command 'bogus'"]),
    ],
    ids=["device", "cuda-device", "stage", "backend-env", "ops-backend-env", "command"],
)
def test_bad_arguments_and_environment(capsys, monkeypatch, argv, env, names):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _refused(cli.main(argv), capsys.readouterr().err, *names)


def _model_dir(tmp_path, case):
    """A model directory (config.yaml, gpt.pth, s2mel.pth) of the tiny official models, one file spoilt (case
    None: none)."""
    cond = dict(official.TINY_COND)
    gpt = dict(official.gpt_config()["gpt"], condition_module=cond, emo_condition_module=cond)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"gpt": gpt, "s2mel": official.s2mel_config()}))
    torch.save(official.build_unified_voice("tiny", 0, post_init=False).state_dict(), tmp_path / "gpt.pth")
    torch.save(s2mel_container(official.build_s2mel()), tmp_path / "s2mel.pth")
    if case is None:
        return tmp_path, None
    spoilt = {
        "config_garbage": ("config.yaml", lambda p: p.write_text("gpt: [unclosed\n")),
        "config_list": ("config.yaml", lambda p: p.write_text("- 1\n- 2\n")),
        "gpt_empty": ("gpt.pth", lambda p: p.write_bytes(b"")),
        "gpt_garbage": ("gpt.pth", lambda p: p.write_bytes(os.urandom(4096))),
        "gpt_foreign": ("gpt.pth", lambda p: torch.save({"encoder.weight": torch.ones(3, 3)}, p)),
        "gpt_not_a_state_dict": ("gpt.pth", lambda p: torch.save([1, 2, 3], p)),
        "s2mel_foreign": ("s2mel.pth", lambda p: torch.save({"net": {"cfm": {"x": torch.ones(2)}}}, p)),
    }
    name, spoil = spoilt[case]
    spoil(tmp_path / name)
    return tmp_path, name


@pytest.mark.parametrize("case", ["config_garbage", "config_list", "gpt_empty", "gpt_garbage", "gpt_foreign",
                                  "gpt_not_a_state_dict", "s2mel_foreign"])  # fmt: skip
def test_demo_refuses_a_bad_model_dir(capsys, monkeypatch, tmp_path, case):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")
    d, name = _model_dir(tmp_path, case)
    _refused(demo.main(["--model-dir", str(d), "--stages", "latent"]), capsys.readouterr().err, "demo: ", d / name)


def test_synth_names_what_is_missing(tmp_path):
    args = ["--voice", str(tmp_path / "v.wav"), "--text", "hi", "--out", str(tmp_path / "o.wav")]
    res = _run("synth", "--model-dir", str(tmp_path / "none"), *args)
    _refused(res.returncode, res.stderr, f"synth: the model directory {tmp_path / 'none'} does not exist")
    (tmp_path / "config.yaml").write_text("gpt: {}\n")
    res = _run("synth", "--model-dir", str(tmp_path), *args)
    _refused(res.returncode, res.stderr, "lacks gpt.pth, s2mel.pth, bpe.model")
    for name in ("gpt.pth", "s2mel.pth", "bpe.model"):
        (tmp_path / name).write_bytes(b"x")
    res = _run("synth", "--model-dir", str(tmp_path), *args)
    _refused(res.returncode, res.stderr, f"the voice file {tmp_path / 'v.wav'} does not exist")
    (tmp_path / "v.wav").write_bytes(b"RIFF")
    res = _run("synth", "--model-dir", str(tmp_path), *args[:4], "--out", str(tmp_path / "no" / "o.wav"))
    _refused(res.returncode, res.stderr, "not a file path in an existing directory")
    res = _run("synth", "--model-dir", str(tmp_path), *args)  # the checkpoints are read for their keys first
    _refused(res.returncode, res.stderr, tmp_path / "gpt.pth")
    _model_dir(tmp_path, None)  # the tiny official models' checkpoints
    # the official package is here without its own requirements (librosa, ...): infer_v2 cannot be imported
    res = _run("synth", "--model-dir", str(tmp_path), *args)
    _refused(res.returncode, res.stderr, "the official IndexTTS2 package (indextts.infer_v2) cannot be imported")


def test_synth_tells_2_5_from_its_files(tmp_path):
    """A codec.pth or the tiktoken vocabulary makes the directory IndexTTS-2.5's: its files are named, its
    checkpoints must all be 2.5 (a 2.0 gpt.pth beside a codec.pth is refused by name), --fp16 is 2.0's option."""
    args = ["--voice", str(tmp_path / "v.wav"), "--text", "hi", "--out", str(tmp_path / "o.wav")]
    _model_dir(tmp_path, None)
    (tmp_path / "v.wav").write_bytes(b"RIFF")
    torch.save({"model": {"quantizer.quantizers.0.codebook.weight": torch.ones(8, 8)}}, tmp_path / "codec.pth")
    res = _run("synth", "--model-dir", str(tmp_path), *args)
    _refused(res.returncode, res.stderr, "lacks multilingual_zh_ja_yue_char_del.tiktoken", "IndexTTS-2.5")
    (tmp_path / "multilingual_zh_ja_yue_char_del.tiktoken").write_text("IQ== 0\n")
    res = _run("synth", "--model-dir", str(tmp_path), *args, "--fp16")
    _refused(res.returncode, res.stderr, "--fp16", "IndexTTS-2.5", "--bf16")
    res = _run("synth", "--model-dir", str(tmp_path), *args)
    _refused(res.returncode, res.stderr, "gpt.pth is IndexTTS-2.0")


def test_ops_demo_runs_every_op_on_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("the CPU path (the interpreter)")
    res = _run("ops")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if " interpret " in line]
    assert len(rows) >= 9, res.stdout
    assert all(line.split()[-3] == "yes" for line in rows), res.stdout


def test_serve_refuses_bad_arguments(tmp_path):
    """``serve``: a bad option, a missing model directory or voices directory, a KV budget that holds no request: one
    line, exit 2, before anything listens (the tiny model's slot is 1.5 MiB)."""
    res = _run("serve", "--tiny", "--port", "70000")
    _refused(res.returncode, res.stderr, "serve: --port 70000: not a port")
    res = _run("serve", "--tiny", "--max-batch", "0")
    _refused(res.returncode, res.stderr, "serve: --max-batch must be >= 1")
    res = _run("serve", "--model-dir", str(tmp_path / "none"))
    _refused(res.returncode, res.stderr, f"serve: the model directory {tmp_path / 'none'} does not exist")
    res = _run("serve", "--tiny", "--voices", str(tmp_path / "nowhere"), env={"INDEXTTS_FAST_BACKEND": "torch"})
    _refused(res.returncode, res.stderr, f"serve: --voices {tmp_path / 'nowhere'}: not a directory")
    res = _run("serve", "--tiny", "--kv-budget", "0.001", env={"INDEXTTS_FAST_BACKEND": "torch"})
    _refused(res.returncode, res.stderr, "serve: --kv-budget 0.001 GB holds no request: one needs 0.001 GB")
