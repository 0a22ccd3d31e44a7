"""Forwards a request to old shopping unchanged and brings its answer back.

Method, raw path and query (never re-normalised), body and headers minus hop-by-hop go
up; status, headers and body come back. Connection failures answer 502, timeouts 504 and a
route holding its whole share of the pool (proxy/bulkhead.py) 503, in the legacy envelope,
and are counted.
"""

from __future__ import annotations

import math

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from common import envelope as codes
from handlers.errors import answer
from proxy.bulkhead import Bulkhead, RouteBusy
from proxy.metrics import EdgeMetrics

log = structlog.get_logger("edge.forward")

# RFC 9110 §7.6.1 hop-by-hop headers, plus ones aiohttp recomputes for the new hop.
_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
_RESPONSE_DROP = _HOP | {"date", "server"}
# What a client says about its own address: old shopping would take it as the truth. The edge
# speaks X-Forwarded-For (appending the peer it saw) and sets X-Real-IP to that peer itself.
_CLIENT_ADDRESS_CLAIMS = frozenset(("x-real-ip", "forwarded"))
# Bodies up to this size are read whole; larger or unsized ones are streamed through.
_BUFFER_LIMIT = 1024 * 1024


def named_in_connection(headers: MultiMapping[str]) -> frozenset[str]:
    """The header names a message's Connection headers list: they are for that hop only (RFC 9110 §7.6.1)."""
    return frozenset(
        token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",") if token.strip()
    )


def upstream_headers(request: web.Request, request_id: str) -> CIMultiDict[str]:
    hop_only = named_in_connection(request.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        low = name.lower()
        # A client must not be able to spoof what the edge tells upstream about routing or its address.
        if low in _HOP or low in hop_only or low in _CLIENT_ADDRESS_CLAIMS or low.startswith("x-edge-"):
            continue
        out.add(name, value)
    out["X-Request-Id"] = request_id
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        out["X-Real-IP"] = peer
    return out


def call_timeout(timeout_ms: int) -> aiohttp.ClientTimeout:
    """The whole upstream call, fired when it is due: aiohttp by default rounds a timeout of 5 s or
    more up to the loop clock's next whole second (10 s fired at 10.96 s)."""
    return aiohttp.ClientTimeout(total=timeout_ms / 1000, ceil_threshold=math.inf)


def make_session(pool_size: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=pool_size, limit_per_host=pool_size, keepalive_timeout=30, ttl_dns_cache=300,
        timeout_ceil_threshold=math.inf,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Never keep one user's cookies for another: the edge is many users' proxy.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
    )


class Forwarder:
    def __init__(self, session: aiohttp.ClientSession, metrics: EdgeMetrics, *, route_max_inflight: int) -> None:
        self._session = session
        self._metrics = metrics
        self.bulkhead = Bulkhead(route_max_inflight)

    async def forward(
        self,
        request: web.Request,
        body: bytes,
        *,
        base_url: str,
        route: str,
        timeout_ms: int,
        request_id: str,
        strip_authorization: bool = False,
    ) -> web.StreamResponse:
        url = URL(base_url + request.raw_path, encoded=True)
        headers = upstream_headers(request, request_id)
        if strip_authorization:
            headers.popall("Authorization", None)
        timeout = call_timeout(timeout_ms)
        # No retry loop here: aiohttp itself retries an idempotent request once when a pooled
        # keep-alive connection turns out closed, and a write must never be sent twice.
        try:
            with self.bulkhead.slot(route):
                async with self._session.request(
                    request.method, url, headers=headers, data=body or None,
                    timeout=timeout, allow_redirects=False,
                ) as upstream:
                    if upstream.status >= 500:
                        self._metrics.upstream_error(route, "legacy", "5xx")
                    return await self._relay(request, upstream)
        except RouteBusy:
            self._metrics.upstream_error(route, "legacy", "pool_full")
            log.warning("upstream_busy", route=route, limit=self.bulkhead.limit, request_id=request_id)
            return answer(codes.UPSTREAM_BUSY, {"route": route}, retryable=True)
        except TimeoutError:
            self._metrics.upstream_error(route, "legacy", "timeout")
            log.warning("upstream_timeout", route=route, timeout_ms=timeout_ms, request_id=request_id)
            return answer(codes.UPSTREAM_TIMEOUT, {"route": route})
        except aiohttp.ClientError as exc:
            self._metrics.upstream_error(route, "legacy", "connect")
            log.warning("upstream_unavailable", route=route, error=exc.__class__.__name__, request_id=request_id)
            return answer(codes.UPSTREAM_UNAVAILABLE, {"route": route})

    async def fetch(
        self, request: web.Request, body: bytes, *, base_url: str, timeout_ms: int, request_id: str,
    ) -> tuple[int, bytes]:
        """The same call as `forward`, for a shadow: status and whole (identity-encoded) body.

        Errors are raised (aiohttp.ClientError, TimeoutError) for the caller to count.
        """
        headers = upstream_headers(request, request_id)
        headers.popall("Accept-Encoding", None)  # the diff needs the plain body
        headers["X-Edge-Shadow"] = "1"
        async with self._session.request(
            request.method, URL(base_url + request.raw_path, encoded=True), headers=headers,
            data=body or None, timeout=call_timeout(timeout_ms), allow_redirects=False,
        ) as upstream:
            return upstream.status, await upstream.read()

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict()
        hop_only = named_in_connection(upstream.headers)
        for name, value in upstream.headers.items():
            low = name.lower()
            if low not in _RESPONSE_DROP and low not in hop_only:
                headers.add(name, value)
        length = upstream.content_length
        if request.method == "HEAD" or upstream.status in (204, 304):
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and length <= _BUFFER_LIMIT:
            body = await upstream.read()
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


