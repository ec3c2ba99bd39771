"""Ahead-of-time compile check: compile every kernel variant for real GPU targets on a machine without a GPU.

The machinery only: it knows no model. A caller passes ``requests``, {kernel module: keyword arguments of its
``compile_variants``} (the shapes to specialize for); each module lists the specializations its launchers would
pick at those shapes. Runs Triton's full pipeline (frontend, MLIR, LLVM, ptxas) for each, then reads registers,
spills and shared memory from the cubin and audits the SASS with the cuobjdump that ships inside Triton. Catches
what the interpreter lets through (tl.dot shapes, unsupported ops, spills). A model's entry point calls ``main``
with its shapes, e.g.

    python -m indextts_fast.aot                     # sm_86, sm_89, sm_90; table on stdout
    python -m indextts_fast.aot --arch 90 --json out.json --filter norm/

Must run without TRITON_INTERPRET (interpreted functions cannot be compiled); exits 1 on any compile error,
and with --max-spill-bytes N on any variant that spills more than N bytes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH_NAMES = {80: "A100", 86: "RTX 3090", 89: "RTX 4090", 90: "H100"}


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


# per-SM limits for the occupancy estimate: (registers, shared memory bytes, threads, blocks)
SM_LIMITS = {80: (65536, 167936, 2048, 32), 86: (65536, 102400, 1536, 16), 89: (65536, 102400, 1536, 24),
             90: (65536, 232448, 2048, 32)}  # fmt: skip
# SM counts of the parts the table names (RTX 3090, RTX 4090, H100 SXM; A100): the grid column's reference
SM_COUNTS = {80: 108, 86: 82, 89: 128, 90: 132}
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _sass(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        return subprocess.run([_cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)


def sass_audit(sass: str) -> dict:
    """What the SASS says about memory: global loads by width, async copies (LDGSTS = cp.async, UTMALDG = TMA),
    and for the hottest loop (the backward branch whose body holds the most FFMA / tensor-core instructions) the
    global loads each thread issues per iteration and the barriers in it."""
    ins = [(int(a, 16), op, rest) for a, _pred, op, rest in _INSTR.findall(sass)]
    ldg = [op for _, op, _ in ins if op.startswith("LDG")]
    loops = []
    for addr, op, rest in ins:
        if op == "BRA":
            m = re.search(r"0x([0-9a-f]+)", rest)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))

    def body(lo, hi):
        return [op for a, op, _ in ins if lo <= a <= hi]

    def math(ops):
        return sum(op.startswith(("FFMA", "HMMA", "HGMMA", "DFMA", "HFMA2")) for op in ops)

    hot = max(loops, key=lambda lh: math(body(*lh)), default=None)
    hot_ops = body(*hot) if hot else []
    hot_ins = [(op, rest) for a, op, rest in ins if hot and hot[0] <= a <= hot[1]]
    return {
        "ldg": len(ldg),
        "ldg128": sum(op.startswith("LDG.E.128") or op.startswith("LDG.E.ENL2.256") for op in ldg),
        "async": "TMA"
        if any(op.startswith("UTMALDG") for _, op, _ in ins)
        else ("cp.async" if any(op.startswith("LDGSTS") for _, op, _ in ins) else "-"),  # fmt: skip
        "loop_ldg": sum(op.startswith("LDG") for op in hot_ops),
        "loop_ldg128": sum(op.startswith("LDG.E.128") for op in hot_ops),
        "loop_async": sum(op.startswith(("LDGSTS", "UTMALDG")) for op in hot_ops),
        "loop_bar": sum(op.startswith(("BAR", "SYNCS")) for op in hot_ops),
        "loop_inflight": loads_in_flight(hot_ins),
    }


_REG = re.compile(r"\bR(\d+)\b")


def loads_in_flight(body) -> int:
    """The most global loads one thread has issued and not yet consumed at any point of a loop body
    ((opcode, operands) pairs in program order): a load is pending from its LDG until an instruction reads (or
    overwrites) one of its destination registers. The body is walked twice and the second pass counted, so loads
    issued in one iteration and consumed in the next (a software prefetch) are in flight with the new ones."""
    pending = []  # (first register, count) of each load not yet consumed
    most = 0
    for i, (op, rest) in enumerate(list(body) * 2):
        counting = i >= len(body)
        regs = [int(r) for r in _REG.findall(rest)]
        if not regs:
            continue
        dest, srcs = regs[0], regs[1:]
        width = 4 if ".128" in op else (2 if ".64" in op else 1)
        touched = set(srcs) | {dest}
        if op.startswith("LDG"):
            touched = set(srcs)  # the address registers; the destination is written when the data arrives
        pending = [(r0, n) for r0, n in pending if not any(r0 <= r < r0 + n for r in touched)]
        if op.startswith("LDG"):
            pending.append((dest, width))
            if counting:
                most = max(most, len(pending))
    return most


def occupancy(arch: int, regs: int, shared: int, num_warps: int) -> int:
    """Resident blocks per SM from registers (allocated per warp in units of 256), shared memory and threads."""
    r_sm, s_sm, t_sm, b_sm = SM_LIMITS.get(arch, SM_LIMITS[90])
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = r_sm // (per_warp * num_warps)
    by_smem = s_sm // shared if shared else b_sm
    return max(0, min(by_regs, by_smem, t_sm // (32 * num_warps), b_sm))


def _resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        txt = subprocess.run([_cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", txt)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage output:\n{txt}")
    reg, stack, shared, local = map(int, m.groups())
    return {"regs": reg, "stack": stack, "static_shared": shared, "local": local}


_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_spills(ptx: str, arch: int) -> dict:
    """ptxas's own account of the kernel (``ptxas -v`` on Triton's PTX): ``spills`` = bytes of register spill
    stores + loads, ``stack`` = the stack frame. The two differ where a kernel keeps a local array that is no spill:
    libdevice's sinf/cosf (tl.sin, tl.cos) reserve 32 bytes for the Payne-Hanek range reduction they take only for
    |x| > 105615, and touch them only there."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        res = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", str(src), "-o",
                              str(Path(d) / "k.o")], capture_output=True, text=True, check=True)  # fmt: skip
    m = _SPILL.search(res.stderr + res.stdout)
    if not m:
        raise RuntimeError(f"cannot parse ptxas -v output:\n{res.stderr}")
    frame, stores, loads = map(int, m.groups())
    return {"stack": frame, "spills": stores + loads}


