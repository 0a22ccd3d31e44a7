"""gunicorn workers that each listen on the edge's port with their own SO_REUSEPORT socket.

gunicorn's master binds the port once and every worker accepts from that one shared socket: which
worker wakes for a new connection is luck, and keep-alive clients (a load balancer, wrk) keep what
they got. Splits like 29/3 of 32 connections were measured (bench/RESULTS.md), with one worker
saturated while the other idled. With one listening socket per worker in a SO_REUSEPORT group, the
kernel hashes each new connection to one of them, so connections spread evenly.

The master therefore does not listen on the edge's port at all (its bind is a unix socket in a
private temporary directory that nothing connects to): a socket in the group that no worker
accepted from would strand the connections hashed to it.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.worker import GunicornUVLoopWebWorker

from common.settings import Settings


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def reuse_port_worker(host: str, port: int, backlog: int) -> type[GunicornUVLoopWebWorker]:
    """A worker class listening on host:port itself; gunicorn instantiates it once per worker process."""

    class ReusePortWorker(GunicornUVLoopWebWorker):  # type: ignore[misc]
        sockets: list[Any]  # gunicorn's listeners (its base class is untyped)

        def init_process(self) -> None:
            # After the fork, before aiohttp starts serving self.sockets: serve our own socket instead
            # of the master's placeholder. The placeholder is kept open, not closed: closing gunicorn's
            # unix socket wrapper may unlink the master's socket file.
            self.placeholder_sockets = self.sockets
            self.sockets = [listen_socket(host, port, backlog)]
            super().init_process()

    return ReusePortWorker


def edge_runner_factory(settings: Settings, **runner_args: Any) -> Callable[[], Awaitable[Any]]:
    """What gunicorn's app loads: aiohttp's worker awaits it in the worker process and serves the
    EdgeRunner it returns, so workers answer malformed requests like one process does."""

    async def make_runner() -> Any:
        from proxy.app import METRICS, create_app
        from proxy.server import EdgeRunner

        app = create_app(settings)
        return EdgeRunner(app, settings=settings, metrics=app[METRICS], access_log=None, **runner_args)

    return make_runner
