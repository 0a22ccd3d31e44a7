"""Who applies each event: routing.yaml's `consumers:` in force in the consumers process, reloaded on change.

The consumers watch the same file the edge does (``EDGE_ROUTING_FILE``, Settings.routing_file),
read with the same bounded reader (common/routing_file.py) and parsed with the same rules
(common/consumer_routing.py). ``owner(event, order_id)`` answers from the table in force: one
reference read, so a swap never changes a decision halfway and nothing waits for a reload.

Like the edge's watch (proxy/reloader.py): the file's identity (device, inode, size, mtime,
ctime) is polled; a change is loaded once it is the same at the next poll; a change that
removes an event type's entry (what a half-written file looks like; the type would fall back to
old shopping) waits until the file has been unchanged ``drop_settle`` seconds. The read and
parse run in a thread within a time budget. A rejected, missing or unreadable file keeps the
last good table, is logged and counted (``consumer_routing_reload_total{result="error"}``);
nothing a file contains ends the watch. At start a bad file is an error: the process refuses to
start rather than guess who owns the events.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter

from common.consumer_routing import ConsumersTable, Owner, parse_consumers_file
from common.routing_file import FileChanging, Signature, decode, read_bounded, signature_of
from common.routing_yaml import RoutingError
from common.settings import ROUTING_INTERPOLATION_VARS, Settings

log = structlog.get_logger("consumers.ownership")
MISSING: Signature = (-1, -1, -1, -1, -1)


@dataclass(frozen=True, slots=True)
class ConsumersLoader:
    """Everything the consumers' parse depends on besides the text."""

    env: Mapping[str, str]
    default_legacy_url: str
    max_bytes: int
    interpolation_vars: Collection[str] = ROUTING_INTERPOLATION_VARS

    @classmethod
    def for_settings(cls, settings: Settings) -> ConsumersLoader:
        return cls(env=settings.interpolation_env, default_legacy_url=settings.legacy_url, max_bytes=settings.routing_max_bytes)

    def load(self, path: str | os.PathLike[str]) -> tuple[ConsumersTable, Signature]:
        """Read and parse; RoutingError (RoutingFileError for the reading part) when refused."""
        snapshot = read_bounded(path, self.max_bytes)
        table = parse_consumers_file(
            decode(path, snapshot.data), self.env,
            interpolation_vars=self.interpolation_vars, default_legacy_url=self.default_legacy_url,
        )
        return table, snapshot.signature


@dataclass(slots=True)
class _Pending:
    signature: Signature
    since: float  # monotonic time it was first seen


class Ownership:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loader: ConsumersLoader,
        registry: CollectorRegistry,
        parse_budget: float = 2.0,
        drop_settle: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._budget = parse_budget
        self._drop_settle = drop_settle
        self._reloads = Counter(
            "consumer_routing_reload_total", "routing.yaml loads by the consumers (consumers: ownership)", ("result",),
            registry=registry,
        )
        self._reloads.labels("error")
        # At start-up, before any event: a bad file raises RoutingError and the process does not start.
        self.table, self._seen = loader.load(self.path)
        self._reloads.labels("ok").inc()
        self._pending: _Pending | None = None
        self._parsing: asyncio.Future[tuple[ConsumersTable | None, Signature, str | None, bool]] | None = None
        self.last_error: str | None = None
        log.info("consumers_routing_loaded", hash=self.table.source_hash[:12], owners=self.describe())

    @classmethod
    def for_settings(cls, settings: Settings, registry: CollectorRegistry) -> Ownership:
        return cls(
            settings.routing_file, loader=ConsumersLoader.for_settings(settings), registry=registry,
            parse_budget=settings.routing_parse_budget_seconds, drop_settle=settings.routing_drop_settle_seconds,
        )

    # --- deciding ---------------------------------------------------------------------------------

    def owner(self, event: str, order_id: str) -> Owner:
        """"new" or "legacy" for this event type and order, by the table in force now."""
        return self.table.rule(event).owner(order_id)

    @property
    def legacy_url(self) -> str:
        return self.table.legacy_url

    def describe(self) -> dict[str, object]:
        return {name: rule.describe() for name, rule in self.table.consumers.items()}

    # --- watching ---------------------------------------------------------------------------------

    def _signature(self) -> Signature:
        try:
            return signature_of(self.path.stat())
        except OSError:
            return MISSING

    def _load(self) -> tuple[ConsumersTable | None, Signature, str | None, bool]:
        """In a thread: (table or None, signature, error, still being written). Never raises."""
        signature = self._signature()
        try:
            table, signature = self._loader.load(self.path)
        except FileChanging as exc:
            return None, signature, str(exc), True
        except RoutingError as exc:  # RoutingFileError included
            return None, signature, str(exc), False
        except Exception as exc:  # a bug of ours, not the file's: still only a rejection
            return None, signature, f"{self.path}: could not be loaded ({exc.__class__.__name__})", False
        return table, signature, None, False

    async def poll(self) -> None:
        """One watch step: note a change, load it once it is the same at the next poll."""
        signature = await asyncio.to_thread(self._signature)
        if signature == self._seen:
            self._pending = None
            return
        pending = self._pending
        if pending is None or pending.signature != signature:
            self._pending = _Pending(signature, time.monotonic())
            return
        if self._parsing is not None and not self._parsing.done():
            return  # a parse past its budget still runs: no second one beside it
        self._parsing = asyncio.ensure_future(asyncio.to_thread(self._load))
        try:
            table, loaded_signature, error, changing = await asyncio.wait_for(asyncio.shield(self._parsing), self._budget)
        except TimeoutError:
            self._parsing.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self._reject(f"{self.path}: parsing took longer than {self._budget:g} s", signature)
            return
        if changing or loaded_signature != signature:
            self._pending = _Pending(loaded_signature, time.monotonic())  # still being written
            return
        if table is None:
            self._reject(str(error), signature)
            return
        if table.source_hash == self.table.source_hash:
            self._seen, self._pending = signature, None
            return
        dropped = sorted(set(self.table.consumers) - set(table.consumers))
        if dropped and time.monotonic() - pending.since < self._drop_settle:
            return  # looks half-written: apply it only once it has stayed so for drop_settle
        self._apply(table, signature)

    def _apply(self, table: ConsumersTable, signature: Signature) -> None:
        old = self.table
        self.table = table  # the atomic swap: one reference assignment
        self._seen, self._pending = signature, None
        self.last_error = None
        self._reloads.labels("ok").inc()
        log.info("consumers_routing_reloaded", hash=table.source_hash[:12], previous=old.source_hash[:12],
                 owners=self.describe(), legacy_url_changed=old.legacy_url != table.legacy_url)

    def _reject(self, error: str, signature: Signature) -> None:
        self._seen, self._pending = signature, None  # this file state is judged: don't count it again
        self.last_error = error
        self._reloads.labels("error").inc()
        log.error("consumers_routing_rejected", error=error, kept=self.table.source_hash[:12], owners=self.describe())

    async def watch(self, interval: float) -> None:
        """Poll until cancelled; nothing may end the watch: every later flip, rollbacks included, depends on it."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._reject(f"{self.path}: the watch hit an internal error ({exc.__class__.__name__})", self._signature())

