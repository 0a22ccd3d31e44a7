"""The consumers process's composition root: `run(settings)` builds everything, runs until SIGTERM.

One shop (shop.bootstrap, the same resources the edge builds), one Kafka consumer in the group
`SHOP_CONSUMER_GROUP` on every event type's topic, one producer (DLQ and outbox relay), the
outbox relay, the singleton jobs (consumers/leased_job.py: the expiry sweeper, the refund retrier, the
PayPal capture reconciler; the last two on one PSP session), the ownership watch (routing.yaml
`consumers:`: each event applied here or delivered to old shopping's `/event/{name}`,
consumers/events.py), and the admin port (`/metrics`, `/healthz`, `/readyz`, loopback by default).
Nothing is created at import time. SIGTERM/SIGINT: every partition finishes the event it is on,
offsets are committed, the group is left, the relay lease is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adapters.paypal import PayPalClient
from adapters.psp_metrics import PspMetrics
from adapters.refunds import psp_session, refund_clients
from common.admin_index import add_index
from common.logs import flush_stdout_periodically
from consumers.capture_reconcile import capture_reconciler
from consumers.events import owned_handler
from consumers.expiry import expiry_sweeper
from consumers.leased_job import LeasedJob
from consumers.legacy_delivery import LegacyDelivery, legacy_session
from consumers.metrics import ConsumerMetrics, OutboxAge
from consumers.outbox_relay import OutboxRelay, RelayMetrics
from consumers.ownership import Ownership
from consumers.refund_retry import refund_retrier
from consumers.runner import ConsumerRunner, RunnerOptions
from shop.bootstrap import Shop, shop_resources
from shop.db import is_unavailable
from shop.events import EVENT_TYPES
from common.settings import Settings

log = structlog.get_logger("consumers")


def is_transient(exc: BaseException) -> bool:
    """Failures of the world around the event (DB, broker, old shopping), not of the event itself."""
    return is_unavailable(exc) or isinstance(exc, ConnectionError | TimeoutError | OSError)


def _kafka_clients(settings: Settings) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.consumer_session_timeout_ms // 10),
        rebalance_timeout_ms=settings.consumer_session_timeout_ms,
        fetch_max_wait_ms=settings.consumer_fetch_wait_ms,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=settings.kafka_idempotence,
        linger_ms=5,
    )
    return consumer, producer


async def _start_until_up(client: AIOKafkaConsumer | AIOKafkaProducer, what: str, stopping: asyncio.Event) -> bool:
    """Start a Kafka client, waiting out a broker that is not up yet; False when told to stop first."""
    delay = 0.2
    while not stopping.is_set():
        try:
            await client.start()
            return True
        except Exception as exc:  # KafkaConnectionError and friends: the broker is starting or away
            log.warning("kafka_unavailable", client=what, error=exc.__class__.__name__, retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(5.0, delay * 2)
    return False


SHUTDOWN_SECONDS = 10.0


async def _close(what: str, closing: Awaitable[None]) -> None:
    """One step of the shutdown, bounded, whatever the client raises (aiokafka's stop() re-raises the
    CancelledError of its own fetch task when the broker is gone)."""
    try:
        await asyncio.wait_for(closing, SHUTDOWN_SECONDS)
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("shutdown_step_failed", step=what, error=exc.__class__.__name__)


def admin_app(registry: CollectorRegistry, shop: Shop, runner: ConsumerRunner) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        if not runner.ready.is_set():
            problems.append("kafka: no partitions assigned yet")
        try:
            async with shop.db.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            problems.append(f"database: {exc.__class__.__name__}")
        return web.json_response({"ready": not problems, "problems": problems}, status=200 if not problems else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_index(app)
    return app


@contextlib.asynccontextmanager
async def _admin_site(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def lease_holder() -> str:
    """This process, as a lease holder (shop/leases.py)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def _running(job: LeasedJob | None, name: str) -> AsyncIterator[None]:
    """A singleton job (consumers/leased_job.py) for the life of the block: the database (and the PSPs) only, so
    it runs while the broker is away too; None: switched off by its setting. Stopped as every step of the shutdown."""
    if job is None:
        yield
        return
    task = asyncio.create_task(job.run(), name=name)
    try:
        yield
    finally:
        job.stop()
        await _close(name, task)


