"""The admin port (127.0.0.1:8081 by default): metrics, health, the routing table, reload."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.admin_index import add_index
from common import envelope as codes
from handlers.errors import answer
from proxy.metrics import EdgeMetrics, exported_registry
from proxy.rates import MAX_WINDOW_SECONDS as MAX_RATES_WINDOW, RateRing, rates
from proxy.shadowing import Shadower
from shadow.page import render_html
from shadow.report import render_json
from shadow.sizes import DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS as MAX_SHADOW_WINDOW
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
    return generate_latest(exported_registry(registry, multiproc_dir))


def create_admin_app(
    routing: RoutingState,
    metrics: EdgeMetrics,
    settings: Settings,
    readiness: list[ReadinessCheck],
    shadower: Callable[[], Shadower | None],
    ring: RateRing,
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
        try:
            window = float(request.query.get("window", DEFAULT_WINDOW_SECONDS))
        except ValueError:
            window = -1.0
        if not 0 < window <= MAX_SHADOW_WINDOW:  # also refuses nan
            return answer(codes.BAD_REQUEST, {"field": "window", "reason": f"seconds, 0 < window <= {MAX_SHADOW_WINDOW:g}"})
        wants_html = request.query.get("format") == "html" or (
            request.query.get("format") != "json" and "text/html" in request.headers.get("Accept", "")
        )
        if not wants_html:
            return web.json_response(render_json(
                current.stats, current.store, current.outcomes, route=route,
                meta={"worker": current.worker.counters(), "inflight": current.inflight},
                sizes=current.sizes, window=window,
            ))
        try:
            page_number = int(request.query.get("page", "1"))
        except ValueError:
            page_number = 0
        if page_number < 1:
            return answer(codes.BAD_REQUEST, {"field": "page", "reason": "a whole number >= 1"})
        # The page pages through every stored example, not only the JSON's first few per field.
        report = render_json(
            current.stats, current.store, current.outcomes, route=route, sizes=current.sizes, window=window,
            max_examples=max(current.store.per_field, 1),
        )
        # render_html escapes what it is given; backslashreplace still keeps a page whatever slips past.
        page = render_html(report, route, field=request.query.get("field") or None, page=page_number,
                           window=window).encode("utf-8", "backslashreplace")
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def get_rates(request: web.Request) -> web.Response:
        try:
            window = float(request.query.get("window", "60"))
        except ValueError:
            window = math.nan
        if not 0 < window <= MAX_RATES_WINDOW:
            return answer(codes.BAD_REQUEST, {"field": "window", "reason": f"seconds, 0 < window <= {MAX_RATES_WINDOW:g}"})
        now = ring.current()
        then = ring.baseline(window, now.at)
        percents = {name: float(r.new_percent) for name, r in routing.table.routes.items()}
        body = rates(now, then, percents)
        body["asked_window_seconds"] = window
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/_edge/rates", get_rates)
    app.router.add_get("/_edge/shadow", shadow)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/_edge/routes", routes)
    app.router.add_post("/_edge/reload", reload)
    add_index(app)
    return app
