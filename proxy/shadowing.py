"""Shadow traffic at the edge: call the other side too, diff off the request path.

For a route with ``shadow: {percent: P}`` (never ``writes: true``), P % of requests — chosen by
an edge-side random draw, independent of the gray bucket and of anything the client sends (a
hash of its X-Request-Id let a client choose ids that are always, or never, shadowed) — are
also sent to the side that is not serving them. The client has its answer before the shadow call starts: the call
runs as a background task, bounded by ``shadow_max_inflight`` (beyond it the shadow is skipped
and counted), with its own timeout. The two answers go to `shadow.DiffWorker`'s bounded queue;
the comparison (and deepdiff, when the cheap equality fails) runs there, never on a request.

Noise (Diffy): for ``noise_percent`` of shadowed requests the primary side is called a second
time; fields that differ between two answers of the same side are noise. A request counts as
``mismatch`` when at least one differing field that is not (yet) judged noise differs beyond
rounding (or the status differs), ``rounding`` when every such field differs only within the
currency's rounding unit (one USD cent converted, at least one minor unit: shadow.rounding),
otherwise ``match``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from collections import Counter
from decimal import Decimal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from handlers.errors import answer_new
from handlers.routes import NewRoute
from proxy.forwarder import Forwarder
from proxy.gray import BUCKETS
from proxy.metrics import EdgeMetrics
from proxy.routing import RouteSpec
from shadow.compare import Comparison
from shadow.noise import DiffStats, NoiseRule
from shadow.rounding import BEYOND
from shadow.sizes import SizeStats, merge_sizes
from shadow.store import ExampleStore, summarise_request
from shadow.worker import DiffJob, DiffWorker, example_for
from common.settings import Settings

log = structlog.get_logger("edge.shadow")


def sampling_rng() -> random.Random:
    """A generator of the edge's own: seeded from the OS, never the one whose draws become request ids.

    Generated X-Request-Ids are Mersenne Twister output a client sees; ~600 of them would let it
    predict that generator, so sampling must not draw from the same one.
    """
    return random.Random(os.urandom(32))


def wants_shadow(route: RouteSpec, rng: random.Random) -> bool:
    shadow = route.shadow
    return shadow is not None and not route.writes and rng.randrange(BUCKETS) < shadow.basis_points


def wants_noise(route: RouteSpec, rng: random.Random) -> bool:
    return route.shadow is not None and rng.randrange(BUCKETS) < route.shadow.noise_basis_points


def response_body(response: web.StreamResponse) -> bytes | None:
    """The whole body of an answer the edge already has, decoded; None when it was streamed."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    body = response.body
    encoding = response.headers.get("Content-Encoding", "").lower()
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(body)
    except zlib.error:
        return None
    return body


