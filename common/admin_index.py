"""`GET /` of an admin port: the endpoints it serves, so a newcomer's first curl is not a bare 404."""
from __future__ import annotations

from aiohttp import web


def add_index(app: web.Application) -> None:
    """Call last, once every route is added: the list is read at request time from the app's router."""

    async def index(request: web.Request) -> web.Response:
        endpoints = sorted(
            f"{route.method} {route.resource.canonical}"
            for route in request.app.router.routes()
            if route.resource is not None and route.resource.canonical != "/" and route.method != "HEAD"
        )
        return web.json_response({"endpoints": endpoints})

    app.router.add_get("/", index)
