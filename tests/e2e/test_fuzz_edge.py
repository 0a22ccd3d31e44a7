"""Fuzzing a running edge: generated paths, headers and bodies never get a 500, a traceback or a write.

A real `shopping-edge` process and old shopping's emulator run on one seeded database (SQLite and
MariaDB). Every migrated route with a real new-side handler is at 50 % (so both sides answer) and
the reads are shadowed at 100 % (so the shadow path sees the same input). Hypothesis sends
requests built from the legacy paths (re-encoded, with mutated parameters) and from noise, with
caller headers both valid and hostile, and JSON bodies both close to the real shapes and not.

For every request:
- the status is never a 5xx: no fault is injected, so not even 502/503/504. The one exception is
  501 from a route whose handler neither side has yet (the payment routes, issue 11);
- a request answered 4xx (or 501) changed nothing in the database: every table the routes
  write is fingerprinted before and after;
and at the end neither process's log holds a traceback or an unhandled-error line, and the shadow
report (JSON and HTML) still renders everything it collected.

`make test` runs a fixed, derandomised set of examples per database; `make fuzz` runs many more,
randomly (FUZZ_EXAMPLES, default 3000), and prints the reproduction of anything it finds.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from tests.conftest import MARIADB_DATABASE, MARIADB_URL
from tests.support.shopdb import demo_buyers, seed_database
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICE_TOKEN = "fuzz-service-token"
RANDOM_RUN = bool(os.environ.get("FUZZ_EXAMPLES"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 250)
# Routes whose new-side handler is real: dialled to 50 % so each caller meets one side or the other.
GRAY = ("calc_price", "coupons", "place_order", "detail", "payment_methods", "paid_from_client")
SHADOWED = ("calc_price", "coupons", "detail", "payment_methods")
NOT_MIGRATED = ("not_migrated", "not_migrated_in_emulator")
# Orders the stack placed before fuzzing (filled by the fixture): the order routes then meet real rows.
PLACED: list[tuple[str, str]] = []

# What a rejected request must leave as it was: every table a route writes, and the money in it.
FINGERPRINT = [
    "SELECT COUNT(*) FROM orders",
    "SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status",
    "SELECT COUNT(*) FROM order_items",
    "SELECT COUNT(*) FROM order_status_history",
    "SELECT COUNT(*) FROM outbox",
    "SELECT COALESCE(SUM(stock), 0) FROM skus",
    "SELECT COALESCE(SUM(balance), 0) FROM wallets",
    "SELECT COUNT(*) FROM wallet_ledger",
    "SELECT status, COUNT(*) FROM user_coupons GROUP BY status ORDER BY status",
    "SELECT COUNT(*), COALESCE(SUM(qty), 0), COALESCE(SUM(selected), 0) FROM cart_items",
    "SELECT COUNT(*) FROM payments",
    "SELECT COUNT(*) FROM refunds",
    "SELECT COUNT(*) FROM processed_events",
]



def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"{name} did not listen on :{port}: {log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fuzz_routing(path: Path, legacy_url: str) -> None:
    doc = yaml.safe_load((ROOT / "routing.yaml").read_text(encoding="utf-8"))
    doc["groups"]["checkout"]["allow_split"] = True  # this test splits the checkout routes on purpose
    doc["legacy_url"] = legacy_url
    for name, route in doc["routes"].items():
        route["new_percent"] = 50 if name in GRAY else 0
        route.pop("allow_new", None)
        if name in SHADOWED:
            route["shadow"] = {"percent": 100, "ignore": ["root['data']['server_time']"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@dataclass(frozen=True)
class Stack:
    edge_port: int
    admin_port: int
    db: Engine
    edge_log: Path
    legacy_log: Path

    def fingerprint(self) -> list[Any]:
        with self.db.connect() as conn:
            return [[tuple(row) for row in conn.execute(text(sql))] for sql in FINGERPRINT]


def _sync_url(async_url: str) -> str:
    url = make_url(async_url)
    driver = {"sqlite+aiosqlite": "sqlite", "mysql+aiomysql": "mysql+pymysql"}[url.drivername]
    return url.set(drivername=driver).render_as_string(hide_password=False)


async def _seeded(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return await seed_database(f"sqlite+aiosqlite:///{tmp / 'shop.db'}")
    database = "fuzz" if MARIADB_DATABASE == "test" else f"{MARIADB_DATABASE}_fuzz"
    server = create_engine(_sync_url(MARIADB_URL))
    with server.begin() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"))
    server.dispose()
    return await seed_database(make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import asyncio

    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    db_url = asyncio.run(_seeded(request.param, tmp))
    # The emulator's control listener gets its own free port too: its default (--port + 9) may be
    # taken by another suite's process on a busy machine.
    legacy_port, legacy_admin_port, edge_port, admin_port = free_port(), free_port(), free_port(), free_port()
    # Old shopping's pay routes call the PSPs: the PSP emulator (webhooks only recorded) stands in.
    psp_port, psp_admin_port = free_port(), free_port()
    routing = tmp / "routing.yaml"
    _fuzz_routing(routing, f"http://127.0.0.1:{legacy_port}")
    env = {
        **os.environ,
        "SHOP_DB_URL": db_url,
        "EDGE_LEGACY_URL": f"http://127.0.0.1:{legacy_port}",
        "SHOP_SERVICE_TOKEN": SERVICE_TOKEN,
        "SHOP_EXPIRY_SWEEP_SECONDS": "0",  # nothing but the fuzzed requests may change a row
    }
    env.pop("EDGE_ROUTING_FILE", None)
    legacy_log, edge_log, psp_log = tmp / "legacy.log", tmp / "edge.log", tmp / "psp.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with psp_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "emulators.psp", "--port", str(psp_port), "--admin-port", str(psp_admin_port),
                 "--no-webhooks"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            ))
        _wait_listening(procs[-1], psp_port, psp_log, "the PSP emulator")
        with legacy_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "emulators.legacy", "--host", "127.0.0.1", "--port", str(legacy_port),
                 "--admin-port", str(legacy_admin_port), "--db-url", db_url, "--psp-url", f"http://127.0.0.1:{psp_port}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            ))
        _wait_listening(procs[-1], legacy_port, legacy_log, "old shopping")
        with edge_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1",
                 "--port", str(edge_port), "--admin-port", str(admin_port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            ))
        _wait_listening(procs[-1], edge_port, edge_log, "the edge")
        db = create_engine(_sync_url(db_url))
        try:
            placed = Stack(edge_port, admin_port, db, edge_log, legacy_log)
            PLACED[:] = [_place_order(placed, user) for user in demo_buyers(6)]
            yield placed
        finally:
            db.dispose()
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _place_order(stack: Stack, user: int) -> tuple[str, str]:
    """A real checkout through the edge (either side): (order id, owner)."""
    hdrs = {"X-User-Id": str(user), "Content-Type": "application/json"}
    body = {"address_id": user, "currency": "USD", "use_wallet": False}
    status, answer = _send(stack, "POST", "/shopping/cal_price/v4_4", hdrs, json.dumps(body).encode())
    assert status == 200, answer
    body["expected_total"] = json.loads(answer)["data"]["summary"]["total"]
    status, answer = _send(stack, "POST", "/shopping/cart/checkout/entries", {**hdrs, "Idempotency-Key": f"fuzz-{user}"},
                           json.dumps(body).encode())
    assert status == 200, answer
    return json.loads(answer)["data"]["order_id"], str(user)


# --- what hypothesis sends ------------------------------------------------------------------------

TEMPLATES = (
    ("POST", "/shopping/cal_price/v4_4"),
    ("POST", "/shopping/user_coupons_for_order"),
    ("POST", "/shopping/cart/checkout/entries"),
    ("GET", "/shopping/orders_v43/{order_id}"),
    ("GET", "/shopping/orders/{order_id}/pay_cm"),
    ("POST", "/shopping/orders/{order_id}/paid_from_client"),
    ("POST", "/shopping/orders/{order_id}/pay/{ptype}/paypal"),
    ("POST", "/shopping/orders/{order_id}/paypal_finished/{pay_id}"),
    ("POST", "/shopping/orders/{order_id}/pay/any/adyen"),
    ("POST", "/shopping/orders/{order_id}/cancel"),
    ("GET", "/shopping/cart"),
    ("POST", "/shopping/cart"),
    ("GET", "/shopping/orders"),
    ("POST", "/order2/calc_price"),
    ("POST", "/order2/place_order"),
    ("GET", "/order2/detail/{order_id}"),
    ("POST", "/refund/refund"),
    ("POST", "/event/{name}"),
)
# Printable ASCII without space and '#': what http.client lets through in a request target.
_PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#")
_UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"


@st.composite
def reencoded(draw: st.DrawFn, path: str) -> str:
    """The same path with some unreserved characters percent-encoded, in either hex case."""
    out = []
    for ch in path:
        if ch in _UNRESERVED and draw(st.integers(0, 9)) == 0:
            hexed = f"%{ord(ch):02X}"
            out.append(hexed if draw(st.booleans()) else hexed.lower())
        else:
            out.append(ch)
    return "".join(out)


_PARAM = st.one_of(
    st.deferred(lambda: st.sampled_from([order for order, _ in PLACED] or ["no-orders"])),
    st.integers(1, 400).map(str),
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["", ".", "..", "%2e%2e", "%2F", "a%2fb", "%00", "%", "%zz", "ORD-1", "paypal", "1e3", " 1"]),
    st.text(_PATH_CHARS.filter(lambda c: c not in "/?"), max_size=20),
)


@st.composite
def paths(draw: st.DrawFn) -> tuple[str, str]:
    """Mostly the real routes with their own method (so requests reach the handlers), sometimes not."""
    method, template = draw(st.sampled_from(TEMPLATES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"]))
    path = re.sub(r"\{[a-z_]+\}", lambda _: draw(_PARAM).replace(" ", "%20"), template)
    shape = draw(st.integers(0, 9))
    if shape >= 6:
        path = draw(reencoded(path))
    elif shape == 0:
        path = "/" + draw(st.text(_PATH_CHARS, min_size=1, max_size=60))
    if draw(st.integers(0, 4)) == 0:
        path += "?" + draw(st.text(_PATH_CHARS, max_size=30))
    return method, path


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cc", "Cs")), max_size=40)
_USER_IDS = st.one_of(
    st.deferred(lambda: st.sampled_from([owner for _, owner in PLACED] or ["1"])),
    st.integers(1, 60).map(str),
    st.integers(1, 60).map(str),
    st.sampled_from(["", "0", "012", "0012", "-1", "+1", " 1", "1 ", "²", "¹", "1" * 25, "9" * 19, "1.0", "abc", "１", "١"]),
    _HEADER_TEXT,
)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    out: dict[str, str] = {}
    if draw(st.integers(0, 5)):
        out["X-User-Id"] = draw(_USER_IDS)
    for name, values in (
        ("X-Device-Id", _HEADER_TEXT),
        ("Idempotency-Key", st.one_of(st.uuids().map(str), _HEADER_TEXT, st.just("Case-Key-A"), st.just("case-key-a"))),
        ("X-Platform", st.sampled_from(["ios", "android", "web", "", "IOS", "toaster"])),
        ("X-App-Version", st.sampled_from(["5.10.0", "", "x", "99999999999"])),
        ("Content-Type", st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""])),
        ("X-Request-Id", _HEADER_TEXT),
        ("Authorization", st.sampled_from(["Bearer wrong", "Bearer ", "Basic Zm9vOmJhcg==", f"Bearer {SERVICE_TOKEN}x"])),
        ("Origin", st.sampled_from(["http://evil.example", "null"])),
        ("X-Edge-Backend", st.sampled_from(["new", "legacy"])),
    ):
        if draw(st.integers(0, 3)) == 0:
            out[name] = draw(values)
    return out


_STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "SAVE15", "WELCOME10", "EUR", "JPY", "KWD", "DE", "US", "JP", "ZZ"]),
)
_NUMBERS = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1", "0", "-1", "1e400", "NaN", "Infinity", "96.07", "0.001", "9" * 40]),
)
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | _NUMBERS | _STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_STRINGS, inner, max_size=4),
    max_leaves=12,
)
_ITEM = st.fixed_dictionaries(
    {"sku_id": st.one_of(st.integers(0, 40), _ANY_JSON), "qty": st.one_of(st.integers(-3, 10**6), _ANY_JSON)},
    optional={"extra": _ANY_JSON},
)
_SHOPPING_BODY = st.fixed_dictionaries(
    {},
    optional={
        "items": st.one_of(st.lists(_ITEM, max_size=5), _ANY_JSON),
        "user_coupon_id": st.one_of(st.integers(-1, 40), _ANY_JSON),
        "coupon_code": _STRINGS,
        "address_id": st.one_of(st.integers(-1, 60), _ANY_JSON),
        "region": _STRINGS,
        "currency": _STRINGS,
        "use_wallet": st.one_of(st.booleans(), _ANY_JSON),
        "expected_total": st.one_of(_NUMBERS.map(str), _ANY_JSON),
        "payment_method": _STRINGS,
        "order_id": _STRINGS,
        "amount": _NUMBERS,
        "reason": _STRINGS,
        "request_id": _STRINGS,
    },
)


def _deep(depth: int) -> bytes:
    return b'{"items":' + b"[" * depth + b"]" * depth + b"}"


BODIES = st.one_of(
    st.none(),
    _SHOPPING_BODY.map(lambda b: json.dumps(b).encode()),
    _ANY_JSON.map(lambda b: json.dumps(b).encode()),
    st.integers(30, 5000).map(_deep),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"null", b'"\\ud800"', b'{"items": [{"sku_id": 1, "qty": 1}], "currency": "\\udc00"}']),
)


def _send(stack: Stack, method: str, path: str, hdrs: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.edge_port, timeout=15)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in hdrs.items():
            conn.putheader(name, value.encode("utf-8"))  # what a real client sends for "²"
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _allowed_5xx(status: int, body: bytes) -> bool:
    if status != 501:
        return False
    try:
        return json.loads(body).get("msg") in NOT_MIGRATED
    except ValueError:
        return False


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM_RUN,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=paths(), hdrs=headers(), body=BODIES)
def test_generated_requests_never_get_a_500_and_rejected_ones_write_nothing(
    stack: Stack, request: tuple[str, str], hdrs: dict[str, str], body: bytes | None,
) -> None:
    method, path = request
    before = stack.fingerprint()
    status, answer = _send(stack, method, path, hdrs, body)
    assert status < 500 or _allowed_5xx(status, answer), (status, answer[:300])
    if status >= 400:
        # Shadow calls are reads; nothing else runs in the background (the sweeper is off).
        assert stack.fingerprint() == before, (status, answer[:300])


def test_after_the_fuzzing_no_log_holds_a_traceback_and_the_shadow_report_renders(stack: Stack) -> None:
    # Runs after the generated requests (same module-scoped stack): the shadow store is full of their examples.
    time.sleep(0.6)  # the edge flushes its log buffer every 0.5 s
    def get(page: str) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", stack.admin_port, timeout=10)
        conn.request("GET", page)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200, (page, body[:500])
        return body

    routes = json.loads(get("/_edge/shadow?format=json"))["routes"]
    get("/_edge/shadow?format=html")
    # Each route's page too (the index only lists them): the examples the fuzzing left are rendered there.
    for route in routes:
        get("/_edge/shadow?" + urllib.parse.urlencode({"format": "html", "route": route}))
    for log in (stack.edge_log, stack.legacy_log):
        text_ = log.read_text(errors="replace")
        assert "Traceback" not in text_, text_[text_.find("Traceback") - 500:][:3000]
        assert "unhandled" not in text_, [line for line in text_.splitlines() if "unhandled" in line][:3]
        assert "shadow_new_side_crashed" not in text_
