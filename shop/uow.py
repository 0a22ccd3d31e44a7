"""The unit of work: one transaction holding an effect, its history, its outbox rows and its processed_events row.

Service functions receive a `UnitOfWork` and never open a transaction or read the clock: the
caller (an HTTP handler, a Kafka consumer) opens it with `Shop.tx(actor)`, which also takes the
time once, so every row the change writes carries the same `now`. Everything the work wrote
commits together when the block ends, or rolls back together when it raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import order_states
from shop import schema as t

_OUTBOX_INSERT = insert(t.outbox)
_PROCESSED_INSERT = insert(t.processed_events)
# One statement claims a whole batch: the rows it inserted come back, those already there (or
# inserted meanwhile by a concurrent delivery, whose commit it waits for on the key) do not.
_PROCESSED_SEEN = select(t.processed_events.c.event_id).where(
    t.processed_events.c.consumer == bindparam("consumer"), t.processed_events.c.event_id.in_(bindparam("ids", expanding=True))
)
_PROCESSED_CLAIM = (
    insert(t.processed_events).prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb")
    .prefix_with("OR IGNORE", dialect="sqlite").returning(t.processed_events.c.event_id)
)


OutboxRow = tuple[str, str | None, Mapping[str, Any]]  # topic, key, payload: what publish_many writes


@dataclass(slots=True)
class UnitOfWork:
    conn: AsyncConnection
    now: datetime
    actor: str  # order_status_history.actor: legacy / new / consumer

    async def transition(self, order_id: str, event: str, *, reason: str | None = None,
                         expected: str | None = None) -> order_states.Outcome:
        """The order's guarded state change, its history row written in this transaction (`expected`:
        the status the caller saw, tried first; order_states.transition)."""
        return await order_states.transition(self.conn, order_id, event, actor=self.actor, reason=reason, now=self.now,
                                             expected=expected)

    async def publish(self, topic: str, key: str | None, payload: Mapping[str, Any]) -> None:
        """An outbox row: published by the relay after this transaction commits, never before."""
        await self.conn.execute(_OUTBOX_INSERT, {"topic": topic, "key": key, "payload": dict(payload), "created_at": self.now})

    async def publish_many(self, rows: Iterable[OutboxRow]) -> None:
        """Outbox rows (topic, key, payload) in one multi-row INSERT; their ids keep the given order."""
        params = [{"topic": topic, "key": key, "payload": dict(payload), "created_at": self.now} for topic, key, payload in rows]
        if params:
            await self.conn.execute(_OUTBOX_INSERT, params)

    async def first_time(self, consumer: str, event_id: str, *, unless_claimed_by: str | None = None) -> bool:
        """Claim the event for `consumer`; False when it was already applied (a redelivery, a duplicate).

        Inserted before the effect, in one round trip: a concurrent duplicate waits on the primary
        key until this transaction ends, then fails on it, so two deliveries can never both apply.
        `unless_claimed_by`: the counterpart on the other side of the migration (old shopping's
        consumer of the same event); an event it applied is a duplicate here too.
        """
        try:
            # No SAVEPOINT: on SQLite (pysqlite) a released savepoint can commit on its own. A failed
            # INSERT only undoes itself on both databases, and the caller writes nothing after False.
            await self.conn.execute(_PROCESSED_INSERT, {"consumer": consumer, "event_id": event_id})
        except IntegrityError:
            return False
        return unless_claimed_by is None or not await self.claimed(unless_claimed_by, [event_id])

    async def claimed(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids `consumer` has applied (committed claims; a plain read)."""
        if not event_ids:
            return set()
        rows = await self.conn.execute(_PROCESSED_SEEN, {"consumer": consumer, "ids": sorted(set(event_ids))})
        return set(rows.scalars().all())

    async def claim_many(self, consumer: str, event_ids: Sequence[str], *, unless_claimed_by: str | None = None) -> list[bool]:
        """`first_time` for a batch, in one statement: per position, True when this unit claimed the id.

        A repeat of an id later in the same batch is False (a duplicate of the earlier one), as is
        an id some earlier transaction claimed. A concurrent claimer of the same id holds its key
        lock until it ends; the INSERT waits and then skips the row, so two deliveries never both apply.
        """
        first: dict[str, int] = {}
        for i, event_id in enumerate(event_ids):
            first.setdefault(event_id, i)
        if not first:
            return []
        result = await self.conn.execute(_PROCESSED_CLAIM, [{"consumer": consumer, "event_id": e} for e in first])
        claimed = set(result.scalars().all())
        if unless_claimed_by is not None and claimed:
            claimed -= await self.claimed(unless_claimed_by, sorted(claimed))
        return [first[e] == i and e in claimed for i, e in enumerate(event_ids)]
