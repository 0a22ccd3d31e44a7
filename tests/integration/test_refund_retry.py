"""The refund retrier (consumers/refund_retry.py, shop.refunds.retry_due) on SQLite and MariaDB against the real
PSP emulator, its clock moved by hand through refund_backoff's schedule (30 s, 1 min, 2 min, 4 min).

Proves: a PSP answering 5xx three times, then OK, ends in one refund at the PSP, `succeeded`, every call with
the refund's one key; a refund that the PSP did but whose answer never came is finished by the retry's
replay, refunded once; five failed submissions end in `failed` (not submitted again), counted in
refunds_failed_total, with a `refund_failed` noti; a refund whose process died before the PSP call is
picked up after the in-flight window with the same key; when Adyen reports the refund failed, the retry
is a new refund with a new key (the old key would only replay "received"), and a late REFUND of the failed
attempt then changes nothing while the new attempt's own outcome still counts; two retriers racing for one
refund make one PSP call; only the lease holder retries; the metrics exist at 0 from the start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.refunds import PspRefunds
from adapters.retry import RetryPolicy
from consumers.refund_retry import RefundRetrier, RefundRetryMetrics
from shop import schema as t
from shop.bootstrap import Shop
from shop.events import apply_refund_notified, consumer_name, EVENT_TYPES, parse_refund_notified
from shop.reference import ReferenceCache
from shop.refunds import RefundRequest, idempotency_key, request_refund, reserve, retry_due
from tests.builders import NOW
from tests.support.edge import sample
from tests.support.psp import Psp, WebhookSink
from tests.support.refunds import PAYPAL_REFUNDS, history, notis, order_status, paid_order, refunds_of

pytest_plugins = ["tests.support.psp_fixtures"]

ORDER = "RR-1"
INFLIGHT = timedelta(minutes=2)
# One HTTP attempt per submission, so each fault hit is one submission; 1 s is the "act then time out" wait.
ONCE = RetryPolicy(attempts=1, timeout=1.0, base_delay=0.01, max_delay=0.05)


@dataclass
class Clock:
    now: datetime = NOW

    def at(self, **delta: float) -> Clock:
        self.now = NOW + timedelta(**delta)
        return self


def shop_on(engine: AsyncEngine, clock: Clock) -> Shop:
    return Shop(engine, engine, ReferenceCache(engine, 0.0), clock=lambda: clock.now)


def gateway(psp: Psp, retry: RetryPolicy = ONCE) -> PspRefunds:
    return PspRefunds(psp.paypal(retry=retry), psp.adyen(retry=retry))


async def refund(shop: Shop, psp: Psp, amount: str | None = None, request_id: str = "rq-1") -> str:
    req = RefundRequest(ORDER, None if amount is None else Decimal(amount), "test", request_id)
    return (await request_refund(shop, gateway(psp), req, inflight=INFLIGHT)).status


async def the_refund(engine: AsyncEngine) -> dict[str, Any]:
    [row] = await refunds_of(engine, ORDER)
    return row


async def notify(shop: Shop, refund_id: int, status: str, psp_reference: str, reason: str | None) -> str:
    """The consumer applying a refund_notified of 10.00 EUR (one event id per reference and outcome)."""
    ev = parse_refund_notified({"event_id": f"adyen:{status}:{psp_reference}", "refund_id": str(refund_id),
                                "order_id": ORDER, "status": status, "amount": "10.00", "currency": "EUR",
                                "psp_reference": psp_reference, "reason": reason})
    async with shop.tx("consumer") as uow:
        return await apply_refund_notified(uow, ev, consumer_name(EVENT_TYPES["refund_notified"]))


async def keys(psp: Psp, suffix: str = "/refund") -> list[tuple[str, int | None, bool]]:
    return [(c["key"], c["status"], c["replayed"]) for c in await psp.calls("POST", suffix)]


async def test_three_5xx_then_ok_is_one_refund_succeeded_with_one_key(fresh_engine: AsyncEngine, psp: Psp) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=503, times=3)
    clock = Clock()
    shop = shop_on(fresh_engine, clock)
    registry = CollectorRegistry()
    retrier = RefundRetrier(shop, gateway(psp), RefundRetryMetrics(registry), holder="c1", period=1.0, inflight=INFLIGHT)

    assert await refund(shop, psp) == "retrying"
    assert await retrier.retry_once() == 0  # not due yet
    for seconds, attempts in ((30, 2), (90, 3), (210, 4)):
        assert (await the_refund(fresh_engine))["next_attempt_at"] == NOW + timedelta(seconds=seconds)
        clock.at(seconds=seconds)
        assert await retrier.retry_once() == 1
        assert (await the_refund(fresh_engine))["attempts"] == attempts
    row = await the_refund(fresh_engine)
    assert (row["status"], row["next_attempt_at"]) == ("succeeded", None)
    key = idempotency_key(row["id"])
    assert await keys(psp) == [(key, 503, False)] * 3 + [(key, 201, False)]
    assert list((await psp.state())["paypal"]["refunds"]) == [row["psp_reference"]]
    assert await order_status(fresh_engine, ORDER) == "refunded"
    assert [to for _, to, _ in await history(fresh_engine, ORDER)] == ["refunded"]
    assert (sample(registry, "refunds_retried_total", provider="paypal"), sample(registry, "refunds_failed_total", provider="paypal")) == (3, 0)
    assert sample(registry, "refunds_in_state", status="succeeded") == 1
    assert sample(registry, "refunds_in_state", status="retrying") == 0
    assert sample(registry, "refund_retrier_leader") == 1


async def test_a_refund_done_at_the_psp_whose_answer_was_lost_is_finished_by_the_retry_and_refunded_once(
    fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, act_then_timeout=True, times=1)
    clock = Clock()
    shop = shop_on(fresh_engine, clock)
    assert await refund(shop, psp, "20.00") == "retrying"
    assert len((await psp.state())["paypal"]["refunds"]) == 1  # the PSP did it
    assert await order_status(fresh_engine, ORDER) == "paid"  # we don't know yet
    [done] = await retry_due(shop_on(fresh_engine, clock.at(seconds=30)), gateway(psp), inflight=INFLIGHT)
    assert (done.submitted, done.settled.status) == (True, "succeeded")
    row = await the_refund(fresh_engine)
    assert [(k, replayed) for k, _, replayed in await keys(psp)] == [(idempotency_key(row["id"]), False),
                                                                   (idempotency_key(row["id"]), True)]
    paypal = (await psp.state())["paypal"]
    assert list(paypal["refunds"]) == [row["psp_reference"]]
    assert await history(fresh_engine, ORDER) == [("paid", "partially_refunded", "consumer")]
    assert await notis(fresh_engine, ORDER) == ["refund_succeeded"]


async def test_five_failed_submissions_end_in_failed_for_a_person_counted_and_notified(
    fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=500)
    clock = Clock()
    shop = shop_on(fresh_engine, clock)
    registry = CollectorRegistry()
    retrier = RefundRetrier(shop, gateway(psp), RefundRetryMetrics(registry), holder="c1", period=1.0, inflight=INFLIGHT)
    assert await refund(shop, psp) == "retrying"
    for seconds in (30, 90, 210, 450):  # submissions 2..5
        clock.at(seconds=seconds)
        assert await retrier.retry_once() == 1
    row = await the_refund(fresh_engine)
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("failed", 5, None)
    assert len(await psp.calls("POST", "/refund")) == 5
    assert sample(registry, "refunds_failed_total", provider="paypal") == 1
    assert sample(registry, "refunds_retried_total", provider="paypal") == 4
    assert sample(registry, "refunds_in_state", status="failed") == 1
    assert await notis(fresh_engine, ORDER) == ["refund_failed"]
    assert await order_status(fresh_engine, ORDER) == "paid"
    clock.at(days=2)
    assert await retrier.retry_once() == 0  # a failed refund is a person's now: never sent again
    assert len(await psp.calls("POST", "/refund")) == 5
    assert sample(registry, "refunds_failed_total", provider="paypal") == 1


async def test_a_refund_whose_process_died_before_the_psp_call_is_sent_after_the_inflight_window(
    fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    clock = Clock()
    req = RefundRequest(ORDER, Decimal("5.00"), None, "rq-1")
    view, _ = await shop_on(fresh_engine, clock).run("new", lambda uow: reserve(uow, req, inflight=INFLIGHT))
    assert view.status == "pending"
    assert await retry_due(shop_on(fresh_engine, clock.at(seconds=119)), gateway(psp), inflight=INFLIGHT) == []
    [done] = await retry_due(shop_on(fresh_engine, clock.at(seconds=120)), gateway(psp), inflight=INFLIGHT)
    assert done.settled.status == "succeeded"
    assert await keys(psp) == [(f"refund-{view.refund_id}", 201, False)]
    assert (await the_refund(fresh_engine))["attempts"] == 2


async def test_attempts_used_up_by_a_process_that_died_fail_without_another_call(fresh_engine: AsyncEngine, psp: Psp) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    clock = Clock()
    req = RefundRequest(ORDER, None, None, "rq-1")
    await shop_on(fresh_engine, clock).run("new", lambda uow: reserve(uow, req, inflight=INFLIGHT))
    async with fresh_engine.begin() as conn:
        await conn.execute(update(t.refunds).values(status="retrying", attempts=5))
    registry = CollectorRegistry()
    retrier = RefundRetrier(shop_on(fresh_engine, clock.at(minutes=5)), gateway(psp), RefundRetryMetrics(registry),
                            holder="c1", period=1.0, inflight=INFLIGHT)
    assert await retrier.retry_once() == 0
    assert (await the_refund(fresh_engine))["status"] == "failed"
    assert await psp.calls("POST", "/refund") == []
    assert sample(registry, "refunds_failed_total", provider="paypal") == 1
    assert await notis(fresh_engine, ORDER) == ["refund_failed"]


async def resubmitted_after_adyen_failed(engine: AsyncEngine, psp: Psp, failures: int) -> tuple[Shop, dict[str, Any], dict[str, Any]]:
    """A 10.00 refund Adyen received and then reported failed (REFUND_FAILED applied), submitted again by the
    retrier 30 s later; the PSP fails the first `failures` submissions. The shop and the row before and after."""
    await paid_order(engine, psp, ORDER, provider="adyen")
    await psp.fault(path="/v71/payments/*/refunds", adyen_refund_failed=True, times=failures)
    clock = Clock()
    shop = shop_on(engine, clock)
    assert await refund(shop, psp, "10.00") == "submitted"
    first = await the_refund(engine)
    assert await notify(shop, first["id"], "failed", first["psp_reference"], "refused") == "processed"
    assert (await the_refund(engine))["status"] == "retrying"
    [done] = await retry_due(shop_on(engine, clock.at(seconds=30)), gateway(psp), inflight=INFLIGHT)
    assert done.settled.status == "submitted"
    second = await the_refund(engine)
    assert second["psp_reference"] != first["psp_reference"] and second["attempts"] == 2
    return shop, first, second


async def test_when_adyen_reports_the_refund_failed_the_retry_is_a_new_refund_with_a_new_key(
    fresh_engine: AsyncEngine, psp: Psp, webhook_sink: WebhookSink,
) -> None:
    shop, first, second = await resubmitted_after_adyen_failed(fresh_engine, psp, failures=1)
    items = await webhook_sink.wait_for(5)
    assert [(i["eventCode"], i["pspReference"]) for i in items if i["eventCode"].startswith("REFUND")] == [
        ("REFUND", first["psp_reference"]), ("REFUND_FAILED", first["psp_reference"]), ("REFUND", second["psp_reference"])]
    assert items[-1]["success"] == "true"
    calls = await keys(psp, "/refunds")
    assert [k for k, _, _ in calls] == [idempotency_key(first["id"]), idempotency_key(first["id"], first["psp_reference"])]
    assert not any(replayed for _, _, replayed in calls)
    refunds = (await psp.state())["adyen"]["refunds"]
    assert {r: v["outcome"] for r, v in refunds.items()} == {first["psp_reference"]: "failed", second["psp_reference"]: "refunded"}
    assert await notify(shop, first["id"], "succeeded", second["psp_reference"], None) == "processed"
    assert (await the_refund(fresh_engine))["status"] == "succeeded"
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"


async def test_a_late_success_of_the_attempt_adyen_failed_changes_nothing_once_the_retry_is_submitted(
    fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    # Adyen sends REFUND and later REFUND_FAILED for one pspReference; delivered out of order, the REFUND can
    # come after the retry resubmitted. It is the replaced attempt's: taken as the refund's success it
    # would mark the refund done while the live attempt's own failure would then be ignored.
    shop, first, second = await resubmitted_after_adyen_failed(fresh_engine, psp, failures=2)
    assert await notify(shop, first["id"], "succeeded", first["psp_reference"], None) == "duplicate"
    assert (await the_refund(fresh_engine)) == second
    assert await order_status(fresh_engine, ORDER) == "paid"
    # The live attempt's outcome still counts: here the PSP failed it too, so the refund is retried again.
    assert await notify(shop, first["id"], "failed", second["psp_reference"], "refused") == "processed"
    third = await the_refund(fresh_engine)
    assert (third["status"], third["psp_reference"], third["attempts"]) == ("retrying", second["psp_reference"], 2)
    assert await order_status(fresh_engine, ORDER) == "paid"


async def test_two_retriers_racing_for_one_refund_make_one_psp_call(fresh_engine: AsyncEngine, psp: Psp) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=503, times=1)
    clock = Clock()
    assert await refund(shop_on(fresh_engine, clock), psp) == "retrying"
    await psp.fault(path=PAYPAL_REFUNDS, delay_ms=200)
    clock.at(seconds=30)
    a, b = await asyncio.gather(*(retry_due(shop_on(fresh_engine, clock), gateway(psp), inflight=INFLIGHT)
                                  for _ in range(2)))
    assert sorted([len(a), len(b)]) == [0, 1]
    assert [status for _, status, _ in await keys(psp)] == [503, 201]
    assert (await the_refund(fresh_engine))["status"] == "succeeded"


async def test_only_the_lease_holder_retries_and_the_metrics_exist_from_the_start(fresh_engine: AsyncEngine, psp: Psp) -> None:
    registries = [CollectorRegistry(), CollectorRegistry()]
    clock = Clock()
    retriers = [RefundRetrier(shop_on(fresh_engine, clock), gateway(psp), RefundRetryMetrics(reg), holder=f"c{n}",
                              period=1.0, inflight=INFLIGHT) for n, reg in enumerate(registries)]
    names = {m.name for m in registries[0].collect()}
    assert names >= {"refunds_retried", "refunds_failed", "refunds_in_state", "refund_retrier_leader", "refund_retry_errors"}
    assert registries[0].get_sample_value("refunds_failed_total", {"provider": "adyen"}) == 0

    assert await retriers[0].retry_once() == 0  # nothing due, but it holds the lease now
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=503, times=1)
    assert await refund(shop_on(fresh_engine, clock), psp) == "retrying"
    await retriers[1].refresh_gauge()  # every instance reads the counts, the lease holder or not
    assert sample(registries[1], "refunds_in_state", status="retrying") == 1
    clock.at(seconds=30)
    assert await retriers[1].retry_once() == 0
    assert [sample(r, "refund_retrier_leader") for r in registries] == [1, 0]
    assert len(await psp.calls("POST", "/refund")) == 1
    # The holder stops (releasing the lease): the other one takes over at once.
    retriers[0].stop()
    await retriers[0].run()
    assert await retriers[1].retry_once() == 1
    assert [sample(r, "refund_retrier_leader") for r in registries] == [0, 1]
    assert (await the_refund(fresh_engine))["status"] == "succeeded"
    assert sample(registries[1], "refunds_in_state", status="retrying") == 0


async def test_the_retrier_loop_retries_due_refunds_every_period(fresh_engine: AsyncEngine, psp: Psp) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=503, times=1)
    clock = Clock()
    assert await refund(shop_on(fresh_engine, clock), psp) == "retrying"
    registry = CollectorRegistry()
    retrier = RefundRetrier(shop_on(fresh_engine, clock), gateway(psp), RefundRetryMetrics(registry), holder="c1",
                            period=0.05, inflight=INFLIGHT)
    task = asyncio.create_task(retrier.run())
    try:
        await asyncio.sleep(0.3)
        assert (await the_refund(fresh_engine))["status"] == "retrying"
        clock.at(seconds=30)
        for _ in range(200):
            if (await the_refund(fresh_engine))["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert (await the_refund(fresh_engine))["status"] == "succeeded"
    finally:
        retrier.stop()
        await asyncio.wait_for(task, 30)
    assert sample(registry, "refund_retrier_leader") == 0

