"""BigVGAN v2 (the vocoder) in one run on one card: its anti-aliased activation alone, and the whole forward on 10 s
of audio, the official code against ours. Sizes: the official 22.05 kHz, 80-band, 256x model (``H22K``,
``indextts_fast.official.BIGVGAN_V2``: upsampling 4, 4, 2, 2, 2, 2 from 1536 channels, AMP blocks of kernel sizes
3, 7, 11 and dilations 1, 3, 5, SnakeBeta with log-scale parameters, 12-tap filters, 112 M parameters); weight norm
removed, eval, seeded random weights (``official.build_bigvgan("full", SEED)``: the official init, every SnakeBeta's
log-scale alpha and beta N(0, 0.3^2) so that no channel has the init's alpha = beta = 1).

- ``bigvgan act/<stage>`` (device times through bench/conftest.py's ``measure``; GB/s = the input read once and
  the output written once, the fused kernel's floor): one Activation1d(SnakeBeta) at the official size of a stage,
  [1, 768, 4 x 861] (the first stage: widest) and [1, 24, 256 x 861] (the last: longest). Providers: ``torch`` the
  official torch Activation1d (x2 upsampling by a transposed convolution, the snake, x2 low-pass convolution: the
  upsampled signal round-trips through memory), ``cuda-ext`` the official CUDA extension's fused Activation1d
  (``alias_free_activation/cuda``, built with nvcc and ninja at its import: skipped, with the reason, where it does
  not build), ``triton`` ours (``indextts_fast.ops.anti_alias_snake``: one launch).
- ``vocoder 10 s`` (ms per call: pytest-benchmark's median of ``ROUNDS`` synchronized calls, after the first):
  ``bigvgan(mel)`` on a [1, 80, 861] mel (10 s, 220,416 samples). Providers: ``official`` BigVGAN(h,
  use_cuda_kernel=False), ``official-cuda-ext`` BigVGAN(h, use_cuda_kernel=True) with the same weights (skipped
  where the extension does not build), ``ours`` ``indextts_fast.enable(net)`` (a CUDA graph per length bucket),
  ``ours-eager`` ``enable(net, graphs=False)`` (the same kernels launched from the host). ``peak_mib``:
  torch.cuda.max_memory_allocated over the provider's calls (the first, with ours' compile and graph capture,
  included) above what was allocated before them (the weights). ``max_abs_err``: the wave's largest difference
  from the official provider's.

    pytest bench/bench_vocoder.py --benchmark       # on a GPU (tools/gpu_check.sh bench runs it with bench/)
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from indextts_fast.official import BIGVGAN_V2
from indextts_fast.shapes import VOCODER_FRAMES_10S

pytestmark = pytest.mark.gpu

SEED = 0
ROUNDS = 10
FRAMES = VOCODER_FRAMES_10S  # 861 mel frames: 10 s at 22,050 Hz, hop 256
H22K = BIGVGAN_V2
ACT_PROVIDERS = ("torch", "cuda-ext", "triton")
VOCODER_PROVIDERS = ("official", "official-cuda-ext", "ours", "ours-eager")
RESULTS: list[dict] = []  # the vocoder rows; bench/conftest.py prints table() in the terminal summary


def _stage(i: int) -> tuple[str, int, int, int]:
    """(name, B, C, T): the activations' input after upsampling stage i of H22K on a 10 s mel."""
    C = H22K["upsample_initial_channel"] // 2 ** (i + 1)
    T = FRAMES
    for r in H22K["upsample_rates"][: i + 1]:
        T *= r
    return f"stage{i}_1x{C}x{T}", 1, C, T


ACT_SHAPES = [_stage(0), _stage(len(H22K["upsample_rates"]) - 1)]  # [1, 768, 3444] and [1, 24, 220416]


def _official(module: str):
    from indextts_fast.official import OfficialCodeMissing, import_official

    try:
        return import_official(module)
    except OfficialCodeMissing as e:
        pytest.skip(str(e))


