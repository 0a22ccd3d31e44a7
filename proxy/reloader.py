"""Keeps the routing table in force and swaps it atomically when routing.yaml changes.

Requests read ``state.table`` once and use that object to the end, so a swap never
changes a decision halfway through a request and no request waits for a reload.
A rejected or missing file leaves the last good table in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.metrics import EdgeMetrics
from proxy.routing import RoutingError, RoutingTable, parse_routing

log = structlog.get_logger("edge.routing")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    changed: bool
    error: str | None
    at: float


class RoutingState:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str],
        new_routes: Collection[str],
        default_legacy_url: str,
        metrics: EdgeMetrics,
    ) -> None:
        self.path = Path(path)
        self._env = env
        self._new_routes = new_routes
        self._default_legacy_url = default_legacy_url
        self._metrics = metrics
        self._stat: tuple[int, int, int] | None = None
        self._listeners: list[Callable[[RoutingTable], None]] = []
        self.table: RoutingTable = self._parse(self.path.read_text(encoding="utf-8"))
        self.loaded_at = time.time()
        self.last = ReloadResult(ok=True, changed=True, error=None, at=self.loaded_at)
        self._stat = self._stat_of()
        metrics.reloads.labels("ok").inc()
        self._publish()

    def _parse(self, text: str) -> RoutingTable:
        return parse_routing(text, self._env, new_routes=self._new_routes, default_legacy_url=self._default_legacy_url)

    def _stat_of(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def on_swap(self, listener: Callable[[RoutingTable], None]) -> None:
        self._listeners.append(listener)

    def _publish(self) -> None:
        self._metrics.set_percentages((name, float(r.new_percent)) for name, r in self.table.routes.items())
        for listener in self._listeners:
            listener(self.table)

    def reload(self, reason: str) -> ReloadResult:
        """Read, validate and swap in the file now. Synchronous: the file is small and parsing takes ~1 ms."""
        now = time.time()
        self._stat = self._stat_of()
        try:
            text = self.path.read_text(encoding="utf-8")
            if hashlib.sha256(text.encode()).hexdigest() == self.table.source_hash:
                self.last = ReloadResult(ok=True, changed=False, error=None, at=now)
                return self.last
            table = self._parse(text)
        except (OSError, UnicodeDecodeError, RoutingError) as exc:
            error = str(exc) if isinstance(exc, RoutingError) else f"{self.path}: {exc.__class__.__name__}: {exc}"
            self.last = ReloadResult(ok=False, changed=False, error=error, at=now)
            self._metrics.reloads.labels("error").inc()
            log.error("routing_reload_rejected", reason=reason, error=error, kept=self.table.source_hash[:12])
            return self.last
        old = self.table
        self.table = table  # the atomic swap: one reference assignment
        self.loaded_at = now
        self.last = ReloadResult(ok=True, changed=True, error=None, at=now)
        self._metrics.reloads.labels("ok").inc()
        self._publish()
        log.info(
            "routing_reloaded",
            reason=reason,
            hash=table.source_hash[:12],
            previous=old.source_hash[:12],
            percentages={n: str(r.new_percent) for n, r in table.routes.items()},
        )
        return self.last

    async def watch(self, interval: float) -> None:
        """Poll the file's identity (inode, size, mtime); cheap enough at 4 Hz and needs no inotify."""
        while True:
            await asyncio.sleep(interval)
            if self._stat_of() != self._stat:
                self.reload("file_changed")

    def describe(self) -> dict[str, object]:
        t = self.table
        return {
            "file": str(self.path),
            "hash": t.source_hash,
            "loaded_at": self.loaded_at,
            "last_reload": {"ok": self.last.ok, "changed": self.last.changed, "error": self.last.error, "at": self.last.at},
            "legacy_url": t.legacy_url,
            "timeout_ms": t.timeout_ms,
            "sticky_key": list(t.sticky_key),
            "routes": {
                name: {
                    "methods": list(r.methods),
                    "path": r.path,
                    "new_percent": float(r.new_percent),
                    "writes": r.writes,
                    "timeout_ms": r.timeout_ms,
                    "shadow": None if r.shadow is None else {
                        "percent": float(r.shadow.percent),
                        "noise_percent": float(r.shadow.noise_percent),
                        "ignore": list(r.shadow.rules.ignore),
                        "tolerance": None if r.shadow.rules.tolerance is None else str(r.shadow.rules.tolerance),
                        "unordered_lists": r.shadow.rules.unordered_lists,
                    },
                    "allow_new": sorted(r.allow_new),
                    "deny_new": sorted(r.deny_new),
                }
                for name, r in t.routes.items()
            },
            "consumers": dict(t.consumers),
        }
