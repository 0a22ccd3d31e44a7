"""The consumer loop: at least once, one effect per event, a stuck message never stops its neighbours.

Per partition, messages are applied strictly in order (key = order id, so one order's events keep
their order) by one task; partitions run concurrently, at most ``max_concurrency`` at a time.
The offset committed for a partition is always ``offset + 1`` of a message whose handler has
returned, i.e. whose DB transaction (effect + ``processed_events``) has committed: a crash between
that commit and the offset commit redelivers the message, and the handler's dedupe turns it into
a counted ``duplicate``.

What a handler's failure does:
- ``PoisonMessage`` (or JSON that does not parse): straight to ``<topic>.dlq`` with the error,
  the original topic, partition and offset in headers; the partition moves on.
- a transient error (``is_transient``: DB down, old shopping unreachable…): the partition pauses
  and the same message is retried with capped exponential backoff until it goes through; other
  partitions carry on; lag shows the wait. Nothing is lost, nothing is skipped.
- any other error: retried the same way, counted ``retried``, and after ``max_attempts`` sent to
  the DLQ (a bug or a row that can never be written must not stall the partition for ever).

Batches: a handler with an ``apply_batch`` method (consumers/events.py) gets up to
``batch_max`` messages of one partition at a time, in offset order, and applies a prefix of them
(usually all) in one DB transaction; the offset moves past that prefix after its commit, as for
one message. When the batch fails:
- transient: the same batch again after the backoff (the partition waits, as above);
- ``BatchFailed(index)``: the messages before ``index`` go again as a batch, the failing one alone
  with the rules above (the DLQ, a few retries), then batching resumes after it;
- anything else: the rest of the fetched messages one by one, so one bad message can cost a slow
  batch but never blocks or rolls back its neighbours for ever.
Messages that do not decode are dead-lettered between the batches around them, in their place.

Rebalance: on revoke, the revoked partitions' tasks are cancelled (their in-flight transaction
rolls back, or has committed and will be redelivered as a duplicate) and what they finished is
committed. ``stop()`` (SIGTERM) lets every partition finish the message it is on, commits, and
leaves the group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from consumers.metrics import ConsumerMetrics

log = structlog.get_logger("consumers")


class PoisonMessage(ValueError):
    """This message can never be applied (not the event's schema); the reason goes to the DLQ header."""


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    partition: int
    offset: int
    key: str | None
    payload: Mapping[str, Any]


class EventHandler(Protocol):
    async def __call__(self, event: Event) -> str:
        """Apply one event; returns the outcome to count (processed, duplicate, forwarded_legacy, …)."""


class BatchHandler(EventHandler, Protocol):
    async def apply_batch(self, events: Sequence[Event]) -> Sequence[str]:
        """Apply a non-empty prefix of `events` (in one transaction) and return their outcomes, in order."""


class BatchFailed(Exception):
    """`events[index]` of a batch cannot go in a batch; the batch before it can (nothing was applied)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    max_concurrency: int = 8
    max_attempts: int = 5
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    commit_interval: float = 0.2
    commit_timeout: float = 5.0
    fetch_max_records: int = 2000
    # Messages of one partition applied in one transaction by a handler that batches (1: never batch).
    batch_max: int = 500
    # A partition holding this many fetched, unapplied messages is paused until it catches up.
    buffer_per_partition: int = 2000


def decode(record: ConsumerRecord[bytes, bytes]) -> Event:
    """The record as an Event; PoisonMessage when its value is not a JSON object."""
    try:
        payload = json.loads(record.value) if record.value is not None else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PoisonMessage("not a JSON object")
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return Event(record.topic, record.partition, record.offset, key, payload)


class _Partition:
    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.queue: deque[ConsumerRecord[bytes, bytes]] = deque()
        self.wakeup = asyncio.Event()
        self.done: int | None = None  # next offset to commit: last applied + 1
        self.committed: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False


class _GroupCommit:
    """One transaction for the batches that several partitions of one topic have ready at the same time.

    At a steady rate each partition holds a message or two per fetch, and a transaction of its own
    each would cost ~10 round trips for one event (with 8 partitions: hundreds of small concurrent
    transactions a second, all waiting on one event loop). So a partition's batch is first handed
    here: a round takes the batches submitted so far (up to ``batch_max`` messages, whole batches,
    at least one) into one ``apply_batch`` call and gives each partition the outcomes of its own
    messages; the partition records them and moves its own offset, as if it had applied them.
    At most two rounds run at a time per topic (one waits on MariaDB while the other is built);
    batches submitted meanwhile go in the next: the busier, the bigger the rounds (group commit). A big batch alone in its round (a backlog) is
    handed back at once, so those still run side by side, each in its own transaction.

    Messages of one partition stay together and in offset order; partitions share no key. When the
    call fails in any way (a poison event, old shopping's event, the database away), nothing of the
    round was applied and every partition of it gets nothing back: each applies its batch itself,
    where failures are handled per partition as before. Grouping changes how many transactions
    carry the events, never what happens to one.
    """

    def __init__(self, handler: BatchHandler, slots: asyncio.Semaphore, batch_max: int, rounds_in_flight: int = 2) -> None:
        self._handler = handler
        self._rounds_in_flight = rounds_in_flight
        self._slots = slots
        self._batch_max = batch_max
        # A batch this big alone in its round (a backlog) is cheap per event already: it goes back
        # to its partition, so the partitions' big batches still run side by side.
        self._alone_from = max(2, batch_max // 10)
        self._waiting: deque[tuple[Sequence[Event], asyncio.Future[Sequence[str]]]] = deque()
        self._workers: set[asyncio.Task[None]] = set()

    async def apply(self, events: Sequence[Event]) -> Sequence[str]:
        """Outcomes for a prefix of `events`, possibly empty: the rest is the caller's to apply."""
        future: asyncio.Future[Sequence[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        if len(self._workers) < self._rounds_in_flight:
            self._workers.add(asyncio.create_task(self._rounds(), name="group-commit"))
        return await future

    def close(self) -> None:
        for worker in list(self._workers):
            worker.cancel()
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_result(())

    async def _rounds(self) -> None:
        me = asyncio.current_task()
        try:
            await self._run_rounds()
        finally:
            # Left here, with no await after the last look at the queue: a batch submitted from now
            # on starts a new worker (a done callback would run a loop turn late, and a batch
            # submitted in that turn could wait for ever).
            self._workers.discard(me)  # type: ignore[arg-type]

    async def _run_rounds(self) -> None:
        while self._waiting:
            group: list[tuple[Sequence[Event], asyncio.Future[Sequence[str]]]] = []
            size = 0
            while self._waiting and (not group or size + len(self._waiting[0][0]) <= self._batch_max):
                events, future = self._waiting.popleft()
                if not future.done():  # a revoked partition stopped waiting
                    group.append((events, future))
                    size += len(events)
            if not group:
                continue
            if len(group) == 1 and size >= self._alone_from:
                group[0][1].set_result(())
                continue
            outcomes: Sequence[str] = ()
            try:
                async with self._slots:
                    outcomes = await self._handler.apply_batch([e for events, _ in group for e in events])
                if len(outcomes) > size:
                    outcomes = ()
            except Exception:
                outcomes = ()  # nothing was applied: every partition on its own
            finally:  # every partition of the round hears back, whatever happened (cancelled: nothing)
                at = 0
                for events, future in group:
                    if not future.done():
                        future.set_result(outcomes[at:at + len(events)])
                    at += len(events)


class ConsumerRunner:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        handlers: Mapping[str, EventHandler],
        metrics: ConsumerMetrics,
        *,
        is_transient: Callable[[BaseException], bool],
        options: RunnerOptions = RunnerOptions(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._handlers = handlers
        self._metrics = metrics
        self._is_transient = is_transient
        self._options = options
        self._sleep = sleep
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._slots = asyncio.Semaphore(options.max_concurrency)
        self._groups: dict[str, _GroupCommit] = {}
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    # --- the group ----------------------------------------------------------------------------

    def listener(self) -> ConsumerRebalanceListener:
        runner = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
                await runner._revoke(list(revoked))

            async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
                for tp in assigned:
                    runner._partition(tp)
                runner.ready.set()

        return Listener()

    def _partition(self, tp: TopicPartition) -> _Partition:
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition(tp)
            part.task = asyncio.create_task(self._apply_loop(part), name=f"partition-{tp.topic}-{tp.partition}")
        return part

    async def _revoke(self, revoked: list[TopicPartition]) -> None:
        parts = [self._partitions.pop(tp) for tp in revoked if tp in self._partitions]
        for part in parts:
            if part.task is not None:
                part.task.cancel()
        for part in parts:
            if part.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await part.task
        await self._commit(parts)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch, hand out to partitions, commit; until stop()."""
        self._consumer.subscribe(list(self._handlers), listener=self.listener())
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=100, max_records=self._options.fetch_max_records)
                for tp, records in batches.items():
                    self._observe_age(tp.topic, records, "fetched")
                    part = self._partition(tp)
                    part.queue.extend(records)
                    part.wakeup.set()
                    if len(part.queue) >= self._options.buffer_per_partition:
                        self._consumer.pause(tp)
                if time.monotonic() - last_commit >= self._options.commit_interval:
                    await self._commit(list(self._partitions.values()))
                    self._update_lag()
                    last_commit = time.monotonic()
        finally:
            await self._drain()

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self) -> None:
        """Let each partition finish the message it is on, then commit what is done."""
        parts = list(self._partitions.values())
        for part in parts:
            part.stopping = True
            part.queue.clear()
            part.wakeup.set()
        tasks = [p.task for p in parts if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        for group in self._groups.values():
            group.close()
        await self._commit(parts)

    async def _commit(self, parts: Iterable[_Partition]) -> None:
        offsets = {p.tp: p.done for p in parts if p.done is not None and p.done != p.committed}
        if not offsets:
            return
        try:
            # Bounded: aiokafka waits for a group coordinator for ever while the broker is away.
            await asyncio.wait_for(self._consumer.commit(offsets), self._options.commit_timeout)  # type: ignore[arg-type]
        except Exception as exc:  # a failed commit only means redelivery, which dedupe absorbs
            log.warning("offset_commit_failed", error=exc.__class__.__name__, partitions=len(offsets))
            return
        for part in parts:
            if part.tp in offsets:
                part.committed = offsets[part.tp]

    def _observe_age(self, topic: str, records: Iterable[ConsumerRecord[bytes, bytes]], stage: str) -> None:
        """consumer_event_age_seconds: now − each record's Kafka timestamp (a producer's clock ahead of ours: 0)."""
        now_ms = time.time() * 1000
        age = self._metrics.age.labels(topic, stage)  # once per call: every caller's records share a topic
        for record in records:
            if record.timestamp is not None and record.timestamp > 0:
                age.observe(max(0.0, now_ms - record.timestamp) / 1000)

    def _update_lag(self) -> None:
        for part in self._partitions.values():
            high = self._consumer.highwater(part.tp)
            if high is not None and part.done is not None:
                self._metrics.lag.labels(part.tp.topic, str(part.tp.partition)).set(max(0, high - part.done))

    async def _apply_loop(self, part: _Partition) -> None:
        while not part.stopping:
            if not part.queue:
                part.wakeup.clear()
                await part.wakeup.wait()
                continue
            handler = self._handlers[part.tp.topic]
            batching = self._options.batch_max > 1 and hasattr(handler, "apply_batch")
            records = list(itertools.islice(part.queue, self._options.batch_max if batching else 1))
            if batching:
                await self._apply_batch(part, cast(BatchHandler, handler), records)
            else:
                await self._apply_one(part, records[0])
            # _drain may have emptied the queue meanwhile
            for record in records:
                if not part.queue or part.queue[0] is not record:
                    break
                part.queue.popleft()
            if part.tp in self._consumer.paused() and len(part.queue) < self._options.buffer_per_partition // 2:
                self._consumer.resume(part.tp)

    async def _apply_batch(self, part: _Partition, handler: BatchHandler, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """`records` (one partition, in offset order) applied in as few transactions as they allow."""
        pending: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        for record in records:
            try:
                pending.append((record, decode(record)))
            except PoisonMessage as exc:
                await self._apply_run(part, handler, pending)
                pending = []
                await self._dead_letter(record, str(exc))
                self._observe_age(record.topic, (record,), "applied")
                part.done = record.offset + 1
        await self._apply_run(part, handler, pending)

    async def _apply_run(self, part: _Partition, handler: BatchHandler, run: list[tuple[ConsumerRecord[bytes, bytes], Event]]) -> None:
        topic = part.tp.topic
        attempt = 0
        while run:
            attempt += 1
            started = time.perf_counter()
            events = [event for _, event in run]
            try:
                # Together with the other partitions' ready batches first; alone after a failure, or
                # when the group hands (part of) it back.
                outcomes = await self._group(topic, handler).apply(events) if attempt == 1 else ()
                if not outcomes:
                    async with self._slots:
                        outcomes = await handler.apply_batch(events)
            except asyncio.CancelledError:
                raise
            except BatchFailed as failed:
                at = failed.index if 0 <= failed.index < len(run) else 0
                if at > 0:
                    await self._apply_run(part, handler, run[:at])
                await self._apply_one(part, run[at][0])
                run, attempt = run[at + 1:], 0
                continue
            except Exception as exc:
                if not self._is_transient(exc):
                    # Not a domain refusal (BatchFailed above) and not the database being away: the batch code
                    # failed where the one-by-one path may not. An error with its traceback, for a person: at
                    # warning level with the class name only, a statement the batch path could not run went
                    # unnoticed (every such batch simply ran one by one, slower).
                    log.error("event_batch_failed", topic=topic, partition=part.tp.partition, offset=run[0][0].offset,
                              events=len(run), error=exc.__class__.__name__, then="one_by_one", exc_info=exc)
                    for record, _ in run:
                        await self._apply_one(part, record)
                    return
                self._metrics.events.labels(topic, "retried").inc(len(run))
                delay = min(self._options.backoff_max, self._options.backoff_initial * 2 ** (attempt - 1))
                log.warning(
                    "event_batch_retry", topic=topic, partition=part.tp.partition, offset=run[0][0].offset,
                    events=len(run), attempt=attempt, error=exc.__class__.__name__, retry_in=round(delay, 3),
                )
                await self._sleep(delay * random.uniform(0.5, 1.0))
                continue
            if not 0 < len(outcomes) <= len(run):  # a handler bug: never skip an event for it
                log.error("event_batch_outcomes", topic=topic, outcomes=len(outcomes), events=len(run))
                for record, _ in run:
                    await self._apply_one(part, record)
                return
            # Each event of the batch waited for the whole transaction: that is its processing time.
            elapsed = time.perf_counter() - started
            histogram = self._metrics.processing.labels(topic)
            for _ in outcomes:
                histogram.observe(elapsed)
            for outcome, count in collections.Counter(outcomes).items():
                self._metrics.events.labels(topic, outcome).inc(count)
            self._observe_age(topic, (record for record, _ in run[:len(outcomes)]), "applied")
            part.done = run[len(outcomes) - 1][0].offset + 1
            run, attempt = run[len(outcomes):], 0

    async def _apply_one(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> None:
        async with self._slots:
            await self._apply_with_retries(part, record)
        self._observe_age(record.topic, (record,), "applied")
        part.done = record.offset + 1

    def _group(self, topic: str, handler: BatchHandler) -> _GroupCommit:
        group = self._groups.get(topic)
        if group is None:
            group = self._groups[topic] = _GroupCommit(handler, self._slots, self._options.batch_max)
        return group

    async def _apply_with_retries(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> None:
        topic = record.topic
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                event = decode(record)
                outcome = await self._handlers[topic](event)
            except PoisonMessage as exc:
                await self._dead_letter(record, str(exc))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transient = self._is_transient(exc)
                if not transient and attempt >= self._options.max_attempts:
                    await self._dead_letter(record, f"{exc.__class__.__name__}: {exc}"[:500])
                    return
                self._metrics.events.labels(topic, "retried").inc()
                delay = min(self._options.backoff_max, self._options.backoff_initial * 2 ** (attempt - 1))
                log.warning(
                    "event_retry", topic=topic, partition=record.partition, offset=record.offset, attempt=attempt,
                    transient=transient, error=exc.__class__.__name__, retry_in=round(delay, 3),
                )
                await self._sleep(delay * random.uniform(0.5, 1.0))
                continue
            self._metrics.processing.labels(topic).observe(time.perf_counter() - started)
            self._metrics.events.labels(topic, outcome).inc()
            return

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        headers = [
            ("error", error.encode("utf-8", "replace")),
            ("original_topic", record.topic.encode()),
            ("original_partition", str(record.partition).encode()),
            ("original_offset", str(record.offset).encode()),
        ]
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(f"{record.topic}.dlq", value=record.value, key=record.key, headers=headers)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the DLQ itself unreachable: the message must not be dropped, so wait
                delay = min(self._options.backoff_max, self._options.backoff_initial * 2 ** (attempt - 1))
                log.warning("dlq_publish_failed", topic=record.topic, error=exc.__class__.__name__, retry_in=delay)
                await self._sleep(delay)
        self._metrics.events.labels(record.topic, "dead_lettered").inc()
        log.error("event_dead_lettered", topic=record.topic, partition=record.partition, offset=record.offset, error=error)
