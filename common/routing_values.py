"""Value rules of routing.yaml shared by every reader of it (proxy/routing.py for the whole file,
the consumers for their part): mappings with known keys, percentages, ${VAR} interpolation and
old shopping's base URL. Each error names the key and the line (common/routing_yaml.fail).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from common.routing_yaml import Node, fail

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def keys(where: str, node: Node, allowed: Collection[str], required: Collection[str] = ()) -> dict[str, Node]:
    if not isinstance(node.value, dict):
        raise fail(where, node, "must be a mapping")
    for key, child in node.value.items():
        if key not in allowed:
            raise fail(f"{where}.{key}" if where else key, child, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in node.value:
            raise fail(f"{where}.{key}" if where else key, node, "is required")
    return node.value


def shown(raw: object, limit: int = 40) -> str:
    """A value from the file, short enough for a log line and an error body."""
    text = str(raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def percent(where: str, node: Node) -> Decimal:
    raw = node.value
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise fail(where, node, "must be a number from 0 to 100")
    try:
        value = Decimal(str(raw)) if len(str(raw)) <= 40 else None
    except InvalidOperation:
        value = None
    if value is None:
        raise fail(where, node, f"{shown(raw)!r} is not a number from 0 to 100")
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(100):
        raise fail(where, node, f"{shown(raw)} is outside 0..100")
    try:
        exact = value == value.quantize(Decimal("0.01"))
    except ArithmeticError:
        exact = False
    if not exact:
        raise fail(where, node, f"{shown(raw)} has more than two decimals (the bucket resolution is 0.01 %)")
    return value


def check_percent(value: object, where: str = "percent") -> Decimal:
    """The routing.yaml percentage rule (0..100, at most two decimals) for callers outside this module."""
    return percent(where, Node(value, 0))


def interpolate(where: str, node: Node, env: Mapping[str, str], allowed: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """The value with ${VAR} / ${VAR:-default} filled in, and the variables used.

    Only ``allowed`` variables may appear: routing.yaml is shown by the unauthenticated
    ``GET /_edge/routes`` and in logs, so ``${EDGE_ADMIN_TOKEN}`` must not be able to put a secret there.
    """
    if not isinstance(node.value, str):
        raise fail(where, node, "must be a string")
    used: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in allowed:
            raise fail(where, node, f"${{{name}}} cannot be used here (routing.yaml may interpolate only {', '.join(allowed) or 'nothing'})")
        value = env.get(name)
        if value:
            used.append(name)
            return value
        if m.group(2) is not None:
            return m.group(2)
        raise fail(where, node, f"${{{name}}} is not set and has no default")

    return _ENV_REF.sub(sub, node.value), tuple(used)


def legacy_url(where: str, node: Node | None, url: str, source: str | None) -> str:
    """An http(s) base URL without credentials. ``source`` names where the value came from when it
    must not be echoed (an environment variable); literal values from the file are shown."""
    named = source or repr(shown(url, 80))
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise fail(where, node, f"{named} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise fail(where, node, f"{named} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        # Never shown: the URL is in /_edge/routes and the logs. Old shopping is called without credentials.
        raise fail(where, node, f"{source or 'the URL'} must not carry credentials (user:password@)")
    if parts.query or parts.fragment:
        raise fail(where, node, f"{named} must not have a query or fragment")
    return url.rstrip("/")
