"""shop.db's write engine on MariaDB: what it spends round trips on, and what it must still do.

A committed transaction hands its connection back without the pool's ROLLBACK (counted by the
server, per session: Com_rollback); a transaction that failed, and a connection that went on
reading after its commit, are still rolled back (their row locks are gone for the next locker).
A pooled connection is pinged only after it idled: one used a moment ago is not (its loss shows on
first use, and the pool connects again), one idle longer is, so a restart during a quiet spell
costs no request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.db import make_engine
from tests.conftest import MARIADB_DATABASE
from tests.support.tcpproxy import TcpProxy

PROBE = "db_engine_probe"


@pytest.fixture
async def engine(mariadb_url: str) -> AsyncIterator[AsyncEngine]:
    """One pooled connection, so every transaction below runs on the same server session."""
    engine = make_engine(mariadb_url, pool_size=1, max_overflow=0)
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE IF NOT EXISTS {PROBE} (id INT PRIMARY KEY, n INT NOT NULL)"))
        await conn.execute(text(f"REPLACE INTO {PROBE} VALUES (1, 0)"))
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {PROBE}"))
    await engine.dispose()


async def rollbacks(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:  # closing this one, which did not commit, rolls back: +1
        row = (await conn.execute(text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
        return int(row[1])


async def lockable(mariadb_url: str) -> bool:
    """Another session can lock the probe row at once."""
    other = make_engine(mariadb_url, pool_size=1, max_overflow=0)
    try:
        async with other.begin() as conn:
            await conn.execute(text(f"SELECT n FROM {PROBE} WHERE id = 1 FOR UPDATE NOWAIT"))
        return True
    except sa_exc.OperationalError:
        return False
    finally:
        await other.dispose()


async def test_a_committed_transaction_hands_its_connection_back_without_a_rollback(engine: AsyncEngine) -> None:
    before = await rollbacks(engine)
    for n in range(5):
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {PROBE} SET n = :n WHERE id = 1"), {"n": n})
    assert await rollbacks(engine) - before == 1  # the first count's own close, none of the five commits


async def test_a_failed_transaction_and_reads_after_a_commit_are_still_rolled_back(
    engine: AsyncEngine, mariadb_url: str,
) -> None:
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(text(f"SELECT n FROM {PROBE} WHERE id = 1 FOR UPDATE"))
            raise RuntimeError("the service function gave up")
    assert await lockable(mariadb_url)

    before = await rollbacks(engine)
    async with engine.connect() as conn:
        await conn.execute(text(f"UPDATE {PROBE} SET n = 7 WHERE id = 1"))
        await conn.commit()
        await conn.execute(text(f"SELECT n FROM {PROBE} WHERE id = 1 FOR UPDATE"))  # a new transaction, left open
    assert await rollbacks(engine) - before == 2  # that connection's close, and the first count's
    assert await lockable(mariadb_url)


async def test_a_connection_is_pinged_only_after_it_idled_in_the_pool() -> None:
    proxy = TcpProxy("127.0.0.1", 3306)
    await proxy.start()
    engine = make_engine(f"mysql+aiomysql://root@127.0.0.1:{proxy.port}/{MARIADB_DATABASE}",
                         pool_size=1, max_overflow=0, ping_after_idle=0.3)

    async def one() -> int:
        async with engine.begin() as conn:
            return int((await conn.execute(text("SELECT 1"))).scalar_one())

    try:
        assert await one() == 1
        assert proxy.cut() == 1
        # Used a moment ago: not pinged, so the cut shows on first use; the pool then connects again.
        with pytest.raises(sa_exc.DBAPIError) as lost:
            await one()
        assert lost.value.connection_invalidated
        assert await one() == 1

        await asyncio.sleep(0.4)
        assert proxy.cut() == 1
        assert await one() == 1  # idle for longer: pinged, found dead, replaced before the transaction
        assert proxy.aborted == 2
    finally:
        await engine.dispose()
        await proxy.close()
