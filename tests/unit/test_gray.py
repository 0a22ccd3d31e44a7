"""Sticky, monotonic gray bucketing (proxy/gray.py)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from proxy.gray import BUCKETS, bucket_of, goes_new, sticky_value
from proxy.routing import RouteSpec

KEYS = ("header:X-User-Id", "header:X-Device-Id", "cookie:sid", "client_ip")


def route(percent: str | Decimal, allow: set[str] | None = None, deny: set[str] | None = None) -> RouteSpec:
    return RouteSpec(
        name="calc_price", methods=("POST",), path="/x", new_percent=Decimal(percent), timeout_ms=1000,
        allow_new=frozenset(allow or ()), deny_new=frozenset(deny or ()),
    )


percentages = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False)


def test_bucket_is_a_fixed_function_of_the_key() -> None:
    # Pinned values: every edge process and machine, any Python version, must agree forever.
    assert bucket_of("1001") == bucket_of("1001")
    assert [bucket_of(k) for k in ("1", "42", "user-7", "10.0.0.1")] == [
        int.from_bytes(__import__("hashlib").blake2b(k.encode(), digest_size=8).digest(), "big") % BUCKETS
        for k in ("1", "42", "user-7", "10.0.0.1")
    ]
    assert 0 <= bucket_of("") < BUCKETS


@given(key=st.text(min_size=1), sequence=st.lists(percentages, min_size=2, max_size=8))
def test_rising_percentages_never_move_a_user_back_to_legacy(key: str, sequence: list[Decimal]) -> None:
    was_new = False
    for percent in sorted(sequence):
        now_new = goes_new(route(percent), None, key)
        assert not (was_new and not now_new)
        was_new = now_new


@given(key=st.text(min_size=1), a=percentages, b=percentages)
def test_one_bucket_for_all_routes(key: str, a: Decimal, b: Decimal) -> None:
    # A user new on a lower-percentage route is new on every route with a higher percentage.
    low, high = sorted((a, b))
    if goes_new(route(low), None, key):
        assert goes_new(route(high), None, key)


@given(key=st.text(min_size=1))
def test_zero_and_hundred_are_absolute(key: str) -> None:
    assert not goes_new(route("0"), None, key)
    assert goes_new(route("100"), None, key)


def test_share_matches_percentage_including_decimals() -> None:
    keys = [str(i) for i in range(100_000)]
    for percent, expected in (("10", 0.10), ("50", 0.50), ("0.5", 0.005)):
        share = sum(goes_new(route(percent), None, k) for k in keys) / len(keys)
        assert abs(share - expected) < max(0.1 * expected, 0.002), (percent, share)


def test_allow_and_deny_override_the_bucket() -> None:
    assert goes_new(route("0", allow={"1001"}), "1001", "1001")
    assert not goes_new(route("100", deny={"13"}), "13", "13")
    assert not goes_new(route("0", allow={"1001"}), "1002", "1002")


def test_no_key_goes_new_only_at_100() -> None:
    assert not goes_new(route("99.99"), None, None)
    assert goes_new(route("100"), None, None)


def test_sticky_key_takes_first_present() -> None:
    headers = {"X-Device-Id": "dev-9"}
    assert sticky_value(KEYS, headers, dict, "10.1.1.1") == "dev-9"
    assert sticky_value(KEYS, {"X-User-Id": "5", **headers}, dict, "10.1.1.1") == "5"
    assert sticky_value(KEYS, {}, lambda: {"sid": "abc"}, "10.1.1.1") == "abc"
    assert sticky_value(KEYS, {}, dict, "10.1.1.1") == "10.1.1.1"
    assert sticky_value(KEYS, {}, dict, None) is None
