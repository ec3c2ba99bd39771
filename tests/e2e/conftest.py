"""What every end-to-end test shares: our ops on the torch references (the kernels are the other tests'), torch on
one thread (a busy 2-core machine slows two threads many times), and the offline object of the test module's
``VERSION`` with its fp64 twin."""

import pytest
import torch

from . import harness as H


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with H.one_thread():
        yield


@pytest.fixture(scope="module")
def offline(request, tmp_path_factory):
    """(the fp32 object, the same weights in fp64) of ``request.module.VERSION``."""
    version = request.module.VERSION
    d = tmp_path_factory.mktemp(f"infer_{version}")
    return H.build(version, d / "fp32"), H.build(version, d / "fp64", dtype=torch.float64)
