"""Repository-level pytest hooks: ``pytest --benchmark`` runs the benchmark suite.

pytest-benchmark's own flags stay as they are (``--benchmark-enable``, ``--benchmark-json``, ...); the plain
``--benchmark`` is this project's shorthand: collect ``bench/`` instead of ``tests/`` (unless paths are given)
and turn timing on (``addopts`` disables it for the test suite).
"""

from __future__ import annotations

from pathlib import Path


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite (bench/) with timing on; GPU benchmarks skip without CUDA",
    )


def pytest_configure(config):
    if not config.getoption("benchmark"):
        return
    config.option.benchmark_disable = False
    config.option.benchmark_enable = True
    if getattr(config, "args_source", None) is not None and config.args_source.name == "TESTPATHS":
        config.args[:] = [str(Path(__file__).parent / "bench")]
