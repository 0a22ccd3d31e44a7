"""The PayPal capture reconciler (shop/capture_reconcile.py, consumers/capture_reconcile.py) on SQLite and MariaDB,
the edge's pay routes and the reconciler both against the real PSP emulator; the reconciler's clock set by hand.

Proves: a capture that PayPal made but whose answer never came, with a shopper who gave up after the 504,
is recorded by the reconciler from a read of the PayPal order (no second capture POST): the order paid once,
purchased + noti once, history actor consumer; a capture that never reached PayPal, for an approved order
the payer finished, is made with the key paypal_finished sent (one capture); a PayPal order the payer
never approved makes the order payable again; an order the app's paid_from_client made payment_confirming
(no paypal_finished for the payment) is only read, never captured, and counted as in doubt; nothing is
looked at before IN_FLIGHT; a PSP error stops the pass, counted, and the next pass settles it; a payment
settled by the app's retry between the scan and the apply changes nothing; only the lease holder asks PayPal;
the metrics exist at 0 from the start; a PENDING capture is read again each pass and recorded once PayPal completes it; old shopping's finish in doubt is settled the same way, with its key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.retry import RetryPolicy
from consumers.capture_reconcile import CaptureReconcileMetrics, CaptureReconciler
from emulators.legacy import create_app as create_legacy
from shop import schema as t
from shop.bootstrap import Shop
from shop.capture_reconcile import OUTCOMES, captures_in_doubt, reconcile
from shop.db import make_engine
from shop.reference import ReferenceCache
from tests.support.edge import sample
from tests.support.payments import Shopper, finish_path, legacy_psp, pay_edge, pay_path
from tests.support.psp import Psp

pytest_plugins = ["tests.support.psp_fixtures"]

CAPTURE = "/v2/checkout/orders/*/capture"
ATTEMPT_SECONDS = 2.0
# One HTTP attempt per call, so one fault hit is one failed call of the reconciler.
ONCE = RetryPolicy(attempts=1, timeout=2.0, base_delay=0.01, max_delay=0.05)
LATER = timedelta(seconds=31)  # past shop.payments.IN_FLIGHT


class World:
    """An edge whose pay routes give up after one PSP attempt (the shopper sees the 504), the database it writes,
    and a reconciler whose clock is `LATER` ahead of the edge's unless a test moves it."""

    def __init__(self, shopper: Shopper, engine: AsyncEngine, psp: Psp) -> None:
        self.shopper, self.engine, self.psp = shopper, engine, psp
        self.ahead = LATER
        self.registry = CollectorRegistry()
        self.shop = Shop(engine, engine, ReferenceCache(engine, 0.0), clock=lambda: t.utcnow() + self.ahead)
        self.reconciler = self.new_reconciler("c1", self.registry)

    def new_reconciler(self, holder: str, registry: CollectorRegistry) -> CaptureReconciler:
        return CaptureReconciler(self.shop, self.psp.paypal(retry=ONCE), CaptureReconcileMetrics(registry),
                                 holder=holder, period=1.0)

    async def approved_order(self, order_id: str, *, approve: bool = True) -> str:
        await self.shopper.order(order_id)
        status, body = await self.shopper.paypal_pay(order_id)
        assert status == 200, body
        if approve:
            assert await self.psp.approve(body["data"]["approve_url"]) == 200
        return str(body["data"]["pay_id"])

    async def finished_in_doubt(self, order_id: str, fault: dict[str, Any], *, approve: bool = True) -> str:
        """paypal_finished under `fault` on the capture: the shopper's 502/504, the order left payment_confirming."""
        pay_id = await self.approved_order(order_id, approve=approve)
        await self.psp.fault(path=CAPTURE, times=1, **fault)
        status, body = await self.shopper.paypal_finished(order_id, pay_id)
        assert status in (502, 504), body
        assert await self.shopper.status(order_id) == "payment_confirming"
        assert await self.shopper.payments(order_id) == [("paypal", "created", Decimal("96.07"))]
        return pay_id

    def outcomes(self) -> dict[str, float]:
        return {o: sample(self.registry, "paypal_captures_reconciled_total", outcome=o) for o in OUTCOMES}


