"""`shopping-edge`: run the edge, in one process or as gunicorn workers."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

BACKLOG = 2048
GRACEFUL_SECONDS = 10


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shopping-edge", description="The shopping strangler-fig edge.")
    p.add_argument("--routing", help="routing.yaml path (default: $EDGE_ROUTING_FILE or routing.yaml)")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="listen port (default 8080)")
    p.add_argument("--admin-port", type=int, help="admin port on 127.0.0.1 (default 8081)")
    p.add_argument("--workers", type=int, default=1, help="processes; >1 runs gunicorn with aiohttp's uvloop worker")
    p.add_argument("--no-access-log", action="store_true", help="drop the per-request log line")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.workers > 1:
        # Must be set before prometheus_client is imported anywhere: it picks its value class at import.
        multiproc = tempfile.mkdtemp(prefix="edge-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc
        master = os.getpid()
    from common.settings import Settings, SettingsError

    overrides: dict[str, Any] = {}
    if args.routing:
        overrides["routing_file"] = args.routing
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.admin_port:
        overrides["admin_port"] = args.admin_port
    if args.no_access_log:
        overrides["access_log"] = False
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        sys.exit(f"shopping-edge: bad setting: {exc}")

    from common.logs import configure_logging
    from proxy.routing import RoutingError

    configure_logging(args.log_level)
    if args.workers > 1:
        try:
            _run_gunicorn(settings, args.workers, args.log_level)
        finally:
            _remove_in_creator(multiproc, master)
        return

    import uvloop

    from proxy.app import METRICS, create_app
    from proxy.server import serve

    try:
        app = create_app(settings)
    except (RoutingError, OSError) as exc:
        sys.exit(f"shopping-edge: cannot load routing: {exc}")
    uvloop.install()
    serve(app, settings, app[METRICS], backlog=BACKLOG)


def _run_gunicorn(settings: Any, workers: int, log_level: str) -> None:
    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    from proxy.routing import RoutingError
    from proxy.routing_file import RoutingLoader
    from proxy.workers import edge_runner_factory, reuse_port_worker

    try:  # fail in the master with a clear message rather than in every worker; the edge's own loader
        RoutingLoader.for_settings(settings).load(settings.routing_file)
    except RoutingError as exc:
        sys.exit(f"shopping-edge: cannot load routing: {exc}")

    # Each worker listens on the port itself (proxy/workers.py); the master's bind is a placeholder.
    placeholder = tempfile.mkdtemp(prefix="edge-master-")

    class EdgeGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"unix:{placeholder}/unused.sock")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", reuse_port_worker(settings.host, settings.port, BACKLOG))
            self.cfg.set("loglevel", log_level)
            self.cfg.set("accesslog", None)
            self.cfg.set("backlog", BACKLOG)
            self.cfg.set("graceful_timeout", GRACEFUL_SECONDS)
            self.cfg.set("child_exit", lambda server, worker: multiprocess.mark_process_dead(worker.pid))

        def load(self) -> Any:
            # A runner factory, not the app: aiohttp's worker then serves through our EdgeRunner
            # (proxy/server.py), the same server as one process, instead of a plain AppRunner.
            # The runner arguments aiohttp's worker would have used itself.
            return edge_runner_factory(settings, keepalive_timeout=self.cfg.keepalive, shutdown_timeout=GRACEFUL_SECONDS * 0.95)

    master = os.getpid()
    try:
        EdgeGunicorn().run()
    finally:
        _remove_in_creator(placeholder, master)


def _remove_in_creator(path: str, creator: int) -> None:
    """Remove a directory only in the process that made it.

    gunicorn forks workers inside Arbiter.run(), and a worker that exits (SIGTERM, a crash, a recycle)
    unwinds through the master's inherited frames, running their `finally:` blocks too. Before this
    guard, such a worker removed the Prometheus multiprocess directory, its replacement failed to
    start, and gunicorn halted the whole edge.
    """
    if os.getpid() == creator:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
