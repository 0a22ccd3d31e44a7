"""The Adyen webhook bridge, ``POST /payment_callback/adyen``, through the edge on the repo's routing.yaml.

What it proves, with Adyen's real notification shape (``notificationItems[].NotificationRequestItem``)
signed by adapters/adyen_hmac.py, by the PSP emulator's own signer and with Adyen's published test
vector: the edge serves the path on the new side; each event code becomes the outbox event whose
payload shop.events' parsers and old shopping's ``POST /event/{name}`` take (AUTHORISATION → authorized / payment_failed, CAPTURE → captured,
REFUND → refund succeeded / failed, REFUND_FAILED with success "true" → failed), all items in one
transaction, answered ``[accepted]``; one bad or missing signature in a batch → 401 and no row; bodies
that are not JSON, not Adyen's shape or too big → a clean 4xx envelope and no row; the key and the
signatures appear in no answer and no log line. Applied with the consumers' own handler
(consumers.events.apply_locally): a notification delivered three times is one event id, applied once
(processed_events); CAPTURE before AUTHORISATION and a REFUND before a late AUTHORISATION end in the
state the in-order deliveries end in. End to end: old shopping pays and refunds with Adyen through
the edge, the PSP emulator posts its webhooks (duplicated, then out of order) to the edge, and the
outbox holds events naming old shopping's own payment and refund rows.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.adyen_hmac import AdyenHmac
from common.settings import DEFAULT_TOPICS
from consumers.events import apply_locally
from consumers.runner import Event
from emulators.legacy import create_app as create_legacy
from proxy.app import create_app
from shop import schema as t
from shop.events import EVENT_TYPES
from tests.builders import NOW, shop_at
from tests.support.edge import dead_url, edge_settings, routing_doc, url_of, write_routing
from tests.support.legacydb import engine_for, envelope, seeded_template, seeded_url
from tests.support.net import free_port
from tests.support.payments import (
    ADYEN_BODY,
    legacy_psp,
    new_order,
    notification,
    notification_body,
    order_status,
    rows,
)
from tests.support.psp import HMAC_KEY, Psp
from tests.unit.test_adyen_hmac import PUBLISHED_ITEM, PUBLISHED_KEY, PUBLISHED_SIGNATURE

pytest_plugins = ["tests.support.psp_fixtures"]

ClientFactory = Callable[..., Awaitable[TestClient]]
ROOT = Path(__file__).resolve().parents[2]
HOOK = "/payment_callback/adyen"
TOKEN = "webhook-test-token-51c2"
USER1 = {"X-User-Id": "1"}
BY_TOPIC = {DEFAULT_TOPICS[name]: name for name in EVENT_TYPES}
PAYMENT_TOPICS = ("payment_notified_cm", "payment_failed_cm", "refund_notified")


def repo_routes() -> dict[str, Any]:
    """routing.yaml's own routes: the bridge is served as ops run it."""
    return dict(yaml.safe_load((ROOT / "routing.yaml").read_text(encoding="utf-8"))["routes"])


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_template(tmp_path_factory, "adyen_webhook")


@pytest.fixture
async def url(request: pytest.FixtureRequest, template: Path, tmp_path: Path) -> str:
    """SQLite (a copy of the module's template) unless a test asks for ``BOTH_DATABASES``."""
    return await seeded_url(getattr(request, "param", "sqlite"), template, tmp_path, "test_adyen_webhook")


BOTH_DATABASES = pytest.mark.parametrize("url", ["sqlite", "mariadb"], indirect=True)


@pytest.fixture
async def db(url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(url):
        yield engine


async def start_edge(aiohttp_client: ClientFactory, tmp_path: Path, db_url: str, *, legacy_url: str | None = None,
                     port: int | None = None, hmac_key: str = HMAC_KEY) -> TestClient:
    legacy_url = legacy_url or dead_url()  # nothing the bridge does may reach old shopping
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, **repo_routes()))
    settings = edge_settings(routing, legacy_url, db_url=db_url, adyen_hmac_key=hmac_key, service_token=TOKEN)
    app = create_app(settings, registry=CollectorRegistry())
    return await aiohttp_client(app, server_kwargs={"port": port} if port else {})


@pytest.fixture
async def edge(aiohttp_client: ClientFactory, tmp_path: Path, url: str) -> TestClient:
    return await start_edge(aiohttp_client, tmp_path, url)