@pytest.fixture
async def w(aiohttp_client: Any, tmp_path: Path, db_url: str, psp: Psp) -> AsyncIterator[World]:
    edge = await pay_edge(aiohttp_client, tmp_path, db_url, psp, psp_timeout_seconds=ATTEMPT_SECONDS,
                          psp_max_attempts=1)
    engine = make_engine(db_url)
    try:
        yield World(Shopper(edge, db_url), engine, psp)
    finally:
        await engine.dispose()


def only(outcome: str, n: int = 1) -> dict[str, float]:
    return {o: (n if o == outcome else 0) for o in OUTCOMES}



async def test_a_capture_made_whose_answer_was_lost_is_recorded_from_a_read(w: World, psp: Psp) -> None:
    assert w.outcomes() == only("captured", 0)  # every outcome at 0 before the first pass
    await w.finished_in_doubt("RC-1", {"act_then_timeout": True})
    assert len((await psp.state())["paypal"]["captures"]) == 1  # PayPal has the money; we don't know it

    assert await w.reconciler.reconcile_once() == {"captured": 1}

    assert await w.shopper.status("RC-1") == "paid"
    [payment] = await w.shopper.rows(t.payments, "RC-1")
    [capture_id] = (await psp.state())["paypal"]["captures"]
    assert (payment["status"], payment["capture_id"], payment["psp_reference"]) == ("captured", capture_id, capture_id)
    history = [(h["from_status"], h["to_status"], h["actor"]) for h in await w.shopper.rows(t.order_status_history, "RC-1")]
    assert history == [("pending_payment", "payment_confirming", "new"), ("payment_confirming", "paid", "consumer")]
    assert [o[0] for o in await w.shopper.outbox("RC-1")] == ["purchased", "noti"]
    assert len(await psp.calls("POST", "/capture")) == 1  # read, never captured again
    assert len(await psp.calls("GET")) >= 1
    assert w.outcomes() == only("captured")
    assert sample(w.registry, "paypal_captures_in_doubt") == 1
    assert sample(w.registry, "capture_reconciler_leader") == 1

    assert await w.reconciler.reconcile_once() == {}  # settled: not in doubt any more
    assert sample(w.registry, "paypal_captures_in_doubt") == 0
    assert [o[0] for o in await w.shopper.outbox("RC-1")] == ["purchased", "noti"]


async def test_nothing_is_looked_at_before_the_in_flight_window(w: World, psp: Psp) -> None:
    await w.finished_in_doubt("RC-2", {"act_then_timeout": True})
    w.ahead = timedelta(seconds=5)  # a paypal_finished retry may still be under way
    gets = len(await psp.calls("GET"))
    assert await w.reconciler.reconcile_once() == {}
    assert len(await psp.calls("GET")) == gets
    assert await w.shopper.status("RC-2") == "payment_confirming"


async def test_a_capture_that_never_reached_paypal_is_made_with_the_finish_key(w: World, psp: Psp) -> None:
    await w.finished_in_doubt("RC-3", {"error_status": 503})
    assert (await psp.state())["paypal"]["captures"] == {}

    assert await w.reconciler.reconcile_once() == {"captured": 1}

    assert await w.shopper.status("RC-3") == "paid"
    assert len((await psp.state())["paypal"]["captures"]) == 1
    captures = await psp.calls("POST", "/capture")
    assert [c["status"] for c in captures] == [503, 201]
    assert len({c["key"] for c in captures}) == 1  # the key paypal_finished sent
    assert await w.shopper.payments("RC-3") == [("paypal", "captured", Decimal("96.07"))]


async def test_a_paypal_order_never_approved_makes_the_order_payable_again(w: World, psp: Psp) -> None:
    await w.finished_in_doubt("RC-4", {"error_status": 503}, approve=False)

    assert await w.reconciler.reconcile_once() == {"not_approved": 1}

    assert await w.shopper.status("RC-4") == "payment_failed"
    assert await w.shopper.payments("RC-4") == [("paypal", "created", Decimal("96.07"))]  # may still be finished
    assert len(await psp.calls("POST", "/capture")) == 1
    assert [o[1] for o in await w.shopper.outbox("RC-4")] == ["payment_failed"]


