"""CORS at the edge (EDGE_CORS_ORIGINS set): the edge answers preflights and owns the headers.

Our own small middleware rather than aiohttp-cors, which could not do what the edge needs:
it cannot wrap a ``*`` route, so CORS mode listed five methods and HEAD, PROPFIND or any
other method answered 405 without reaching old shopping; it took over every OPTIONS (a
non-preflight OPTIONS answered 403); and an upstream answer already carrying
``Access-Control-Allow-Origin`` tripped an assertion inside it that dropped the client's
connection with no response at all.

Here every request passes through as without CORS, except a real preflight (OPTIONS with
``Origin`` and ``Access-Control-Request-Method``) from an allowed origin, which the edge
answers itself. On every answer (old shopping's, relayed or streamed, and the new side's)
the edge removes any ``Access-Control-*`` header old shopping sent and, for an allowed
``Origin``, adds its own; ``Vary: Origin`` always, since the answer depends on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web

from handlers.errors import Handler

PREFLIGHT = web.RequestKey("cors_preflight", bool)
MAX_AGE_SECONDS = 600
# CORS-safelisted response headers (Fetch standard) need no exposing; Set-Cookie can never be exposed.
_NOT_EXPOSED = frozenset(
    ("cache-control", "content-language", "content-length", "content-type", "expires", "last-modified", "pragma",
     "set-cookie", "vary")
)



class CorsPolicy:
    """Which origins are granted: listed ones with credentials; with ``*``, any other without."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = frozenset(origins)
        self._exact = listed - {"*"}
        self._any = "*" in listed

    def grant(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for this Origin, or None: no grant."""
        if not origin:
            return None
        if origin in self._exact:
            return origin
        return "*" if self._any else None


def setup_cors(app: web.Application, origins: Iterable[str]) -> None:
    """Install CORS on the edge's app (before it is frozen); sub-apps are covered too."""
    policy = CorsPolicy(origins)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        wanted = headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
        if request.method != hdrs.METH_OPTIONS or not wanted or policy.grant(headers.get(hdrs.ORIGIN)) is None:
            return await handler(request)
        request[PREFLIGHT] = True
        answer = web.Response(status=200)
        answer.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = wanted  # every method passes through
        requested_headers = headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
        if requested_headers:
            answer.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = requested_headers
        answer.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(MAX_AGE_SECONDS)
        return answer

    async def own_the_headers(request: web.Request, response: web.StreamResponse) -> None:
        # on_response_prepare, not the middleware: it also reaches streamed answers, prepared in the handler.
        out = response.headers
        if not request.get(PREFLIGHT):
            for name in [n for n in out if n.lower().startswith("access-control-")]:
                out.popall(name, None)
        vary = out.get(hdrs.VARY, "")
        if "origin" not in {v.strip().lower() for v in vary.split(",")}:
            out[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"
        allowed = policy.grant(request.headers.get(hdrs.ORIGIN))
        if allowed is None:
            return
        out[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        if allowed != "*":
            out[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        if not request.get(PREFLIGHT):
            exposed = sorted({n for n in out if n.lower() not in _NOT_EXPOSED and not n.lower().startswith("access-control-")})
            if exposed:
                out[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(exposed)

    app.middlewares.append(preflight)
    app.on_response_prepare.append(own_the_headers)