# --- helpers ----------------------------------------------------------------------------------


async def adyen_payment(db: AsyncEngine, order_id: str, psp_reference: str | None, status: str = "created") -> int:
    async with db.begin() as conn:
        result = await conn.execute(insert(t.payments).values(
            order_id=order_id, provider="adyen", method="scheme", status=status, amount=Decimal("96.07"),
            currency="EUR", psp_reference=psp_reference, idempotency_key=f"k-{order_id}", created_at=NOW, updated_at=NOW,
        ))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def adyen_refund(db: AsyncEngine, order_id: str, payment_id: int, amount: str = "96.07",
                       psp_reference: str | None = None, request_id: str | None = None) -> int:
    async with db.begin() as conn:
        result = await conn.execute(insert(t.refunds).values(
            order_id=order_id, payment_id=payment_id, amount=Decimal(amount), currency="EUR", status="submitted",
            attempts=1, psp_reference=psp_reference, request_id=request_id or f"req-{order_id}-{amount}",
            created_at=NOW, updated_at=NOW,
        ))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def post(edge: TestClient, *items: dict[str, Any], status: int = 200) -> Any:
    resp = await edge.post(HOOK, json=notification_body(*items))
    if status == 200:
        assert resp.status == 200 and await resp.text() == "[accepted]", await resp.text()
        return None
    return await envelope(resp, status)


async def events(db: AsyncEngine) -> list[Any]:
    return await rows(db, t.outbox, t.outbox.c.topic.in_(PAYMENT_TOPICS))


async def apply_all(db: AsyncEngine, after: int = 0) -> list[str]:
    """Every outbox event after row `after`, in outbox order, by the consumers' own handler, including
    the ``purchased`` events applying them writes (as the relay and the consumers would: one partition
    per order keeps this order)."""
    shop = shop_at(db, NOW)
    outcomes = []
    while batch := await rows(db, t.outbox, t.outbox.c.id > after, t.outbox.c.topic != "noti"):
        for row in batch:
            handler = apply_locally(shop, EVENT_TYPES[BY_TOPIC[row.topic]])
            outcomes.append(await handler(Event(row.topic, 0, row.id, row.key, row.payload)))
            after = row.id
    return outcomes


async def last_outbox_id(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(t.outbox.c.id).order_by(t.outbox.c.id.desc()).limit(1))).scalar() or 0)


async def final_state(db: AsyncEngine, order_id: str) -> dict[str, Any]:
    """What must not depend on the order webhooks arrived in: the order, its money, what was announced."""
    (order,) = await rows(db, t.orders, t.orders.c.id == order_id)
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    return {
        "status": order.status, "paid": order.paid_at is not None,
        "payments": [(p.status, p.amount) for p in await rows(db, t.payments, t.payments.c.order_id == order_id)],
        "refunds": [(r.status, r.amount) for r in await rows(db, t.refunds, t.refunds.c.order_id == order_id)],
        "purchased": sum(1 for b in box if b.topic == "purchased"),
        "noti": sorted(b.payload["template"] for b in box if b.topic == "noti"),
    }


