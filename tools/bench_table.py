#!/usr/bin/env python3
"""Summarize a pytest-benchmark JSON written by the bench/ suite as a short Markdown table.

    python tools/bench_table.py bench/results/<card>-<date>.json [> table.md]

One row per (group, provider): device time (triton.testing.do_bench median), GB/s and % of the copy
bandwidth measured in the same run, TFLOP/s where the benchmark states FLOPs, and the speed-up over the
`torch` and `compile` providers of the same group (same shape, same run, same card). Then the per-token and
per-step rows of bench/bench_decode.py (ms per GPT token, ms per CFM step) with their ratio to the official row, and
bench/bench_vocoder.py's whole-vocoder rows (ms per call on 10 s of audio, peak MiB) with theirs.
"""

import json
import sys


def _ratio_table(rows, *, peak: bool) -> None:
    """One card's rows (bench_decode's or bench_vocoder's), each with its ratio to its group's official row."""
    base = {r["group"]: r["ms"] for r in rows if r["provider"] == "official"}
    print(f"Card: {rows[0]['gpu']}; torch {rows[0]['torch']}, triton {rows[0]['triton']}\n")
    print("| group | provider | ms | unit |" + (" peak MiB |" if peak else "") + " vs official | note |")
    print("|---|---|---:|---|" + ("---:|" if peak else "") + "---:|---|")
    for r in rows:
        ratio = base[r["group"]] / r["ms"] if r["group"] in base and r["ms"] > 0 else None
        mib = f" {r['peak_mib']:.1f} |" if peak else ""
        print(f"| {r['group']} | {r['provider']} | {r['ms']:.3f} | {r['unit']} |{mib} "
              f"{'' if ratio is None else format(ratio, '.2f')} | {r['note']} |")  # fmt: skip
    print()


def main(path: str) -> int:
    data = json.load(open(path))
    rows = [b["extra_info"] for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("device_ms")]
    timed = [b["extra_info"] for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("unit")]
    decode = [r for r in timed if "peak_mib" not in r]
    vocoder = [r for r in timed if "peak_mib" in r]
    if not rows and not timed:
        print("no benchmark rows with device times")
        return 1
    for group in (decode, vocoder):
        if group:
            _ratio_table(group, peak=group is vocoder)
    if not rows:
        return 0
    by_group: dict[str, dict[str, float]] = {}
    for r in rows:
        by_group.setdefault(r["group"], {})[r["provider"]] = r["device_ms"]
    first = rows[0]
    print(f"Card: {first['gpu']}; torch {first['torch']}, triton {first['triton']}; "
          f"measured copy bandwidth {first['copy_gbps']} GB/s\n")  # fmt: skip
    print("| group | provider | us | GB/s | % copy BW | TFLOP/s | vs torch | vs compile |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        peers = by_group[r["group"]]
        vs_t = peers["torch"] / r["device_ms"] if "torch" in peers else None
        vs_c = peers["compile"] / r["device_ms"] if "compile" in peers else None
        print(
            f"| {r['group']} | {r['provider']} | {1000 * r['device_ms']:.2f} | {fmt(r.get('gbps'), '.0f')} | "
            f"{fmt(r.get('pct_copy_bw'), '.1f')} | {fmt(r.get('tflops'), '.1f')} | {fmt(vs_t, '.2f')} | "
            f"{fmt(vs_c, '.2f')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
