"""What tools/convert_checkpoint.py and tools/inspect_checkpoint.py share: every bad argument, environment value or
input file is one line on stderr naming it and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..loader.errors import CheckpointError
from .pack import ConversionInterrupted


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (its usage block is four lines or more): ``<prog>: error: ... (-h: usage)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (-h: usage)\n")


def run(body: Callable[[], int], prefix: str) -> int:
    """body()'s exit status; a CheckpointError: the line ``<prefix> <message>`` and 2; SIGTERM / SIGHUP during a
    pack's write: 128 + the signal number; Ctrl-C: 130. Output that cannot be encoded (a file name that is not
    UTF-8) is escaped, not an error."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return body()
    except CheckpointError as e:
        print(f"{prefix} {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except ConversionInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
