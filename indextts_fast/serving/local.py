"""A ``python -m indextts_fast serve`` subprocess on this machine's loopback address, for tests and benchmarks.

with LocalServer(["--tiny"]) as url:       # http://127.0.0.1:<a free port>
    httpx.post(url + "/v1/audio/speech", json={...})
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

__all__ = ["LocalServer", "free_port"]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LocalServer:
    """The server as a subprocess bound to 127.0.0.1, ready (``/health`` answers) when the block starts, stopped
    after it. ``env``: added to the environment (on a CPU: the fast parts on the torch references, one torch thread,
    unless given). ``log``: the server's stderr (a temporary file by default; ``text()`` reads it)."""

    def __init__(self, args: list, *, port: Optional[int] = None, env: Optional[dict] = None, timeout: float = 180.0):
        self.args, self.port, self.timeout = list(args), port or free_port(), timeout
        self.env = dict(os.environ)
        self.env.pop("TRITON_INTERPRET", None)
        self.env.update({"INDEXTTS_FAST_BACKEND": "torch", "OMP_NUM_THREADS": "1"} if env is None else env)
        self.url = f"http://{HOST}:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def text(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> str:
        import httpx

        self._log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "indextts_fast", "serve", "--host", HOST, "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise TimeoutError(f"the server did not answer /health within {self.timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()
