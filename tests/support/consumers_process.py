"""`shopping-consumers` as a real process for the tests, and the few steps that feed it: place the
worked example's order, produce an event, the captured payment of that order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import select

from common.settings import Settings
from shop.bootstrap import shop_resources
from shop import schema as t
from shop.checkout import parse_order_request, place_order
from shop.db import make_engine
from tests.builders import NOW
from tests.support.broker import Broker
from tests.support.net import free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BIN = Path(sys.executable).parent
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}


class Consumers:
    """One `shopping-consumers` process on `broker` and `db_url`, its admin port on a free port."""

    def __init__(self, broker: Broker, db_url: str, log: Path, **env: str) -> None:
        self.admin_port = free_port()
        self.log = log
        self.env = {
            **os.environ, "SHOP_DB_URL": db_url, "SHOP_KAFKA_BOOTSTRAP": broker.bootstrap, "SHOP_KAFKA_IDEMPOTENCE": "false",
            "SHOP_CONSUMER_ADMIN_PORT": str(self.admin_port), "SHOP_CONSUMER_SESSION_TIMEOUT_MS": "2000",
            # Each test its own group and topics' offsets: the broker is shared by the module.
            "SHOP_CONSUMER_GROUP": f"g-{time.monotonic_ns()}",
            # The new consumer applies every event type (the repo's routing.yaml gives them to old shopping).
            "EDGE_ROUTING_FILE": str(FIXTURES / "routing-events-new.yaml"), **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(BIN / "shopping-consumers")], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def count(self, topic: str, outcome: str) -> float:
        try:
            text = self.metrics()
        except OSError:
            return -1
        want = f'consumer_events_total{{outcome="{outcome}",topic="{topic}"}} '
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(want)), 0.0)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


async def placed_order(db_url: str, key: str, clock: Callable[[], datetime] = lambda: NOW) -> str:
    """The worked example's order (EUR 96.07), placed by the checkout service at `clock`; its id."""
    async with shop_resources(Settings.from_env({}, db_url=db_url), clock=clock) as shop:
        req = parse_order_request(WORKED, key, "ios", "5.10.0")
        return (await place_order(shop, req, 1)).order_id


async def produce(broker: Broker, topic: str, key: str, payload: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=key.encode(), value=json.dumps(payload).encode())
    finally:
        await producer.stop()


def captured(order_id: str, event_id: str) -> dict[str, Any]:
    """payment_notified_cm, status captured, for the worked example's order."""
    return {"event_id": event_id, "order_id": order_id, "payment_id": None, "provider": "adyen", "status": "captured",
            "amount": "96.07", "currency": "EUR", "psp_reference": f"PSP-{event_id}", "occurred_at": "2026-06-01T12:00:00Z"}


async def order_status(db_url: str, order_id: str) -> str | None:
    """The order's status now (None: no such order)."""
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar()
    finally:
        await engine.dispose()
