"""Ahead-of-time compile check of every kernel variant IndexTTS2's hot path launches, for real GPU targets on a
machine without a GPU: the model's shapes (``indextts_fast.shapes``) fed to the kernels' generic AOT machinery
(``indextts_kernels.aot``), which compiles each variant (Triton's full pipeline down to ptxas), reads registers,
spills and shared memory from the cubin and audits the SASS.

    python -m indextts_fast.aot                     # sm_86, sm_89, sm_90; table on stdout
    python -m indextts_fast.aot --arch 90 --json out.json --filter norm/

Must run without TRITON_INTERPRET (interpreted functions cannot be compiled); exits 1 on any compile error,
and with --max-spill-bytes N on any variant that spills more than N bytes. A complete run (no filter) keeps its
rows at ``rows_cache_path`` for tests/test_compile.py.
"""

from __future__ import annotations

import sys

from . import shapes as S

# the norm kernel also at a width that is no power of two (the masked row tail), with few rows
_ODD_NORM = {1000: 64}


def requests() -> dict:
    """{kernel module: keyword arguments of its compile_variants}: IndexTTS2's shapes, per kernel."""
    return {
        "norm": dict(widths={**S.NORMS, **_ODD_NORM}),
        "attention": dict(fwd=S.ATTENTION_FWD, decode=S.ATTENTION_DECODE),
        "gemm": dict(gemms=S.GEMMS, ln_gemms=S.LN_GEMMS, wavenets=S.WAVENETS),
        "euler": dict(eulers=S.CFM_EULERS),
        "sampling": dict(S.SAMPLING),
        "alias_free": dict(snakes=S.VOCODER_SNAKES, merges=S.VOCODER_MERGES),
    }


def rows_cache_path(archs):
    """Where a complete run for ``archs`` keeps its rows (named by the kernel sources, these shapes, Triton, archs)."""
    from indextts_kernels.aot import rows_cache_path as path

    return path(archs, requests())


def main(argv=None) -> int:
    from indextts_kernels import aot

    return aot.main(argv, requests=requests(), prog="python -m indextts_fast.aot", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
