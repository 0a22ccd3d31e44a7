"""Builders for edge tests: a routing.yaml text and the settings to run an edge on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from handlers.routes import NEW_ROUTES, NewRoute
from common.settings import Settings
from tests.support.net import free_port


# Every test edge (edge_settings) has this service token; direct /order2 calls present it.
SERVICE_TOKEN = "test-service-token-9c1f"


def internal_headers(**headers: str) -> dict[str, str]:
    """Headers of an internal caller of the new side's direct /order2 paths (the service token), plus ``headers``."""
    return {"Authorization": f"Bearer {SERVICE_TOKEN}", **headers}


def dead_url() -> str:
    """An http URL where nothing listens (a port the OS just handed out and took back)."""
    return f"http://127.0.0.1:{free_port()}"


def routing_doc(legacy_url: str, **routes: dict[str, Any]) -> dict[str, Any]:
    """A routing.yaml document; each keyword is a route name → its block."""
    return {
        "version": 1,
        "legacy_url": legacy_url,
        "defaults": {"timeout_ms": 3000, "sticky_key": ["header:X-User-Id", "header:X-Device-Id", "client_ip"]},
        "routes": routes,
    }


def calc_price_route(new_percent: float | int = 0, **extra: Any) -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": "/shopping/cal_price/v4_4"}, "new_percent": new_percent, **extra}


def coupons_route(new_percent: float | int = 0, **extra: Any) -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": "/shopping/user_coupons_for_order"}, "new_percent": new_percent, **extra}


def detail_route(new_percent: float | int = 0, **extra: Any) -> dict[str, Any]:
    return {"match": {"methods": ["GET"], "path": "/shopping/orders_v43/{order_id}"}, "new_percent": new_percent, **extra}


def write_routing(path: Path, doc: dict[str, Any]) -> Path:
    # Write-then-rename, as edgectl does, so the watcher never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def edge_settings(routing_file: Path, legacy_url: str, *, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    env = {"EDGE_LEGACY_URL": legacy_url, **(env or {})}
    base: dict[str, Any] = {
        "routing_file": str(routing_file),
        "admin_port": None,
        "access_log": False,
        "routing_poll_seconds": 0.05,
        "db_url": f"sqlite+aiosqlite:///{routing_file.parent / 'shop.db'}",
        "service_token": SERVICE_TOKEN,
    }
    base.update(overrides)
    return Settings.from_env(env, **base)


def place_order_route(new_percent: float | int = 0, **extra: Any) -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": "/shopping/cart/checkout/entries"}, "new_percent": new_percent,
            "writes": True, **extra}


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def start_edge(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    tmp_path: Path,
    legacy_url: str,
    routes: dict[str, Any] | None = None,
    *,
    new_routes: Mapping[str, NewRoute] = NEW_ROUTES,
    **settings: Any,
) -> tuple[TestClient, CollectorRegistry]:
    """An edge on a routing.yaml of ``routes`` in ``tmp_path``, in front of ``legacy_url``, and its metrics."""
    from proxy.app import create_app

    path = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, **(routes or {})))
    registry = CollectorRegistry()
    app = create_app(edge_settings(path, legacy_url, **settings), registry=registry, new_routes=new_routes)
    return await aiohttp_client(app), registry


async def raw_request(client: TestClient, head: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``head`` (a request line and headers, as written) on a fresh socket; status, headers, JSON body.

    aiohttp's client always sends origin-form targets and normalised paths; this sends anything.
    """
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), headers, json.loads(body) if body.startswith(b"{") else body
