"""Normalization kernels against torch eager and torch.compile, same run, same card.

Bytes moved = every tensor read once plus every output written once (the kernel's floor).
"""

import pytest
import torch
import torch.nn.functional as F

import indextts_kernels as K
from indextts_kernels import reference as ref

from .shapes import NORM_SHAPES

pytestmark = pytest.mark.gpu

PROVIDERS = ["torch", "compile", "triton"]
DT = torch.float16  # the GPT stream dtype; the DiT rows run fp32 in the official code (see the fp32 case)


def _ids(s):
    return s[0]


def _inputs(M, N, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, N, device="cuda", dtype=dtype, generator=g)
    r = torch.randn(M, N, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(N, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(N, device="cuda", dtype=dtype, generator=g)
    return x, r, w, b


def _pick(provider, eager, kernel):
    if provider == "torch":
        return eager
    if provider == "compile":
        return torch.compile(eager, dynamic=False)
    return kernel


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=_ids)
def test_layer_norm_residual(measure, shape, provider, dtype):
    name, M, N = shape
    x, r, w, b = _inputs(M, N, dtype)

    def eager(x, r):
        h = x + r
        return F.layer_norm(h, (N,), w, b, 1e-5), h

    fn = _pick(provider, eager, lambda x, r: K.layer_norm_fwd(x, w, b, 1e-5, residual=r))
    es = x.element_size()
    measure(lambda: fn(x, r), provider=provider, group=f"layernorm+res/{name}/{str(dtype)[6:]}",
            bytes_moved=4 * M * N * es + 2 * N * es)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=_ids)
def test_adaptive_rms_norm(measure, shape, provider, dtype):
    name, M, N = shape
    B = 2 if M % 2 == 0 else 1
    x, _, g, _ = _inputs(M, N, dtype)
    x = x.view(B, M // B, N)
    proj = torch.randn(B, 1, 2 * N, device="cuda", dtype=dtype)
    scale, shift = proj.split(N, dim=-1)
    fn = _pick(provider, lambda x: ref.adaptive_rms_norm_ref(x, g, scale, shift),
               lambda x: K.adaptive_rms_norm_fwd(x, g, scale, shift))  # fmt: skip
    es = x.element_size()
    measure(lambda: fn(x), provider=provider, group=f"adarmsnorm/{name}/{str(dtype)[6:]}",
            bytes_moved=2 * M * N * es + N * es + 2 * B * N * es)  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
def test_final_layer_modulate(measure, provider):
    name, M, N = NORM_SHAPES[0]
    B = 2
    x = torch.randn(B, M // B, N, device="cuda")
    shift, scale = torch.randn(B, 2 * N, device="cuda").chunk(2, dim=1)
    fn = _pick(provider, lambda x: ref.final_layer_modulate_ref(x, shift, scale),
               lambda x: K.final_layer_modulate_fwd(x, shift, scale))  # fmt: skip
    measure(
        lambda: fn(x), provider=provider, group=f"finallayer/{name}/float32", bytes_moved=(2 * M * N + 2 * B * N) * 4
    )
