"""The order state machine: legacy-compatible states, transitions as data, guarded CAS updates.

Old shopping writes the same `orders` rows at the same time, so a status is never read and
written back unguarded: every change is ``UPDATE orders SET status = :to WHERE id = :id AND
status = :seen`` with the row count checked. When another writer got there first the row is
read again and the event re-judged. Already in the target state is a no-op; anything else
outside the event's sources is `InvalidState`. Each change writes `order_status_history`
in the caller's transaction, so the change and whatever goes with it (releasing a coupon,
settling a wallet) commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import schema as t
from shop.errors import Conflict, NotFound

PENDING_PAYMENT = "pending_payment"
PAYMENT_CONFIRMING = "payment_confirming"
PAYMENT_FAILED = "payment_failed"
AUTHORIZED = "authorized"
PAID = "paid"
FULFILLING = "fulfilling"
SHIPPED = "shipped"
COMPLETED = "completed"
CANCELLED = "cancelled"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"

ACTORS = ("legacy", "new", "consumer")


@dataclass(frozen=True, slots=True)
class Transition:
    event: str
    sources: frozenset[str]
    target: str


def _table(*rows: tuple[str, tuple[str, ...], str]) -> Mapping[str, Transition]:
    return MappingProxyType({event: Transition(event, frozenset(sources), target) for event, sources, target in rows})


_REFUNDABLE = (PAID, FULFILLING, SHIPPED, COMPLETED, PARTIALLY_REFUNDED)

# domain.md § Order states. A second refund may follow a partial one, so partially_refunded is
# itself refundable (decided: the diagram's arrow starts from every refundable state).
TRANSITIONS: Mapping[str, Transition] = _table(
    ("paid_from_client", (PENDING_PAYMENT, PAYMENT_FAILED), PAYMENT_CONFIRMING),
    ("authorized", (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED), AUTHORIZED),
    ("captured", (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED, AUTHORIZED), PAID),
    ("payment_failed", (PENDING_PAYMENT, PAYMENT_CONFIRMING), PAYMENT_FAILED),
    ("expire", (PENDING_PAYMENT, PAYMENT_FAILED, AUTHORIZED), CANCELLED),
    ("cancel", (PENDING_PAYMENT, PAYMENT_FAILED, AUTHORIZED), CANCELLED),
    ("purchased", (PAID,), FULFILLING),
    ("shipped", (FULFILLING,), SHIPPED),
    ("completed", (SHIPPED,), COMPLETED),
    ("partially_refunded", _REFUNDABLE, PARTIALLY_REFUNDED),
    ("refunded", _REFUNDABLE, REFUNDED),
)

STATES = frozenset({PENDING_PAYMENT} | {s for tr in TRANSITIONS.values() for s in (*tr.sources, tr.target)})


class InvalidState(Conflict):
    """409 invalid_state: the order is in a state this event cannot leave."""

    reason = "invalid_state"


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool  # False: it already was in the target state (a no-op, not an error)
    from_status: str
    status: str


_O = t.orders.c
# Built once: every checkout, payment, event and sweep goes through these, and building a statement per
# call (construction, coercion, cache key) was a sixth of a payment's time in the edge (bench/RESULTS.md).
_STATUS_OF = select(_O.status).where(_O.id == bindparam("oid"))
_MOVE = {
    paid: update(t.orders).where(_O.id == bindparam("oid"), _O.status == bindparam("seen")).values(
        status=bindparam("target"), updated_at=bindparam("now"), **({"paid_at": bindparam("now")} if paid else {}))
    for paid in (False, True)
}
HISTORY_INSERT = insert(t.order_status_history)


async def current_status(conn: AsyncConnection, order_id: str) -> str:
    status = (await conn.execute(_STATUS_OF, {"oid": order_id})).scalar()
    if status is None:
        raise NotFound("order_not_found")
    return status


async def transition(
    conn: AsyncConnection,
    order_id: str,
    event: str,
    *,
    actor: str,
    reason: str | None = None,
    now: datetime,
    expected: str | None = None,
    max_attempts: int = 5,
) -> Outcome:
    """Apply `event` to the order with a compare-and-set on the status it was seen in.

    `expected`: the status the caller already saw (earlier in this transaction, or in the one that
    opened a payment attempt). The compare-and-set tries it first and the status is read only when
    it no longer holds, so the usual transition costs two round trips, not three."""
    rule = TRANSITIONS[event]
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}")
    move = _MOVE[rule.target == PAID]
    # Never guessed: a status this event cannot leave, and the target (partially_refunded is one of its own
    # sources; as a compare-and-set it would match and write history for a no-op). The read judges those.
    guess = expected if expected in rule.sources and expected != rule.target else None
    for _ in range(max_attempts):
        if guess is not None:
            seen, guess = guess, None
        else:
            seen = await current_status(conn, order_id)
            if seen == rule.target:
                return Outcome(False, seen, seen)
            if seen not in rule.sources:
                raise InvalidState(data={"status": seen, "event": event})
        result = await conn.execute(move, {"oid": order_id, "seen": seen, "target": rule.target, "now": now})
        if result.rowcount == 1:
            await conn.execute(HISTORY_INSERT, {
                "order_id": order_id, "from_status": seen, "to_status": rule.target, "reason": reason, "actor": actor,
                "created_at": now,
            })
            return Outcome(True, seen, rule.target)
        # Someone else (old shopping, another consumer) changed it between our read and write, or the
        # caller's status is out of date: judge what it is now.
    raise Conflict("status_contended", {"order_id": order_id, "event": event})
