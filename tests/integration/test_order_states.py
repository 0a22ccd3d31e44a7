"""The order state machine (shop/order_states.py) against real MariaDB and SQLite."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select

from shop import schema as t
from shop.db import create_all, drop_all, make_engine
from shop.errors import NotFound
from shop.order_states import STATES, TRANSITIONS, InvalidState, transition
from tests.builders import NOW, insert_order

ids = itertools.count(1)


@pytest.fixture
async def engine(db_url: str):
    engine = make_engine(db_url)
    await drop_all(engine)
    await create_all(engine)
    yield engine
    await engine.dispose()


async def history(engine, order_id: str) -> list[tuple[str | None, str, str]]:
    h = t.order_status_history.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))
        return [tuple(r) for r in rows]


async def status_of(engine, order_id: str) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one()


async def test_every_allowed_transition(engine) -> None:
    for event, rule in TRANSITIONS.items():
        for source in sorted(rule.sources - {rule.target}):
            order_id = f"T{next(ids)}"
            async with engine.begin() as conn:
                await insert_order(conn, order_id, status=source)
            async with engine.begin() as conn:
                outcome = await transition(conn, order_id, event, actor="new", reason="test", now=NOW)
            assert (outcome.changed, outcome.from_status, outcome.status) == (True, source, rule.target), event
            assert await status_of(engine, order_id) == rule.target
            assert await history(engine, order_id) == [(source, rule.target, "new")]


async def test_every_forbidden_transition_changes_nothing(engine) -> None:
    for event, rule in TRANSITIONS.items():
        for state in sorted(STATES - rule.sources - {rule.target}):
            order_id = f"F{next(ids)}"
            async with engine.begin() as conn:
                await insert_order(conn, order_id, status=state)
            with pytest.raises(InvalidState) as err:
                async with engine.begin() as conn:
                    await transition(conn, order_id, event, actor="new", now=NOW)
            assert err.value.code == 40901 and err.value.reason == "invalid_state" and err.value.data == {"status": state, "event": event}
            assert await status_of(engine, order_id) == state
            assert await history(engine, order_id) == []


async def test_already_in_target_is_a_no_op(engine) -> None:
    async with engine.begin() as conn:
        await insert_order(conn, "N1", status="cancelled")
    async with engine.begin() as conn:
        outcome = await transition(conn, "N1", "cancel", actor="legacy", now=NOW)
    assert (outcome.changed, outcome.status) == (False, "cancelled")
    assert await history(engine, "N1") == []


async def test_unknown_order_is_not_found(engine) -> None:
    with pytest.raises(NotFound):
        async with engine.begin() as conn:
            await transition(conn, "nope", "cancel", actor="new", now=NOW)


async def test_paid_sets_paid_at(engine) -> None:
    async with engine.begin() as conn:
        await insert_order(conn, "P1", status="authorized")
        await transition(conn, "P1", "captured", actor="consumer", now=NOW)
    async with engine.connect() as conn:
        assert (await conn.execute(select(t.orders.c.paid_at).where(t.orders.c.id == "P1"))).scalar() is not None


def statements(engine) -> list[str]:
    """The SQL the engine sends from now on (its first word), to count a transition's round trips."""
    sent: list[str] = []
    sa_event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda _conn, _cursor, sql, *_rest: sent.append(sql.split()[0].upper()))
    return sent


async def test_the_status_the_caller_saw_is_tried_first_and_spares_the_read(engine) -> None:
    async with engine.begin() as conn:
        await insert_order(conn, "E1", status="pending_payment")
    sent = statements(engine)
    async with engine.begin() as conn:
        outcome = await transition(conn, "E1", "authorized", actor="new", now=NOW, expected="pending_payment")
    assert (outcome.changed, outcome.from_status, outcome.status) == (True, "pending_payment", "authorized")
    assert sent == ["UPDATE", "INSERT"]
    assert await history(engine, "E1") == [("pending_payment", "authorized", "new")]


@pytest.mark.parametrize(("now_status", "expected", "result"), [
    ("authorized", "pending_payment", ("paid", "authorized")),  # moved on since the caller looked: judged again
    ("paid", "pending_payment", ("no-op", "paid")),  # already where the event leads
    ("cancelled", "pending_payment", ("refused", "cancelled")),  # cancelled since: refused, nothing written
    ("authorized", "cancelled", ("paid", "authorized")),  # a guess the event cannot leave is not tried
])
async def test_an_out_of_date_expected_status_is_judged_by_what_the_row_says(
        engine, now_status: str, expected: str, result: tuple[str, str]) -> None:
    order_id = f"S{next(ids)}"
    async with engine.begin() as conn:
        await insert_order(conn, order_id, status=now_status)
    try:
        async with engine.begin() as conn:
            outcome = await transition(conn, order_id, "captured", actor="new", now=NOW, expected=expected)
        got = ("paid" if outcome.changed else "no-op", outcome.from_status)
    except InvalidState as exc:
        got = ("refused", exc.data["status"])
    assert got == result
    moved = [(now_status, "paid", "new")] if result[0] == "paid" else []
    assert await history(engine, order_id) == moved
    assert await status_of(engine, order_id) == ("paid" if result[0] != "refused" else now_status)


async def test_an_expected_status_that_is_already_the_target_is_a_no_op_without_history(engine) -> None:
    # partially_refunded → partially_refunded (a second partial refund): the one rule whose target is one
    # of its sources. Tried as a compare-and-set it would match and write a history row for nothing.
    async with engine.begin() as conn:
        await insert_order(conn, "PR1", status="partially_refunded")
    async with engine.begin() as conn:
        outcome = await transition(conn, "PR1", "partially_refunded", actor="consumer", now=NOW,
                                   expected="partially_refunded")
    assert (outcome.changed, outcome.status) == (False, "partially_refunded")
    assert await history(engine, "PR1") == []


@pytest.fixture
async def maria(mariadb_url: str):
    engine = make_engine(mariadb_url)
    await drop_all(engine)
    await create_all(engine)
    yield engine
    await engine.dispose()


# Pairs whose targets exclude each other: after either one, the other is forbidden (or a no-op).
@pytest.mark.parametrize("events", [("cancel", "captured"), ("cancel", "cancel"), ("expire", "paid_from_client")])
async def test_two_concurrent_transitions_from_one_state_exactly_one_wins(maria, events) -> None:
    engine = maria
    async with engine.begin() as conn:
        await insert_order(conn, "R1", status="pending_payment")
    gate = asyncio.Event()

    async def attempt(event: str) -> str:
        async with engine.begin() as conn:
            await gate.wait()
            try:
                outcome = await transition(conn, "R1", event, actor="new", now=NOW)
                return "won" if outcome.changed else "no-op"
            except InvalidState:
                return "refused"

    tasks = [asyncio.create_task(attempt(e)) for e in events]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results.count("won") == 1, results
    assert len(await history(engine, "R1")) == 1