def iter_variants(requests: dict, name_filter: str = ""):
    """(module name, index, variant name) of every requested variant whose name contains name_filter."""
    kernels = importlib.import_module("indextts_kernels")
    for mod_name, shapes in requests.items():
        for i, (name, *_rest) in enumerate(kernels.load_kernel_module(mod_name).compile_variants(**shapes)):
            if name_filter in name:
                yield mod_name, i, name


def compile_one(fn, sig, const, num_warps: int, arch: int, divisible=None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # ``divisible``: argument names that a real launch specializes as 16-divisible (16-byte aligned pointers,
    # integers divisible by 16), as Triton's launcher does for the call-site values; optional 6th variant field
    names = list(sig)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in (divisible or ())}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs or None)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _compile_task(task) -> tuple[dict, str | None]:
    """Compile one (module, its shapes, variant index, arch); runs in a worker process."""
    mod_name, shapes, idx, arch = task
    kernels = importlib.import_module("indextts_kernels")
    variants = kernels.load_kernel_module(mod_name).compile_variants(**shapes)
    name, fn, sig, const, num_warps, *rest = list(variants)[idx]
    divisible = rest[0] if rest else None
    grid = rest[1] if len(rest) > 1 else None
    t0 = time.perf_counter()
    row = {"variant": name, "arch": f"sm_{arch}", "num_warps": num_warps}
    failure = None
    try:
        k = compile_one(fn, sig, const, num_warps, arch, divisible)
        row.update(_resource_usage(k.asm["cubin"]))
        row["shared"] = int(k.metadata.shared)
        ptx = k.asm["ptx"]
        row["mma"] = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "-")
        row.update(_ptxas_spills(ptx, arch))
        row.update(sass_audit(_sass(k.asm["cubin"])))
        row["blocks_per_sm"] = occupancy(arch, row["regs"], row["shared"], num_warps)
        if grid is not None:
            row["grid"] = grid
            # resident waves: programs over what all SMs hold at once (< 1: some SMs idle or under-filled)
            row["waves"] = round(grid / max(1, SM_COUNTS.get(arch, 132) * row["blocks_per_sm"]), 2)
    except Exception as e:  # report every failing variant, not just the first
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failure = f"{name} sm_{arch}: {row['error']}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row, failure


