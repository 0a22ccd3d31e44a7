"""The edge's HTTP server: aiohttp's, answering what its parser rejects like the rest of the edge.

aiohttp answers a request its parser rejects (garbage, a bad request line, a header over the
limits of proxy/limits.py) with a plain-text 400 and logs "Error handling request" with a
9-line traceback, outside any middleware: no access line, no metric. :class:`EdgeRunner`
serves the app with :class:`EdgeRequestHandler` instead, which answers those in the legacy
envelope (431 for headers over the limits, else 400), counts them in
``edge_bad_requests_total{reason}`` and logs one ``bad_http_request`` JSON line, and logs any
other server-level error as one JSON line too. Both ways of running the edge use it:
:func:`serve` (one process, in place of ``web.run_app``) and the gunicorn workers
(``proxy/cli.py`` hands gunicorn a runner factory).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from proxy.limits import parse_error_reason, refuse
from proxy.metrics import EdgeMetrics
from common.settings import Settings

log = structlog.get_logger("edge.server")


class EdgeRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the edge's answers and log lines for errors."""

    __slots__ = ("_edge_settings", "_edge_metrics")

    def __init__(self, manager: Server, *, settings: Settings, metrics: EdgeMetrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_settings = settings
        self._edge_metrics = metrics

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: an answer already began, only closing is left
            raise ConnectionError("response already started, cannot answer the bad request")
        return refuse(parse_error_reason(exc, self.max_field_size), self._edge_settings, self._edge_metrics, request.remote)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's own failures (not a client's): one JSON line with the exception, not a multi-line traceback.
        try:
            message = str(args[0]) % args[1:] if len(args) > 1 else str(args[0] if args else "")
        except (TypeError, ValueError):
            message = repr(args)
        log.error("server_error", detail=message[:200], exc_info=kw.get("exc_info", True))


class EdgeServer(Server):
    def __init__(self, *args: Any, settings: Settings, metrics: EdgeMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge_settings = settings
        self._edge_metrics = metrics

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, settings=self._edge_settings, metrics=self._edge_metrics, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server speaks through EdgeRequestHandler (same arguments as AppRunner)."""

    def __init__(self, app: web.Application, *, settings: Settings, metrics: EdgeMetrics, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge_settings = settings
        self._edge_metrics = metrics

    async def _make_server(self) -> Server:
        # AppRunner's server (app started, handler_args applied), rebuilt as an EdgeServer; it has no connection yet.
        plain = await super()._make_server()
        return EdgeServer(
            plain.request_handler, request_factory=plain.request_factory, handler_cancellation=plain.handler_cancellation,
            loop=plain._loop, settings=self._edge_settings, metrics=self._edge_metrics, **plain._kwargs,
        )


async def _serve(runner: EdgeRunner, host: str, port: int, backlog: int) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=backlog).start()
        await asyncio.Event().wait()  # until SIGINT/SIGTERM (GracefulExit) or a cancel
    finally:
        await runner.cleanup()


def serve(app: web.Application, settings: Settings, metrics: EdgeMetrics, *, backlog: int) -> None:
    """``web.run_app`` for the edge: serve ``app`` on settings.host:port until SIGINT or SIGTERM."""
    # web.run_app's defaults for the rest.
    runner = EdgeRunner(
        app, settings=settings, metrics=metrics, access_log=None, handle_signals=True,
        keepalive_timeout=75.0, shutdown_timeout=60.0,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(runner, settings.host, settings.port, backlog))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        # As run_app: cancel, so _serve's cleanup (the app's cleanup_ctx) runs before the loop closes.
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
            loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
