"""The real `shopping-edge` console script as a child process, for tests of what only it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

BIN = Path(sys.executable).parent



@dataclass(frozen=True)
class EdgeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    stdout: Path
    stderr: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as resp:
            return resp.read().decode()


@contextmanager
def running_edge(routing: Path, tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[EdgeProcess]:
    """`shopping-edge` on free ports, ready (its /healthz answers); stopped with SIGTERM at the end.
    Its stdout (the JSON log) and stderr go to files in tmp_path."""
    port, admin = free_port(), free_port()
    out, err = tmp_path / "edge.stdout", tmp_path / "edge.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(admin), *args],
            env={**os.environ, **env}, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    edge = EdgeProcess(proc, port, admin, out, err)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the edge exited with {proc.returncode}: {err.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the edge did not answer /healthz within 20 s: {err.read_text()}") from None
                time.sleep(0.05)
        yield edge
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
