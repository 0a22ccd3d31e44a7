"""shadow/worker.py: bounded queue, never-blocking submit, results on the loop, draining stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading

import pytest

from shadow.compare import Comparison
from shadow.normalise import CompareRules
from shadow.worker import DiffJob, DiffWorker, compare_job, example_for


def job(n: int = 0, primary: bytes = b'{"total": "96.07"}', shadow: bytes = b'{"total": 96.08}', **kw) -> DiffJob:
    return DiffJob(route="calc_price", request_id=f"req-{n}", request_summary={"method": "POST"}, primary_side="legacy",
                   primary_status=200, primary_body=primary, shadow_status=200, shadow_body=shadow, **kw)


async def test_results_are_delivered_on_the_loop_and_compared_off_it() -> None:
    loop_thread = threading.get_ident()
    compare_threads: set[int] = set()
    results: list[tuple[DiffJob, Comparison, int]] = []

    def compare_fn(j: DiffJob) -> Comparison:
        compare_threads.add(threading.get_ident())
        return compare_job(j)

    worker = DiffWorker(compare_fn, lambda j, c: results.append((j, c, threading.get_ident())))
    worker.start()
    assert worker.submit(job(1))
    assert worker.submit(job(2, shadow=b'{"total": "96.070"}'))
    await worker.stop()
    assert [(j.request_id, c.equal, c.fields) for j, c, _ in results] == [
        ("req-1", False, ("total",)), ("req-2", True, ())]
    assert {t for _, _, t in results} == {loop_thread}
    assert compare_threads and loop_thread not in compare_threads
    assert (worker.submitted, worker.done, worker.dropped, worker.queue_depth) == (2, 2, 0, 0)
    assert worker.compare_seconds > 0


async def test_full_queue_drops_without_blocking() -> None:
    release = threading.Event()
    results: list[str] = []

    def slow(j: DiffJob) -> Comparison:
        release.wait(5)
        return compare_job(j)

    worker = DiffWorker(slow, lambda j, c: results.append(j.request_id), queue_size=2)
    worker.start()
    assert worker.submit(job(1))
    await asyncio.sleep(0.05)  # the consumer takes job 1 and blocks in the executor
    assert worker.submit(job(2)) and worker.submit(job(3))
    assert worker.queue_depth == 2
    assert not worker.submit(job(4))
    assert not worker.submit(job(5))
    assert worker.dropped == 2 and worker.submitted == 3
    release.set()
    await worker.stop()
    assert results == ["req-1", "req-2", "req-3"]
    assert worker.counters()["done"] == 3
    assert not worker.submit(job(6)) and worker.dropped == 3  # stopped: refused and counted


async def test_stop_drains_the_queue() -> None:
    results: list[str] = []
    worker = DiffWorker(None, lambda j, c: results.append(j.request_id), queue_size=100)
    worker.start()
    for i in range(50):
        worker.submit(job(i))
    await worker.stop(timeout=10)
    assert len(results) == 50 and worker.dropped == 0


async def test_stop_gives_up_after_its_timeout() -> None:
    release = threading.Event()
    worker = DiffWorker(lambda j: (release.wait(5), compare_job(j))[1], lambda j, c: None, queue_size=10)
    worker.start()
    for i in range(4):
        worker.submit(job(i))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(worker.stop(timeout=0.1), 2)
    assert worker.done == 0 and worker.dropped == 4  # one being compared + three queued
    release.set()


async def test_compare_and_callback_failures_do_not_stop_the_worker() -> None:
    seen: list[Comparison] = []

    def flaky(j: DiffJob) -> Comparison:
        if j.request_id == "req-1":
            raise RuntimeError("boom")
        return compare_job(j)

    def on_result(j: DiffJob, c: Comparison) -> None:
        seen.append(c)
        if j.request_id == "req-2":
            raise ValueError("callback bug")

    worker = DiffWorker(flaky, on_result)
    worker.start()
    for i in range(1, 4):
        worker.submit(job(i))
    await worker.stop()
    assert [c.error for c in seen] == ["RuntimeError: boom", None, None]
    assert (worker.failed, worker.callback_errors, worker.done) == (1, 1, 3)


async def test_process_pool_executor_works() -> None:
    results: list[Comparison] = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        worker = DiffWorker(compare_job, lambda j, c: results.append(c), executor=pool)
        worker.start()
        worker.submit(job(1, rules=CompareRules(ignore=("root['data'][*]['x']",), tolerance="0.01")))
        await worker.stop(timeout=30)
    assert results == [Comparison(equal=True)]


def test_example_for_a_job() -> None:
    j = job(7, kind="noise")
    ex = example_for(j, compare_job(j))
    assert ex["request_id"] == "req-7" and ex["kind"] == "noise"
    # A noise sample's two answers both come from the primary side.
    assert ex["diff"] == {"values_changed": {"root['total']": {"legacy": "96.07", "legacy_again": "96.08"}}}
    assert ex["primary_side"] == "legacy"
    assert ex["sizes"] == {"total": "rounding"} and ex["max_abs_delta"] == {"total": "0.01"}
    json.dumps(ex)
    assert example_for(j, Comparison(equal=False, error="x"))["diff"] == {"error": "x"}


def test_job_kind_is_checked() -> None:
    with pytest.raises(ValueError):
        job(kind="other")


def test_diff_values_are_labelled_by_the_side_that_answered_them() -> None:
    # The new side served this caller: its value must appear under "new", not under "old".
    j = DiffJob(route="coupons", request_id="r", request_summary={}, primary_side="new", primary_status=200,
                primary_body=b'{"coupon_discount": "2077", "currency": "JPY"}', shadow_status=200,
                shadow_body=b'{"coupon_discount": "2079", "currency": "JPY"}')
    ex = example_for(j, compare_job(j))
    assert ex["diff"] == {"values_changed": {"root['coupon_discount']": {"new": "2077", "legacy": "2079"}}}
    assert ex["primary_side"] == "new" and ex["primary"]["side"] == "new" and ex["shadow"]["side"] == "legacy"
    assert ex["sizes"] == {"coupon_discount": "beyond"}  # 2 yen: beyond JPY's 1-yen minor unit
