"""The shared shopping database, as SQLAlchemy Core tables.

Table and column names are the contract with old shopping (see
``spec/domain.md``): columns and indexes may be added, nothing may be renamed.
Every money column is ``Numeric`` with ``asdecimal=True`` so values come back as
``Decimal`` on both MariaDB and SQLite. Timestamps are naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles

# Deterministic constraint names so MariaDB and SQLite agree and `check` output is readable.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY, so big ids fall back to INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# MariaDB DATETIME drops fractions unless asked; history rows written within one second must still order.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

Price = Numeric(12, 2, asdecimal=True)  # SKU prices and USD thresholds (cents)
Amount = Numeric(18, 4, asdecimal=True)  # order / payment / refund / wallet money
Rate = Numeric(18, 8, asdecimal=True)  # forex rate per 1 USD
Percent = Numeric(12, 4, asdecimal=True)  # percentages and discount values

# Old shopping's MySQL tables are InnoDB/utf8mb4; be explicit rather than trust the server default.
_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}



class ExactKey(String):
    """A key or reference that must compare byte for byte: idempotency keys, request and event ids.

    MariaDB/MySQL compare text with the column's collation, and utf8mb4's default one is case and
    accent insensitive and pads with spaces: `Case-Key-A`, `case-key-a` and `Case-Key-A ` would be
    one key (one user's second checkout answered with the first order). On MySQL/MariaDB the column
    is declared with a binary NO PAD collation (``exact_key_collation``); SQLite compares BINARY
    unless told otherwise, so there it is a plain VARCHAR.
    """

    cache_ok = True


def exact_key_collation(dialect: Dialect) -> str:
    """The binary, NO PAD utf8mb4 collation of this server (MySQL before 8.0.17 has only the PAD SPACE one)."""
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if (dialect.server_version_info or (0,)) >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"


def exact_key_ddl(type_: ExactKey, dialect: Dialect) -> str:
    return f"VARCHAR({type_.length}) CHARACTER SET utf8mb4 COLLATE {exact_key_collation(dialect)}"


@compiles(ExactKey, "mysql")
@compiles(ExactKey, "mariadb")
def _exact_key_mysql(type_: ExactKey, compiler: Any, **kw: Any) -> str:
    return exact_key_ddl(type_, compiler.dialect)


ORDER_ID = String(32)
USER_ID = BigInteger
REGION = String(8)
CURRENCY = String(3)
STATUS = String(32)


def utcnow() -> datetime:
    """Naive UTC, the one timestamp convention of the shared database."""
    return datetime.now(UTC).replace(tzinfo=None)


def _created() -> Column[datetime]:
    return Column("created_at", Timestamp, nullable=False, default=utcnow)


def _updated() -> Column[datetime]:
    return Column("updated_at", Timestamp, nullable=False, default=utcnow, onupdate=utcnow)


skus = Table(
    "skus",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("category_id", Integer, nullable=False, index=True),
    Column("price", Price, nullable=False),
    Column("stock", Integer, nullable=False, default=0, server_default=text("0")),
    Column("active", Boolean, nullable=False, default=True, server_default=true()),
    **_TABLE_OPTIONS,
)

cart_items = Table(
    "cart_items",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("user_id", USER_ID, nullable=False),
    Column("sku_id", Integer, nullable=False),
    Column("qty", Integer, nullable=False),
    Column("selected", Boolean, nullable=False, default=True, server_default=true()),
    _created(),
    # The unique key doubles as the per-user lookup index.
    UniqueConstraint("user_id", "sku_id"),
    **_TABLE_OPTIONS,
)

mall_discounts = Table(
    "mall_discounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(16), nullable=False),  # sku / category
    Column("target_id", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # percent / amount
    Column("value", Percent, nullable=False),
    Column("starts_at", Timestamp, nullable=True),
    Column("ends_at", Timestamp, nullable=True),
    Column("active", Boolean, nullable=False, default=True, server_default=true()),
    Index(None, "scope", "target_id"),
    **_TABLE_OPTIONS,
)

coupons = Table(
    "coupons",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(64), nullable=True, unique=True),
    Column("title", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # amount / percent / free_shipping
    Column("value", Percent, nullable=False),
    Column("min_spend", Price, nullable=False, default=0, server_default=text("0")),
    Column("max_discount", Price, nullable=True),
    Column("category_ids", String(255), nullable=True),  # comma list, NULL = all
    Column("regions", String(255), nullable=True),  # comma list, NULL = all
    Column("starts_at", Timestamp, nullable=True),
    Column("ends_at", Timestamp, nullable=True),
    **_TABLE_OPTIONS,
)

user_coupons = Table(
    "user_coupons",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("user_id", USER_ID, nullable=False, index=True),
    Column("coupon_id", Integer, nullable=False),
    Column("status", STATUS, nullable=False, default="unused"),  # unused / locked / used / expired
    Column("order_id", ORDER_ID, nullable=True, index=True),
    _created(),
    Column("used_at", Timestamp, nullable=True),
    **_TABLE_OPTIONS,
)

wallets = Table(
    "wallets",
    metadata,
    Column("user_id", USER_ID, primary_key=True, autoincrement=False),
    Column("balance", Amount, nullable=False, default=0, server_default=text("0")),  # USD
    **_TABLE_OPTIONS,
)

wallet_ledger = Table(
    "wallet_ledger",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("user_id", USER_ID, nullable=False, index=True),
    Column("order_id", ORDER_ID, nullable=True, index=True),
    Column("amount", Amount, nullable=False),
    Column("kind", String(16), nullable=False),  # reserve / release / settle
    _created(),
    **_TABLE_OPTIONS,
)

forex_rates = Table(
    "forex_rates",
    metadata,
    Column("currency", CURRENCY, primary_key=True),
    Column("rate", Rate, nullable=False),  # units of `currency` per 1 USD
    Column("exponent", Integer, nullable=False, default=2, server_default=text("2")),
    **_TABLE_OPTIONS,
)

shipping_rules = Table(
    "shipping_rules",
    metadata,
    Column("region", REGION, primary_key=True),  # one channel per region (decided)
    Column("fee", Price, nullable=False),
    Column("free_threshold", Price, nullable=True),  # NULL = never free
    **_TABLE_OPTIONS,
)

tariff_rules = Table(
    "tariff_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("region", REGION, nullable=False),
    Column("category_id", Integer, nullable=True),  # NULL = region default
    Column("rate_percent", Percent, nullable=False),
    Column("de_minimis", Price, nullable=False, default=0, server_default=text("0")),
    Index(None, "region", "category_id"),
    **_TABLE_OPTIONS,
)

addresses = Table(
    "addresses",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("user_id", USER_ID, nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("country", REGION, nullable=False),  # region code
    Column("city", String(128), nullable=False),
    Column("zip", String(32), nullable=False),
    Column("line1", String(255), nullable=False),
    **_TABLE_OPTIONS,
)

address_blacklist = Table(
    "address_blacklist",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # zip / phone / country / line_contains
    Column("value", String(255), nullable=False),
    **_TABLE_OPTIONS,
)

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(32), nullable=False),
    Column("provider", String(16), nullable=False),  # adyen / paypal
    Column("title", String(128), nullable=False),
    Column("regions", String(255), nullable=True),  # comma list, NULL = all
    Column("currencies", String(255), nullable=True),  # comma list, NULL = all
    Column("platforms", String(255), nullable=True),  # comma list, NULL = all
    Column("min_amount", Amount, nullable=True),
    Column("max_amount", Amount, nullable=True),
    Column("sort", Integer, nullable=False, default=0, server_default=text("0")),
    Column("enabled", Boolean, nullable=False, default=True, server_default=true()),
    **_TABLE_OPTIONS,
)

orders = Table(
    "orders",
    metadata,
    Column("id", ORDER_ID, primary_key=True),
    Column("user_id", USER_ID, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("region", REGION, nullable=False),
    Column("currency", CURRENCY, nullable=False),
    Column("fx_rate", Rate, nullable=False),
    Column("subtotal", Amount, nullable=False),
    Column("mall_discount", Amount, nullable=False, default=0, server_default=text("0")),
    Column("coupon_discount", Amount, nullable=False, default=0, server_default=text("0")),
    Column("shipping_fee", Amount, nullable=False, default=0, server_default=text("0")),
    Column("tariff", Amount, nullable=False, default=0, server_default=text("0")),
    Column("wallet_deduction", Amount, nullable=False, default=0, server_default=text("0")),
    Column("total", Amount, nullable=False),
    Column("base_total", Amount, nullable=False),  # USD
    Column("user_coupon_id", BigInteger, nullable=True),
    Column("address", JSON, nullable=True),  # snapshot at order time
    Column("platform", String(16), nullable=True),
    Column("app_version", String(32), nullable=True),
    Column("idempotency_key", ExactKey(64), nullable=True),
    Column("expires_at", Timestamp, nullable=True),
    _created(),
    _updated(),
    Column("paid_at", Timestamp, nullable=True),
    # NULL keys never collide, so orders without a key are unaffected.
    UniqueConstraint("user_id", "idempotency_key"),
    Index(None, "user_id", "created_at"),
    # The expiry sweep scans pending orders by deadline.
    Index(None, "status", "expires_at"),
    **_TABLE_OPTIONS,
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("order_id", ORDER_ID, nullable=False, index=True),
    Column("sku_id", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("unit_price", Amount, nullable=False),
    Column("line_total", Amount, nullable=False),
    Column("mall_discount", Amount, nullable=False, default=0, server_default=text("0")),
    Column("coupon_discount", Amount, nullable=False, default=0, server_default=text("0")),
    Column("tariff", Amount, nullable=False, default=0, server_default=text("0")),
    **_TABLE_OPTIONS,
)

order_status_history = Table(
    "order_status_history",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("order_id", ORDER_ID, nullable=False, index=True),
    Column("from_status", STATUS, nullable=True),  # NULL for the creating transition
    Column("to_status", STATUS, nullable=False),
    Column("reason", String(255), nullable=True),
    Column("actor", String(16), nullable=False),  # legacy / new / consumer
    _created(),
    **_TABLE_OPTIONS,
)

payments = Table(
    "payments",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("order_id", ORDER_ID, nullable=False, index=True),
    Column("provider", String(16), nullable=False),
    Column("method", String(32), nullable=True),
    Column("status", STATUS, nullable=False),  # created / authorized / captured / failed / cancelled
    Column("amount", Amount, nullable=False),
    Column("currency", CURRENCY, nullable=False),
    # Webhooks and PSP callbacks find the payment by these.
    Column("psp_reference", String(64), nullable=True, index=True),
    Column("paypal_order_id", String(64), nullable=True, index=True),
    Column("capture_id", String(64), nullable=True),
    Column("idempotency_key", ExactKey(64), nullable=True),
    _created(),
    _updated(),
    **_TABLE_OPTIONS,
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("order_id", ORDER_ID, nullable=False, index=True),
    Column("payment_id", BigInteger, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("currency", CURRENCY, nullable=False),
    Column("status", STATUS, nullable=False),  # pending / submitted / retrying / succeeded / failed
    Column("attempts", Integer, nullable=False, default=0, server_default=text("0")),
    Column("next_attempt_at", Timestamp, nullable=True),
    Column("psp_reference", String(64), nullable=True, index=True),
    Column("reason", String(255), nullable=True),
    Column("request_id", ExactKey(64), nullable=False, unique=True),
    _created(),
    _updated(),
    # The retry loop picks due refunds by status and time.
    Index(None, "status", "next_attempt_at"),
    **_TABLE_OPTIONS,
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("consumer", String(64), nullable=False),
    Column("event_id", ExactKey(128), nullable=False),
    PrimaryKeyConstraint("consumer", "event_id"),
    **_TABLE_OPTIONS,
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("topic", String(128), nullable=False),
    Column("key", String(128), nullable=True),
    Column("payload", JSON, nullable=False),
    _created(),
    # NULL = not yet published; the relay scans for those.
    Column("published_at", Timestamp, nullable=True, index=True),
    **_TABLE_OPTIONS,
)


# Not in old shopping: which process currently runs a singleton job (the outbox relay, the expiry
# sweeper) across instances. A holder renews before expires_at; a crashed holder's lease runs out.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    **_TABLE_OPTIONS,
)

__all__ = [
    "metadata",
    "utcnow",
    "skus",
    "cart_items",
    "mall_discounts",
    "coupons",
    "user_coupons",
    "wallets",
    "wallet_ledger",
    "forex_rates",
    "shipping_rules",
    "tariff_rules",
    "addresses",
    "address_blacklist",
    "payment_methods",
    "orders",
    "order_items",
    "order_status_history",
    "payments",
    "refunds",
    "processed_events",
    "outbox",
    "leases",
]
