"""Repository-level pytest hooks, for the tests and the benchmarks alike.

``pytest --benchmark`` runs the benchmark suite: pytest-benchmark's own flags stay as they are
(``--benchmark-enable``, ``--benchmark-json``, ...); the plain ``--benchmark`` is this project's shorthand: collect
``bench/`` instead of ``tests/`` (unless paths are given) and turn timing on (``addopts`` disables it for the test
suite).

Markers (declared in pyproject.toml): ``gpu`` tests and benchmarks need a CUDA device and are skipped without one,
the skip saying so (and why the test needs one where the marker gives a reason: ``@pytest.mark.gpu(reason=...)``);
``slow`` ones run like every other test, ``-m "not slow"`` deselects them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


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


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in marked:
        why = item.get_closest_marker("gpu").kwargs.get("reason")
        item.add_marker(pytest.mark.skip(reason=f"needs a CUDA device{f' ({why})' if why else ''}; torch sees none"))
