"""Builders for edge tests: a routing.yaml text and the settings to run an edge on it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

from shop.settings import Settings


def dead_url() -> str:
    """An http URL where nothing listens (a port the OS just handed out and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


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
    }
    base.update(overrides)
    return Settings.from_env(env, **base)


def place_order_route(new_percent: float | int = 0, **extra: Any) -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": "/shopping/cart/checkout/entries"}, "new_percent": new_percent,
            "writes": True, **extra}
