"""Serving many requests: requests/s, latency and time to first audio against the number of concurrent clients, for
our server and for the official ``IndexTTS2.infer`` behind a lock (its only safe mode), in one run on one machine.

Both are ``python -m indextts_fast serve`` subprocesses on 127.0.0.1 with the same HTTP API, started one after the
other (never together: they would share the cores / the card): ``ours`` (the enabled model, the engine batching
requests by segment) and ``official`` (``--official``: the official ``infer``, never enabled, one request at a time,
with its own ``stream_return`` streaming, which sends 200 ms of silence after every segment, the last included).
Per level of concurrency C, C clients (asyncio, httpx) send ``max(C, 8)`` requests in all (each client its next
request when the last one ended), every request a text of two or three segments (on the tiny models; one on
IndexTTS-2) under its own seed at the official sampling defaults; the level stops at the count or at its time
limit. Per level: requests/s (completed / the level's wall time), p50 / p99 latency (request to its last byte),
p50 / p99 time to first audio (request to its first audio bytes), audio seconds sent per second (the official
stream's trailing silences included), errors.

    python -m bench.bench_serving --tiny                        # CPU: the tiny random-weight models, levels 1,4,16,64
    python -m bench.bench_serving --model-dir checkpoints --voices voices/ --json bench/results/<card>-serving.json
    pytest bench/bench_serving.py --benchmark-enable            # levels 1 and 4 on --tiny, the table at the end
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

_SENTENCES = (
    "The fox runs away. A dog sleeps here! Then the cat comes back, and the sun is up now.",
    "A bird sings in the tree. Rain falls on the old stone bridge, and we walk home slowly.",
    "Where is the key? It was on the table. Music plays softly in the next room tonight.",
    "Five boats sail out to sea at dawn. The night is cold; the fire is warm and bright.",
)
# two or three segments each on the tiny models (30 text tokens a segment); one on IndexTTS-2 (120)
TEXTS = tuple(" ".join(_SENTENCES[(i + k) % 4] for k in range(2 + i % 2)) for i in range(4))
LEVELS = (1, 4, 16, 64)
SR = 22050


def _pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _level(url: str, clients: int, total: int, limit_s: float, voice: str) -> dict:
    import httpx

    sent, rows = 0, []
    deadline = time.perf_counter() + limit_s

    async def client(c: httpx.AsyncClient):
        nonlocal sent
        while sent < total and time.perf_counter() < deadline:
            n = sent
            sent += 1
            body = dict(model="tts-1", input=TEXTS[n % len(TEXTS)], voice=voice, seed=n, response_format="pcm")
            t0 = time.perf_counter()
            first, size, status = None, 0, None
            try:
                async with c.stream("POST", url + "/v1/audio/speech", json=body) as r:
                    status = r.status_code
                    async for chunk in r.aiter_bytes():
                        if chunk and first is None:
                            first = time.perf_counter() - t0
                        size += len(chunk)
            except httpx.HTTPError as e:
                status = type(e).__name__
            rows.append(dict(status=status, latency=time.perf_counter() - t0, ttfa=first, samples=size // 2))

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=max(60.0, limit_s), limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] == 200]
    lat, ttfa = [r["latency"] for r in ok], [r["ttfa"] for r in ok if r["ttfa"] is not None]
    return dict(clients=clients, requests=len(rows), ok=len(ok), errors=len(rows) - len(ok), wall_s=wall,
                rps=len(ok) / wall, p50_s=_pct(lat, 0.5), p99_s=_pct(lat, 0.99), ttfa_p50_s=_pct(ttfa, 0.5),
                ttfa_p99_s=_pct(ttfa, 0.99), audio_s_per_s=sum(r["samples"] for r in ok) / SR / wall,
                statuses=sorted({str(r["status"]) for r in rows if r["status"] != 200}))  # fmt: skip


def run(server_args: list, *, levels=LEVELS, limit_s: float = 300.0, voice: str = "default",
        providers=("ours", "official"), max_batch: int = 16, log=print) -> list[dict]:  # fmt: skip
    from indextts_fast.serving.local import LocalServer

    out = []
    for provider in providers:
        extra = ["--official"] if provider == "official" else ["--max-batch", str(max_batch)]
        args = [*server_args, *extra, "--max-queue", str(max(levels) * 2)]
        with LocalServer(args, timeout=1800) as url:
            asyncio.run(_level(url, 1, 2, limit_s, voice))  # warm-up: first calls (compiles, graph captures)
            for c in levels:
                row = dict(provider=provider, **asyncio.run(_level(url, c, max(c, 8), limit_s, voice)))
                log(_fmt(row))
                out.append(row)
    return out


HEAD = (f"{'provider':<10}{'clients':>8}{'ok':>5}{'err':>5}{'req/s':>9}{'p50 s':>9}{'p99 s':>9}{'ttfa p50':>10}"
        f"{'ttfa p99':>10}{'audio s/s':>11}")  # fmt: skip


def _fmt(r: dict) -> str:
    return (f"{r['provider']:<10}{r['clients']:>8}{r['ok']:>5}{r['errors']:>5}{r['rps']:>9.2f}{r['p50_s']:>9.2f}"
            f"{r['p99_s']:>9.2f}{r['ttfa_p50_s']:>10.2f}{r['ttfa_p99_s']:>10.2f}"
            f"{r['audio_s_per_s']:>11.2f}")  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [HEAD, *(_fmt(r) for r in rows)]
    base = {r["clients"]: r for r in rows if r["provider"] == "official"}
    ratios = []
    for r in rows:
        b = base.get(r["clients"])
        if r["provider"] == "ours" and b and b["rps"] > 0:
            ratios.append(f"{r['clients']:>3} clients: {r['rps'] / b['rps']:.2f}x the requests/s, p50 time to first "
                          f"audio {r['ttfa_p50_s']:.2f} s vs {b['ttfa_p50_s']:.2f} s")  # fmt: skip
    return "\n".join(lines + (["ours vs official, same run:", *ratios] if ratios else []))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true")
    src.add_argument("--model-dir")
    ap.add_argument("--voices", help="with --model-dir: the voices directory (the first voice is used)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--limit-s", type=float, default=300.0, help="each level's time limit")
    ap.add_argument("--providers", default="ours,official")
    ap.add_argument("--max-batch", type=int, default=16, help="ours: requests in a round (the KV pool's slots)")
    ap.add_argument("--json", help="write the rows here (bench/results/<card>-serving.json)")
    args = ap.parse_args(argv)
    if args.tiny:
        server, voice = ["--tiny"], "default"
    else:
        if not args.voices or not Path(args.voices).is_dir():
            print("bench_serving: --model-dir needs --voices DIR", file=sys.stderr)
            return 2
        voice = sorted(p.stem for p in Path(args.voices).iterdir() if p.is_file())[0]
        server = ["--model-dir", args.model_dir, "--voices", args.voices]
    levels = tuple(int(x) for x in args.levels.split(","))
    print(HEAD)
    rows = run(server, levels=levels, limit_s=args.limit_s, voice=voice, providers=tuple(args.providers.split(",")),
               max_batch=args.max_batch)  # fmt: skip
    print(table(rows))
    if args.json:
        import torch

        card = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {_cpu_name()}"
        Path(args.json).write_text(json.dumps(dict(card=card, server=server, max_batch=args.max_batch, rows=rows),
                                              indent=1))  # fmt: skip
    return 0


def test_serving_tiny(benchmark):
    """``pytest bench/bench_serving.py --benchmark-enable``: levels 1 and 4 on the tiny models, both providers."""
    rows = benchmark.pedantic(lambda: run(["--tiny"], levels=(1, 4), limit_s=120.0), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    print("\n" + table(rows))
    assert all(r["errors"] == 0 for r in rows), rows


if __name__ == "__main__":
    sys.exit(main())
