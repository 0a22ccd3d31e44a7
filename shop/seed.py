"""Deterministic demo data: the worked example of ``spec/domain.md`` plus a realistic crowd around it.

Everything comes from ``random.Random(42)`` and fixed dates, so two seeds give identical rows
(ids included) and tests can rely on the constants below.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, delete
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema

Row = dict[str, Any]

# --- the worked example (domain.md); other code and tests refer to these ids -------------------
WORKED_EXAMPLE_USER_ID = 1
WORKED_EXAMPLE_ADDRESS_ID = 1
WORKED_EXAMPLE_REGION = "DE"
WORKED_EXAMPLE_CURRENCY = "EUR"
WORKED_EXAMPLE_COUPON_ID = 1
WORKED_EXAMPLE_COUPON_CODE = "SAVE15"
WORKED_EXAMPLE_USER_COUPON_ID = 1
WORKED_EXAMPLE_MALL_DISCOUNT_ID = 1
WORKED_EXAMPLE_WALLET = Decimal("20.00")
# (sku_id, qty) of user 1's cart, all selected.
WORKED_EXAMPLE_CART: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 1))
WORKED_EXAMPLE_TOTAL_EUR = Decimal("96.07")  # with the coupon and use_wallet

DEMO_SEED = 42
DEMO_SKU_COUNT = 200
DEMO_USER_COUNT = 1000
DEMO_REGIONS = ("US", "DE", "GB", "JP")
DEMO_CATEGORIES = (10, 20, 30, 40, 50)

# Fixed dates keep the data identical run to run; the far end keeps windows open for years.
SEED_TIME = datetime(2025, 1, 1)
WINDOW_START = datetime(2024, 1, 1)
WINDOW_END = datetime(2099, 12, 31, 23, 59, 59)
EXPIRED_END = datetime(2024, 6, 30, 23, 59, 59)

# The demo stock of the worked-example SKUs is large so repeated checkouts in demos never run out.
WORKED_EXAMPLE_STOCK = 100_000


def _d(value: str) -> Decimal:
    return Decimal(value)


def _cents(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low, high)).scaleb(-2)


_SKU_WORDS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    10: (("Classic", "Slim", "Organic", "Oversized", "Striped"), ("T-shirt", "Hoodie", "Cap", "Socks", "Jacket")),
    20: (("Ceramic", "Enamel", "Bamboo", "Steel", "Glass"), ("Mug", "Bowl", "Plate", "Kettle", "Jar")),
    30: (("Wireless", "Compact", "Pro", "Smart", "Portable"), ("Headphones", "Speaker", "Charger", "Watch", "Camera")),
    40: (("Illustrated", "Pocket", "Hardcover", "Collected", "Annotated"), ("Novel", "Atlas", "Cookbook", "Guide", "Journal")),
    50: (("Trail", "Indoor", "Pro", "Junior", "Travel"), ("Ball", "Mat", "Bottle", "Racket", "Backpack")),
}

_CITIES = {
    "US": ("New York", "Austin", "Seattle", "Chicago", "Denver"),
    "DE": ("Berlin", "Hamburg", "Munich", "Cologne", "Leipzig"),
    "GB": ("London", "Leeds", "Bristol", "Glasgow", "Cardiff"),
    "JP": ("Tokyo", "Osaka", "Kyoto", "Sapporo", "Fukuoka"),
}
_STREETS = ("Main St", "Hauptstrasse", "High Street", "Sakura-dori", "Park Avenue", "Lindenweg")
_FIRST = ("Alex", "Sam", "Mia", "Ken", "Lena", "Omar", "Yuki", "Noah", "Ava", "Jonas")
_LAST = ("Smith", "Müller", "Jones", "Sato", "Schmidt", "Brown", "Tanaka", "Weber", "Taylor", "Ito")
_GB_POSTCODES = ("SW1A 1AA", "EC1A 1BB", "M1 1AE", "LS1 4AP", "BS1 5TR", "G1 1XQ", "CF10 1EP")


def _skus(rng: random.Random) -> list[Row]:
    rows: list[Row] = [
        {"id": 1, "name": "T-shirt", "category_id": 10, "price": _d("19.99"), "stock": WORKED_EXAMPLE_STOCK, "active": True},
        {"id": 2, "name": "Mug", "category_id": 20, "price": _d("8.50"), "stock": WORKED_EXAMPLE_STOCK, "active": True},
        {"id": 3, "name": "Headphones", "category_id": 30, "price": _d("59.00"), "stock": WORKED_EXAMPLE_STOCK, "active": True},
    ]
    for sku_id in range(4, DEMO_SKU_COUNT + 1):
        category = rng.choice(DEMO_CATEGORIES)
        adjectives, nouns = _SKU_WORDS[category]
        roll = rng.random()
        rows.append(
            {
                "id": sku_id,
                "name": f"{rng.choice(adjectives)} {rng.choice(nouns)} #{sku_id}",
                "category_id": category,
                "price": _cents(rng, 199, 29999),
                # A few sold-out and withdrawn SKUs so out_of_stock / sku_unavailable paths have data.
                "stock": 0 if roll < 0.04 else rng.randint(5, 500),
                "active": not 0.04 <= roll < 0.07,
            }
        )
    return rows


def _mall_discounts(rng: random.Random) -> list[Row]:
    # Nothing but id 1 may touch SKUs 1-3 or categories 10/20/30, or the worked example changes.
    sku_targets = rng.sample(range(4, DEMO_SKU_COUNT + 1), 2)
    base = {"starts_at": None, "ends_at": None, "active": True}
    return [
        {**base, "id": 1, "scope": "category", "target_id": 10, "kind": "percent", "value": _d("10")},
        {**base, "id": 2, "scope": "category", "target_id": 40, "kind": "percent", "value": _d("15")},
        {**base, "id": 3, "scope": "category", "target_id": 50, "kind": "amount", "value": _d("2.00")},
        {**base, "id": 4, "scope": "sku", "target_id": sku_targets[0], "kind": "percent", "value": _d("20")},
        {**base, "id": 5, "scope": "sku", "target_id": sku_targets[1], "kind": "amount", "value": _d("5.00")},
        {**base, "id": 6, "scope": "category", "target_id": 40, "kind": "percent", "value": _d("30"), "active": False},
        {**base, "id": 7, "scope": "category", "target_id": 50, "kind": "percent", "value": _d("25"),
         "starts_at": WINDOW_START, "ends_at": EXPIRED_END},
    ]


def _coupons() -> list[Row]:
    base = {
        "code": None, "min_spend": _d("0.00"), "max_discount": None, "category_ids": None,
        "regions": None, "starts_at": WINDOW_START, "ends_at": WINDOW_END,
    }
    return [
        {**base, "id": 1, "code": WORKED_EXAMPLE_COUPON_CODE, "title": "15 off orders over 100",
         "kind": "amount", "value": _d("15.00"), "min_spend": _d("100.00")},
        {**base, "id": 2, "title": "5 off orders over 30", "kind": "amount", "value": _d("5.00"), "min_spend": _d("30.00")},
        {**base, "id": 3, "code": "WELCOME10", "title": "10% off, up to 20", "kind": "percent",
         "value": _d("10"), "max_discount": _d("20.00"), "min_spend": _d("50.00")},
        {**base, "id": 4, "title": "Free shipping", "kind": "free_shipping", "value": _d("0")},
        {**base, "id": 5, "title": "15% off electronics, up to 30", "kind": "percent", "value": _d("15"),
         "max_discount": _d("30.00"), "category_ids": "30"},
        {**base, "id": 6, "title": "8 off in Europe", "kind": "amount", "value": _d("8.00"),
         "min_spend": _d("60.00"), "regions": "DE,GB"},
        {**base, "id": 7, "title": "3 off home and books", "kind": "amount", "value": _d("3.00"), "category_ids": "20,40"},
        {**base, "id": 8, "title": "Free shipping in Japan", "kind": "free_shipping", "value": _d("0"), "regions": "JP"},
        {**base, "id": 9, "code": "SUMMER20", "title": "20 off (summer, over)", "kind": "amount", "value": _d("20.00"),
         "min_spend": _d("80.00"), "ends_at": EXPIRED_END},
        {**base, "id": 10, "title": "25% off sports, up to 15", "kind": "percent", "value": _d("25"),
         "max_discount": _d("15.00"), "category_ids": "50", "regions": "US,GB"},
    ]


def _address(rng: random.Random, address_id: int, user_id: int, region: str) -> Row:
    if region == "US":
        phone, zip_code = f"+1{rng.randint(2_000_000_000, 9_999_999_999)}", f"{rng.randint(10000, 99999)}"
    elif region == "DE":
        phone, zip_code = f"+49151{rng.randint(10_000_000, 99_999_999)}", f"{rng.randint(1067, 99998):05d}"
    elif region == "GB":
        phone, zip_code = f"+447{rng.randint(100_000_000, 999_999_999)}", rng.choice(_GB_POSTCODES)
    else:
        phone, zip_code = f"+8190{rng.randint(10_000_000, 99_999_999)}", f"{rng.randint(100, 999)}-{rng.randint(1, 9999):04d}"
    return {
        "id": address_id,
        "user_id": user_id,
        "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "phone": phone,
        "country": region,
        "city": rng.choice(_CITIES[region]),
        "zip": zip_code,
        "line1": f"{rng.randint(1, 250)} {rng.choice(_STREETS)}",
    }


def demo_rows(seed: int = DEMO_SEED) -> dict[str, list[Row]]:
    """All demo rows by table name; pure and deterministic, so tests can compare against it."""
    rng = random.Random(seed)
    skus = _skus(rng)
    mall = _mall_discounts(rng)
    coupons = _coupons()

    cart: list[Row] = [
        {"id": i, "user_id": WORKED_EXAMPLE_USER_ID, "sku_id": sku_id, "qty": qty, "selected": True, "created_at": SEED_TIME}
        for i, (sku_id, qty) in enumerate(WORKED_EXAMPLE_CART, start=1)
    ]
    addresses: list[Row] = [
        {"id": WORKED_EXAMPLE_ADDRESS_ID, "user_id": WORKED_EXAMPLE_USER_ID, "name": "Erika Mustermann",
         "phone": "+4915112345678", "country": WORKED_EXAMPLE_REGION, "city": "Berlin", "zip": "10115",
         "line1": "Unter den Linden 1"},
    ]
    wallets: list[Row] = [{"user_id": WORKED_EXAMPLE_USER_ID, "balance": WORKED_EXAMPLE_WALLET}]
    user_coupons: list[Row] = [
        {"id": WORKED_EXAMPLE_USER_COUPON_ID, "user_id": WORKED_EXAMPLE_USER_ID, "coupon_id": WORKED_EXAMPLE_COUPON_ID,
         "status": "unused", "order_id": None, "created_at": SEED_TIME, "used_at": None},
    ]
    coupon_ids = [c["id"] for c in coupons]
    for user_id in range(2, DEMO_USER_COUNT + 1):
        for sku_id in rng.sample(range(1, DEMO_SKU_COUNT + 1), rng.randint(1, 8)):
            cart.append({"id": len(cart) + 1, "user_id": user_id, "sku_id": sku_id, "qty": rng.randint(1, 3),
                         "selected": rng.random() < 0.85, "created_at": SEED_TIME})
        addresses.append(_address(rng, len(addresses) + 1, user_id, rng.choice(DEMO_REGIONS)))
        wallets.append({"user_id": user_id, "balance": Decimal("0.00") if rng.random() < 0.4 else _cents(rng, 100, 10000)})
        for coupon_id in rng.sample(coupon_ids, rng.randint(0, 3)):
            status = rng.choices(("unused", "used", "expired"), weights=(8, 1, 1))[0]
            user_coupons.append({"id": len(user_coupons) + 1, "user_id": user_id, "coupon_id": coupon_id,
                                 "status": status, "order_id": None, "created_at": SEED_TIME,
                                 "used_at": SEED_TIME if status == "used" else None})

    return {
        "skus": skus,
        "mall_discounts": mall,
        "coupons": coupons,
        "user_coupons": user_coupons,
        "cart_items": cart,
        "addresses": addresses,
        "wallets": wallets,
        "forex_rates": [
            {"currency": "USD", "rate": _d("1"), "exponent": 2},
            {"currency": "EUR", "rate": _d("0.92"), "exponent": 2},
            {"currency": "GBP", "rate": _d("0.79"), "exponent": 2},
            {"currency": "JPY", "rate": _d("151.2"), "exponent": 0},
            {"currency": "KWD", "rate": _d("0.3075"), "exponent": 3},
        ],
        "shipping_rules": [
            {"region": "US", "fee": _d("6.95"), "free_threshold": _d("75.00")},
            {"region": "DE", "fee": _d("9.90"), "free_threshold": _d("200.00")},
            {"region": "GB", "fee": _d("7.50"), "free_threshold": _d("150.00")},
            {"region": "JP", "fee": _d("12.00"), "free_threshold": _d("250.00")},
        ],
        "tariff_rules": [
            {"id": 1, "region": "DE", "category_id": None, "rate_percent": _d("12"), "de_minimis": _d("22.00")},
            {"id": 2, "region": "DE", "category_id": 30, "rate_percent": _d("5"), "de_minimis": _d("22.00")},
            {"id": 3, "region": "US", "category_id": None, "rate_percent": _d("3.5"), "de_minimis": _d("800.00")},
            {"id": 4, "region": "GB", "category_id": None, "rate_percent": _d("20"), "de_minimis": _d("135.00")},
            {"id": 5, "region": "GB", "category_id": 40, "rate_percent": _d("0"), "de_minimis": _d("135.00")},
            {"id": 6, "region": "JP", "category_id": None, "rate_percent": _d("10"), "de_minimis": _d("100.00")},
            {"id": 7, "region": "JP", "category_id": 20, "rate_percent": _d("8"), "de_minimis": _d("100.00")},
        ],
        # Random addresses above never produce these values, so only deliberate tests hit the blacklist.
        "address_blacklist": [
            {"id": 1, "kind": "zip", "value": "00000"},
            {"id": 2, "kind": "phone", "value": "+10000000000"},
            {"id": 3, "kind": "country", "value": "KP"},
            {"id": 4, "kind": "line_contains", "value": "PO Box"},
        ],
        # Limits are in the order currency, hence separate JPY rows for the same method code.
        "payment_methods": [
            {"id": 1, "code": "card", "provider": "adyen", "title": "Credit or debit card", "regions": "US,DE,GB",
             "currencies": "USD,EUR,GBP", "platforms": None, "min_amount": _d("0.50"), "max_amount": _d("10000"),
             "sort": 10, "enabled": True},
            {"id": 2, "code": "paypal", "provider": "paypal", "title": "PayPal", "regions": "US,DE,GB",
             "currencies": "USD,EUR,GBP", "platforms": None, "min_amount": _d("1.00"), "max_amount": _d("10000"),
             "sort": 20, "enabled": True},
            {"id": 3, "code": "ideal", "provider": "adyen", "title": "iDEAL", "regions": "DE",
             "currencies": "EUR", "platforms": "ios,android,web", "min_amount": _d("1.00"), "max_amount": _d("5000"),
             "sort": 30, "enabled": True},
            {"id": 4, "code": "sofort", "provider": "adyen", "title": "Sofort", "regions": "DE",
             "currencies": "EUR", "platforms": "android,web", "min_amount": _d("1.00"), "max_amount": _d("5000"),
             "sort": 40, "enabled": True},
            {"id": 5, "code": "card", "provider": "adyen", "title": "クレジットカード", "regions": "JP",
             "currencies": "JPY", "platforms": None, "min_amount": _d("50"), "max_amount": _d("1500000"),
             "sort": 10, "enabled": True},
            {"id": 6, "code": "paypal", "provider": "paypal", "title": "PayPal", "regions": "JP",
             "currencies": "JPY", "platforms": None, "min_amount": _d("100"), "max_amount": _d("1500000"),
             "sort": 20, "enabled": True},
            {"id": 7, "code": "klarna", "provider": "adyen", "title": "Klarna Pay Later", "regions": "DE,GB",
             "currencies": "EUR,GBP", "platforms": None, "min_amount": _d("35.00"), "max_amount": _d("1000"),
             "sort": 50, "enabled": False},
        ],
    }


async def seed_demo(engine: AsyncEngine) -> None:
    """Replace the contents of every contract table with the demo data, in one transaction."""
    rows = demo_rows()
    tables: Sequence[Table] = schema.metadata.sorted_tables
    async with engine.begin() as conn:
        # Orders, payments, outbox etc. are emptied too: a demo starts from a clean shop.
        for table in reversed(tables):
            await conn.execute(delete(table))
        for table in tables:
            table_rows = rows.get(table.name)
            if table_rows:
                await conn.execute(table.insert(), table_rows)
