"""Databases and answers for the old-shopping emulator's tests.

Each module seeds one SQLite template and gives every test its own copy; MariaDB tests use
a database of the module's own, so suites running against `test` at the same time cannot
drop tables under them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.db import make_engine
from tests.conftest import MARIADB_DATABASE, MARIADB_URL
from tests.support.shopdb import seed_database


def seeded_template(tmp_path_factory: Any, name: str) -> Path:
    """A seeded SQLite file for a whole test module (`name` its directory); tests take copies (copy_seeded)."""
    path = tmp_path_factory.mktemp(name) / "template.db"
    asyncio.run(seed_database(f"sqlite+aiosqlite:///{path}"))
    return path


async def seeded_url(kind: str, template: Path, tmp_path: Path, mariadb_database: str) -> str:
    """A seeded database for one test: a copy of `template` (kind "sqlite") or the module's own MariaDB database."""
    if kind == "mariadb":
        return await private_mariadb(mariadb_database)
    return copy_seeded(template, tmp_path)


def copy_seeded(template: Path, tmp_path: Path) -> str:
    """A private copy of a seeded SQLite file (with its WAL files), as a database URL."""
    target = tmp_path / "shop.db"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{template}{suffix}")
        if source.exists():
            shutil.copy(source, f"{target}{suffix}")
    return f"sqlite+aiosqlite:///{target}"


async def private_mariadb(database: str) -> str:
    """The MariaDB database `database` (created on demand), freshly seeded, as a URL."""
    if MARIADB_DATABASE != "test":
        database = f"{MARIADB_DATABASE}_{database}"
    server = make_engine(MARIADB_URL)
    try:
        async with server.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"))
    finally:
        await server.dispose()
    return await seed_database(make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False))


async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine for a fixture to yield, disposed afterwards."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def envelope(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The legacy envelope of an answer that must have `status`."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"code", "msg", "data"}, body
    return body
