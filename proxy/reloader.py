"""Keeps the routing table in force and swaps it atomically when routing.yaml changes.

Requests read ``state.table`` once and use that object to the end, so a swap never
changes a decision halfway through a request and no request waits for a reload.
A rejected or missing file leaves the last good table in force.

Every reload (the file watch, SIGHUP, ``POST /_edge/reload``) goes through one async path:
one at a time, the bounded read and parse (proxy/routing_file.py) in a thread, within a time
budget. Nothing a file contains can end the watch or reach the caller as an exception: it is a
rejection, logged, counted and shown by ``GET /_edge/routes``.

The watch applies a change only once the file is stable: unchanged across two polls, and
unchanged for ``drop_settle`` seconds when it would remove routes or consumer entries of the
table in force, which is what a half-written file looks like. SIGHUP and the admin API are an
operator saying "the file is ready": they load it as it is, at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.metrics import EdgeMetrics
from proxy.routing import RoutingTable
from common.routing_file import FileChanging, Signature, signature_of
from proxy.routing_file import RoutingLoader
from common.routing_yaml import RoutingError

log = structlog.get_logger("edge.routing")
MISSING: Signature = (-1, -1, -1, -1, -1)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    changed: bool
    error: str | None
    at: float


@dataclass(slots=True)
class _Pending:
    """A file state the watch has seen but not acted on yet."""

    signature: Signature
    since: float  # monotonic time it was first seen
    held: RoutingTable | None = None  # parsed, but waiting out drop_settle because it removes entries
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Loaded:
    table: RoutingTable | None
    signature: Signature
    error: str | None = None
    changing: bool = False


def _dropped(old: RoutingTable, new: RoutingTable) -> tuple[str, ...]:
    routes = [f"routes.{name}" for name in old.routes if name not in new.routes]
    consumers = [f"consumers.{name}" for name in old.consumers if name not in new.consumers]
    return tuple(routes + consumers)


class RoutingState:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loader: RoutingLoader,
        metrics: EdgeMetrics,
        parse_budget: float = 2.0,
        drop_settle: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._metrics = metrics
        self._budget = parse_budget
        self._drop_settle = drop_settle
        self._listeners: list[Callable[[RoutingTable], None]] = []
        # At start-up, before any request: a bad file raises RoutingError and the edge refuses to start.
        self.table, snapshot = loader.load(self.path)
        self._seen: Signature = snapshot.signature
        self._pending: _Pending | None = None
        self._lock = asyncio.Lock()
        self._straggler: asyncio.Future[_Loaded] | None = None  # a parse still running past its budget
        self._soon: set[asyncio.Task[ReloadResult]] = set()
        self.loaded_at = time.time()
        self.polled_at: float | None = None
        self.last = ReloadResult(ok=True, changed=True, error=None, at=self.loaded_at)
        metrics.reloads.labels("ok").inc()
        metrics.last_reload_ok.set(1)
        self._publish()

    def on_swap(self, listener: Callable[[RoutingTable], None]) -> None:
        self._listeners.append(listener)

    def _publish(self) -> None:
        self._metrics.set_percentages((name, float(r.new_percent)) for name, r in self.table.routes.items())
        for listener in self._listeners:
            try:
                listener(self.table)
            except Exception as exc:  # the swap has happened; a listener's bug must not undo or break it
                log.error("routing_listener_failed", listener=getattr(listener, "__name__", "?"), error=exc.__class__.__name__)

    # --- reloading --------------------------------------------------------------------------------

    async def reload(self, reason: str) -> ReloadResult:
        """Load the file as it is now (SIGHUP, ``POST /_edge/reload``): no waiting for it to settle."""
        async with self._lock:
            return await self._reload(reason, None)

    def reload_soon(self, reason: str) -> None:
        """``reload`` from a plain callback (the SIGHUP handler)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason), name=f"routing-reload-{reason}")
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    async def close(self) -> None:
        for task in list(self._soon):
            task.cancel()
        await asyncio.gather(*self._soon, return_exceptions=True)

    def _signature(self) -> Signature:
        try:
            return signature_of(self.path.stat())
        except OSError:
            return MISSING  # missing or unreadable: a state of its own, loading it gives the reason

    def _load(self) -> _Loaded:
        """The blocking part, run in a thread: never raises."""
        signature = self._signature()
        try:
            table, snapshot = self._loader.load(self.path)
        except FileChanging as exc:
            return _Loaded(None, signature, str(exc), changing=True)
        except RoutingError as exc:
            return _Loaded(None, signature, str(exc))
        except Exception as exc:  # a bug of ours, not the file's: still only a rejection
            return _Loaded(None, signature, f"{self.path}: could not be loaded ({exc.__class__.__name__})")
        return _Loaded(table, snapshot.signature)

    async def _reload(self, reason: str, settled: _Pending | None) -> ReloadResult:
        """Under the lock. ``settled`` is the watch's stable file state; None for an explicit reload."""
        if self._straggler is not None and not self._straggler.done():
            if settled is not None:
                return self.last  # the watch tries again at its next poll
            return self._reject(reason, f"{self.path}: the previous parse is still running past its budget", None)
        job: asyncio.Future[_Loaded] = asyncio.ensure_future(asyncio.to_thread(self._load))
        try:
            loaded = await asyncio.wait_for(asyncio.shield(job), self._budget)
        except asyncio.CancelledError:
            self._straggler = job  # our caller went away (shutdown); the thread runs on, and no other parse beside it
            raise
        except TimeoutError:
            # A thread can't be stopped; bounded input makes this unlikely, and its result is dropped.
            self._straggler = job
            job.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            signature = settled.signature if settled is not None else None
            return self._reject(reason, f"{self.path}: parsing took longer than {self._budget:g} s", signature)
        if settled is not None and (loaded.changing or loaded.signature != settled.signature):
            self._pending = _Pending(loaded.signature, time.monotonic())
            return self.last  # still being written: wait until it stops changing
        if loaded.table is None:
            return self._reject(reason, str(loaded.error), None if loaded.changing else loaded.signature)
        table = loaded.table
        if table.source_hash == self.table.source_hash:
            self._seen, self._pending = loaded.signature, None
            self.last = ReloadResult(ok=True, changed=False, error=None, at=time.time())
            self._metrics.last_reload_ok.set(1)  # e.g. a bad edit reverted: the rejection is over
            return self.last
        if settled is not None:
            dropped = _dropped(self.table, table)
            if dropped and time.monotonic() - settled.since < self._drop_settle:
                if settled.held is None:
                    log.info("routing_change_held", reason=reason, dropped=list(dropped), settle_seconds=self._drop_settle)
                settled.held, settled.dropped = table, dropped
                return self.last
        return self._apply(reason, table, loaded.signature)

    def _apply(self, reason: str, table: RoutingTable, signature: Signature) -> ReloadResult:
        old = self.table
        self.table = table  # the atomic swap: one reference assignment
        self._seen, self._pending = signature, None
        self.loaded_at = now = time.time()
        self.last = ReloadResult(ok=True, changed=True, error=None, at=now)
        self._metrics.reloads.labels("ok").inc()
        self._metrics.last_reload_ok.set(1)
        self._publish()
        log.info(
            "routing_reloaded",
            reason=reason,
            hash=table.source_hash[:12],
            previous=old.source_hash[:12],
            percentages={n: str(r.new_percent) for n, r in table.routes.items()},
        )
        return self.last

    def _reject(self, reason: str, error: str, signature: Signature | None) -> ReloadResult:
        if signature is not None:
            self._seen, self._pending = signature, None  # this file state is judged: don't count it again
        self.last = ReloadResult(ok=False, changed=False, error=error, at=time.time())
        self._metrics.reloads.labels("error").inc()
        self._metrics.last_reload_ok.set(0)
        log.error("routing_reload_rejected", reason=reason, error=error, kept=self.table.source_hash[:12])
        return self.last

    # --- watching ---------------------------------------------------------------------------------

    async def poll(self) -> None:
        """One watch step: note a change, and load it once it is the same at the next poll."""
        signature = await asyncio.to_thread(self._signature)
        self.polled_at = time.time()
        if signature == self._seen:
            self._pending = None
            return
        pending = self._pending
        if pending is None or pending.signature != signature:
            self._pending = _Pending(signature, time.monotonic())
            return
        async with self._lock:
            if self._pending is not pending:
                return  # an explicit reload judged the file meanwhile
            await self._reload("file_changed", pending)

    async def watch(self, interval: float) -> None:
        """Poll the file's identity (device, inode, size, mtime, ctime); cheap at 4 Hz and needs no inotify."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing may end the watch: every later edit, rollbacks included, depends on it
                self._reject("file_changed", f"{self.path}: the watch hit an internal error ({exc.__class__.__name__})", None)

    def describe(self) -> dict[str, object]:
        t = self.table
        pending = self._pending
        return {
            "file": str(self.path),
            # Absolute, so edgectl run from another directory finds the file this edge reads.
            "routing_file": os.path.abspath(self.path),
            "hash": t.source_hash,
            "loaded_at": self.loaded_at,
            "last_reload": {"ok": self.last.ok, "changed": self.last.changed, "error": self.last.error, "at": self.last.at},
            "polled_at": self.polled_at,
            "pending": None if pending is None else {
                "seen_for_seconds": round(time.monotonic() - pending.since, 3),
                "held_because_it_removes": list(pending.dropped),
            },
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
            "consumers": {name: rule.describe() for name, rule in t.consumers.items()},
            "groups": {name: {"routes": list(g.routes), "allow_split": g.allow_split} for name, g in t.groups.items()},
        }
