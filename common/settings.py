"""The one settings object of every process, built from the environment and validated at start.

Nothing else in the project reads ``os.environ``: each process's entry point calls
``Settings.from_env()`` once and passes the frozen result down (tests build one with
``Settings.from_env({...}, **overrides)``).

The dataclass IS the table of settings (starlette's ``Config`` casts, mitmproxy's option specs):
each field says its environment variable, its default and how the text is parsed and bounded,
once. ``from_env`` walks the fields; an unset or empty variable leaves the default.

To add a setting, add ONE field::

    # What it is for, and why the default is what it is.
    consumer_poll_ms: int = setting("SHOP_CONSUMER_POLL_MS", 500, whole(1, 60_000))

- the variable is ``EDGE_*`` for the edge, ``SHOP_*`` for the shop and the consumers (old
  names such as ``PAYPAL_*`` stay as they are);
- numbers get a bounded range (``whole(low, high)``, ``number(low, high)``), so a typo stops
  the process at start with a message naming the variable instead of misbehaving later;
- secrets pass ``secret=True``: never in ``repr`` (logs, tracebacks);
- a rule that involves two settings goes into ``validate``.
Fields without ``setting(...)`` are derived (``admin_host``/``admin_port`` from
``EDGE_ADMIN_ADDR``) or filled by a reader of their own (``_READERS``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
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


Parse = Callable[[str, str], Any]  # (variable name, non-empty raw text) -> value, or SettingsError


def text(name: str, raw: str) -> str:
    return raw


def whole(low: int, high: int, *, zero_is_none: bool = False) -> Parse:
    def parse(name: str, raw: str) -> int | None:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is outside {low}..{high}")
        return None if zero_is_none and value == 0 else value

    return parse


def number(low: float, high: float) -> Parse:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is outside {low}..{high}")
        return value

    return parse


def flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (true/false)")


def http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def host_port(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}={raw!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def setting(env: str, default: Any, parse: Parse = text, *, secret: bool = False) -> Any:
    """A field read from `env`, parsed by `parse` when set; `default` otherwise (written here only)."""
    meta = {"env": env, "parse": parse}
    if default.__class__.__hash__ is None:  # a mapping or list: dataclasses want a factory
        return field(default_factory=lambda: default, repr=not secret, metadata=meta)
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    routing_file: str = setting("EDGE_ROUTING_FILE", "routing.yaml")
    # edgectl's audit log of every change it makes; empty: <routing file>.audit.jsonl beside it.
    edgectl_audit_log: str = setting("EDGE_AUDIT_LOG", "")
    # Who runs edgectl, for its audit log: the person behind sudo first (_operator).
    operator: str = ""
    legacy_url: str = setting("EDGE_LEGACY_URL", "http://127.0.0.1:8090", http_url)
    admin_token: str | None = setting("EDGE_ADMIN_TOKEN", None, secret=True)
    # Both from EDGE_ADMIN_ADDR (HOST:PORT); admin_port None (tests) starts no admin site.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 8081
    host: str = setting("EDGE_HOST", "0.0.0.0")
    port: int = setting("EDGE_PORT", 8080, whole(1, 65535))
    max_body_bytes: int = setting("EDGE_MAX_BODY_BYTES", 1024 * 1024, whole(1, 1024**3))
    cors_origins: tuple[str, ...] = setting("EDGE_CORS_ORIGINS", (), csv)
    # Pool size for the one ClientSession that talks to old shopping.
    upstream_pool_size: int = setting("EDGE_UPSTREAM_POOL", 512, whole(1, 100_000))
    # Concurrent upstream calls one route (passthrough is one route) may hold; None (0) = half the pool.
    route_max_inflight: int | None = setting("EDGE_ROUTE_MAX_INFLIGHT", None, whole(0, 100_000, zero_is_none=True))
    # How long a client may take to send its whole request body.
    body_read_timeout_seconds: float = setting("EDGE_BODY_READ_TIMEOUT_SECONDS", 15.0, number(0.1, 600.0))
    # All request header lines together (names, values, ": " and CRLF), and aiohttp's parser bound per line.
    max_header_bytes: int = setting("EDGE_MAX_HEADER_BYTES", 32 * 1024, whole(8 * 1024, 1024 * 1024))
    # How often each edge process snapshots its counters for the windowed rates of /_edge/rates.
    rates_interval_seconds: float = setting("EDGE_RATES_INTERVAL_SECONDS", 5.0, number(0.1, 60.0))
    # How often the routing file is checked for changes (the spec asks for < 1 s).
    routing_poll_seconds: float = setting("EDGE_ROUTING_POLL_SECONDS", 0.25, number(0.01, 1.0))
    # routing.yaml bigger than this is refused unread (the repo's file is ~3 KB).
    routing_max_bytes: int = setting("EDGE_ROUTING_MAX_BYTES", 1024 * 1024, whole(1024, 64 * 1024 * 1024))
    # A parse of routing.yaml (off the event loop) taking longer than this is a rejection.
    routing_parse_budget_seconds: float = setting("EDGE_ROUTING_PARSE_BUDGET_SECONDS", 2.0, number(0.05, 60.0))
    # A watched change that removes routes or consumer entries of the table in force (what a
    # half-written file looks like) waits until the file has been unchanged this long.
    routing_drop_settle_seconds: float = setting("EDGE_ROUTING_DROP_SETTLE_SECONDS", 2.0, number(0.0, 60.0))
    access_log: bool = setting("EDGE_ACCESS_LOG", True, flag)
    shadow_max_inflight: int = setting("EDGE_SHADOW_MAX_INFLIGHT", 64, whole(1, 100_000))
    shadow_timeout_ms: int = setting("EDGE_SHADOW_TIMEOUT_MS", 3000, whole(1, 600_000))
    shadow_queue_size: int = setting("EDGE_SHADOW_QUEUE", 1000, whole(1, 1_000_000))
    shadow_max_fields: int = setting("EDGE_SHADOW_MAX_FIELDS", 200, whole(1, 10_000))
    shadow_examples_per_field: int = setting("EDGE_SHADOW_EXAMPLES_PER_FIELD", 5, whole(0, 100))
    shadow_examples_bytes: int = setting("EDGE_SHADOW_EXAMPLES_BYTES", 8 * 1024 * 1024, whole(0, 1024**3))
    # Diffy's defaults: a field is a real mismatch when its rate beats its noise rate by 20 % and 0.03 points.
    shadow_noise_relative: float = setting("EDGE_SHADOW_NOISE_RELATIVE", 0.2, number(0.0, 1.0))
    shadow_noise_absolute: float = setting("EDGE_SHADOW_NOISE_ABSOLUTE", 0.0003, number(0.0, 1.0))
    db_url: str = setting("SHOP_DB_URL", "sqlite+aiosqlite:///var/shop.db")
    db_pool_size: int = setting("SHOP_DB_POOL_SIZE", 16, whole(1, 500))
    # How stale reference data (discounts, coupons, forex, shipping, tariffs, SKUs) may be.
    reference_ttl_seconds: float = setting("SHOP_REFERENCE_TTL_SECONDS", 5.0, number(0.0, 3600.0))
    # How often the expiry sweeper cancels unpaid orders past expires_at; 0 disables it.
    expiry_sweep_seconds: float = setting("SHOP_EXPIRY_SWEEP_SECONDS", 30.0, number(0.0, 86400.0))
    kafka_bootstrap: str = setting("SHOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    service_token: str | None = setting("SHOP_SERVICE_TOKEN", None, secret=True)
    paypal_base_url: str = setting("PAYPAL_BASE_URL", "http://127.0.0.1:8091", http_url)
    paypal_client_id: str = setting("PAYPAL_CLIENT_ID", "emulator")
    paypal_secret: str = setting("PAYPAL_SECRET", "emulator", secret=True)
    adyen_base_url: str = setting("ADYEN_BASE_URL", "http://127.0.0.1:8091", http_url)
    adyen_api_key: str = setting("ADYEN_API_KEY", "emulator", secret=True)
    adyen_merchant_account: str = setting("ADYEN_MERCHANT_ACCOUNT", "EmulatorMerchant")
    adyen_hmac_key: str = setting("ADYEN_HMAC_KEY", "00" * 32, secret=True)
    # Outbound PSP calls (adapters/retry.py): each attempt's timeout, and how many attempts a call
    # makes (always with the same idempotency key) with full-jitter backoff from base up to max.
    psp_timeout_seconds: float = setting("SHOP_PSP_TIMEOUT_SECONDS", 10.0, number(0.1, 120.0))
    psp_max_attempts: int = setting("SHOP_PSP_MAX_ATTEMPTS", 3, whole(1, 10))
    psp_backoff_seconds: float = setting("SHOP_PSP_BACKOFF_SECONDS", 0.2, number(0.0, 60.0))
    psp_backoff_max_seconds: float = setting("SHOP_PSP_BACKOFF_MAX_SECONDS", 2.0, number(0.0, 300.0))
    # The consumers process (shopping-consumers).
    consumer_group: str = setting("SHOP_CONSUMER_GROUP", "shopping-new")
    consumer_admin_port: int = setting("SHOP_CONSUMER_ADMIN_PORT", 8082, whole(1, 65535))
    # Event type (routing.yaml `consumers:` name) → Kafka topic; SHOP_TOPIC_<NAME> renames one (_READERS).
    consumer_topics: Mapping[str, str] = field(default_factory=lambda: DEFAULT_TOPICS)
    consumer_max_attempts: int = setting("SHOP_CONSUMER_MAX_ATTEMPTS", 5, whole(1, 1000))
    consumer_concurrency: int = setting("SHOP_CONSUMER_CONCURRENCY", 8, whole(1, 1000))
    consumer_session_timeout_ms: int = setting("SHOP_CONSUMER_SESSION_TIMEOUT_MS", 10_000, whole(1000, 300_000))
    # How often applied offsets are committed; a crash redelivers at most this much (as duplicates).
    consumer_commit_seconds: float = setting("SHOP_CONSUMER_COMMIT_SECONDS", 0.2, number(0.01, 300.0))
    # At most this many events of one partition applied in one transaction (1: one by one).
    consumer_batch_max: int = setting("SHOP_CONSUMER_BATCH_MAX", 500, whole(1, 10_000))
    # How long a fetch may wait at the broker for new messages. Kafka answers as soon as one comes;
    # the bundled Tansu broker waits the whole time, and a message produced meanwhile waits with it
    # (aiokafka's 500 ms gave a p99 of 319 ms at a steady 500 events/s; bench/RESULTS.md).
    consumer_fetch_wait_ms: int = setting("SHOP_CONSUMER_FETCH_WAIT_MS", 20, whole(1, 60_000))
    # The idempotent producer: on for the company's Kafka; the bundled Tansu broker refuses InitProducerId.
    kafka_idempotence: bool = setting("SHOP_KAFKA_IDEMPOTENCE", True, flag)
    # Delivering old shopping's share of the events to its POST /event/{name}: per-call timeout, pool size.
    legacy_event_timeout_seconds: float = setting("SHOP_LEGACY_EVENT_TIMEOUT_SECONDS", 10.0, number(0.1, 300.0))
    legacy_event_pool_size: int = setting("SHOP_LEGACY_EVENT_POOL", 32, whole(1, 10_000))
    # The refund retrier of the consumers process (consumers/refund_retry.py): how often it looks for
    # refunds due for another PSP submission (the backoff itself is shop.events.refund_backoff); 0 disables it.
    refund_retry_seconds: float = setting("SHOP_REFUND_RETRY_SECONDS", 10.0, number(0.0, 3600.0))
    # How long one submission of a refund (the PSP call with all its attempts) is given before the retrier
    # may send it again (same key): a process that died mid-call leaves its refund pending this long.
    refund_inflight_seconds: float = setting("SHOP_REFUND_INFLIGHT_SECONDS", 120.0, number(1.0, 86400.0))
    # The PayPal capture reconciler of the consumers process (consumers/capture_reconcile.py): how often it
    # asks PayPal about captures paypal_finished left in doubt (older than shop.payments.IN_FLIGHT); 0 disables it.
    capture_reconcile_seconds: float = setting("SHOP_CAPTURE_RECONCILE_SECONDS", 15.0, number(0.0, 3600.0))
    # The ROUTING_INTERPOLATION_VARS that are set; captured here so the loader never reads os.environ.
    interpolation_env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # prometheus_client's own variable (it reads it at import): set by `shopping-edge --workers N`.
    prometheus_multiproc_dir: str | None = setting("PROMETHEUS_MULTIPROC_DIR", None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Every field from its variable (unset or empty: the default), then `overrides`, then `validate`."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env")
            raw = env.get(name) if name else None
            if raw:
                values[f.name] = f.metadata["parse"](name, raw)
        for read in _READERS:
            values.update(read(env))
        settings = cls(**values)
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
        psp_call = self.psp_timeout_seconds * self.psp_max_attempts + self.psp_backoff_max_seconds * (self.psp_max_attempts - 1)
        if self.refund_inflight_seconds <= psp_call:
            raise SettingsError(
                f"SHOP_REFUND_INFLIGHT_SECONDS={self.refund_inflight_seconds:g} is not above a PSP call's longest"
                f" ({psp_call:g} s: SHOP_PSP_TIMEOUT_SECONDS × SHOP_PSP_MAX_ATTEMPTS + backoff): a refund still being"
                " submitted would be submitted again"
            )
        for origin in self.cors_origins:
            if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
                raise SettingsError(f"EDGE_CORS_ORIGINS has {origin!r}, not an http(s) origin")


# Settings that are not one variable → one field.


def _admin_addr(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("EDGE_ADMIN_ADDR")
    if not raw:
        return {}
    admin_host, admin_port = host_port("EDGE_ADMIN_ADDR", raw)
    return {"admin_host": admin_host, "admin_port": admin_port}


def _topics(env: Mapping[str, str]) -> dict[str, Any]:
    return {"consumer_topics": MappingProxyType(
        {name: env.get(f"SHOP_TOPIC_{name.upper()}") or topic for name, topic in DEFAULT_TOPICS.items()}
    )}


def _interpolation(env: Mapping[str, str]) -> dict[str, Any]:
    return {"interpolation_env": {name: env[name] for name in ROUTING_INTERPOLATION_VARS if env.get(name)}}


def _operator(env: Mapping[str, str]) -> dict[str, Any]:
    who = env.get("SUDO_USER") or env.get("USER") or env.get("LOGNAME") or ""
    return {"operator": who} if who else {}


_READERS: tuple[Callable[[Mapping[str, str]], dict[str, Any]], ...] = (_admin_addr, _topics, _interpolation, _operator)
