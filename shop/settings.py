"""The one settings object of every process, built from the environment and validated at start.

Nothing else in the project reads ``os.environ``: processes call ``Settings.from_env()``
once in their entry point and pass the frozen result down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit


# The environment variables routing.yaml may name in ${VAR} (proxy/routing.py). Only these are
# captured in Settings.interpolation_env, so the file can never pull a secret out of the environment.
ROUTING_INTERPOLATION_VARS = ("EDGE_LEGACY_URL",)

# domain.md "Kafka events": each event type's topic unless SHOP_TOPIC_<NAME> says otherwise.
DEFAULT_TOPICS: Mapping[str, str] = MappingProxyType({
    "payment_notified": "payment_notified_cm",
    "payment_failed": "payment_failed_cm",
    "purchased": "purchased",
    "refund_notified": "refund_notified",
    "group_update": "group_update",
})


class SettingsError(ValueError):
    """A setting has a value the process cannot run with; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is outside {low}..{high}")
    return value


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def _host_port(env: Mapping[str, str], name: str, default: str) -> tuple[str, int]:
    raw = env.get(name) or default
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}={raw!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in (env.get(name) or "").split(",") if part.strip())


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


@dataclass(frozen=True, slots=True)
class Settings:
    routing_file: str = "routing.yaml"
    legacy_url: str = "http://127.0.0.1:8090"
    admin_token: str | None = field(default=None, repr=False)
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 8081
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    # Pool size for the one ClientSession that talks to old shopping.
    upstream_pool_size: int = 512
    # Concurrent upstream calls one route (passthrough is one route) may hold; None = half the pool.
    route_max_inflight: int | None = None
    # How long a client may take to send its whole request body.
    body_read_timeout_seconds: float = 15.0
    # All request header lines together (names, values, ": " and CRLF), and aiohttp's parser bound per line.
    max_header_bytes: int = 32 * 1024
    # How often the routing file is checked for changes (the spec asks for < 1 s).
    routing_poll_seconds: float = 0.25
    # routing.yaml bigger than this is refused unread (the repo's file is ~3 KB).
    routing_max_bytes: int = 1024 * 1024
    # A parse of routing.yaml (off the event loop) taking longer than this is a rejection.
    routing_parse_budget_seconds: float = 2.0
    # A watched change that removes routes or consumer entries of the table in force (what a
    # half-written file looks like) waits until the file has been unchanged this long.
    routing_drop_settle_seconds: float = 2.0
    access_log: bool = True
    shadow_max_inflight: int = 64
    shadow_timeout_ms: int = 3000
    shadow_queue_size: int = 1000
    shadow_max_fields: int = 200
    shadow_examples_per_field: int = 5
    shadow_examples_bytes: int = 8 * 1024 * 1024
    # Diffy's defaults: a field is a real mismatch when its rate beats its noise rate by 20 % and 0.03 points.
    shadow_noise_relative: float = 0.2
    shadow_noise_absolute: float = 0.0003
    db_url: str = "sqlite+aiosqlite:///var/shop.db"
    db_pool_size: int = 16
    # How stale reference data (discounts, coupons, forex, shipping, tariffs, SKUs) may be.
    reference_ttl_seconds: float = 5.0
    # How often the edge's expiry sweeper cancels unpaid orders past expires_at; 0 disables it.
    expiry_sweep_seconds: float = 30.0
    kafka_bootstrap: str = "127.0.0.1:9092"
    service_token: str | None = field(default=None, repr=False)
    paypal_base_url: str = "http://127.0.0.1:8091"
    paypal_client_id: str = "emulator"
    paypal_secret: str = field(default="emulator", repr=False)
    adyen_base_url: str = "http://127.0.0.1:8091"
    adyen_api_key: str = field(default="emulator", repr=False)
    adyen_merchant_account: str = "EmulatorMerchant"
    adyen_hmac_key: str = field(default="00" * 32, repr=False)
    # The consumers process (shopping-consumers).
    consumer_group: str = "shopping-new"
    consumer_admin_port: int = 8082
    # Event type (routing.yaml `consumers:` name) → Kafka topic; SHOP_TOPIC_<NAME> renames one.
    consumer_topics: Mapping[str, str] = field(default_factory=lambda: DEFAULT_TOPICS)
    consumer_max_attempts: int = 5
    consumer_concurrency: int = 8
    consumer_session_timeout_ms: int = 10_000
    # How often applied offsets are committed; a crash redelivers at most this much (as duplicates).
    consumer_commit_seconds: float = 0.2
    # The idempotent producer: on for the company's Kafka; the bundled Tansu broker refuses InitProducerId.
    kafka_idempotence: bool = True
    # The ROUTING_INTERPOLATION_VARS that are set; captured here so the loader never reads os.environ.
    interpolation_env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # prometheus_client's own variable (it reads it at import): set by `shopping-edge --workers N`.
    prometheus_multiproc_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        admin_host, admin_port = _host_port(env, "EDGE_ADMIN_ADDR", "127.0.0.1:8081")
        settings = cls(
            routing_file=env.get("EDGE_ROUTING_FILE") or "routing.yaml",
            legacy_url=_http_url(env, "EDGE_LEGACY_URL", "http://127.0.0.1:8090"),
            admin_token=env.get("EDGE_ADMIN_TOKEN") or None,
            admin_host=admin_host,
            admin_port=admin_port,
            host=env.get("EDGE_HOST") or "0.0.0.0",
            port=_int(env, "EDGE_PORT", 8080, low=1, high=65535),
            max_body_bytes=_int(env, "EDGE_MAX_BODY_BYTES", 1024 * 1024, low=1, high=1024**3),
            cors_origins=_csv(env, "EDGE_CORS_ORIGINS"),
            upstream_pool_size=_int(env, "EDGE_UPSTREAM_POOL", 512, low=1, high=100_000),
            route_max_inflight=_int(env, "EDGE_ROUTE_MAX_INFLIGHT", 0, low=0, high=100_000) or None,
            body_read_timeout_seconds=_float(env, "EDGE_BODY_READ_TIMEOUT_SECONDS", 15.0, low=0.1, high=600.0),
            max_header_bytes=_int(env, "EDGE_MAX_HEADER_BYTES", 32 * 1024, low=8 * 1024, high=1024 * 1024),
            routing_poll_seconds=_float(env, "EDGE_ROUTING_POLL_SECONDS", 0.25, low=0.01, high=1.0),
            routing_max_bytes=_int(env, "EDGE_ROUTING_MAX_BYTES", 1024 * 1024, low=1024, high=64 * 1024 * 1024),
            routing_parse_budget_seconds=_float(env, "EDGE_ROUTING_PARSE_BUDGET_SECONDS", 2.0, low=0.05, high=60.0),
            routing_drop_settle_seconds=_float(env, "EDGE_ROUTING_DROP_SETTLE_SECONDS", 2.0, low=0.0, high=60.0),
            access_log=_bool(env, "EDGE_ACCESS_LOG", True),
            shadow_max_inflight=_int(env, "EDGE_SHADOW_MAX_INFLIGHT", 64, low=1, high=100_000),
            shadow_timeout_ms=_int(env, "EDGE_SHADOW_TIMEOUT_MS", 3000, low=1, high=600_000),
            shadow_queue_size=_int(env, "EDGE_SHADOW_QUEUE", 1000, low=1, high=1_000_000),
            shadow_max_fields=_int(env, "EDGE_SHADOW_MAX_FIELDS", 200, low=1, high=10_000),
            shadow_examples_per_field=_int(env, "EDGE_SHADOW_EXAMPLES_PER_FIELD", 5, low=0, high=100),
            shadow_examples_bytes=_int(env, "EDGE_SHADOW_EXAMPLES_BYTES", 8 * 1024 * 1024, low=0, high=1024**3),
            shadow_noise_relative=_float(env, "EDGE_SHADOW_NOISE_RELATIVE", 0.2, low=0.0, high=1.0),
            shadow_noise_absolute=_float(env, "EDGE_SHADOW_NOISE_ABSOLUTE", 0.0003, low=0.0, high=1.0),
            db_url=env.get("SHOP_DB_URL") or "sqlite+aiosqlite:///var/shop.db",
            db_pool_size=_int(env, "SHOP_DB_POOL_SIZE", 16, low=1, high=500),
            reference_ttl_seconds=_float(env, "SHOP_REFERENCE_TTL_SECONDS", 5.0, low=0.0, high=3600.0),
            expiry_sweep_seconds=_float(env, "SHOP_EXPIRY_SWEEP_SECONDS", 30.0, low=0.0, high=86400.0),
            kafka_bootstrap=env.get("SHOP_KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
            service_token=env.get("SHOP_SERVICE_TOKEN") or None,
            paypal_base_url=_http_url(env, "PAYPAL_BASE_URL", "http://127.0.0.1:8091"),
            paypal_client_id=env.get("PAYPAL_CLIENT_ID") or "emulator",
            paypal_secret=env.get("PAYPAL_SECRET") or "emulator",
            adyen_base_url=_http_url(env, "ADYEN_BASE_URL", "http://127.0.0.1:8091"),
            adyen_api_key=env.get("ADYEN_API_KEY") or "emulator",
            adyen_merchant_account=env.get("ADYEN_MERCHANT_ACCOUNT") or "EmulatorMerchant",
            adyen_hmac_key=env.get("ADYEN_HMAC_KEY") or "00" * 32,
            consumer_group=env.get("SHOP_CONSUMER_GROUP") or "shopping-new",
            consumer_admin_port=_int(env, "SHOP_CONSUMER_ADMIN_PORT", 8082, low=1, high=65535),
            consumer_topics=MappingProxyType(
                {name: env.get(f"SHOP_TOPIC_{name.upper()}") or topic for name, topic in DEFAULT_TOPICS.items()}
            ),
            consumer_max_attempts=_int(env, "SHOP_CONSUMER_MAX_ATTEMPTS", 5, low=1, high=1000),
            consumer_concurrency=_int(env, "SHOP_CONSUMER_CONCURRENCY", 8, low=1, high=1000),
            consumer_session_timeout_ms=_int(env, "SHOP_CONSUMER_SESSION_TIMEOUT_MS", 10_000, low=1000, high=300_000),
            consumer_commit_seconds=_float(env, "SHOP_CONSUMER_COMMIT_SECONDS", 0.2, low=0.01, high=300.0),
            kafka_idempotence=_bool(env, "SHOP_KAFKA_IDEMPOTENCE", True),
            interpolation_env={name: env[name] for name in ROUTING_INTERPOLATION_VARS if env.get(name)},
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        )
        settings = replace(settings, **overrides) if overrides else settings
        settings.validate()
        return settings

    @property
    def route_inflight_limit(self) -> int:
        """Each route's share of the upstream pool (a bulkhead): one slow route can't take it all."""
        return self.route_max_inflight or max(1, self.upstream_pool_size // 2)

    def db_pool_options(self) -> dict[str, Any]:
        """Pool sizing for make_engine; SQLite's file locking makes pools pointless there."""
        if self.db_url.startswith("sqlite"):
            return {}
        # A small overflow: overflow connections are closed on return, so a big one means a
        # connect per request under load.
        return {"pool_size": self.db_pool_size, "max_overflow": max(2, self.db_pool_size // 4)}

    def validate(self) -> None:
        if "://" not in self.db_url:
            raise SettingsError(f"SHOP_DB_URL={self.db_url!r} is not a database URL")
        try:
            bytes.fromhex(self.adyen_hmac_key)
        except ValueError:
            raise SettingsError("ADYEN_HMAC_KEY is not hex") from None
        if self.route_max_inflight is not None and self.route_max_inflight > self.upstream_pool_size:
            raise SettingsError(
                f"EDGE_ROUTE_MAX_INFLIGHT={self.route_max_inflight} is above EDGE_UPSTREAM_POOL={self.upstream_pool_size}:"
                " a route's share of the pool cannot be more than the pool"
            )
        for origin in self.cors_origins:
            if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
                raise SettingsError(f"EDGE_CORS_ORIGINS has {origin!r}, not an http(s) origin")
