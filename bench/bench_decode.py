"""Milliseconds per GPT token and per CFM step, in one run on one card: the official code, ours with CUDA graphs
(``enable()``'s default) and ours eagerly (``enable(graphs=False)``: the same kernels, each launched from the host).

The gap between ``ours`` and ``ours-eager`` is the launch overhead the graphs remove; what is left of ``ours`` above
the weight floor is mostly dead time between graph nodes (about 1-2 µs each: ``indextts_fast.nodes`` counts them,
``tests/test_node_budget.py`` holds the count per token and per step). Models: IndexTTS-2's sizes with random
weights (``bench.bench_e2e.Models``: the GPT as use_fp16, the s2mel fp32), the stop token made unlikely so that
every generation runs its full length.

- ``gpt ms/token`` (groups ``gpt token: greedy`` and ``gpt token: official defaults``, i.e. beam-sample with 3
  beams, top-k 30, top-p 0.8, temperature 0.8, repetition penalty 10): pytest-benchmark times a generation of
  ``LONG`` codes; a generation of ``SHORT`` codes, timed the same way, is subtracted, so the prefill and the
  conditioning encoders drop out: ms/token = (t_long - t_short) / (n_long - n_short), in ``extra_info``.
- ``cfm ms/step`` (group ``cfm step``): ``cfm.inference`` at infer_v2's call (25 steps, CFG 0.7, batch 2) on 1,721
  frames (a 10 s reference plus 500 codes), divided by the steps.

    pytest bench/bench_decode.py --benchmark-enable      # on a GPU (tools/gpu_check.sh bench runs it)
"""

from __future__ import annotations

import contextlib
import statistics
import time

import pytest
import torch

LONG, SHORT = 160, 40  # generated codes of the two timed generations
ROUNDS = 3
PROVIDERS = ("official", "ours", "ours-eager")
MODES = ("greedy", "official defaults")
RESULTS: list[dict] = []


def _gen_args(mode: str) -> dict:
    from indextts_fast.official import OFFICIAL_DEFAULTS

    return dict(do_sample=False, num_beams=1) if mode == "greedy" else dict(OFFICIAL_DEFAULTS)


@pytest.fixture(scope="module")
def models():
    from bench.bench_e2e import Models

    return Models("full", torch.device("cuda"), torch.float16)


@contextlib.contextmanager
def _provider(name: str, m):
    if name == "official":
        yield
        return
    import indextts_fast

    with indextts_fast.enabled(m.target, graphs=name == "ours"):
        yield


def _generate(m, codes: int, mode: str) -> int:
    from indextts_fast.official import inference_speech

    with m._autocast():
        out = inference_speech(m.uv, m.spk, m.text, codes, seed=7, **_gen_args(mode))[0]
    torch.cuda.synchronize()
    return int(out.shape[1])


def _median_s(fn, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _record(benchmark, row: dict) -> None:
    import triton

    row["gpu"] = torch.cuda.get_device_name()
    row["torch"], row["triton"] = torch.__version__, triton.__version__
    benchmark.extra_info.update(row)
    RESULTS.append(row)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_gpt_ms_per_token(benchmark, models, mode, provider):
    m = models
    with _provider(provider, m):
        n_short = _generate(m, SHORT, mode)  # the first call compiles and captures (ours)
        _generate(m, LONG, mode)
        t_short = _median_s(lambda: _generate(m, SHORT, mode))
        benchmark.group = f"gpt token: {mode}"
        n_long = benchmark.pedantic(lambda: _generate(m, LONG, mode), rounds=ROUNDS, warmup_rounds=0, iterations=1)
        t_long = benchmark.stats.stats.median
    ms = 1000 * (t_long - t_short) / max(n_long - n_short, 1)
    _record(benchmark, {"group": benchmark.group, "provider": provider, "ms": ms, "unit": "ms/token",
                        "note": f"{n_long} - {n_short} codes"})  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
def test_cfm_ms_per_step(benchmark, models, provider):
    m = models
    mu = m.mu(m.s.codes)
    with _provider(provider, m):
        m.cfm(mu)  # compiles and captures (ours)
        benchmark.group = "cfm step"

        def run():
            out = m.cfm(mu)
            torch.cuda.synchronize()
            return out

        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ms = 1000 * benchmark.stats.stats.median / m.s.steps
    _record(benchmark, {"group": "cfm step", "provider": provider, "ms": ms, "unit": "ms/step",
                        "note": f"{m.s.steps} steps CFG, {mu.shape[1]} frames"})  # fmt: skip


def table() -> str:
    """The rows of this run, each with its ratio to the official row of its group (same run, same card)."""
    base = {r["group"]: r["ms"] for r in RESULTS if r["provider"] == "official"}
    lines = [f"{'group':<34} {'provider':<11} {'ms':>9} {'unit':<9} {'vs official':>11}  note"]
    for r in RESULTS:
        ratio = base.get(r["group"], float("nan")) / r["ms"] if r["ms"] > 0 else float("nan")
        lines.append(f"{r['group']:<34} {r['provider']:<11} {r['ms']:>9.3f} {r['unit']:<9} {ratio:>10.2f}x  "
                     f"{r['note']}")  # fmt: skip
    return "\n".join(lines)