class Shadower:
    def __init__(
        self, settings: Settings, metrics: EdgeMetrics, forwarder: Forwarder, new_routes: Mapping[str, NewRoute],
        rng: random.Random | None = None,
        units: Callable[[], Awaitable[Mapping[str, Decimal]]] | None = None,
    ) -> None:
        self._settings = settings
        # Per currency, the largest difference sized as rounding (shadow.rounding.rounding_units of
        # the forex table); None: every currency's minor unit.
        self._units = units
        # Built in the worker process (the app's startup), so forked workers don't share one sequence.
        self.rng = rng if rng is not None else sampling_rng()
        self._metrics = metrics
        self._forwarder = forwarder
        self._new_routes = new_routes
        self.stats = DiffStats(
            NoiseRule(relative=settings.shadow_noise_relative, absolute=settings.shadow_noise_absolute),
            max_fields=settings.shadow_max_fields,
        )
        self.sizes = SizeStats()
        self.store = ExampleStore(per_field=settings.shadow_examples_per_field, max_bytes=settings.shadow_examples_bytes)
        self.outcomes: dict[str, Counter[str]] = {}
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.worker = DiffWorker(None, self._on_result, queue_size=settings.shadow_queue_size)

    def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.worker.stop(timeout=5)

    def wants(self, route: RouteSpec) -> bool:
        """Whether this request of ``route`` is shadowed: the route's share, by the edge's own draw."""
        return wants_shadow(route, self.rng)

    def _count(self, route: str, outcome: str) -> None:
        self.outcomes.setdefault(route, Counter())[outcome] += 1
        self._metrics.shadow_requests.labels(route, outcome).inc()

    def launch(
        self,
        request: web.Request,
        route: RouteSpec,
        params: Mapping[str, str],
        body: bytes,
        *,
        legacy_url: str,
        primary_side: str,
        primary: web.StreamResponse,
        request_id: str,
    ) -> None:
        """Start the shadow call for a request the primary side has answered; never waits."""
        primary_body = response_body(primary)
        if primary_body is None or self.inflight >= self._settings.shadow_max_inflight:
            self._count(route.name, "skipped")
            return
        self.inflight += 1
        self._metrics.shadow_inflight.inc()
        task = asyncio.create_task(
            self._run(request, route, params, body, legacy_url, primary_side, primary.status, primary_body, request_id),
            name=f"shadow-{route.name}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.inflight -= 1
        self._metrics.shadow_inflight.dec()
        if not task.cancelled() and task.exception() is not None:
            log.error("shadow_task_failed", error=repr(task.exception()))

    async def _call(
        self, side: str, request: web.Request, route: RouteSpec, params: Mapping[str, str], body: bytes,
        legacy_url: str, request_id: str,
    ) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.shadow_timeout_ms / 1000):
                if side == "legacy":
                    return await self._forwarder.fetch(
                        request, body, base_url=legacy_url, timeout_ms=self._settings.shadow_timeout_ms, request_id=request_id,
                    )
                response = await answer_new(self._new_routes[route.name].handler, request, params)
                data = response_body(response)
                return response.status, data if data is not None else b""
        finally:
            self._metrics.shadow_duration.labels(route.name, side).observe(time.perf_counter() - started)

    async def _run(
        self, request: web.Request, route: RouteSpec, params: Mapping[str, str], body: bytes, legacy_url: str,
        primary_side: str, primary_status: int, primary_body: bytes, request_id: str,
    ) -> None:
        assert route.shadow is not None
        other = "legacy" if primary_side == "new" else "new"
        # The noise sample runs beside the shadow call and is queued first, so the comparison
        # of this very request is judged with its noise already counted.
        calls = [self._call(other, request, route, params, body, legacy_url, request_id)]
        if wants_noise(route, self.rng):
            calls.append(self._call(primary_side, request, route, params, body, legacy_url, request_id))
        results = await asyncio.gather(*calls, return_exceptions=True)
        shadow_result = results[0]
        if isinstance(shadow_result, BaseException):
            self._count(route.name, "error")
            if isinstance(shadow_result, aiohttp.ClientError | TimeoutError | OSError):
                log.info("shadow_call_failed", route=route.name, side=other, error=shadow_result.__class__.__name__,
                         request_id=request_id)
            else:
                # A new handler that blows up in shadow is exactly what shadow is for: count it, never raise.
                log.error("shadow_new_side_crashed", route=route.name, request_id=request_id, error=repr(shadow_result))
            return
        status, shadow_body = shadow_result
        if status >= 500:
            self._count(route.name, "error")
            return
        summary = summarise_request(request.method, request.path, request.query_string, request.headers, body)
        units = await self._units() if self._units is not None else {}

        def job(kind: str, other_status: int, other_body: bytes) -> DiffJob:
            return DiffJob(
                route=route.name, request_id=request_id, request_summary=summary, primary_side=primary_side,
                primary_status=primary_status, primary_body=primary_body, shadow_status=other_status,
                shadow_body=other_body, rules=route.shadow.rules, kind=kind,  # type: ignore[union-attr]
                units=units,
            )

        if len(results) > 1 and not isinstance(results[1], BaseException):
            # A failed noise sample only means one sample fewer.
            self.worker.submit(job("noise", *results[1]))
        if not self.worker.submit(job("shadow", status, shadow_body)):
            self._count(route.name, "skipped")

    def _on_result(self, job: DiffJob, comparison: Comparison) -> None:
        route = job.route
        if job.kind == "noise":
            for field in self.stats.record_noise(route, comparison.fields):
                self._metrics.shadow_noise_fields.labels(route, field).inc()
            return
        if comparison.error is not None:
            self._count(route, "error")
            return
        labels = self.stats.record_comparison(route, comparison.fields)
        # Sizes by bounded label: several fields folded into "other" are beyond if any is.
        sizes: dict[str, str] = {}
        deltas: dict[str, Decimal] = {}
        for field in comparison.fields:
            label = self.stats.limiter.label(route, field)
            sizes[label] = merge_sizes(sizes.get(label), comparison.sizes.get(field, BEYOND))
            delta = comparison.max_deltas.get(field)
            if delta is not None and delta > deltas.get(label, Decimal(-1)):
                deltas[label] = delta
        self.sizes.record(route, sizes, deltas)
        for field in labels:
            self._metrics.shadow_mismatch_fields.labels(route, field, sizes.get(field, BEYOND)).inc()
        if comparison.equal:
            self._count(route, "match")
            return
        real = self.stats.real_fields(route, labels)
        if not real:
            self._count(route, "match")
        elif any(sizes.get(f, BEYOND) == BEYOND for f in real):
            self._count(route, "mismatch")
        else:
            self._count(route, "rounding")
        example: dict[str, Any] | None = None
        for field in labels:
            if self.store.wants(route, field):
                example = example or example_for(job, comparison)
                self.store.add(route, field, example)
