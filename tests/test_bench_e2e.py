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
    assert all(math.isfinite(r.value) and r.value >= 0 for r in rows), rows
    assert all(r.value > 0 for r in rows if r.unit in ("ms", "s", "tok/s")), rows
    text = bench_e2e.table(rows, "header")
    assert "vs official" in text and text.count("\n") == len(rows) + 1
