"""Every kernel variant compiles ahead of time (no GPU needed) for sm_86, sm_89 and sm_90 without spills.

Runs ``python -m indextts_fast.aot`` (IndexTTS2's shapes fed to ``indextts_kernels.aot``) in a subprocess without
TRITON_INTERPRET (interpreted functions cannot be compiled), or reads the rows a complete run of it left for the
same kernel sources, shapes, Triton version and targets (``indextts_fast.aot.rows_cache_path``: CI prints that table
before the tests). The table lists registers, spill
bytes, shared memory and tensor-core instructions per variant and target.
"""

import json
import os
import subprocess
import sys

import pytest

import indextts_kernels

ARCHS = ("sm_86", "sm_89", "sm_90")


@pytest.fixture(scope="module")
def aot_rows(tmp_path_factory):
    if not indextts_kernels.HAS_TRITON:
        pytest.skip("Triton is not installed")
    from indextts_fast.aot import rows_cache_path

    cached = rows_cache_path((86, 89, 90))
    if cached.is_file():  # the same sources already compiled in this run (CI prints that table first)
        print(f"rows of {cached}")
        return json.loads(cached.read_text())
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-m", "indextts_fast.aot", "--arch", "86", "89", "90", "--json", str(out)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    print(res.stdout)
    assert res.returncode == 0, f"AOT compile failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_every_norm_variant_compiles_for_every_target_without_spills(aot_rows):
    norm = [r for r in aot_rows if r["variant"].startswith("norm/")]
    from indextts_fast.aot import requests
    from indextts_kernels import norm as norm_mod

    expected = {name for name, *_ in norm_mod.compile_variants(**requests()["norm"])}
    assert {r["variant"] for r in norm} == expected
    for arch in ARCHS:
        assert {r["variant"] for r in norm if r["arch"] == arch} == expected, f"missing variants on {arch}"
    bad = [(r["variant"], r["arch"], r.get("error") or r["spills"]) for r in norm if "error" in r or r["spills"]]
    assert not bad, f"compile errors or spills: {bad}"


def test_every_sampling_variant_compiles_for_every_target_without_spills(aot_rows):
    """The decode loop's processors and its select (greedy, multinomial, beam search and beam-sample at every
    early-stopping rule, fp32 / fp16 / bf16 embedding tables) on every target, without spills."""
    from indextts_fast.aot import requests
    from indextts_kernels import sampling as sampling_mod

    expected = {name for name, *_ in sampling_mod.compile_variants(**requests()["sampling"])}
    rows = [r for r in aot_rows if r["variant"].startswith("sampling/")]
    for arch in ARCHS:
        assert {r["variant"] for r in rows if r["arch"] == arch} == expected, f"missing variants on {arch}"
    bad = [(r["variant"], r["arch"], r.get("error") or r["spills"]) for r in rows if "error" in r or r["spills"]]
    assert not bad, f"compile errors or spills: {bad}"


def test_no_variant_fails_or_spills(aot_rows):
    bad = [(r["variant"], r["arch"], r.get("error") or r["spills"]) for r in aot_rows if "error" in r or r["spills"]]
    assert not bad, f"compile errors or spills: {bad}"


def test_every_gemm_variant_compiles_with_tensor_cores_where_expected(aot_rows):
    """Tensor-core tiles (fp16/bf16, fp32 tf32/tf32x3) carry mma.sync (sm_86/89) or wgmma (sm_90); the fp32
    "ieee" tiles and the GEMV decode path multiply on CUDA cores by design."""
    from indextts_fast.aot import requests
    from indextts_kernels import gemm as gemm_mod

    expected = {name for name, *_ in gemm_mod.compile_variants(**requests()["gemm"])}
    rows = [r for r in aot_rows if r["variant"].startswith("gemm/")]
    for arch in ARCHS:
        assert {r["variant"] for r in rows if r["arch"] == arch} == expected, f"missing variants on {arch}"
    for r in rows:
        assert "error" not in r and not r["spills"], (r["variant"], r["arch"], r.get("error") or r["spills"])
        tensor_cores = "/mma/" in r["variant"] and "/ieee/" not in r["variant"]
        want = ("wgmma" if r["arch"] == "sm_90" else "mma") if tensor_cores else "-"
        assert r["mma"] == want, f"{r['variant']} {r['arch']}: {r['mma']}, expected {want}"


