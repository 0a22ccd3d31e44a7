"""A per-route share of the upstream connection pool (a bulkhead).

All routes call old shopping through one pool. Without shares, one slow path filled it: 700
slow requests on one path left 188 of them waiting out their timeout for a connection (504)
and a healthy route waited 2.2 s behind them. Each route (passthrough, every unmatched path,
counts as one) may now hold at most ``limit`` upstream calls at once; a call beyond its
route's share is refused at once (the forwarder answers 503 ``upstream_busy``) instead of
queueing for a connection another route needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class RouteBusy(Exception):
    """The route already holds its whole share of upstream calls."""


class Bulkhead:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a route's share must be at least one call")
        self.limit = limit
        self._inflight: dict[str, int] = {}

    def inflight(self, route: str) -> int:
        return self._inflight.get(route, 0)

    @contextmanager
    def slot(self, route: str) -> Iterator[None]:
        """One of the route's calls, for the duration of the block; RouteBusy when none is free."""
        held = self._inflight.get(route, 0)
        if held >= self.limit:
            raise RouteBusy(route)
        self._inflight[route] = held + 1
        try:
            yield
        finally:
            left = self._inflight[route] - 1
            # Entries go when idle, so renamed or removed routes leave nothing behind.
            if left:
                self._inflight[route] = left
            else:
                del self._inflight[route]
