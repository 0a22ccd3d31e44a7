"""Request counters per path and per route name, so tests can prove who was called.

``GET /_emulator/stats`` → ``{"total": n, "paths": {"/shopping/cart": 2},
"routes": {"cart_get": 1, ...}, "methods": {"GET /shopping/cart": 1}}``;
``DELETE /_emulator/stats`` resets (both on the admin listener, ``admin.py``). Every request
to the public port counts, including ones a fault rule delays, fails or resets and ones
that match no route.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

UNMATCHED = "_unmatched"


class RequestStats:
    def __init__(self) -> None:
        self.total = 0
        self.paths: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()

    def record(self, method: str, path: str, route: str | None) -> None:
        self.total += 1
        self.paths[path] += 1
        self.routes[route or UNMATCHED] += 1
        self.methods[f"{method} {path}"] += 1

    def reset(self) -> None:
        self.total = 0
        self.paths.clear()
        self.routes.clear()
        self.methods.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "paths": dict(self.paths),
            "routes": dict(self.routes),
            "methods": dict(self.methods),
        }


STATS = web.AppKey("legacy_stats", RequestStats)


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[STATS].record(request.method, request.path, request.match_info.route.name)
    return await handler(request)


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].to_json())


async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATS].reset()
    return web.json_response(request.app[STATS].to_json())
