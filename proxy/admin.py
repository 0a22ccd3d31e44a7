"""The admin port (127.0.0.1:8081 by default): metrics, health, the routing table, reload."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess

from common.admin_index import add_index
from common import envelope as codes
from handlers.errors import answer
from proxy.metrics import EdgeMetrics
from proxy.shadowing import Shadower
from shadow.report import render_html, render_json
from proxy.reloader import RoutingState
from common.settings import Settings
from shop.tokens import bearer_matches

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else why not


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _authorised(request: web.Request, token: str | None) -> web.Response | None:
    """None when the caller may write; else the refusal. With no token set, only loopback may write."""
    if token is None:
        return None if _is_loopback(request.remote) else answer(codes.FORBIDDEN, reason="admin_loopback_only")
    if not bearer_matches(request.headers.get("Authorization"), token):
        return answer(codes.ADMIN_TOKEN_REQUIRED)
    return None


def metrics_payload(registry: CollectorRegistry, multiproc_dir: str | None) -> bytes:
    if multiproc_dir:
        # gunicorn workers each write their own files; this adds them all up.
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=multiproc_dir)
        return generate_latest(combined)
    return generate_latest(registry)


def create_admin_app(
    routing: RoutingState,
    metrics: EdgeMetrics,
    settings: Settings,
    readiness: list[ReadinessCheck],
    shadower: Callable[[], Shadower | None],
) -> web.Application:
    multiproc_dir = settings.prometheus_multiproc_dir

    async def get_metrics(request: web.Request) -> web.Response:
        body = metrics_payload(metrics.registry, multiproc_dir)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        problems = [p for p in [await check() for check in readiness] if p]
        body = {"ready": not problems, "routing_hash": routing.table.source_hash, "problems": problems}
        return web.json_response(body, status=200 if not problems else 503)

    async def routes(request: web.Request) -> web.Response:
        return web.json_response(routing.describe())

    async def reload(request: web.Request) -> web.Response:
        refusal = _authorised(request, settings.admin_token)
        if refusal is not None:
            return refusal
        result = await routing.reload("admin_api")
        body = {"ok": result.ok, "changed": result.changed, "error": result.error, "hash": routing.table.source_hash}
        return web.json_response(body, status=200 if result.ok else 422)

    async def shadow(request: web.Request) -> web.StreamResponse:
        current = shadower()
        if current is None:
            return answer(codes.EDGE_NOT_STARTED)
        route = request.query.get("route") or None
        report = render_json(
            current.stats, current.store, current.outcomes, route=route,
            meta={"worker": current.worker.counters(), "inflight": current.inflight},
        )
        wants_html = request.query.get("format") == "html" or (
            request.query.get("format") != "json" and "text/html" in request.headers.get("Accept", "")
        )
        if wants_html:
            # render_html escapes what it is given; backslashreplace still keeps a page whatever slips past.
            page = render_html(report, route).encode("utf-8", "backslashreplace")
            return web.Response(body=page, content_type="text/html", charset="utf-8")
        return web.json_response(report)

    app = web.Application()
    app.router.add_get("/_edge/shadow", shadow)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/_edge/routes", routes)
    app.router.add_post("/_edge/reload", reload)
    add_index(app)
    return app
