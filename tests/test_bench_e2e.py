"""bench/bench_e2e.py's harness on tiny models on CPU: every provider row is produced and the table prints (the
GPU run is the benchmark; this only keeps the harness runnable on a machine without one)."""

import math

from bench import bench_e2e


def test_e2e_harness_runs_on_tiny_models(monkeypatch):
    monkeypatch.setenv("INDEXTTS_FAST_BACKEND", "torch")  # the harness, not the kernels (tested elsewhere)
    rows = bench_e2e.run("tiny", "cpu", "fp32", ("official", "ours", "ours-bf16", *bench_e2e.V25))
    metrics = {r.metric for r in rows}
    for metric in metrics:
        got = {r.provider for r in rows if r.metric == metric}
        if metric.startswith("2.5 "):
            assert got == set(bench_e2e.V25), (metric, got)
        elif metric.startswith("cfm mel"):
            assert got == {"ours", "ours-bf16"}, (metric, got)
        elif metric.startswith("cfm ms/step"):
            assert got == {"official", "ours", "ours-bf16"}, (metric, got)
        else:
            assert got == {"official", "ours"}, (metric, got)
    assert any(m.startswith("gpt ms/token, 3 beams") for m in metrics)
    assert any(m.startswith("2.5 gpt ms/token") for m in metrics) and "2.5 synthesis RTF" in metrics
    assert any(m.startswith("cfm ms/step") for m in metrics) and "synthesis RTF" in metrics
    # the per-token rows are differences of two timings of a long and a short generation: on a loaded CPU with
    # tiny models the difference is noise and may come out negative (tokens/s then nan); they must be numbers
    diff = [r for r in rows if "ms/token" in r.metric or "tokens/s" in r.metric]
    assert diff and all(isinstance(r.value, float) for r in diff), diff
    rest = [r for r in rows if r not in diff]
    assert all(math.isfinite(r.value) and r.value >= 0 for r in rest), rest
    assert all(r.value > 0 for r in rest if r.unit in ("ms", "s", "tok/s")), rest
    text = bench_e2e.table(rows, "header")
    assert "vs official" in text and text.count("\n") == len(rows) + 1
