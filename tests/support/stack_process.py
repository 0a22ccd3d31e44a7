"""`make run` (scripts/stack.py) as a real process for the e2e tests: started with a port offset
and its own var/ directory, stopped with Ctrl-C (SIGINT) as a person would."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# make run's ports (scripts/stack.py PORTS): broker, legacy, its knobs, edge, edge admin, consumers admin, PSP, its knobs.
PORTS = (9092, 8090, 8099, 8080, 8081, 8082, 8091, 8100)


def free_offset(extra: tuple[int, ...] = ()) -> int:
    """A --port-offset whose ports (make run's, and `extra`: e.g. --observe's 9090) are all free now, below the
    ephemeral range (32768+) so no client socket can be holding one of them; random, so suites running side by
    side rarely meet."""
    ports = (*PORTS, *extra)
    for _ in range(200):
        offset = random.randrange(9000, 32767 - max(ports))
        if all(_bindable(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port offset for a stack")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Stack:
    offset: int
    var: Path
    routing: Path | None = None
    extra: tuple[str, ...] = ()  # more stack.py flags, e.g. ("--observe",)
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    rest: str = ""

    def port(self, base: int) -> int:
        """The stack's port for one of make run's default ports (8080, 8082, 9092, …)."""
        return base + self.offset

    def start(self, timeout: float = 150) -> None:
        """Start it and read its banner until `ready:`; AssertionError (with the banner) if it never gets there."""
        argv = [sys.executable, str(ROOT / "scripts" / "stack.py"), "--port-offset", str(self.offset), "--var", str(self.var)]
        if self.routing is not None:
            argv += ["--routing", str(self.routing)]
        argv += self.extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("ready:"):
                return
        raise AssertionError(f"the stack did not get ready:\n{self.banner}\n{self.logs()}")

    def stop(self, timeout: float = 90) -> int:
        """Ctrl-C, then everything it printed until it ended; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rest, _ = self.proc.communicate()
        return self.proc.returncode

    @property
    def banner(self) -> str:
        return "".join(self.output)

    def log(self, name: str) -> str:
        path = self.var / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted((self.var / "log").glob("*.log")))
