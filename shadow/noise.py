"""Diffy-style noise cancellation: which differing fields are real mismatches.

Some fields differ even between two calls to the *same* side (timestamps, request ids,
random ordering…). Like Twitter's Diffy, the edge sometimes calls the primary side a
second time and compares primary against primary: those comparisons are **noise samples**
and the fields they show are **noise**. Per (route, field):

* ``compared``      — primary-vs-shadow comparisons recorded for the route,
* ``mismatches``    — those in which the field differed,
* ``noise_samples`` — primary-vs-primary comparisons recorded for the route,
* ``noise``         — those in which the field differed.

With ``mismatch_rate = mismatches / compared`` and ``noise_rate = noise / noise_samples``
(0 when there are no samples yet; 0 / 0 is 0) and ``d = mismatch_rate - noise_rate``,
a field is a **real mismatch** iff

    d > absolute   and   d > relative * mismatch_rate

i.e. the shadow differs clearly more often than the primary differs from itself, both in
absolute terms and relative to how often it differs at all. Diffy's defaults are
``relative = 20 %`` and ``absolute = 0.03 %`` (:class:`NoiseRule`'s defaults: ``0.2`` and
``0.0003``, both configurable). Examples: a field that differs in every noise sample and
every comparison (d = 0) is noise; 100 % mismatch with no noise is a mismatch;
50 % mismatch with 45 % noise (d = 5 % < 20 % × 50 % = 10 %) is noise.

Verdicts (:meth:`DiffStats.verdict`): ``"mismatch"`` — real by the rule; ``"noise"`` — the
field differed at least once (in comparisons or in noise samples) but is not real (this
includes a field that differs too rarely to pass ``absolute``); ``"ok"`` — it never differed.
Until noise samples exist, every field that differs often enough is a mismatch.

Bounded: fields are labelled through :class:`shadow.fields.FieldLimiter` (``max_fields``
per route, then ``"other"``), routes are capped too. Not thread-safe: call from one thread
(the event loop; :class:`shadow.worker.DiffWorker` calls ``on_result`` there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shadow.fields import FieldLimiter

__all__ = ["DiffStats", "FieldStats", "NoiseRule", "VERDICTS"]

VERDICTS = ("mismatch", "noise", "ok")


@dataclass(frozen=True)
class NoiseRule:
    relative: float = 0.2
    absolute: float = 0.0003

    def __post_init__(self) -> None:
        for name in ("relative", "absolute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")

    def is_real(self, mismatch_rate: float, noise_rate: float) -> bool:
        d = mismatch_rate - noise_rate
        return d > self.absolute and d > self.relative * mismatch_rate


@dataclass(frozen=True)
class FieldStats:
    compared: int
    mismatches: int
    noise_samples: int
    noise: int

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0

    @property
    def noise_rate(self) -> float:
        return self.noise / self.noise_samples if self.noise_samples else 0.0


class _Route:
    __slots__ = ("compared", "noise_samples", "mismatches", "noise")

    def __init__(self) -> None:
        self.compared = 0
        self.noise_samples = 0
        self.mismatches: dict[str, int] = {}
        self.noise: dict[str, int] = {}


class DiffStats:
    """Per-route comparison and noise counts, and the verdict per field."""

    def __init__(self, rule: NoiseRule = NoiseRule(), *, max_fields: int = 200,
                 limiter: FieldLimiter | None = None) -> None:
        self.rule = rule
        self.limiter = limiter if limiter is not None else FieldLimiter(max_fields)
        self._routes: dict[str, _Route] = {}

    def _route(self, route: str) -> _Route:
        route = self.limiter.route(route)
        r = self._routes.get(route)
        if r is None:
            r = self._routes[route] = _Route()
        return r

    def _labels(self, route: str, fields: Iterable[str]) -> set[str]:
        return {self.limiter.label(route, f) for f in fields}

    def record_comparison(self, route: str, fields: Iterable[str]) -> set[str]:
        """One primary-vs-shadow comparison (``fields`` empty when equal). Returns the
        bounded labels counted (each at most once per comparison)."""
        route = self.limiter.route(route)
        r = self._route(route)
        r.compared += 1
        labels = self._labels(route, fields)
        for label in labels:
            r.mismatches[label] = r.mismatches.get(label, 0) + 1
        return labels

    def record_noise(self, route: str, fields: Iterable[str]) -> set[str]:
        """One primary-vs-primary comparison (``fields`` empty when equal)."""
        route = self.limiter.route(route)
        r = self._route(route)
        r.noise_samples += 1
        labels = self._labels(route, fields)
        for label in labels:
            r.noise[label] = r.noise.get(label, 0) + 1
        return labels

    def field_stats(self, route: str, field: str) -> FieldStats:
        r = self._routes.get(route)
        if r is None:
            return FieldStats(0, 0, 0, 0)
        return FieldStats(r.compared, r.mismatches.get(field, 0), r.noise_samples, r.noise.get(field, 0))

    def route_counts(self, route: str) -> tuple[int, int]:
        """``(compared, noise_samples)`` for a route."""
        r = self._routes.get(route)
        return (r.compared, r.noise_samples) if r else (0, 0)

    def verdict(self, route: str, field: str) -> str:
        s = self.field_stats(route, field)
        if s.mismatches and self.rule.is_real(s.mismatch_rate, s.noise_rate):
            return "mismatch"
        if s.mismatches or s.noise:
            return "noise"
        return "ok"

    def real_fields(self, route: str, fields: Iterable[str]) -> list[str]:
        """Of ``fields`` (already labelled, e.g. what :meth:`record_comparison` returned),
        those whose verdict is currently ``"mismatch"``."""
        return sorted(f for f in fields if self.verdict(route, f) == "mismatch")

    def routes(self) -> list[str]:
        return sorted(self._routes)

    def fields(self, route: str) -> list[str]:
        r = self._routes.get(route)
        return sorted(set(r.mismatches) | set(r.noise)) if r else []

    def reset(self, route: str | None = None) -> None:
        if route is None:
            self._routes.clear()
            self.limiter.reset()
        else:
            self._routes.pop(route, None)
            self.limiter.reset(route)

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe: ``{"rule": {...}, "routes": {route: {"compared", "noise_samples",
        "fields": {field: {"mismatches", "noise", "mismatch_rate", "noise_rate", "verdict"}}}}}``."""
        routes: dict[str, Any] = {}
        for name in self.routes():
            r = self._routes[name]
            fields = {}
            for field in self.fields(name):
                s = self.field_stats(name, field)
                fields[field] = {
                    "mismatches": s.mismatches, "noise": s.noise,
                    "mismatch_rate": round(s.mismatch_rate, 6), "noise_rate": round(s.noise_rate, 6),
                    "verdict": self.verdict(name, field),
                }
            routes[name] = {"compared": r.compared, "noise_samples": r.noise_samples, "fields": fields}
        return {"rule": {"relative": self.rule.relative, "absolute": self.rule.absolute}, "routes": routes}