def _quiet():
    from indextts_fast.demo import _quiet

    return _quiet()


_CUDA_EXT: dict = {}


def _cuda_ext_activation():
    """The official CUDA extension's Activation1d class, or pytest.skip with why it is not there. Its import JIT-builds
    the extension (nvcc, ninja) once per process; a failure is remembered, not retried."""
    if "cls" not in _CUDA_EXT:
        try:
            with _quiet():
                mod = _official("s2mel.modules.bigvgan.alias_free_activation.cuda.activation1d")
            _CUDA_EXT["cls"], _CUDA_EXT["why"] = mod.Activation1d, None
        except Exception as e:  # a failed build: RuntimeError, CalledProcessError, OSError, ImportError, ...
            _CUDA_EXT["cls"] = None
            _CUDA_EXT["why"] = f"the official CUDA extension does not build here: {type(e).__name__}: {str(e)[:300]}"
    if _CUDA_EXT["cls"] is None:
        pytest.skip(_CUDA_EXT["why"])
    return _CUDA_EXT["cls"]


# ----------------------------------------------------------------------------------------------------------------------
# The activation alone
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ACT_PROVIDERS)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=lambda s: s[0])
def test_anti_alias_activation(measure, shape, provider):
    from indextts_fast import ops
    from indextts_kernels import reference

    name, B, C, T = shape
    act = _official("s2mel.modules.bigvgan.alias_free_activation.torch.act")
    snakes = _official("s2mel.modules.bigvgan.activations")
    torch_act = act.Activation1d(activation=snakes.SnakeBeta(C, alpha_logscale=True))
    with torch.no_grad():  # log-scale alpha and beta N(0, 0.3^2), as official.build_bigvgan draws them
        g = torch.Generator().manual_seed(SEED)
        for p in (torch_act.act.alpha, torch_act.act.beta):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    torch_act = torch_act.cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(SEED)
    x = torch.randn(B, C, T, device="cuda", generator=g)
    if provider == "torch":
        fn = lambda: torch_act(x)  # noqa: E731
    elif provider == "cuda-ext":
        cls = _cuda_ext_activation()
        ext = cls(activation=snakes.SnakeBeta(C, alpha_logscale=True)).cuda().eval()
        ext.load_state_dict(torch_act.state_dict())
        fn = lambda: ext(x)  # noqa: E731
    else:
        up = torch_act.upsample.filter.reshape(-1).contiguous()
        down = torch_act.downsample.lowpass.filter.reshape(-1).contiguous()
        alpha, inv_beta = reference.snake_params(torch_act.act.alpha, torch_act.act.beta, True)
        fn = lambda: ops.anti_alias_snake(x, up, down, alpha, inv_beta)  # noqa: E731
    measure(fn, provider=provider, group=f"bigvgan act/{name}", bytes_moved=2 * B * C * T * 4)


# ----------------------------------------------------------------------------------------------------------------------
# The whole vocoder, 10 s of audio
# ----------------------------------------------------------------------------------------------------------------------
def _cuda_ext_bigvgan(weights: dict) -> torch.nn.Module:
    """The official BigVGAN(H22K, use_cuda_kernel=True) on CUDA with ``weights`` (or pytest.skip with the reason)."""
    import inspect

    bv = _official("s2mel.modules.bigvgan.bigvgan")
    env = _official("s2mel.modules.bigvgan.env")
    if "use_cuda_kernel" not in inspect.signature(bv.BigVGAN).parameters:
        pytest.skip("this official code line's BigVGAN takes no use_cuda_kernel (no CUDA extension path)")
    _cuda_ext_activation()  # builds it, or skips with the reason
    with _quiet():  # torch.nn.utils.weight_norm's deprecation
        net = bv.BigVGAN(env.AttrDict(dict(H22K)), use_cuda_kernel=True)
        net.remove_weight_norm()
    net.load_state_dict(weights)
    return net.cuda().eval()


