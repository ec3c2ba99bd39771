"""``python -m indextts_fast demo | synth | ops | serve``.

    demo    the official GPT and s2mel against ours, stage by stage, in one parity and timing table (demo.py)
    synth   a real synthesis with the official IndexTTS2 and then with indextts_fast enabled: per-stage times
    ops     every kernel through the dispatch at IndexTTS2 shapes, error against fp64 next to torch's (ops_demo.py)
    serve   an OpenAI-compatible speech server (POST /v1/audio/speech) batching many requests (serving/cli.py)

Without a GPU the Triton kernels run in the Triton interpreter (set here before any kernel module is imported),
unless INDEXTTS_FAST_BACKEND=torch asks for the torch references.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: python -m indextts_fast demo|synth|ops|serve [options]   (--help after a command for its options)"


def _cpu_interpreter() -> None:
    import torch

    if not torch.cuda.is_available() and os.environ.get("INDEXTTS_FAST_BACKEND", "auto") != "torch":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def fail(prog: str, message) -> int:
    """A command's refusal of bad input: one line on stderr naming the problem, exit status 2 (no traceback)."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    from ._dispatch import requested_backend

    try:
        requested_backend()
    except ValueError as e:
        return fail("indextts_fast", e)
    if cmd == "demo":
        _cpu_interpreter()
        from . import demo

        return demo.main(rest)
    if cmd == "synth":
        from . import synth

        return synth.main(rest)
    if cmd == "ops":
        _cpu_interpreter()
        import torch

        from . import ops_demo

        return ops_demo.main(rest + ([] if torch.cuda.is_available() or "--small" in rest else ["--small"]))
    if cmd == "serve":
        from .serving import cli

        return cli.main(rest)
    return fail("indextts_fast", f"unknown command {cmd!r}; {USAGE}")


if __name__ == "__main__":
    sys.exit(main())
