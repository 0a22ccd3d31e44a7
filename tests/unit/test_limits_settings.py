"""The edge's limit settings: defaults, bounds, and a route's pool share never above the pool."""

from __future__ import annotations

import pytest

from common.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_header_bytes == 32 * 1024
    assert settings.body_read_timeout_seconds == 15.0
    assert settings.route_inflight_limit == 256  # half the default pool of 512


def test_a_routes_share_follows_the_pool_unless_set() -> None:
    assert Settings.from_env({"EDGE_UPSTREAM_POOL": "40"}).route_inflight_limit == 20
    assert Settings.from_env({"EDGE_UPSTREAM_POOL": "1"}).route_inflight_limit == 1
    assert Settings.from_env({"EDGE_ROUTE_MAX_INFLIGHT": "0"}).route_inflight_limit == 256
    assert Settings.from_env({"EDGE_ROUTE_MAX_INFLIGHT": "100"}).route_inflight_limit == 100


def test_a_share_above_the_pool_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="EDGE_ROUTE_MAX_INFLIGHT=600 is above EDGE_UPSTREAM_POOL=512"):
        Settings.from_env({"EDGE_ROUTE_MAX_INFLIGHT": "600"})


@pytest.mark.parametrize("name, value", [
    ("EDGE_MAX_HEADER_BYTES", "4096"), ("EDGE_MAX_HEADER_BYTES", "2000000"),
    ("EDGE_BODY_READ_TIMEOUT_SECONDS", "0"), ("EDGE_BODY_READ_TIMEOUT_SECONDS", "601"),
    ("EDGE_ROUTE_MAX_INFLIGHT", "-1"),
])
def test_values_out_of_range_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