def run(archs, requests: dict, name_filter="", max_spill_bytes=None, jobs=None):
    """Compile every requested variant (``requests``: {kernel module: compile_variants keyword arguments}) for
    every arch; returns (rows, failures)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("the AOT compile check must run without TRITON_INTERPRET=1")
    tasks = [(m, requests[m], i, arch) for m, i, _ in iter_variants(requests, name_filter) for arch in archs]
    jobs = jobs or min(len(tasks), os.cpu_count() or 1) or 1
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_task, tasks, chunksize=1)
    else:
        results = [_compile_task(t) for t in tasks]
    rows = [r for r, _ in results]
    failures = [f for _, f in results if f]
    if max_spill_bytes is not None:
        failures += [
            f"{r['variant']} {r['arch']}: {r['spills']} bytes of register spill stores and loads"
            for r in rows
            if "error" not in r and r["spills"] > max_spill_bytes
        ]
    return rows, failures


def format_table(rows) -> str:
    """One row per variant and target. spill: bytes of register spill stores + loads, as ptxas reports them; stack:
    the stack frame (a local array, not a spill: see _ptxas_spills); ld128: 128-bit global loads / all global loads in the kernel; async: cp.async
    (LDGSTS) or TMA; loop ld/128/bar: in the hottest loop, global loads per thread per iteration (all of them are
    issued before the loop's math consumes them: the loads in flight), how many are 128-bit, and barriers;
    flight: the most global loads one thread has outstanding in that loop (issued, not yet consumed; see
    loads_in_flight); blk/SM: resident blocks per SM (registers, shared memory, threads); grid: programs of the
    variant's representative launch (at the requested shapes) and waves: grid / (SM count x blk/SM) of the
    target's part."""
    head = (f"{'variant':<56} {'arch':<6} {'warps':>5} {'regs':>5} {'spill':>6} {'stack':>5} {'shared':>7} {'mma':>6} "
            f"{'ld128':>7} {'async':>8} {'loop ld/128/bar':>15} {'flight':>6} {'blk/SM':>6} {'grid':>6} {'waves':>6}")  # fmt: skip
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['variant']:<56} {r['arch']:<6} ERROR {r['error']}")
        else:
            loop = f"{r['loop_ldg']}/{r['loop_ldg128']}/{r['loop_bar']}"
            out.append(
                f"{r['variant']:<56} {r['arch']:<6} {r['num_warps']:>5} {r['regs']:>5} {r['spills']:>6} "
                f"{r['stack']:>5} {r['shared']:>7} {r['mma']:>6} {str(r['ldg128']) + '/' + str(r['ldg']):>7} {r['async']:>8} "
                f"{loop:>15} {r['loop_inflight']:>6} {r['blocks_per_sm']:>6} {r.get('grid', '-'):>6} {r.get('waves', '-'):>6}"
            )
    return "\n".join(out)


def rows_cache_path(archs, requests: dict) -> Path:
    """Where a full run (no filter) keeps its rows, named by everything they depend on: the kernel sources (this
    package's .py files), the requested shapes, the Triton version and the targets. A model's compile tests read
    them from there when the CI's printed run already compiled the same sources at the same shapes, instead of
    compiling everything a second time."""
    import hashlib

    import triton

    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(f"requests {sorted(requests.items())!r}".encode())
    h.update(f"triton {triton.__version__} archs {sorted(int(a) for a in archs)}".encode())
    return Path(tempfile.gettempdir()) / f"indextts_aot_rows_{h.hexdigest()[:24]}.json"


def main(argv=None, *, requests: dict, prog=None, description=None) -> int:
    """The command line of a model's AOT entry point (``python -m indextts_fast.aot``) over its ``requests``."""
    ap = argparse.ArgumentParser(prog=prog, description=description or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--arch", type=int, nargs="+", default=[86, 89, 90], help="compute capabilities (default 86 89 90)")
    ap.add_argument("--filter", default="", help="only variants whose name contains this")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--max-spill-bytes", type=int, default=None, help="fail when a variant spills more than this")
    ap.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per CPU)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows, failures = run(args.arch, requests, args.filter, args.max_spill_bytes, args.jobs)
    print(format_table(rows))
    targets = ", ".join(f"sm_{a} ({ARCH_NAMES.get(a, '?')})" for a in args.arch)
    print(f"\n{len(rows)} compiles for {targets} in {time.perf_counter() - t0:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if rows and not args.filter:  # a complete table: kept for the compile tests of the same sources (atomic)
        cache = rows_cache_path(args.arch, requests)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, cache)
    if not rows:
        print("no variants matched", file=sys.stderr)
        return 1
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit("indextts_kernels.aot knows no shapes: run a model's entry point, e.g. python -m indextts_fast.aot")
