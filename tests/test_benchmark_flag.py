"""``pytest --benchmark`` (the words a user types) collects the benchmark suite with timing on."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_benchmark_flag_collects_the_bench_suite():
    res = subprocess.run([sys.executable, "-m", "pytest", "--benchmark", "--collect-only", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    items = [line for line in res.stdout.splitlines() if "::" in line]
    assert items and all(line.startswith("bench/") for line in items), res.stdout[-2000:]
    assert any("bench_gemm.py" in line for line in items) and any("bench_loader.py" in line for line in items)
