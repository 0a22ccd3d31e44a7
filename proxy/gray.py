"""Sticky, monotonic gray: which side serves a request.

One bucket per caller, shared by every route and every edge process: a stable 64-bit hash
of the sticky key mod 10000 (common/buckets.py, the hash the consumers use for order ids). A route sends a caller to new when bucket < new_percent × 100,
so raising the percentage only ever adds callers to new, and a user's whole checkout
(calc_price, place_order, pay…) lands on the same side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from common.buckets import BUCKETS, bucket_of
from proxy.routing import RouteSpec

__all__ = ["BUCKETS", "NO_KEY_BUCKET", "bucket_of", "goes_new", "sticky_value"]

# A caller with no key at all is the last to move: it goes new only at 100 %.
NO_KEY_BUCKET = BUCKETS - 1


def sticky_value(
    sticky_key: tuple[str, ...],
    headers: Mapping[str, str],
    cookies: Callable[[], Mapping[str, str]],
    client_ip: str | None,
) -> str | None:
    """The first present of the configured keys (header:NAME, cookie:NAME, client_ip).

    Cookies come through a callable because parsing them costs, and most tables never ask.
    """
    for key in sticky_key:
        if key == "client_ip":
            value = client_ip
        else:
            kind, _, name = key.partition(":")
            value = headers.get(name) if kind == "header" else cookies().get(name)
        if value:
            return value
    return None


def goes_new(route: RouteSpec, user_id: str | None, key: str | None) -> bool:
    if user_id is not None:
        if user_id in route.deny_new:
            return False
        if user_id in route.allow_new:
            return True
    bp = route.new_basis_points
    if bp <= 0:
        return False
    if bp >= BUCKETS:
        return True
    return (bucket_of(key) if key else NO_KEY_BUCKET) < bp
