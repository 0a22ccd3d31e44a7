"""The ``make_stack`` fixture: a shadowing edge with old shopping's emulator, in-process
(``pytest_plugins = ["tests.support.shadow_fixtures"]``; the Stack is tests/support/shadow_stack.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from emulators.legacy import create_admin_app as create_legacy_admin_app
from emulators.legacy import create_app as create_legacy_app
from emulators.legacy.faults import FAULTS
from proxy.app import ADMIN_APP, create_app
from tests.support.edge import edge_settings, routing_doc, write_routing
from tests.support.shadow_stack import Stack, add_tie_sku
from tests.support.shopdb import seed_database


@pytest.fixture
async def make_stack(aiohttp_server: Callable[..., Awaitable[TestServer]], aiohttp_client, tmp_path: Path):
    opened: list[TestClient] = []

    async def make(route: dict[str, Any], *, legacy_app=None, **settings: Any) -> Stack:
        db = await seed_database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
        await add_tie_sku(db)
        legacy_server = await aiohttp_server(legacy_app or create_legacy_app(db))
        legacy_url = str(legacy_server.make_url("")).rstrip("/")
        routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, calc_price=route))
        registry = CollectorRegistry()
        app = create_app(edge_settings(routing, legacy_url, db_url=db, **settings), registry=registry)
        edge = await aiohttp_client(app)
        admin = TestClient(TestServer(app[ADMIN_APP]))
        # Old shopping's knobs (/_emulator/*) are on its own loopback listener, not the port the edge forwards to.
        # A stand-in old shopping (legacy_app=...) has no knobs: its admin client answers 404 to all.
        knobs = create_legacy_admin_app(legacy_server.app) if FAULTS in legacy_server.app else web.Application()
        legacy_admin = TestClient(TestServer(knobs))
        for c in (admin, legacy_admin):
            await c.start_server()
            opened.append(c)
        return Stack(edge, admin, legacy_admin, registry)

    yield make
    for c in opened:
        await c.close()