async def test_an_order_the_app_said_was_paid_is_only_read_never_captured(w: World, psp: Psp) -> None:
    await w.approved_order("RC-5")
    async with w.engine.begin() as conn:  # the app's paid_from_client (either side): no paypal_finished
        await conn.execute(update(t.orders).where(t.orders.c.id == "RC-5").values(status="payment_confirming",
                                                                                  updated_at=t.utcnow()))

    assert await w.reconciler.reconcile_once() == {"awaiting_payer": 1}

    assert await psp.calls("POST", "/capture") == []
    assert await w.shopper.status("RC-5") == "payment_confirming"
    assert sample(w.registry, "paypal_captures_in_doubt") == 1  # left for a person, and visible


async def test_a_psp_error_stops_the_pass_and_the_next_pass_settles_it(w: World, psp: Psp) -> None:
    await w.finished_in_doubt("RC-6", {"act_then_timeout": True})
    await w.finished_in_doubt("RC-7", {"act_then_timeout": True})
    await psp.fault(path="/v2/checkout/orders/*", error_status=503, times=1)

    assert await w.reconciler.reconcile_once() == {}
    assert sample(w.registry, "capture_reconcile_errors_total") == 1
    assert (await w.shopper.status("RC-6"), await w.shopper.status("RC-7")) == ("payment_confirming",) * 2

    assert await w.reconciler.reconcile_once() == {"captured": 2}
    assert (await w.shopper.status("RC-6"), await w.shopper.status("RC-7")) == ("paid", "paid")
    assert len((await psp.state())["paypal"]["captures"]) == 2


async def test_a_payment_the_apps_retry_settled_meanwhile_changes_nothing(w: World, psp: Psp) -> None:
    pay_id = await w.finished_in_doubt("RC-8", {"act_then_timeout": True})
    [doubt] = await captures_in_doubt(w.engine, w.shop.clock())
    assert (doubt.order_id, doubt.pay_id, doubt.finish_asked) == ("RC-8", int(pay_id), True)
    status, body = await w.shopper.paypal_finished("RC-8", pay_id)  # the app's retry, after the scan
    assert (status, body["data"]["status"]) == (200, "paid")

    done = await reconcile(w.shop, psp.paypal(retry=ONCE), doubt, actor="consumer")

    assert (done.outcome, done.status) == ("settled", None)
    assert [o[0] for o in await w.shopper.outbox("RC-8")] == ["purchased", "noti"]
    assert [h[1] for h in await w.shopper.history("RC-8")] == ["payment_confirming", "paid"]


async def test_only_the_lease_holder_asks_paypal(w: World, psp: Psp) -> None:
    await w.finished_in_doubt("RC-9", {"act_then_timeout": True})
    other_registry = CollectorRegistry()
    other = w.new_reconciler("c2", other_registry)
    assert await w.reconciler.lead()
    gets = len(await psp.calls("GET"))

    assert await other.reconcile_once() == {}

    assert sample(other_registry, "capture_reconciler_leader") == 0
    assert len(await psp.calls("GET")) == gets
    assert await w.shopper.status("RC-9") == "payment_confirming"


async def test_old_shoppings_finish_in_doubt_is_settled_with_the_key_old_shopping_sent(
    w: World, aiohttp_client, db_url: str, psp: Psp,
) -> None:
    """Both sides move the order with paypal_finished:{pay_id} and capture with `<key>:capture`: the reconciler
    finishes old shopping's payments as its own, and PayPal sees one operation."""
    legacy = await aiohttp_client(create_legacy(db_url, psp=legacy_psp(psp, attempts=1), service_token="t"))
    await w.shopper.order("RC-10")
    resp = await legacy.post(pay_path("RC-10"), headers={"X-User-Id": "1"})
    made = (await resp.json())["data"]
    assert await psp.approve(made["approve_url"]) == 200
    await psp.fault(path=CAPTURE, error_status=503, times=1)
    resp = await legacy.post(finish_path("RC-10", made["pay_id"]), headers={"X-User-Id": "1"})
    assert resp.status == 502, await resp.text()
    assert await w.shopper.status("RC-10") == "payment_confirming"

    assert await w.reconciler.reconcile_once() == {"captured": 1}

    captures = await psp.calls("POST", "/capture")
    assert [c["status"] for c in captures] == [503, 201]
    assert len({c["key"] for c in captures}) == 1 and captures[0]["key"].startswith("legacy-")
    assert await w.shopper.status("RC-10") == "paid"
    history = [(h["to_status"], h["actor"]) for h in await w.shopper.rows(t.order_status_history, "RC-10")]
    assert history == [("payment_confirming", "legacy"), ("paid", "consumer")]
    assert [o[0] for o in await w.shopper.outbox("RC-10")] == ["purchased", "noti"]


