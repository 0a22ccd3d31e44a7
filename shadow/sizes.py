"""Per (route, field) counts of differences by size, the largest delta, and a recent window.

:class:`SizeStats` records, for each primary-vs-shadow comparison of a route, which fields
differed and how (``rounding`` / ``beyond``, :mod:`shadow.rounding`), keeping

* since start: per field the count of each size and ``max |Δ|`` (a Decimal);
* a window: the comparisons of the last :data:`MAX_WINDOW_SECONDS` (at most
  ``max_window_entries`` per route), so that a rate over e.g. the last 60 s can be read
  beside the rate since start: a fix deployed an hour ago shows at once in the window.

Fields should be bounded labels (:class:`shadow.fields.FieldLimiter`). Not thread-safe:
call from the event loop, like :class:`shadow.noise.DiffStats`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from shadow.rounding import BEYOND, ROUNDING, SIZES

__all__ = ["DEFAULT_WINDOW_SECONDS", "MAX_WINDOW_SECONDS", "SizeStats", "merge_sizes"]

DEFAULT_WINDOW_SECONDS = 60.0
MAX_WINDOW_SECONDS = 3600.0


def merge_sizes(a: str | None, b: str) -> str:
    """Two differences in one field (or in one ``other`` label): beyond wins."""
    return BEYOND if BEYOND in (a, b) else ROUNDING


class _Route:
    __slots__ = ("compared", "counts", "max_delta", "window")

    def __init__(self, max_entries: int) -> None:
        self.compared = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.max_delta: dict[str, Decimal] = {}
        self.window: deque[tuple[float, Mapping[str, str]]] = deque(maxlen=max_entries)


class SizeStats:
    def __init__(self, *, max_window_entries: int = 100_000, clock: Any = time.monotonic) -> None:
        self._max_entries = max_window_entries
        self._clock = clock
        self._routes: dict[str, _Route] = {}

    def record(self, route: str, sizes: Mapping[str, str], deltas: Mapping[str, Decimal] | None = None) -> None:
        """One comparison of ``route``: ``sizes`` maps each differing field label to its size
        (empty when equal), ``deltas`` each numeric field to its largest ``|Δ|``."""
        r = self._routes.get(route)
        if r is None:
            r = self._routes[route] = _Route(self._max_entries)
        now = self._clock()
        r.compared += 1
        for name, size in sizes.items():
            counts = r.counts.setdefault(name, dict.fromkeys(SIZES, 0))
            counts[size] += 1
        for name, delta in (deltas or {}).items():
            if delta > r.max_delta.get(name, Decimal(-1)):
                r.max_delta[name] = delta
        r.window.append((now, dict(sizes)))
        while r.window and r.window[0][0] < now - MAX_WINDOW_SECONDS:
            r.window.popleft()

    def compared(self, route: str) -> int:
        r = self._routes.get(route)
        return r.compared if r else 0

    def counts(self, route: str, name: str) -> dict[str, int]:
        r = self._routes.get(route)
        return dict(r.counts.get(name, dict.fromkeys(SIZES, 0))) if r else dict.fromkeys(SIZES, 0)

    def max_abs_delta(self, route: str, name: str) -> Decimal | None:
        r = self._routes.get(route)
        return r.max_delta.get(name) if r else None

    def window(self, route: str, seconds: float = DEFAULT_WINDOW_SECONDS) -> tuple[int, dict[str, dict[str, int]]]:
        """``(comparisons in the last seconds, {field: {size: n}})`` for a route."""
        r = self._routes.get(route)
        if r is None:
            return 0, {}
        since = self._clock() - seconds
        compared = 0
        counts: dict[str, dict[str, int]] = {}
        for at, sizes in reversed(r.window):
            if at < since:
                break
            compared += 1
            for name, size in sizes.items():
                counts.setdefault(name, dict.fromkeys(SIZES, 0))[size] += 1
        return compared, counts

    def routes(self) -> list[str]:
        return sorted(self._routes)

    def fields(self, route: str) -> list[str]:
        r = self._routes.get(route)
        return sorted(r.counts) if r else []
