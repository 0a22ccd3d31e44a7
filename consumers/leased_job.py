"""A singleton job of the consumers process: one pass every period, by whichever instance holds its lease.

The expiry sweeper, the refund retrier and the PayPal capture reconciler are each one of these. The
lease (shop/leases.py) outlives a period (three of them, at least 10 s, or the longest a pass can take),
so the holder keeps it from one pass to the next; a holder that dies is replaced after that, a clean stop
releases it at once. Correctness never hangs on it (every job's writes are guarded compare-and-set
updates); it saves N processes scanning the same rows, and calling a PSP, for nothing.

The loop waits a period before the first pass: a process that just started (or a test) gets one period.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import Gauge

from shop import leases
from shop.bootstrap import Shop


def lease_ttl(period: float, longest_pass: timedelta = timedelta(0)) -> timedelta:
    return max(timedelta(seconds=max(10.0, 3 * period)), longest_pass)


class LeasedJob:
    """Subclasses implement ``pass_once`` (never raising: a failure is theirs to log and count) and may
    override ``started`` (run once before the first period, whether or not this process leads)."""

    def __init__(self, shop: Shop, *, lease: str, holder: str, period: float, leader: Gauge,
                 longest_pass: timedelta = timedelta(0)) -> None:
        self._shop = shop
        self._lease = lease
        self._holder = holder
        self._period = period
        self._ttl = lease_ttl(period, longest_pass)
        self._leader = leader
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await self.started()
            while not await self._stopped_within(self._period):
                await self.pass_once()
        finally:
            self._leader.set(0)
            await leases.release_quietly(self._shop.db, self._lease, self._holder)

    async def started(self) -> None:
        return None

    async def pass_once(self) -> object:
        raise NotImplementedError

    async def lead(self) -> bool:
        """Take or renew the lease; the leader gauge says whether this process holds it. May raise (the DB)."""
        held = await leases.hold(self._shop.db, self._lease, self._holder, self._shop.clock(), self._ttl)
        self._leader.set(1 if held else 0)
        return held

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

