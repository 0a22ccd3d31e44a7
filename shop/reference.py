"""Reference data that changes rarely, read through a small in-process cache with a short TTL.

Mall discounts, coupon templates, forex, shipping and tariff rules are small tables read
whole; SKU rows are cached one by one as carts ask for them. A price that reads data a
few seconds old is what old shopping did too (its pricectrl/forex calls were cached); ops
who change a discount and need it live now call `invalidate()` (the admin hook).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from shop.pricing import Coupon, MallDiscount, ShippingRule, TariffRule


@dataclass(frozen=True, slots=True)
class Sku:
    id: int
    name: str
    category_id: int
    price: Decimal
    stock: int
    active: bool


@dataclass(frozen=True, slots=True)
class Forex:
    rate: Decimal
    exponent: int


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    kind: str  # zip / phone / country / line_contains
    value: str


@dataclass(frozen=True, slots=True)
class ReferenceData:
    mall_discounts: tuple[MallDiscount, ...]
    coupons_by_id: Mapping[int, Coupon]
    coupons_by_code: Mapping[str, Coupon]
    forex: Mapping[str, Forex]
    shipping: Mapping[str, ShippingRule]
    tariffs: Mapping[str, TariffRule]
    # Ops add entries rarely; a new one takes effect within the TTL, or at once on invalidate().
    blacklist: tuple[BlacklistEntry, ...]
    loaded_at: float


def _csv_ints(raw: str | None) -> frozenset[int] | None:
    return None if raw is None or not raw.strip() else frozenset(int(x) for x in raw.split(",") if x.strip())


def _csv_strs(raw: str | None) -> frozenset[str] | None:
    return None if raw is None or not raw.strip() else frozenset(x.strip().upper() for x in raw.split(",") if x.strip())


def coupon_from_row(row: Mapping[Any, Any]) -> Coupon:
    return Coupon(
        coupon_id=row["id"],
        code=row["code"],
        title=row["title"],
        kind=row["kind"],
        value=row["value"],
        min_spend=row["min_spend"] or Decimal(0),
        max_discount=row["max_discount"],
        category_ids=_csv_ints(row["category_ids"]),
        regions=_csv_strs(row["regions"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
    )


async def load_reference(engine: AsyncEngine, now: datetime, loaded_at: float) -> ReferenceData:
    async with engine.connect() as conn:
        discounts = (await conn.execute(select(t.mall_discounts).where(t.mall_discounts.c.active))).mappings().all()
        coupon_rows = (await conn.execute(select(t.coupons))).mappings().all()
        forex_rows = (await conn.execute(select(t.forex_rates))).mappings().all()
        shipping_rows = (await conn.execute(select(t.shipping_rules))).mappings().all()
        tariff_rows = (await conn.execute(select(t.tariff_rules))).mappings().all()
        blacklist_rows = (await conn.execute(
            select(t.address_blacklist.c.kind, t.address_blacklist.c.value).order_by(t.address_blacklist.c.id)
        )).all()
    coupons = [coupon_from_row(r) for r in coupon_rows]
    tariffs: dict[str, dict[str, Any]] = {}
    for r in tariff_rows:
        entry = tariffs.setdefault(r["region"], {"default": Decimal(0), "de_minimis": Decimal(0), "by_category": {}})
        if r["category_id"] is None:
            entry["default"] = r["rate_percent"]
            entry["de_minimis"] = r["de_minimis"]
        else:
            entry["by_category"][r["category_id"]] = r["rate_percent"]
    return ReferenceData(
        mall_discounts=tuple(
            MallDiscount(r["scope"], r["target_id"], r["kind"], r["value"], r["starts_at"], r["ends_at"])
            for r in discounts
            # Rows already over are dropped here; the engine still checks windows against `now`.
            if r["ends_at"] is None or r["ends_at"] > now
        ),
        coupons_by_id=MappingProxyType({c.coupon_id: c for c in coupons}),
        coupons_by_code=MappingProxyType({c.code.upper(): c for c in coupons if c.code}),
        forex=MappingProxyType({r["currency"]: Forex(r["rate"], r["exponent"]) for r in forex_rows}),
        shipping=MappingProxyType({r["region"]: ShippingRule(r["fee"], r["free_threshold"]) for r in shipping_rows}),
        tariffs=MappingProxyType({
            region: TariffRule(e["default"], e["de_minimis"], MappingProxyType(dict(e["by_category"])))
            for region, e in tariffs.items()
        }),
        blacklist=tuple(BlacklistEntry(r.kind, r.value) for r in blacklist_rows),
        loaded_at=loaded_at,
    )


class ReferenceCache:
    """TTL cache; one refresh at a time, callers meanwhile keep the snapshot they have."""

    def __init__(self, engine: AsyncEngine, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._clock = clock
        self._data: ReferenceData | None = None
        self._lock = asyncio.Lock()
        self._skus: dict[int, tuple[float, Sku]] = {}

    def invalidate(self) -> None:
        self._data = None
        self._skus.clear()

    async def get(self, now: datetime) -> ReferenceData:
        data = self._data
        if data is not None and self._clock() - data.loaded_at < self._ttl:
            return data
        async with self._lock:
            data = self._data
            if data is None or self._clock() - data.loaded_at >= self._ttl:
                data = self._data = await load_reference(self._engine, now, self._clock())
        return data

    async def skus(self, ids: Iterable[int]) -> dict[int, Sku]:
        """The rows for `ids` that exist; missing ids are simply absent."""
        now = self._clock()
        found: dict[int, Sku] = {}
        missing: list[int] = []
        for sku_id in ids:
            hit = self._skus.get(sku_id)
            if hit is not None and now - hit[0] < self._ttl:
                found[sku_id] = hit[1]
            else:
                missing.append(sku_id)
        if missing:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(t.skus).where(t.skus.c.id.in_(missing)))).mappings().all()
            for r in rows:
                sku = Sku(r["id"], r["name"], r["category_id"], r["price"], r["stock"], bool(r["active"]))
                self._skus[sku.id] = (now, sku)
                found[sku.id] = sku
        return found
