"""common/settings.py: one table of settings, each default written once, and the only reader of os.environ.

Proves: an empty environment gives exactly the dataclass's defaults (there is no second copy of
them to drift); every variable of the table reaches its field and a bad value names it; secrets
never show in repr; and no module of the processes outside common/settings.py reads the
environment (writing PROMETHEUS_MULTIPROC_DIR for prometheus_client, in proxy/cli.py, is allowed).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from common.settings import DEFAULT_TOPICS, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "shop", "handlers", "proxy", "shadow", "emulators", "consumers")


def _variables() -> list[tuple[str, str]]:
    return [(f.name, f.metadata["env"]) for f in dataclasses.fields(Settings) if "env" in f.metadata]


def test_an_empty_environment_gives_the_defaults_of_the_dataclass() -> None:
    assert Settings.from_env({}) == Settings()


def test_every_variable_is_named_by_one_field() -> None:
    names = [env for _, env in _variables()]
    assert len(names) == len(set(names))
    assert all(name.startswith(("EDGE_", "SHOP_", "PAYPAL_", "ADYEN_", "PROMETHEUS_")) for name in names)


@pytest.mark.parametrize("variable, raw, field, value", [
    ("EDGE_PORT", "9999", "port", 9999),
    ("EDGE_ACCESS_LOG", "off", "access_log", False),
    ("EDGE_CORS_ORIGINS", "https://a.example, https://b.example", "cors_origins", ("https://a.example", "https://b.example")),
    ("EDGE_ROUTE_MAX_INFLIGHT", "0", "route_max_inflight", None),
    ("EDGE_LEGACY_URL", "http://old.example/", "legacy_url", "http://old.example"),
    ("SHOP_REFERENCE_TTL_SECONDS", "0.5", "reference_ttl_seconds", 0.5),
    ("SHOP_SERVICE_TOKEN", "s3cret", "service_token", "s3cret"),
    ("SHOP_KAFKA_IDEMPOTENCE", "false", "kafka_idempotence", False),
    ("PROMETHEUS_MULTIPROC_DIR", "/tmp/p", "prometheus_multiproc_dir", "/tmp/p"),
])
def test_a_variable_reaches_its_field(variable: str, raw: str, field: str, value: object) -> None:
    assert getattr(Settings.from_env({variable: raw}), field) == value


def test_an_empty_variable_is_the_same_as_an_unset_one() -> None:
    assert Settings.from_env({name: "" for _, name in _variables()}) == Settings()


def test_the_derived_settings_come_from_their_variables() -> None:
    s = Settings.from_env({"EDGE_ADMIN_ADDR": "[::1]:9001", "SHOP_TOPIC_PURCHASED": "purchased_v2",
                           "EDGE_LEGACY_URL": "http://old.example"})
    assert (s.admin_host, s.admin_port) == ("::1", 9001)
    assert s.consumer_topics == {**DEFAULT_TOPICS, "purchased": "purchased_v2"}
    assert s.interpolation_env == {"EDGE_LEGACY_URL": "http://old.example"}


@pytest.mark.parametrize("variable, raw", [
    ("EDGE_PORT", "0"), ("EDGE_PORT", "http"), ("SHOP_DB_POOL_SIZE", "501"), ("EDGE_ACCESS_LOG", "maybe"),
    ("EDGE_LEGACY_URL", "ftp://x"), ("EDGE_ADMIN_ADDR", "8081"), ("SHOP_DB_URL", "shop.db"), ("ADYEN_HMAC_KEY", "zz"),
])
def test_a_bad_value_stops_the_start_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_secrets_never_show_in_repr() -> None:
    s = Settings.from_env({"SHOP_SERVICE_TOKEN": "tok-1", "EDGE_ADMIN_TOKEN": "tok-2", "PAYPAL_SECRET": "tok-3",
                           "ADYEN_API_KEY": "tok-4", "ADYEN_HMAC_KEY": "abcd"})
    assert not any(secret in repr(s) for secret in ("tok-1", "tok-2", "tok-3", "tok-4", "abcd"))


def _reads_environment(tree: ast.AST) -> list[int]:
    written = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)}
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") and id(node) not in written
    ]


def test_no_module_but_common_settings_reads_the_environment() -> None:
    readers = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "common" / "settings.py":
                continue
            lines = _reads_environment(ast.parse(path.read_text(), str(path)))
            readers += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert readers == []
