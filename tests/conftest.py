"""Shared fixtures: real MariaDB (127.0.0.1:3306, root, db `test`) and SQLite files.

`make test` starts MariaDB (scripts/ensure-mariadb.sh) before pytest runs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.db import create_all, drop_all, make_engine

# SHOP_TEST_MARIADB_DB gives a second suite running on the same server (another checkout, a
# developer's helper) its own database; `make test` and CI use `test`, the brief's database.
# Under pytest-xdist (`make test` runs two workers, each taking whole modules) the first worker keeps `test`
# and every other one gets `test_<worker>` (`<SHOP_TEST_MARIADB_DB>_<worker>`), which tests/support/legacydb.py's private databases then prefix.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_BASE = os.environ.get("SHOP_TEST_MARIADB_DB") or "test"
MARIADB_DATABASE = _BASE if _WORKER == "gw0" else f"{_BASE}_{_WORKER}"
MARIADB_URL = f"mysql+aiomysql://root@127.0.0.1:3306/{MARIADB_DATABASE}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if MARIADB_DATABASE != "test":
        import pymysql

        try:
            conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
        except pymysql.err.OperationalError:
            return  # the MariaDB tests will say so themselves
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{MARIADB_DATABASE}` CHARACTER SET utf8mb4")


@pytest.fixture
def mariadb_url() -> str:
    return MARIADB_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Both databases the project supports; MariaDB tests share the `test` schema, so they recreate tables."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"
    else:
        yield MARIADB_URL


@pytest.fixture
async def fresh_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on freshly created tables; MariaDB's `test` database is shared, so start from scratch."""
    engine = make_engine(db_url)
    await drop_all(engine)
    await create_all(engine)
    try:
        yield engine
    finally:
        await engine.dispose()