@contextlib.asynccontextmanager
async def _outbox_age_watching(shop: Shop, registry: CollectorRegistry) -> AsyncIterator[None]:
    """outbox_oldest_unpublished_seconds for the whole life of the process (the database only, like the sweeper)."""
    age, stopping = OutboxAge(registry), asyncio.Event()
    task = asyncio.create_task(age.watch(shop.db_read, shop.clock, stopping), name="outbox-age")
    try:
        yield
    finally:
        stopping.set()
        await _close("outbox age", task)


async def run(settings: Settings, *, admin_host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> None:
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    topics = {settings.consumer_topics[name]: et for name, et in EVENT_TYPES.items()}
    metrics = ConsumerMetrics(registry, tuple(topics))
    relay_metrics = RelayMetrics(registry)
    # routing.yaml's consumers: (who applies each event type); a bad file stops the start here.
    ownership = Ownership.for_settings(settings, registry)
    # No pre-ping: every unit of work here is retried on a lost connection (runner, relay, sweeper),
    # and at a steady 500 events/s the ping was a third of a batch's time (bench/RESULTS.md).
    async with shop_resources(settings, pre_ping=False) as shop, legacy_session(settings.legacy_event_pool_size) as session, \
            psp_session() as psp:
        legacy = LegacyDelivery(session, lambda: ownership.legacy_url, timeout=settings.legacy_event_timeout_seconds)
        consumer, producer = _kafka_clients(settings)
        handlers = {topic: owned_handler(shop, et, ownership, legacy) for topic, et in topics.items()}
        runner = ConsumerRunner(
            consumer, producer, handlers, metrics,
            is_transient=is_transient,
            options=RunnerOptions(
                max_concurrency=settings.consumer_concurrency, max_attempts=settings.consumer_max_attempts,
                commit_interval=settings.consumer_commit_seconds, batch_max=settings.consumer_batch_max,
            ),
        )
        relay = OutboxRelay(shop.db, producer, relay_metrics, holder=lease_holder(), clock=shop.clock)
        flushing = contextlib.asynccontextmanager(flush_stdout_periodically)(None)
        outbox_age = _outbox_age_watching(shop, registry)
        holder, psp_metrics = lease_holder(), PspMetrics(registry)
        sweeper = expiry_sweeper(shop, settings, registry, holder)
        refunds = refund_retrier(shop, settings, registry, holder, refund_clients(psp, settings, psp_metrics))
        captures = capture_reconciler(shop, settings, registry, holder,
                                      PayPalClient.from_settings(psp, settings, metrics=psp_metrics))
        async with flushing, _admin_site(admin_app(registry, shop, runner), admin_host, settings.consumer_admin_port), \
                outbox_age, _running(sweeper, "expiry-sweeper"), _running(refunds, "refund-retrier"), \
                _running(captures, "capture-reconciler"):
            if not (await _start_until_up(producer, "producer", stopping) and await _start_until_up(consumer, "consumer", stopping)):
                return
            log.info("consumers_started", group=settings.consumer_group, topics=sorted(topics))
            tasks = [asyncio.create_task(runner.run(), name="consumer"), asyncio.create_task(relay.run(), name="relay")]
            watch = asyncio.create_task(ownership.watch(settings.routing_poll_seconds), name="routing-watch")
            await stopping.wait()
            watch.cancel()
            runner.stop()
            relay.stop()
            _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
            for task in late:  # a batch stuck on an absent broker: it is redelivered, never lost
                task.cancel()
            # Leaving the group moves the partitions to the other members at once; with the broker
            # gone it cannot, and must not keep the process from ending.
            await _close("consumer", consumer.stop())
            await _close("producer", producer.stop())
            log.info("consumers_stopped")