async def wait_for_events(db: AsyncEngine, count: int, within: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + within
    while len(found := await events(db)) < count:
        assert time.monotonic() < deadline, [(r.topic, r.payload) for r in found]
        await asyncio.sleep(0.05)
    return found


# --- served on the new side -------------------------------------------------------------------


async def test_the_edge_serves_the_bridge_on_the_new_side_and_answers_accepted(edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    resp = await edge.post(HOOK, json=notification_body(notification("AUTHORISATION", "PSPA1", order_id, 9607)))
    assert resp.status == 200 and await resp.text() == "[accepted]"
    assert (resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == ("payment_callback", "new")
    assert [(r.topic, r.key) for r in await events(db)] == [("payment_notified_cm", order_id)]
    # The direct /order2 spelling is for internal callers only, like every /order2 path.
    direct = await edge.post("/order2" + HOOK, json=notification_body(notification("AUTHORISATION", "PSPA2", order_id, 9607)))
    assert direct.status == 404 and len(await events(db)) == 1


@pytest.mark.parametrize(("event", "success", "topic", "expected"), [
    ("AUTHORISATION", "true", "payment_notified_cm",
     {"status": "authorized", "provider": "adyen", "amount": "96.07", "currency": "EUR", "psp_reference": "PSP1"}),
    ("AUTHORISATION", "false", "payment_failed_cm", {"provider": "adyen", "reason": "Refused"}),
    ("CAPTURE", "true", "payment_notified_cm",
     {"status": "captured", "provider": "adyen", "amount": "96.07", "currency": "EUR", "psp_reference": "PSP1"}),
    ("CAPTURE_FAILED", "true", "payment_failed_cm", {"provider": "adyen", "reason": "capture failed: Refused"}),
    ("REFUND", "true", "refund_notified",
     {"status": "succeeded", "amount": "40.00", "currency": "EUR", "psp_reference": "RF1", "reason": None}),
    ("REFUND", "false", "refund_notified",
     {"status": "failed", "amount": "40.00", "currency": "EUR", "psp_reference": "RF1", "reason": "Refused"}),
    ("REFUND_FAILED", "true", "refund_notified",
     {"status": "failed", "amount": "40.00", "currency": "EUR", "psp_reference": "RF1", "reason": "Refused"}),
])
async def test_each_event_code_becomes_the_event_its_consumer_parses(
        edge: TestClient, db: AsyncEngine, url: str, aiohttp_client: ClientFactory, event: str, success: str, topic: str,
        expected: dict[str, Any]) -> None:
    order_id = await new_order(db)
    payment_id = await adyen_payment(db, order_id, "PSP1", status="authorized")
    refund_id = await adyen_refund(db, order_id, payment_id, "40.00", psp_reference="RF1")
    if event.startswith("REFUND"):
        item = notification(event, "RF1", str(refund_id), 4000, success=success, original_reference="PSP1", reason="Refused")
    elif event.startswith("CAPTURE"):
        item = notification(event, "CAP1", order_id, 9607, success=success, original_reference="PSP1", reason="Refused")
    else:
        item = notification(event, "PSP1", order_id, 9607, success=success, reason="Refused")
    await post(edge, item)
    (row,) = await events(db)
    assert (row.topic, row.key) == (topic, order_id)
    owner = {"refund_id": str(refund_id)} if topic == "refund_notified" else {"payment_id": str(payment_id)}
    assert row.payload == {"event_id": f"adyen:{event}:{item['pspReference']}:{success}", "order_id": order_id,
                           "occurred_at": "2026-06-01T12:00:00+02:00", **owner, **expected}
    EVENT_TYPES[BY_TOPIC[topic]].parse(row.payload)  # the new side's consumer parses it
    # ... and so does old shopping, to which the consumers deliver the events routing.yaml gives it.
    legacy = await aiohttp_client(create_legacy(url))
    applied = await envelope(await legacy.post(f"/event/{topic}", json=row.payload), 200)
    assert applied["data"]["outcome"] == "processed"


async def test_a_refund_is_found_by_the_reference_we_sent_before_its_psp_reference_is_stored(
        edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    payment_id = await adyen_payment(db, order_id, "PSP2", status="captured")
    by_id = await adyen_refund(db, order_id, payment_id, "10.00")
    by_request = await adyen_refund(db, order_id, payment_id, "20.00", request_id="ops-ticket-77")
    await post(edge, notification("REFUND", "RFX", str(by_id), 1000, original_reference="PSP2"),
               notification("REFUND", "RFY", "ops-ticket-77", 2000, original_reference="PSP2"),
               # the reference of a refund of another payment names nothing here
               notification("REFUND", "RFZ", str(by_id), 1000, original_reference="PSP-OTHER"))
    assert [(r.payload["refund_id"], r.payload["order_id"]) for r in await events(db)] == [
        (str(by_id), order_id), (str(by_request), order_id)]


async def test_a_webhook_that_overtakes_the_pay_routes_own_write_still_names_its_payment(
        edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    older = await adyen_payment(db, order_id, None)  # Adyen answered, the pay route has not written it yet
    payment_id = await adyen_payment(db, order_id, None)
    await post(edge, notification("AUTHORISATION", "PSP3", order_id, 9607))
    named = notification("AUTHORISATION", "PSP4", order_id, 9607)
    named["additionalData"]["metadata.payment_id"] = str(older)  # what the pay routes send, Adyen echoes
    await post(edge, named)
    assert [r.payload["payment_id"] for r in await events(db)] == [str(payment_id), str(older)]
    assert await apply_all(db) == ["processed", "processed"]
    payments = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert [(p.id, p.status, p.psp_reference) for p in payments] == [(older, "authorized", "PSP4"),
                                                                    (payment_id, "authorized", "PSP3")]


async def test_the_published_adyen_vector_is_accepted_with_its_own_key(
        aiohttp_client: ClientFactory, tmp_path: Path, url: str, db: AsyncEngine) -> None:
    edge = await start_edge(aiohttp_client, tmp_path, url, hmac_key=PUBLISHED_KEY)
    item = {**copy.deepcopy(PUBLISHED_ITEM), "additionalData": {"hmacSignature": PUBLISHED_SIGNATURE}}
    await post(edge, item)
    (row,) = await events(db)
    assert row.payload["event_id"] == "adyen:AUTHORISATION:7914073381342284:true"
    assert (row.payload["order_id"], row.payload["amount"]) == ("TestPayment-1407325143704", "11.30")
    await post(edge, {**item, "amount": {"currency": "EUR", "value": 1131}}, status=401)


# --- refused: nothing stored ------------------------------------------------------------------


async def test_one_bad_item_refuses_the_whole_notification_and_nothing_is_stored(
        edge: TestClient, db: AsyncEngine, capsys: pytest.CaptureFixture[str]) -> None:
    order_id = await new_order(db)
    good = notification("AUTHORISATION", "PSPB1", order_id, 9607)
    tampered = {**notification("CAPTURE", "CAPB1", order_id, 9607, original_reference="PSPB1"),
                "amount": {"currency": "EUR", "value": 1}}  # signed for 96.07, says 0.01
    unsigned = notification("CAPTURE", "CAPB2", order_id, 9607, original_reference="PSPB1", signer=None)
    other_key = notification("CAPTURE", "CAPB3", order_id, 9607, original_reference="PSPB1",
                             signer=AdyenHmac.from_hex("AB" * 32))
    empty_signature = {**good, "additionalData": {"hmacSignature": ""}}
    with structlog.testing.capture_logs() as logs:
        for batch, bad in (((good, tampered), 1), ((unsigned,), 0), ((good, good, other_key), 2), ((empty_signature,), 0)):
            refused = await post(edge, *batch, status=401)
            assert refused == {"code": 40103, "msg": "invalid_signature", "data": {"item": bad}}
    assert await rows(db, t.outbox) == [] and await rows(db, t.processed_events) == []
    seen = repr(logs) + "".join(capsys.readouterr())
    assert "adyen_webhook_refused" in seen
    for secret in (HMAC_KEY, HMAC_KEY.lower(), good["additionalData"]["hmacSignature"],
                   other_key["additionalData"]["hmacSignature"]):
        assert secret not in seen


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{", 400, "body"),
    (b"[]", 400, "notificationItems"),
    (b'{"live": "false", "notificationItems": []}', 400, "notificationItems"),
    (b'{"notificationItems": [{"NotificationRequestItem": "x"}]}', 400, "notificationItems"),
    (b'{"notificationItems": [{"Item": {}}]}', 400, "notificationItems"),
    (b'{"notificationItems": "' + b"\\ud800" + b'"}', 400, "notificationItems"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, 400, "body"),
])
async def test_bodies_that_are_not_a_notification_are_a_clean_4xx_and_store_nothing(
        edge: TestClient, db: AsyncEngine, body: bytes, status: int, field: str) -> None:
    resp = await edge.post(HOOK, data=body, headers={"Content-Type": "application/json"})
    refused = await envelope(resp, status)
    assert refused["msg"] == "bad_request" and refused["data"]["field"] == field
    assert await rows(db, t.outbox) == []


async def test_too_big_or_too_many_items_is_refused_before_any_signature_is_checked(edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    item = notification("AUTHORISATION", "PSPC1", order_id, 9607)
    big = notification_body({**item, "padding": "x" * (300 * 1024)})
    assert (await envelope(await edge.post(HOOK, json=big), 413))["msg"] == "body_too_large"
    many = notification_body(*[item] * 101)
    assert (await envelope(await edge.post(HOOK, json=many), 400))["data"]["field"] == "notificationItems"
    assert await rows(db, t.outbox) == []


async def test_items_we_do_not_apply_are_accepted_and_stored_as_nothing(edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    await post(edge,
               notification("REPORT_AVAILABLE", "PSPD1", "report", 0),
               notification("CANCELLATION", "PSPD2", order_id, 9607),
               notification("AUTHORISATION", "PSPD3", "not an order id: spaces", 9607),
               notification("REFUND", "PSPD4", "77", 100, original_reference="NO-SUCH-PAYMENT"),
               notification("AUTHORISATION", "PSPD5", order_id, 9607))
    assert [r.payload["psp_reference"] for r in await events(db)] == ["PSPD5"]  # one transaction, the good one in it


# --- duplicates and order ---------------------------------------------------------------------


@BOTH_DATABASES
async def test_a_notification_delivered_three_times_is_one_event_applied_once(edge: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    await adyen_payment(db, order_id, "PSPE1")
    item = notification("AUTHORISATION", "PSPE1", order_id, 9607)
    for _ in range(3):
        await post(edge, item)
    found = await events(db)
    assert len(found) == 3 and len({r.payload["event_id"] for r in found}) == 1
    assert await apply_all(db) == ["processed", "duplicate", "duplicate"]
    claimed = await rows_of_processed(db, found[0].payload["event_id"])
    assert claimed == ["shopping-new:payment_notified"]
    history = await rows(db, t.order_status_history, t.order_status_history.c.order_id == order_id)
    assert [h.to_status for h in history] == ["authorized"]


async def rows_of_processed(db: AsyncEngine, event_id: str) -> list[str]:
    async with db.connect() as conn:
        pe = t.processed_events.c
        return list((await conn.execute(select(pe.consumer).where(pe.event_id == event_id))).scalars())


@BOTH_DATABASES
async def test_capture_before_authorisation_and_refund_before_a_late_authorisation_end_as_in_order(
        edge: TestClient, db: AsyncEngine) -> None:
    async def lifecycle(order_id: str, tag: str, first: list[str], then: list[str]) -> dict[str, Any]:
        """The order's payment webhooks, `first` delivered and applied, then its refund asked for (it needs
        the captured money), then the `then` ones; each step applied as the consumers would."""
        payment_id = await adyen_payment(db, order_id, f"PSP-{tag}")
        items = {
            "AUTHORISATION": notification("AUTHORISATION", f"PSP-{tag}", order_id, 9607),
            "CAPTURE": notification("CAPTURE", f"CAP-{tag}", order_id, 9607, original_reference=f"PSP-{tag}"),
        }
        mark = await last_outbox_id(db)
        for code in first:
            await post(edge, items[code])
        await apply_all(db, mark)
        refund_id = await adyen_refund(db, order_id, payment_id, psp_reference=f"RF-{tag}")
        items["REFUND"] = notification("REFUND", f"RF-{tag}", str(refund_id), 9607, original_reference=f"PSP-{tag}")
        mark = await last_outbox_id(db)
        for code in then:
            await post(edge, items[code])
        await apply_all(db, mark)
        return await final_state(db, order_id)

    in_order = await lifecycle(await new_order(db), "A", ["AUTHORISATION", "CAPTURE"], ["REFUND"])
    assert in_order == {"status": "refunded", "paid": True, "payments": [("captured", Decimal("96.07"))],
                        "refunds": [("succeeded", Decimal("96.07"))], "purchased": 1,
                        "noti": ["order_paid", "refund_succeeded"]}
    # CAPTURE first; the AUTHORISATION only after the REFUND, with copies of the others.
    shuffled = await lifecycle(await new_order(db), "B", ["CAPTURE", "CAPTURE"],
                               ["REFUND", "AUTHORISATION", "CAPTURE", "REFUND", "AUTHORISATION"])
    assert shuffled == in_order


# --- the PSP emulator's own webhooks, end to end ----------------------------------------------


async def test_the_psp_emulators_webhooks_reach_the_outbox_through_the_edge_naming_old_shoppings_rows(
        make_psp: Callable[..., Awaitable[Psp]], aiohttp_client: ClientFactory, tmp_path: Path, url: str,
        db: AsyncEngine) -> None:
    port = free_port()
    psp = await make_psp(webhook_url=f"http://127.0.0.1:{port}{HOOK}")
    legacy = await aiohttp_client(create_legacy(url, psp=legacy_psp(psp), service_token=TOKEN))
    edge = await start_edge(aiohttp_client, tmp_path, url, legacy_url=url_of(legacy.server), port=port)
    await psp.fault(webhooks={"copies": 2})
    order_id = await new_order(db)
    paid = await envelope(await edge.post(f"/shopping/orders/{order_id}/pay/any/adyen", json=ADYEN_BODY, headers=USER1), 200)
    assert paid["data"]["resultCode"] == "Authorised"
    found = await wait_for_events(db, 4)  # AUTHORISATION and CAPTURE, twice each
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert [(r.topic, r.payload.get("status"), r.payload["payment_id"]) for r in found] == [
        ("payment_notified_cm", "authorized", str(payment.id))] * 2 + [("payment_notified_cm", "captured", str(payment.id))] * 2
    assert await apply_all(db) == ["processed", "duplicate", "processed", "duplicate", "processed"]  # + purchased
    assert await order_status(db, order_id) == "fulfilling"

    await psp.fault(webhooks={"copies": 1})
    back = await envelope(await edge.post("/refund/refund", headers={"Authorization": f"Bearer {TOKEN}"},
                                          json={"order_id": order_id, "request_id": "e2e-1", "amount": "6.07"}), 200)
    assert back["data"]["status"] == "submitted"
    mark = found[-1].id
    (refunded,) = [r for r in await wait_for_events(db, 5) if r.id > mark]
    assert (refunded.topic, refunded.payload["refund_id"], refunded.payload["status"]) == (
        "refund_notified", back["data"]["refund_id"], "succeeded")
    await apply_all(db, (await rows(db, t.outbox, t.outbox.c.topic == "purchased"))[-1].id)
    assert await order_status(db, order_id) == "partially_refunded"
    assert all(d["accepted"] for d in (await psp.webhooks())["deliveries"])


async def test_the_emulators_out_of_order_webhooks_still_pay_the_order(
        make_psp: Callable[..., Awaitable[Psp]], aiohttp_client: ClientFactory, tmp_path: Path, url: str,
        db: AsyncEngine) -> None:
    port = free_port()
    psp = await make_psp(webhook_url=f"http://127.0.0.1:{port}{HOOK}")
    legacy = await aiohttp_client(create_legacy(url, psp=legacy_psp(psp)))
    edge = await start_edge(aiohttp_client, tmp_path, url, legacy_url=url_of(legacy.server), port=port)
    await psp.fault(webhooks={"out_of_order": True})
    order_id = await new_order(db)
    await envelope(await edge.post(f"/shopping/orders/{order_id}/pay/any/adyen", json=ADYEN_BODY, headers=USER1), 200)
    assert await rows(db, t.outbox, t.outbox.c.topic == "payment_notified_cm") == []
    assert (await (await psp.admin.post("/_psp/webhooks/flush")).json()) == {"flushed": 2}
    found = await wait_for_events(db, 2)
    assert [r.payload["status"] for r in found] == ["captured", "authorized"]
    await apply_all(db)
    assert await order_status(db, order_id) == "fulfilling"
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "captured"


@BOTH_DATABASES
async def test_one_body_about_several_orders_names_each_items_own_payment(edge: TestClient, db: AsyncEngine) -> None:
    """The rows are looked up once for the whole body (payments_named); each item still gets its own."""
    by_ref, waiting, both, named, none = [await new_order(db) for _ in range(5)]
    ref_row = await adyen_payment(db, by_ref, "PSP-R", status="authorized")
    waiting_row = await adyen_payment(db, waiting, None)
    await adyen_payment(db, both, None)  # waiting too, but the item's pspReference names the other row
    both_row = await adyen_payment(db, both, "PSP-B", status="authorized")
    metadata = notification("AUTHORISATION", "PSP-N", named, 9607)
    metadata["additionalData"]["metadata.payment_id"] = "424242"
    await post(edge, notification("CAPTURE", "CAP-R", by_ref, 9607, original_reference="PSP-R"),
               notification("AUTHORISATION", "PSP-W", waiting, 9607),
               notification("AUTHORISATION", "PSP-B", both, 9607), metadata,
               notification("AUTHORISATION", "PSP-X", none, 9607))
    assert [(r.key, r.payload["payment_id"]) for r in await events(db)] == [
        (by_ref, str(ref_row)), (waiting, str(waiting_row)), (both, str(both_row)), (named, "424242"), (none, None)]
