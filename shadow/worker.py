"""The diff worker: comparisons off the request path, through a bounded queue.

The edge answers the client first, then hands a :class:`DiffJob` to
:meth:`DiffWorker.submit`, which never blocks and never grows without bound: when the
queue (``queue_size`` jobs) is full the job is dropped and counted (``dropped``). One
consumer task takes jobs in order and runs ``compare_fn(job)`` in an executor (default: a
dedicated single thread, so comparisons are serialised and at most one is in flight),
then calls ``on_result(job, comparison)`` back on the event loop, where stats, examples
and metrics can be updated without locks.

A thread still shares the GIL with the event loop: deepdiff's milliseconds are taken
from the loop in 5 ms slices (``sys.getswitchinterval()``). The fast path keeps that
rare for equal answers; a route whose answers all differ keeps one core's worth of
GIL-bound work queued at most. Pass a ``concurrent.futures.ProcessPoolExecutor`` to move
comparisons off the GIL entirely: :class:`DiffJob`, :class:`~shadow.normalise.CompareRules`
and :func:`compare_job` are picklable.

``compare_fn`` raising is not fatal: ``on_result`` receives ``Comparison(equal=False,
error=...)`` (``failed`` counts them). ``on_result`` raising is logged and counted
(``callback_errors``) and the consumer carries on.

Counters: ``submitted`` (accepted), ``dropped`` (queue full, worker stopped, or left in
the queue when ``stop`` timed out), ``done`` (``on_result`` called), ``failed``,
``queue_depth``, ``compare_seconds`` (time spent in ``compare_fn``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shadow.compare import Comparison, compare
from shadow.normalise import CompareRules
from shadow.store import OTHER_SIDE, make_example

__all__ = ["DiffJob", "DiffWorker", "compare_job", "example_for", "job_sides"]

log = logging.getLogger(__name__)

KINDS = ("shadow", "noise")


@dataclass(frozen=True)
class DiffJob:
    """One pair of answers to compare.

    ``kind == "shadow"``: primary vs the other side; ``"noise"``: primary vs a second call
    to the primary (both from ``primary_side``; ``shadow_*`` hold the second answer).
    """

    route: str
    request_id: str
    request_summary: Any
    primary_side: str
    primary_status: int
    primary_body: bytes
    shadow_status: int
    shadow_body: bytes
    rules: CompareRules = field(default_factory=CompareRules)
    kind: str = "shadow"
    # Per currency, the largest difference that is rounding (shadow.rounding.rounding_units of the forex table).
    units: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


def job_sides(job: DiffJob) -> tuple[str, str]:
    """How the job's two values are labelled in a diff: by the side that produced them
    (``legacy`` / ``new``), whichever was primary; a noise sample's second answer is
    ``<side>_again``."""
    if job.kind == "noise":
        return job.primary_side, f"{job.primary_side}_again"
    return job.primary_side, OTHER_SIDE.get(job.primary_side, "shadow")


def compare_job(job: DiffJob) -> Comparison:
    """The default ``compare_fn``: :func:`shadow.compare.compare` on the job's answers."""
    return compare(job.primary_status, job.primary_body, job.shadow_status, job.shadow_body, job.rules,
                   sides=job_sides(job), units=job.units)


def example_for(job: DiffJob, comparison: Comparison, max_body_chars: int = 16_384) -> dict[str, Any]:
    """The :func:`shadow.store.make_example` of a job and its comparison."""
    diff = comparison.diff
    if comparison.error is not None:
        diff = {"error": comparison.error}
    example = make_example(
        request_id=job.request_id, request_summary=job.request_summary, primary_side=job.primary_side,
        primary_status=job.primary_status, primary_body=job.primary_body,
        shadow_status=job.shadow_status, shadow_body=job.shadow_body,
        diff=diff, kind=job.kind, max_body_chars=max_body_chars,
    )
    if comparison.sizes:
        example["sizes"] = dict(comparison.sizes)
    if comparison.max_deltas:
        example["max_abs_delta"] = {f: str(d) for f, d in comparison.max_deltas.items()}
    if comparison.unit is not None:
        example["rounding_unit"] = str(comparison.unit)
    return example


def _timed(fn: Callable[[DiffJob], Comparison], job: DiffJob) -> tuple[Comparison, float]:
    start = time.perf_counter()
    try:
        result = fn(job)
    except Exception as exc:  # reported to on_result as an error comparison
        result = Comparison(equal=False, error=f"{type(exc).__name__}: {exc}"[:200])
    return result, time.perf_counter() - start


class DiffWorker:
    def __init__(
        self,
        compare_fn: Callable[[DiffJob], Comparison] | None,
        on_result: Callable[[DiffJob, Comparison], Any],
        queue_size: int = 1000,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.compare_fn = compare_fn if compare_fn is not None else compare_job
        self.on_result = on_result
        self.queue_size = queue_size
        self._executor = executor
        self._own_executor = executor is None
        self._queue: asyncio.Queue[DiffJob] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self.submitted = 0
        self.dropped = 0
        self.done = 0
        self.failed = 0
        self.callback_errors = 0
        self.compare_seconds = 0.0

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def counters(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted, "dropped": self.dropped, "done": self.done, "failed": self.failed,
            "callback_errors": self.callback_errors, "queue_depth": self.queue_depth,
            "queue_size": self.queue_size, "compare_seconds": round(self.compare_seconds, 6),
        }

    def start(self) -> None:
        """Start the consumer; call from a running event loop."""
        if self.running:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-diff")
            self._own_executor = True
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="shadow-diff-worker")

    def submit(self, job: DiffJob) -> bool:
        """Queue a job; never blocks. False (and ``dropped`` += 1) when full or not running.
        Call from the event loop thread."""
        if not self._accepting:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        self.submitted += 1
        return True

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            try:
                try:
                    comparison, seconds = await loop.run_in_executor(self._executor, _timed, self.compare_fn, job)
                except asyncio.CancelledError:
                    self.dropped += 1  # stop() timed out while this job was being compared
                    raise
                except Exception as exc:  # executor broken or shut down
                    comparison, seconds = Comparison(equal=False, error=f"{type(exc).__name__}: {exc}"[:200]), 0.0
                self.compare_seconds += seconds
                if comparison.error is not None:
                    self.failed += 1
                try:
                    self.on_result(job, comparison)
                except Exception:
                    self.callback_errors += 1
                    log.exception("shadow on_result failed for route %s", job.route)
                self.done += 1
            finally:
                self._queue.task_done()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let the queue drain for up to ``timeout`` seconds, then stop the
        consumer; jobs still queued are counted as dropped. Shuts down the executor if it
        was created here."""
        self._accepting = False
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except asyncio.TimeoutError:
                pass
            task.cancel()
            await asyncio.wait([task])  # does not re-raise the task's CancelledError
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
