"""The README's main job: the demo runs every op through the dispatch and every check in it passes."""

import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the demo (the interpreter at small shapes)")
def test_demo_runs_every_op_on_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("INDEXTTS_FAST_BACKEND", None)
    res = subprocess.run(
        [sys.executable, "-m", "indextts_fast.demo", "--small"], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if " interpret " in line]
    assert len(rows) >= 9, res.stdout
    assert all(line.split()[-3] == "yes" for line in rows), res.stdout
