"""A new-side Adyen refund whose REFUND webhook reaches the bridge before the refund's `submitted` commit.

FAILS today (a bug between shop/refunds.py and handlers/payment_callback.py, found by `make demo-traffic`;
see docs/decisions.md "Issue 11: detail and demo"): the new side sends Adyen the refund's reference as
``refund-<refunds.id>``; the bridge finds a refund by its pspReference, which the new side stores only
when it applies Adyen's ``received`` answer, else by a merchantReference that is ``<refunds.id>`` (what
old shopping sends) or the request id. The emulator, like Adyen, may send the webhook before that
commit; the bridge then names the refund ``refund-<id>``, and both sides' appliers refuse the event
(refund_not_found): dead-lettered, the refund stays ``submitted`` although the money went back. In the
demo's run 6 of 20 Adyen refunds went that way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.app import create_app
from shop import schema as t
from tests.support.edge import SERVICE_TOKEN, dead_url, edge_settings, routing_doc, write_routing
from tests.support.payments import notification_body, psp_settings
from tests.support.psp import Psp, WebhookSink
from tests.support.refunds import EVENTS_ROUTE, REFUND_ROUTE, order_status, paid_order, post_refund, refunds_of

pytest_plugins = ["tests.support.psp_fixtures"]

ORDER = "RW-1"
BRIDGE = {"match": {"methods": ["POST"], "path": "/payment_callback/adyen"}, "new_percent": 100, "writes": True}


async def test_a_refund_webhook_before_the_submitted_commit_still_names_our_refund(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fresh_engine: AsyncEngine, psp: Psp, webhook_sink: WebhookSink,
) -> None:
    routing = write_routing(tmp_path / "routing.yaml",
                            routing_doc(dead_url(), refund=REFUND_ROUTE, events=EVENTS_ROUTE, payment_callback=BRIDGE))
    edge: TestClient = await aiohttp_client(create_app(
        edge_settings(routing, dead_url(), db_url=db_url, **psp_settings(psp)), registry=CollectorRegistry()))
    await paid_order(fresh_engine, psp, ORDER, provider="adyen")
    status, body = await post_refund(edge, {"order_id": ORDER, "amount": "16.07", "request_id": "rw-1"})
    assert (status, body["data"]["status"]) == (200, "submitted"), body
    [refund] = await refunds_of(fresh_engine, ORDER)
    [item] = [i for i in await webhook_sink.wait_for(3) if i["eventCode"] == "REFUND"]

    # The webhook as it arrives while the refund is still as step 1 left it (pending, no pspReference yet).
    r = t.refunds.c
    async with fresh_engine.begin() as conn:
        await conn.execute(update(t.refunds).where(r.id == refund["id"]).values(status="pending", psp_reference=None))
    resp = await edge.post("/payment_callback/adyen", json=notification_body(item))
    assert resp.status == 200 and await resp.text() == "[accepted]"
    async with fresh_engine.connect() as conn:
        [event] = (await conn.execute(select(t.outbox.c.payload).where(t.outbox.c.topic == "refund_notified"))).scalars()
    # Then step 3 commits (submitted, Adyen's pspReference), and a consumer applies the event.
    async with fresh_engine.begin() as conn:
        await conn.execute(update(t.refunds).where(r.id == refund["id"])
                           .values(status="submitted", psp_reference=refund["psp_reference"]))

    assert event["refund_id"] == str(refund["id"]), event  # today: "refund-<id>"
    applied = await edge.post("/event/refund_notified", json=event, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert applied.status == 200, await applied.text()
    assert [x["status"] for x in await refunds_of(fresh_engine, ORDER)] == ["succeeded"]
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"