async def test_a_pending_capture_is_read_again_until_paypal_completes_it(w: World, psp: Psp) -> None:
    pay_id = await w.approved_order("RC-11")
    await psp.fault(path=CAPTURE, paypal_capture_status="PENDING", times=1)
    status, body = await w.shopper.paypal_finished("RC-11", pay_id)
    assert (status, body["data"]["status"]) == (200, "payment_confirming")  # an eCheck: not money yet
    [capture_id] = (await psp.state())["paypal"]["captures"]

    assert await w.reconciler.reconcile_once() == {"pending": 1}
    assert await w.shopper.status("RC-11") == "payment_confirming"

    resp = await psp.admin.post(f"/_psp/paypal/captures/{capture_id}/settle", json={"status": "COMPLETED"})
    assert resp.status == 200, await resp.text()
    assert await w.reconciler.reconcile_once() == {"captured": 1}

    assert await w.shopper.status("RC-11") == "paid"
    assert await w.shopper.payments("RC-11") == [("paypal", "captured", Decimal("96.07"))]
    assert len(await psp.calls("POST", "/capture")) == 1
    assert [o[0] for o in await w.shopper.outbox("RC-11")] == ["purchased", "noti"]


async def test_an_old_finish_does_not_count_once_the_order_left_and_came_back_by_paid_from_client(
    w: World, psp: Psp,
) -> None:
    """The payer finished a PayPal order they had not approved (payment_failed), approved it later, but then paid
    another way and the app said paid_from_client: the earlier paypal_finished is not a capture request now."""
    await w.shopper.order("RC-12")
    status, made = await w.shopper.paypal_pay("RC-12")
    assert status == 200, made
    status, body = await w.shopper.paypal_finished("RC-12", made["data"]["pay_id"])
    assert (status, body["data"]["status"]) == (200, "payment_failed"), body  # ORDER_NOT_APPROVED
    assert await psp.approve(made["data"]["approve_url"]) == 200
    app_side = Shop(w.engine, w.engine, ReferenceCache(w.engine, 0.0), clock=t.utcnow)
    async with app_side.tx("new") as uow:  # the app's paid_from_client (a card payment under way)
        await uow.transition("RC-12", "paid_from_client", reason="paid_from_client", expected="payment_failed")

    assert await w.reconciler.reconcile_once() == {"awaiting_payer": 1}

    assert len(await psp.calls("POST", "/capture")) == 1  # the refused one; no capture taken
    assert await w.shopper.status("RC-12") == "payment_confirming"


async def test_payments_left_in_doubt_for_a_person_do_not_starve_a_newer_one(w: World, psp: Psp) -> None:
    """A pass looks at `batch` payments, least recently looked at first: orders stuck awaiting the payer (forever,
    maybe) go to the back of the queue, and a capture in doubt behind them is still settled."""
    small = CaptureReconciler(w.shop, psp.paypal(retry=ONCE), CaptureReconcileMetrics(CollectorRegistry()),
                          holder="c1", period=1.0, batch=2)
    for n in range(3):  # approved PayPal orders nobody finished; the app said paid_from_client
        await w.approved_order(f"RC-S{n}")
        async with w.engine.begin() as conn:
            await conn.execute(update(t.orders).where(t.orders.c.id == f"RC-S{n}").values(
                status="payment_confirming", updated_at=t.utcnow()))
    await w.finished_in_doubt("RC-S9", {"act_then_timeout": True})

    assert await small.reconcile_once() == {"awaiting_payer": 2}
    assert await small.reconcile_once() == {"awaiting_payer": 1, "captured": 1}

    assert await w.shopper.status("RC-S9") == "paid"
    assert await small.reconcile_once() == {"awaiting_payer": 2}  # the stuck ones, still looked at in turn
