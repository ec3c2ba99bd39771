"""BigVGAN's anti-aliased activation (indextts_kernels.alias_free.anti_alias_snake_fwd) against the official torch
``Activation1d`` (SnakeBeta and Snake, log-scale and linear parameters) under the tolerance rule: ``low`` the
official module in fp32, ``high`` the same module in fp64. And the AMP stage merge (amp_merge_fwd) against the
official order of the adds and the division.

On CPU the kernels run in the Triton interpreter: lengths 1 and 2 (shorter than the filters' pads), odd lengths,
lengths across several programs (the kernel's 1016 outputs per program: edge and interior tiles), channel counts
not a power of two, batch 2; padded rows with valid lengths against the unpadded official rows.
"""

import pytest
import torch

import indextts_kernels as K
from indextts_kernels import reference as ref

from ..helpers import assert_close_rel, official, poisoned, randn

# (B, C, T): T 1 and 2 below every pad, 7 and 37 odd, 1021 and 2300 across program tiles (interior tiles at 2300)
CASES = [(2, 3, 1), (2, 5, 2), (1, 3, 7), (2, 6, 37), (1, 3, 1021), (1, 2, 2300)]


def _cid(c):
    return "B{}xC{}xT{}".format(*c)


def _activation(C: int, kind: str, logscale: bool, seed: int = 0):
    """The official torch Activation1d around a SnakeBeta or Snake of C channels with seeded parameters."""
    act = official("s2mel.modules.bigvgan.alias_free_activation.torch.act")
    acts = official("s2mel.modules.bigvgan.activations")
    snake = (acts.SnakeBeta if kind == "snakebeta" else acts.Snake)(C, alpha_logscale=logscale)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in snake.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g) if logscale else 0.5 + torch.rand(p.shape, generator=g))
    return act.Activation1d(snake).eval()


def _operands(a, device):
    alpha, inv_beta = ref.snake_params(a.act.alpha, getattr(a.act, "beta", None), a.act.alpha_logscale)
    up = a.upsample.filter.reshape(-1).contiguous()
    down = a.downsample.lowpass.filter.reshape(-1).contiguous()
    return [t.to(device) for t in (up, down, alpha, inv_beta)]


def _official(a, x):
    """(low, high): the official module on x in fp32 and, as a copy, in fp64."""
    import copy

    with torch.no_grad():
        low = a(x.cpu())
        high = copy.deepcopy(a).double()(x.cpu().double())
    return low, high


@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_anti_alias_snakebeta_matches_official(case, device):
    B, C, T = case
    a = _activation(C, "snakebeta", True)
    x = randn(B, C, T, std=2.0)
    out = poisoned((B, C, T), torch.float32, device)
    K.anti_alias_snake_fwd(x.to(device), *_operands(a, device), out=out)
    low, high = _official(a, x)
    assert_close_rel(out.cpu(), low, high, "anti-aliased SnakeBeta")


@pytest.mark.parametrize("kind,logscale", [("snake", True), ("snakebeta", False), ("snake", False)])
def test_anti_alias_snake_variants_match_official(kind, logscale, device):
    """Snake (alpha for beta) and linear-scale parameters, as the official Snake/SnakeBeta forwards form them."""
    B, C, T = 2, 5, 41
    a = _activation(C, kind, logscale, seed=3)
    x = randn(B, C, T, std=1.5)
    out = K.anti_alias_snake_fwd(x.to(device), *_operands(a, device))
    low, high = _official(a, x)
    assert_close_rel(out.cpu(), low, high, f"anti-aliased {kind} (logscale={logscale})")


