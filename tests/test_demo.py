"""The README's main job: ``python -m indextts_fast demo`` prints the stage table with every stage agreeing; the
kernel demo (``ops``) passes every check; ``synth`` names what is missing in one line."""

import os
import subprocess
import sys

import pytest
import torch

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (tiny models, the interpreter)")


def _run(*args, timeout=600):
    env = dict(os.environ)
    env.pop("INDEXTTS_FAST_BACKEND", None)
    env.pop("TRITON_INTERPRET", None)  # the entry point turns the interpreter on by itself on a CPU
    return subprocess.run([sys.executable, "-m", "indextts_fast", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


@CPU_ONLY
def test_demo_stage_table_every_stage_agrees():
    res = _run("demo")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if " interpret " in line]
    stages = [r.split()[0] for r in rows]
    assert stages == ["gpt.generate", "gpt.generate", "gpt.latent", "s2mel.cfm"], res.stdout
    assert "tokens identical" in rows[0] and "tokens identical" in rows[1], res.stdout
    assert " <= " in rows[2] and " <= " in rows[3], res.stdout
    assert "every stage agrees" in res.stdout
    assert "compute emo vec" not in res.stdout, "the official code's progress output leaks into the table"


@CPU_ONLY
def test_ops_demo_runs_every_op_on_the_interpreter():
    res = _run("ops")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if " interpret " in line]
    assert len(rows) >= 9, res.stdout
    assert all(line.split()[-3] == "yes" for line in rows), res.stdout


def test_synth_names_what_is_missing(tmp_path):
    res = _run("synth", "--model-dir", str(tmp_path / "none"), "--voice", "v.wav", "--text", "hi", "--out", "o.wav")
    assert (
        res.returncode == 2 and res.stdout.strip() == f"synth: the model directory {tmp_path / 'none'} does not exist"
    )
    (tmp_path / "config.yaml").write_text("gpt: {}\n")
    res = _run("synth", "--model-dir", str(tmp_path), "--voice", "v.wav", "--text", "hi", "--out", "o.wav")
    assert res.returncode == 2 and "lacks gpt.pth, s2mel.pth, bpe.model" in res.stdout, res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    res = _run("bogus")
    assert res.returncode == 2 and "unknown command 'bogus'" in res.stderr
