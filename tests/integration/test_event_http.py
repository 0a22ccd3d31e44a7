"""`POST /event/{name}` on the new side (legacy-api.md), through the edge and on /order2, SQLite and MariaDB.

The same events the Kafka consumer applies arrive over HTTP with the service token: a captured
payment pays the order, a replay is a duplicate, `purchased` moves it to fulfilling, and an event
that came by HTTP is a duplicate for the consumer too (one processed_events name for both doors).
Without the token (absent, wrong, or no token configured) the answer is 401 on the legacy path and
the /order2 404, and nothing in the database changes; a body that is not the event's schema is 400,
an event the shop must not apply 422, an unknown event name 404, `purchased` before the payment 409.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from consumers.events import apply_locally
from consumers.runner import Event
from proxy.app import create_app
from shop import schema as t
from shop.bootstrap import shop_resources
from shop.checkout import parse_order_request, place_order
from shop.events import EVENT_TYPES
from common.settings import Settings
from tests.builders import NOW
from tests.support.edge import SERVICE_TOKEN, dead_url, edge_settings, internal_headers, routing_doc, write_routing
from tests.support.shopdb import seed_database

WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}
EVENTS_ROUTE = {"match": {"methods": ["POST"], "path": "/event/{name}"}, "new_percent": 100, "writes": True}


async def placed_order(db_url: str, key: str = "http-events") -> str:
    async with shop_resources(Settings.from_env({}, db_url=db_url), clock=lambda: NOW) as shop:
        req = parse_order_request(WORKED, key, "ios", "5.10.0")
        return (await place_order(shop, req, 1)).order_id


async def edge_on(aiohttp_client: Any, tmp_path: Path, db_url: str, **settings: Any) -> TestClient:
    # Old shopping is a dead URL: at 100 % nothing may reach it, and a test would see a 502 if it did.
    legacy = dead_url()
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy, events=EVENTS_ROUTE))
    app = create_app(edge_settings(routing, legacy, db_url=db_url, **settings),
                     registry=CollectorRegistry())
    return await aiohttp_client(app)


@pytest.fixture
async def order_id(db_url: str) -> str:
    await seed_database(db_url)
    return await placed_order(db_url)


@pytest.fixture
async def edge(aiohttp_client: Any, tmp_path: Path, db_url: str, order_id: str) -> TestClient:
    return await edge_on(aiohttp_client, tmp_path, db_url)


def captured(order_id: str, event_id: str = "pn-http-1", **changes: Any) -> dict[str, Any]:
    return {"event_id": event_id, "order_id": order_id, "payment_id": None, "provider": "adyen", "status": "captured",
            "amount": "96.07", "currency": "EUR", "psp_reference": f"PSP-{event_id}", "occurred_at": "2026-06-01T12:00:00Z",
            **changes}


async def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, json=body, headers=internal_headers() if headers is None else headers)
    return resp.status, await resp.json()


async def fingerprint(db_url: str, order_id: str) -> tuple[Any, ...]:
    """What an event could change: the order, its history and payments, the outbox, processed_events."""
    async with shop_resources(Settings.from_env({}, db_url=db_url)) as shop, shop.db.connect() as conn:
        count = lambda table: conn.execute(select(func.count()).select_from(table))  # noqa: E731
        status = (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one()
        return (status, *[(await count(table)).scalar_one() for table in (
            t.order_status_history, t.payments, t.outbox, t.processed_events, t.wallet_ledger)])


async def history(db_url: str, order_id: str) -> list[tuple[str | None, str, str]]:
    h = t.order_status_history.c
    async with shop_resources(Settings.from_env({}, db_url=db_url)) as shop, shop.db.connect() as conn:
        rows = await conn.execute(select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))
        return [tuple(r) for r in rows]


async def test_a_captured_payment_posted_through_the_edge_pays_the_order_and_a_replay_is_a_duplicate(
    edge: TestClient, db_url: str, order_id: str,
) -> None:
    resp = await edge.post("/event/payment_notified_cm", json=captured(order_id), headers=internal_headers())
    assert (resp.status, resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == (200, "events", "new")
    assert await resp.json() == {"code": 0, "msg": "ok", "data": {"outcome": "processed"}}
    assert (await history(db_url, order_id))[-1] == ("pending_payment", "paid", "new")
    after = await fingerprint(db_url, order_id)
    assert await post(edge, "/event/payment_notified_cm", captured(order_id)) == (
        200, {"code": 0, "msg": "ok", "data": {"outcome": "duplicate"}})
    assert await fingerprint(db_url, order_id) == after


async def test_the_order2_path_and_the_event_type_names_reach_the_same_handlers(edge: TestClient, db_url: str, order_id: str) -> None:
    assert (await post(edge, "/order2/event/payment_notified", captured(order_id)))[0] == 200
    purchased = {"event_id": f"purchased:{order_id}", "order_id": order_id, "user_id": 1}
    assert await post(edge, "/order2/event/purchased", purchased) == (200, {"code": 0, "msg": "ok", "data": {"outcome": "processed"}})
    assert [to for _, to, _ in await history(db_url, order_id)] == ["pending_payment", "paid", "fulfilling"]
    before = await fingerprint(db_url, order_id)
    assert (await post(edge, "/event/group_update", {"event_id": "gu-1", "anything": [1, 2]}))[1]["data"] == {"outcome": "processed"}
    assert (await fingerprint(db_url, order_id))[:4] == before[:4]  # only its processed_events row is new


async def test_an_event_applied_over_http_is_a_duplicate_for_the_kafka_consumer(edge: TestClient, db_url: str, order_id: str) -> None:
    assert (await post(edge, "/event/payment_notified_cm", captured(order_id)))[1]["data"] == {"outcome": "processed"}
    async with shop_resources(Settings.from_env({}, db_url=db_url)) as shop:
        consume = apply_locally(shop, EVENT_TYPES["payment_notified"])
        assert await consume(Event("payment_notified_cm", 0, 7, order_id, captured(order_id))) == "duplicate"
        # And the other way round: what the consumer applied first, HTTP answers as a duplicate.
        assert await consume(Event("payment_notified_cm", 0, 8, order_id, captured(order_id, "pn-kafka-2"))) == "processed"
    assert (await post(edge, "/event/payment_notified_cm", captured(order_id, "pn-kafka-2")))[1]["data"] == {"outcome": "duplicate"}
    assert [to for _, to, _ in await history(db_url, order_id)] == ["pending_payment", "paid"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SERVICE_TOKEN}"}, {"Authorization": f"Bearer {SERVICE_TOKEN}x"},
], ids=["none", "wrong", "basic", "longer"])
async def test_without_the_service_token_nothing_is_applied(edge: TestClient, db_url: str, order_id: str, headers: dict[str, str]) -> None:
    before = await fingerprint(db_url, order_id)
    status, body = await post(edge, "/event/payment_notified_cm", captured(order_id), headers)
    assert (status, body["code"], body["msg"]) == (401, 40101, "login_required")
    # An unknown event name is no different without the token: nothing to probe.
    assert (await post(edge, "/event/no_such_event", {}, headers))[0] == 401
    # The direct path is the /order2 404 of issue 9 (public callers can't tell it exists).
    assert (await post(edge, "/order2/event/payment_notified_cm", captured(order_id), headers))[0] == 404
    assert await fingerprint(db_url, order_id) == before


async def test_an_edge_without_a_service_token_refuses_every_event(aiohttp_client: Any, tmp_path: Path, db_url: str, order_id: str) -> None:
    edge = await edge_on(aiohttp_client, tmp_path, db_url, service_token=None)
    before = await fingerprint(db_url, order_id)
    for auth in ("Bearer ", "Bearer", f"Bearer {SERVICE_TOKEN}"):
        assert (await post(edge, "/event/payment_notified_cm", captured(order_id), {"Authorization": auth}))[0] == 401
    assert await fingerprint(db_url, order_id) == before


@pytest.mark.parametrize(("path", "body", "want"), [
    ("/event/payment_notified_cm", {"order_id": "x"}, (400, 40001, "invalid_event")),
    ("/event/payment_notified_cm", [1, 2], (400, 40001, "invalid_event")),
    ("/event/no_such_event", {"event_id": "e"}, (404, 40401, "event_not_found")),
    ("/event/payment_notified_cm", "AMOUNT", (422, 42298, "event_not_applicable")),
    ("/event/purchased", "PURCHASED", (409, 40901, "invalid_state")),
], ids=["schema", "not-an-object", "unknown-name", "amount-mismatch", "purchased-before-payment"])
async def test_events_the_shop_refuses_change_nothing(edge: TestClient, db_url: str, order_id: str, path: str, body: Any, want: tuple[int, int, str]) -> None:
    if body == "AMOUNT":
        body = captured(order_id, amount="96.06")
    elif body == "PURCHASED":
        body = {"event_id": "pu-early", "order_id": order_id, "user_id": 1}
    before = await fingerprint(db_url, order_id)
    status, answer = await post(edge, path, body)
    assert (status, answer["code"], answer["msg"]) == want, answer
    assert await fingerprint(db_url, order_id) == before
    # Refused, not claimed: the same event id applies once it is right.
    if want[2] == "invalid_state":
        assert (await post(edge, "/event/payment_notified_cm", captured(order_id)))[0] == 200
        assert (await post(edge, path, body))[1]["data"] == {"outcome": "processed"}


async def test_malformed_json_is_a_400(edge: TestClient, db_url: str, order_id: str) -> None:
    resp = await edge.post("/event/payment_notified_cm", data=b'{"event_id": ', headers=internal_headers(**{"Content-Type": "application/json"}))
    assert resp.status == 400 and (await resp.json())["code"] == 40001