@pytest.mark.parametrize("T,valid", [(40, [40, 23]), (9, [1, 2]), (1030, [1030, 1017])], ids=["40", "9", "1030"])
def test_anti_alias_snake_valid_lengths(T, valid, device):
    """A padded batch with valid lengths: each row below its length is the unpadded official row (every pad at its
    end), zeros beyond; the padding's contents (garbage here) never reach a kept sample."""
    C = 3
    a = _activation(C, "snakebeta", True, seed=5)
    x = randn(len(valid), C, T, std=2.0)
    for b, n in enumerate(valid):
        x[b, :, n:] = 1e4  # garbage past the valid length
    lengths = torch.tensor(valid, dtype=torch.int32, device=device)
    out = poisoned(tuple(x.shape), torch.float32, device)
    K.anti_alias_snake_fwd(x.to(device), *_operands(a, device), lengths=lengths, out=out)
    for b, n in enumerate(valid):
        low, high = _official(a, x[b : b + 1, :, :n])
        assert_close_rel(out[b : b + 1, :, :n].cpu(), low, high, f"row {b} below its length {n}")
        assert (out[b, :, n:] == 0).all(), f"row {b}: samples past its length {n} must be zero"


def test_anti_alias_snake_reference_is_the_official_math():
    """The torch reference (the no-GPU fallback) against the official module, padded rows included."""
    a = _activation(4, "snakebeta", True, seed=7)
    x = randn(2, 4, 29)
    ops = _operands(a, "cpu")
    low, high = _official(a, x)
    assert_close_rel(ref.anti_alias_snake_ref(x, *ops), low, high, "reference")
    lens = torch.tensor([29, 11])
    got = ref.anti_alias_snake_ref(x, *ops, lengths=lens)
    low, high = _official(a, x[1:, :, :11])
    assert_close_rel(got[1:, :, :11], low, high, "reference, row 1 at length 11")
    assert (got[1, :, 11:] == 0).all()


def test_anti_alias_snake_refuses_bad_arguments(device):
    a = _activation(3, "snakebeta", True)
    up, down, alpha, inv_beta = _operands(a, device)
    x = randn(1, 3, 8, device=device)
    with pytest.raises(TypeError, match="x has dtype float16"):
        K.anti_alias_snake_fwd(x.half(), up, down, alpha, inv_beta)
    with pytest.raises(ValueError, match="even number of taps"):
        K.anti_alias_snake_fwd(x, up[:11].contiguous(), down[:11].contiguous(), alpha, inv_beta)
    with pytest.raises(ValueError, match="alpha must be contiguous with C = 3"):
        K.anti_alias_snake_fwd(x, up, down, alpha[:2], inv_beta)
    with pytest.raises(ValueError, match="lengths has shape"):
        K.anti_alias_snake_fwd(x, up, down, alpha, inv_beta, lengths=torch.ones(2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="out overlaps x"):
        K.anti_alias_snake_fwd(x, up, down, alpha, inv_beta, out=x)


@pytest.mark.parametrize("n_parts,divisor", [(3, 3.0), (2, 2.0), (1, 1.0)])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_amp_merge_is_the_official_sum(n_parts, divisor, with_lengths, device):
    """((r0 + r1) + r2) / num_kernels in the official order, an IEEE division: bit for bit; zeros past lengths."""
    B, C, T = 2, 3, 1037
    parts = [randn(B, C, T, device=device) for _ in range(n_parts)]
    xs = parts[0].clone()
    for p in parts[1:]:
        xs += p
    want = xs / divisor
    lengths = torch.tensor([T, 500], dtype=torch.int32, device=device) if with_lengths else None
    out = poisoned((B, C, T), torch.float32, device)
    K.amp_merge_fwd(parts, divisor=divisor, lengths=lengths, out=out)
    if with_lengths:
        want[1, :, 500:] = 0
    assert torch.equal(out, want)
    in_place = K.amp_merge_fwd(parts, divisor=divisor, lengths=lengths, out=parts[0])
    assert in_place.data_ptr() == parts[0].data_ptr() and torch.equal(in_place, want)


def test_amp_merge_refuses_bad_arguments(device):
    a, b = randn(1, 2, 5, device=device), randn(1, 2, 6, device=device)
    with pytest.raises(ValueError, match=r"parts\[1\] has shape"):
        K.amp_merge_fwd([a, b], divisor=2.0)
    with pytest.raises(ValueError, match="divisor must be a positive finite number"):
        K.amp_merge_fwd([a], divisor=0.0)
    with pytest.raises(ValueError, match="parts must be a list of 1 to 3 tensors"):
        K.amp_merge_fwd([a] * 4)
