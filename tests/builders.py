"""Builders for domain inputs: the worked example of domain.md and variations on it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal as D
from types import MappingProxyType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shop.bootstrap import Shop
from shop.reference import ReferenceCache
from shop.pricing import Coupon, CouponChoice, MallDiscount, PriceLine, PricingInput, ShippingRule, TariffRule

NOW = datetime(2026, 6, 1, 12, 0, 0)

SAVE15 = Coupon(coupon_id=1, code="SAVE15", title="15 off 100", kind="amount", value=D("15.00"), min_spend=D("100.00"))


def worked_example(**changes: Any) -> PricingInput:
    """Region DE, EUR at 0.92: the cart whose total is exactly 96.07 EUR."""
    base = PricingInput(
        lines=(
            PriceLine(1, "T-shirt", 10, D("19.99"), 2),
            PriceLine(2, "Mug", 20, D("8.50"), 3),
            PriceLine(3, "Headphones", 30, D("59.00"), 1),
        ),
        region="DE",
        currency="EUR",
        fx_rate=D("0.92"),
        exponent=2,
        shipping=ShippingRule(fee=D("9.90"), free_threshold=D("200.00")),
        tariff=TariffRule(default_rate=D("12"), de_minimis=D("22.00"), by_category=MappingProxyType({30: D("5")})),
        mall_discounts=(MallDiscount("category", 10, "percent", D("10")),),
        now=NOW,
        coupon=CouponChoice(SAVE15, user_coupon_id=1),
        wallet_balance=D("20.00"),
        use_wallet=True,
    )
    return replace(base, **changes)


async def insert_order(conn: Any, order_id: str, *, user_id: int = 1, status: str = "pending_payment", **values: Any) -> None:
    """An order row as either side writes it: enough columns for state and lifecycle tests."""
    from shop import schema as t

    row = {
        "id": order_id, "user_id": user_id, "status": status, "region": "DE", "currency": "EUR",
        "fx_rate": D("0.92"), "subtotal": D("114.52"), "mall_discount": D("3.68"), "coupon_discount": D("13.80"),
        "shipping_fee": D("9.11"), "tariff": D("8.32"), "wallet_deduction": D("18.40"), "total": D("96.07"),
        "base_total": D("104.42"), "created_at": NOW, "updated_at": NOW,
    }
    row.update(values)
    await conn.execute(t.orders.insert().values(**row))


async def insert_payment(conn: Any, order_id: str, *, provider: str = "paypal", status: str = "captured",
                         amount: D = D("96.07"), currency: str = "EUR", **values: Any) -> int:
    """A payments row (captured by default) as the pay routes or old shopping write it; its id.
    PayPal refunds need `capture_id`, Adyen's `psp_reference`."""
    from shop import schema as t

    row = {"order_id": order_id, "provider": provider, "method": provider, "status": status, "amount": amount,
           "currency": currency, "created_at": NOW, "updated_at": NOW, **values}
    inserted = await conn.execute(t.payments.insert().values(**row))
    return int(inserted.inserted_primary_key[0])


def shop_at(engine: AsyncEngine, now: datetime, *, reader: AsyncEngine | None = None) -> Shop:
    """A Shop on an existing engine whose clock stands still at `now` (for service functions under test)."""
    reader = reader or engine
    return Shop(engine, reader, ReferenceCache(reader, 0.0), clock=lambda: now)