class Vocoders:
    """The official BigVGAN (torch activations), the CUDA-extension one with the same weights (built on first use),
    the 10 s mel, and the official wave the other providers are compared with."""

    def __init__(self):
        from indextts_fast.official import OfficialCodeMissing, build_bigvgan

        try:
            self.net = build_bigvgan("full", SEED).cuda()
        except OfficialCodeMissing as e:
            pytest.skip(str(e))
        self.mel = torch.randn(1, H22K["num_mels"], FRAMES, generator=torch.Generator().manual_seed(SEED + 1)).cuda()
        self.ref = None
        self._ext = None

    def ext(self) -> torch.nn.Module:
        if self._ext is None:
            self._ext = _cuda_ext_bigvgan(self.net.state_dict())
        return self._ext


@pytest.fixture(scope="module")
def vocoders():
    return Vocoders()


@contextlib.contextmanager
def _provider(name: str, v: Vocoders):
    """(the module to call, our vocoder patch or None)."""
    if name == "official":
        yield v.net, None
    elif name == "official-cuda-ext":
        yield v.ext(), None
    else:
        import indextts_fast

        with indextts_fast.enabled(v.net, graphs=None if name == "ours" else False) as h:
            part = next(p for p in h.parts if p.name == "vocoder")
            assert part.status == "fast", part.detail
            yield v.net, part.patch


def _record(benchmark, row: dict) -> None:
    import triton

    row["gpu"] = torch.cuda.get_device_name()
    row["torch"], row["triton"] = torch.__version__, triton.__version__
    benchmark.extra_info.update(row)
    RESULTS.append(row)


@pytest.mark.parametrize("provider", VOCODER_PROVIDERS)
def test_vocoder_10s(benchmark, vocoders, provider):
    v = vocoders
    with _provider(provider, v) as (net, patch), torch.inference_mode():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        net(v.mel)  # the first call: Triton compiles, the graph is captured (ours)
        torch.cuda.synchronize()

        def run():
            out = net(v.mel)
            torch.cuda.synchronize()
            return out

        benchmark.group = "vocoder 10 s"
        wave = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        peak = torch.cuda.max_memory_allocated() - base
        calls = None if patch is None else dict(patch.calls)
    if calls is not None:  # ours ran (every call through the patch, no rebuild)
        assert calls["forward"] >= ROUNDS + 2 and calls["rebuilds"] == 0, calls
    assert wave.shape == (1, 1, FRAMES * 256) and torch.isfinite(wave).all(), (provider, tuple(wave.shape))
    row = {"group": "vocoder 10 s", "provider": provider, "ms": 1000 * benchmark.stats.stats.median,
           "unit": "ms/call", "peak_mib": peak / 2**20,
           "note": f"mel 1x{H22K['num_mels']}x{FRAMES} -> {wave.shape[-1]} samples"}  # fmt: skip
    if provider == "official":
        v.ref = wave.clone()
    elif v.ref is not None:
        row["max_abs_err"] = float((wave - v.ref).abs().max())
        row["note"] += f", max abs err vs official {row['max_abs_err']:.1e}"
    _record(benchmark, row)


def table() -> str:
    """This run's vocoder rows, each with its ratio to the official row (same run, same card)."""
    base = {r["group"]: r["ms"] for r in RESULTS if r["provider"] == "official"}
    lines = [f"{'group':<14} {'provider':<18} {'ms':>9} {'unit':<8} {'peak MiB':>9} {'vs official':>11}  note"]
    for r in RESULTS:
        ratio = base.get(r["group"], float("nan")) / r["ms"] if r["ms"] > 0 else float("nan")
        lines.append(f"{r['group']:<14} {r['provider']:<18} {r['ms']:>9.3f} {r['unit']:<8} {r['peak_mib']:>9.1f} "
                     f"{ratio:>10.2f}x  {r['note']}")  # fmt: skip
    return "\n".join(lines)
