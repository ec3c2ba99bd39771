"""pytest-benchmark harness for GPU kernels: same-run peers, device timings, GB/s and TFLOP/s.

pytest-benchmark times host wall clock while GPU work is asynchronous, so each round launches the op
``LAUNCHES`` times and synchronizes once; ``triton.testing.do_bench`` gives the device-time median that the
derived numbers (GB/s, % of measured copy bandwidth, TFLOP/s) use. Every row carries the card's name and
the software versions, and the terminal summary prints one table with each provider's speed-up over the
``torch`` provider of the same group (the same shape, measured in the same run).

Run: ``pytest bench --benchmark-enable --benchmark-json bench/results/<card>-<date>.json``. Benchmarks marked
``gpu`` are skipped without CUDA (the repository's conftest.py); the others (the loader's) time CPU work with plain
pytest-benchmark.
"""

from __future__ import annotations

import pytest
import torch

LAUNCHES = 20
_ROWS: list[dict] = []


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written), the roofline we quote."""
    import triton

    n = 256 * 1024 * 1024  # 1 GiB of fp32
    src = torch.empty(n, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300)
    src = dst = None  # free the 2 GiB before the benchmarks
    torch.cuda.empty_cache()
    return 2 * n * 4 / ms / 1e6


@pytest.fixture
def measure(benchmark, copy_bandwidth):
    """measure(fn, provider=, group=, bytes_moved=None, flops=None): time fn and record derived numbers."""
    import triton

    def _measure(fn, *, provider: str, group: str, bytes_moved: float | None = None, flops: float | None = None):
        with torch.inference_mode():
            for _ in range(3):
                fn()  # compile / autotune / warm caches outside the timed region
            torch.cuda.synchronize()

            def rounds():
                for _ in range(LAUNCHES):
                    fn()
                torch.cuda.synchronize()

            benchmark.group = group
            benchmark.pedantic(rounds, warmup_rounds=2, rounds=15, iterations=1)
            ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        info = {
            "provider": provider,
            "group": group,
            "device_ms": ms,
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "copy_gbps": round(copy_bandwidth, 1),
        }
        if bytes_moved is not None:
            info["gbps"] = bytes_moved / ms / 1e6
            info["pct_copy_bw"] = 100.0 * info["gbps"] / copy_bandwidth
        if flops is not None:
            info["tflops"] = flops / ms / 1e9
        benchmark.extra_info.update(info)
        _ROWS.append(info)
        return info

    return _measure


def pytest_terminal_summary(terminalreporter):
    import sys

    e2e = sys.modules.get("bench.bench_e2e")
    for text in getattr(e2e, "RESULTS", []):
        terminalreporter.section("end to end")
        for line in text.splitlines():
            terminalreporter.write_line(line)
    decode = sys.modules.get("bench.bench_decode")
    if getattr(decode, "RESULTS", None):
        terminalreporter.section(f"ms per GPT token and per CFM step ({decode.RESULTS[0]['gpu']})")
        for line in decode.table().splitlines():
            terminalreporter.write_line(line)
    vocoder = sys.modules.get("bench.bench_vocoder")
    if getattr(vocoder, "RESULTS", None):
        terminalreporter.section(f"vocoder: ms per call and peak memory, 10 s of audio ({vocoder.RESULTS[0]['gpu']})")
        for line in vocoder.table().splitlines():
            terminalreporter.write_line(line)
    if not _ROWS:
        return
    base = {r["group"]: r["device_ms"] for r in _ROWS if r["provider"] == "torch"}
    tr = terminalreporter
    tr.section(f"device times ({_ROWS[0]['gpu']}, copy bandwidth {_ROWS[0]['copy_gbps']} GB/s)")
    tr.write_line(f"{'group':<44} {'provider':<10} {'us':>9} {'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'vs torch':>8}")
    for r in _ROWS:
        ratio = base.get(r["group"])
        tr.write_line(
            f"{r['group']:<44} {r['provider']:<10} {1000 * r['device_ms']:>9.2f} "
            f"{r.get('gbps', float('nan')):>8.0f} {r.get('pct_copy_bw', float('nan')):>6.1f} "
            f"{r.get('tflops', float('nan')):>8.1f} {(ratio / r['device_ms']) if ratio else float('nan'):>7.2f}x"
        )