def test_cfm_step_kernels_are_audited(aot_rows):
    """The CFM step's own kernels are in the table on every target: the WaveNet layer GEMMs (the gate with and
    without a valid length, res_skip in its four first / last forms; tensor-core tiles except "ieee") and the Euler
    step (with and without CFG)."""
    for arch in ARCHS:
        names = {r["variant"] for r in aot_rows if r["arch"] == arch}
        for part in ("wavenet_gate+taps5/", "wavenet_gate+taps5+valid/", "wavenet_res_skip+mid/",
                     "wavenet_res_skip+last/", "wavenet_res_skip+first+mid/", "wavenet_res_skip+first+last/",
                     "cfm_euler/cfm/fp32/cfg/", "cfm_euler/cfm/fp32/nocfg/"):  # fmt: skip
            assert any(part in n for n in names), (arch, part)


def test_memory_audit_reads_the_sass(aot_rows):
    """The audit columns come from the SASS: every kernel issues global loads; the pipelined tensor-core GEMMs
    stage theirs with cp.async (LDGSTS) in the main loop; the LayerNorm-prologue GEMVs read 128-bit vectors; the
    occupancy estimate is within the hardware's limits; the decode GEMVs stream: in their K loop every global load
    is 128-bit, there is no barrier, and each thread has several loads in flight; so has each thread of the
    decode attention (16 or more)."""
    for r in aot_rows:
        assert r["ldg"] + r["loop_async"] > 0, (r["variant"], r["arch"], "no global load found")
        assert 0 <= r["ldg128"] <= r["ldg"] and 0 <= r["loop_ldg128"] <= r["loop_ldg"]
        assert 0 <= r["blocks_per_sm"] <= 32, (r["variant"], r["arch"], r["blocks_per_sm"])
        if "D128" not in r["variant"]:  # every variant at IndexTTS2's head_dim 64 fits an SM of every target
            assert r["blocks_per_sm"] >= 1, (r["variant"], r["arch"], "does not fit one block per SM")
    mma = [r for r in aot_rows if "/mma/" in r["variant"] and "/ieee/" not in r["variant"]]
    assert mma and all(r["async"] == "cp.async" and r["loop_async"] > 0 for r in mma), [
        (r["variant"], r["arch"], r["async"]) for r in mma if r["async"] != "cp.async" or not r["loop_async"]
    ]
    ln = [r for r in aot_rows if "/ln_" in r["variant"] and "fp16" in r["variant"]]
    assert ln and all(r["ldg128"] > 0 for r in ln)
    gemv = [r for r in aot_rows if "/gemv/" in r["variant"]]
    assert gemv
    for r in gemv:
        streams = r["loop_ldg"] > 1 and r["loop_ldg128"] == r["loop_ldg"] and r["loop_bar"] == 0
        assert streams and r["loop_inflight"] >= 4, (r["variant"], r["arch"], r["loop_ldg"], r["loop_ldg128"],
                                                     r["loop_bar"], r["loop_inflight"])  # fmt: skip
        assert r["grid"] >= 1 and r["waves"] > 0
    decode = [r for r in aot_rows if r["variant"].startswith("attn/decode") and "/decode_reduce/" not in r["variant"]]
    assert decode
    for r in decode:  # one warp per program; K and V read as 128-bit vectors, the table one block ahead
        assert r["loop_ldg128"] >= 32 and r["loop_inflight"] >= 16 and r["blocks_per_sm"] >= 8, (
            r["variant"], r["arch"], r["loop_ldg"], r["loop_ldg128"], r["loop_bar"], r["loop_inflight"],
            r["blocks_per_sm"],
        )  # fmt: skip
