"""Test configuration shared by every test file.

Without a CUDA device the Triton kernels run in the interpreter on CPU tensors; TRITON_INTERPRET must be set
before any kernel module is imported (Triton picks interpreted vs compiled at decoration time), so it is set
here, at collection, before the tests import indextts_kernels' kernel modules.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from indextts_fast import default_backend  # noqa: E402
from indextts_fast.official import OfficialCodeMissing  # noqa: E402

from .helpers import missing_official  # noqa: E402


def pytest_report_header(config):
    import indextts_kernels

    triton_v = "missing"
    if indextts_kernels.HAS_TRITON:
        import triton

        triton_v = triton.__version__
    return f"indextts_fast backend: {default_backend()} (torch {torch.__version__}, triton {triton_v})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    except OfficialCodeMissing as e:  # a fixture building an official model: fail or skip, as helpers.official
        missing_official(e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except OfficialCodeMissing as e:
        missing_official(e)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def device():
    """Where kernel tests run: CUDA when present, else CPU tensors under the Triton interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


NODE_REPORTS: list = []  # tests/test_node_budget.py's per-kernel breakdowns, printed in the terminal summary


def pytest_terminal_summary(terminalreporter):
    if NODE_REPORTS:
        terminalreporter.section("graph nodes per decode token / CFM step")
        for line in NODE_REPORTS:
            terminalreporter.write_line(line)
