"""edgectl: routing.yaml edits keep every other byte, refuse bad input, and read the admin API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from typing import Any
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from common.consumer_routing import CONSUMER_EVENTS, parse_consumers_file
from common.settings import ROUTING_INTERPOLATION_VARS, Settings
from consumers.ownership import Ownership
from handlers.routes import NEW_ROUTES
from proxy.edgectl import main
from proxy.edgectl_admin import AdminClient, TokenNotSent, token_may_go_to
import proxy.edgectl
from proxy.edgectl_yaml import EditError, set_consumers, set_percents, write_atomic
from proxy.metrics import EdgeMetrics
from shadow.noise import DiffStats, NoiseRule
from shadow.report import render_json
from shadow.sizes import SizeStats
from shadow.store import ExampleStore
from proxy.routing import parse_routing
from tests.support.bad_routing import alias_bomb, routing_text

# A frozen copy of routing.yaml with every route on old shopping: the live file changes with each gray step.
REPO_ROUTING = Path(__file__).resolve().parents[1] / "fixtures" / "routing-all-legacy.yaml"

Ctl = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # edgectl reads its defaults through Settings.from_env(); the developer's shell must not leak in.
    for name in ("EDGE_ADMIN_TOKEN", "EDGE_ROUTING_FILE", "EDGE_LEGACY_URL", "EDGE_ADMIN_ADDR", "EDGE_ROUTING_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def routing(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    shutil.copyfile(REPO_ROUTING, path)
    return path


@pytest.fixture
def ctl(capsys: pytest.CaptureFixture[str]) -> Ctl:
    """Run edgectl in-process: (exit code, stdout, stderr); argparse usage errors exit 2 via SystemExit."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _table(path: Path):  # type: ignore[no-untyped-def]
    return parse_routing(path.read_text(), new_routes=NEW_ROUTES.keys())


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b), "an edit of a value must not add or remove lines"
    return [(x, y) for x, y in zip(a, b) if x != y]


def _line_of(text: str, needle: str, after: str = "") -> int:
    start = text.index(after) if after else 0
    return text[: text.index(needle, start)].count("\n") + 1


# --- set -----------------------------------------------------------------------------------------


def test_set_changes_exactly_the_one_value_line(routing: Path, ctl: Ctl) -> None:
    before = routing.read_text()
    code, out, err = ctl("set", "calc_price", "20", "--file", str(routing), "--no-reload")
    assert (code, err) == (0, "")
    assert out.strip() == "calc_price: 0 → 20"
    assert _changed_lines(before, routing.read_text()) == [("    new_percent: 0\n", "    new_percent: 20\n")]
    assert _table(routing).routes["calc_price"].new_percent == Decimal(20)


@pytest.mark.parametrize("percent", ["0.5", "12.25", "100"])
def test_set_writes_decimals_as_given(routing: Path, ctl: Ctl, percent: str) -> None:
    before = routing.read_text()
    code, _, _ = ctl("set", "coupons", percent, "--file", str(routing), "--no-reload")
    assert code == 0
    assert _changed_lines(before, routing.read_text()) == [("    new_percent: 0\n", f"    new_percent: {percent}\n")]
    assert _table(routing).routes["coupons"].new_percent == Decimal(percent)


def test_set_twice_returns_to_the_original_bytes(routing: Path, ctl: Ctl) -> None:
    before = routing.read_bytes()
    assert ctl("set", "detail", "0.5", "--file", str(routing), "--no-reload")[0] == 0
    assert ctl("set", "detail", "0", "--file", str(routing), "--no-reload")[0] == 0
    assert routing.read_bytes() == before


def test_unknown_route_leaves_the_file_byte_identical(routing: Path, ctl: Ctl) -> None:
    before = routing.read_bytes()
    code, out, err = ctl("set", "calc_prize", "10", "--file", str(routing), "--no-reload")
    assert code == 1
    assert "unknown route 'calc_prize'" in err and "calc_price" in err
    assert "Traceback" not in err and out == ""
    assert routing.read_bytes() == before


@pytest.mark.parametrize("percent", ["101", "-1", "0.001", "abc", "nan", "inf", ""])
def test_invalid_percent_is_a_usage_error(routing: Path, ctl: Ctl, percent: str) -> None:
    before = routing.read_bytes()
    code, _, err = ctl("set", "calc_price", percent, "--file", str(routing), "--no-reload")
    assert code == 2
    assert "PERCENT" in err
    assert routing.read_bytes() == before


def test_expect_guard_refuses_when_the_current_value_differs(routing: Path, ctl: Ctl) -> None:
    assert ctl("set", "calc_price", "10", "--file", str(routing), "--no-reload")[0] == 0
    before = routing.read_bytes()
    code, _, err = ctl("set", "calc_price", "50", "--expect", "20", "--file", str(routing), "--no-reload")
    assert code == 1
    assert "calc_price is at 10, not the expected 20" in err
    assert routing.read_bytes() == before
    code, out, _ = ctl("set", "calc_price", "50", "--expect", "10", "--file", str(routing), "--no-reload")
    assert code == 0 and "calc_price: 10 → 50" in out


def test_an_edit_the_edge_would_reject_is_not_written(tmp_path: Path, ctl: Ctl) -> None:
    # A route without a new-side handler may only have new_percent: 0 (proxy/routing.py).
    path = tmp_path / "routing.yaml"
    path.write_text("version: 1\nroutes:\n  legacy_only:\n    match: {methods: [GET], path: /old}\n    new_percent: 0\n")
    before = path.read_bytes()
    code, _, err = ctl("set", "legacy_only", "10", "--file", str(path), "--no-reload")
    assert code == 1
    assert "would be rejected" in err and "routes.legacy_only (line 4): no new-side handler" in err
    assert path.read_bytes() == before


def test_atomic_write_replaces_the_file_keeps_its_mode_and_leaves_no_temp_files(routing: Path, ctl: Ctl) -> None:
    routing.chmod(0o640)
    inode = routing.stat().st_ino
    assert ctl("set", "calc_price", "5", "--file", str(routing), "--no-reload")[0] == 0
    assert routing.stat().st_mode & 0o7777 == 0o640
    assert routing.stat().st_ino != inode  # a rename, not an in-place rewrite the edge could read half of
    assert sorted(p.name for p in routing.parent.iterdir()) == ["routing.yaml", "routing.yaml.audit.jsonl"]


def test_write_atomic_refuses_when_someone_else_changed_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_bytes(b"theirs\n")
    with pytest.raises(EditError, match="changed while edgectl was editing"):
        write_atomic(path, b"ours\n", expected=b"original\n")
    assert path.read_bytes() == b"theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routing.yaml"]


def test_unreachable_admin_is_reported_but_the_edit_stands(routing: Path, ctl: Ctl, unused_tcp_port: int) -> None:
    code, out, err = ctl("set", "calc_price", "30", "--file", str(routing), "--admin", f"http://127.0.0.1:{unused_tcp_port}")
    assert code == 0
    assert "calc_price: 0 → 30" in out
    assert "unreachable" in err and "within 1 s" in err
    assert _table(routing).routes["calc_price"].new_percent == Decimal(30)


# --- layouts other than the repo's ----------------------------------------------------------------

HAND_WRITTEN = """\
# hand-edited by ops
version: 1
defaults:
    sticky_key:
      - header:X-User-Id   # odd sequence indent on purpose: a YAML dump would re-indent it
      - client_ip
routes:
    calc_price: {match: {methods: [POST], path: /a}, new_percent: 10}   # flow
    coupons:
        match:
            methods:
            - POST
            path: '/b'
        new_percent: "5"            # quoted
        timeout_ms: 100
    detail:
        match: {methods: [GET], path: "/c/{id}"}
        timeout_ms: 100
"""


def test_flow_style_quoting_comments_and_a_missing_key_are_preserved() -> None:
    text, changes = set_percents(HAND_WRITTEN, {"calc_price": Decimal("0.25"), "coupons": Decimal("12.5"), "detail": Decimal(7)})
    assert [(c.route, c.old, c.new) for c in changes] == [
        ("calc_price", Decimal(10), Decimal("0.25")),
        ("coupons", Decimal(5), Decimal("12.5")),
        ("detail", Decimal(0), Decimal(7)),
    ]
    expected = (
        HAND_WRITTEN.replace("new_percent: 10}   # flow", "new_percent: 0.25} # flow")
        .replace('new_percent: "5"            # quoted', 'new_percent: "12.5"         # quoted')
        .replace('"/c/{id}"}\n', '"/c/{id}"}\n        new_percent: 7\n')
    )
    assert text == expected
    parse_routing(text)  # and the edge accepts it


def test_values_edgectl_cannot_edit_safely_are_refused() -> None:
    text = "version: 1\nroutes:\n  a:\n    match: {methods: [GET], path: /a}\n    new_percent: &p 5\n"
    with pytest.raises(EditError, match=r"routes.a.new_percent \(line 5\).*edit it by hand"):
        set_percents(text, {"a": Decimal(1)})


# --- rollback ------------------------------------------------------------------------------------


def test_rollback_one_route_keeps_allow_new_and_warns(routing: Path, ctl: Ctl) -> None:
    text = routing.read_text().replace("    timeout_ms: 2000\n", '    timeout_ms: 2000\n    allow_new: ["1001"]  # QA\n', 1)
    routing.write_text(text)
    assert ctl("set", "calc_price", "40", "--file", str(routing), "--no-reload")[0] == 0
    assert ctl("set", "coupons", "40", "--file", str(routing), "--no-reload")[0] == 0
    before = routing.read_text()
    code, out, err = ctl("rollback", "calc_price", "--file", str(routing), "--no-reload")
    assert code == 0
    assert out.strip() == "calc_price: 40 → 0"
    assert "calc_price still sends allow_new users 1001 to new" in err
    assert _changed_lines(before, routing.read_text()) == [("    new_percent: 40\n", "    new_percent: 0\n")]
    table = _table(routing)
    assert table.routes["calc_price"].allow_new == frozenset({"1001"})
    assert table.routes["coupons"].new_percent == Decimal(40)


def test_rollback_all_zeroes_every_route_and_nothing_else(routing: Path, ctl: Ctl) -> None:
    for route, percent in (("calc_price", "10"), ("place_order", "0.5"), ("paid_from_client", "100")):
        assert ctl("set", route, percent, "--file", str(routing), "--no-reload")[0] == 0
    before = routing.read_text()
    code, out, _ = ctl("rollback", "--all", "--file", str(routing), "--no-reload")
    assert code == 0
    assert "calc_price: 10 → 0" in out and "place_order: 0.5 → 0" in out and "paid_from_client: 100 → 0" in out
    assert "8 other route(s) already at 0" in out
    changed = _changed_lines(before, routing.read_text())
    assert [new for _, new in changed] == ["    new_percent: 0\n"] * 3
    assert all(r.new_percent == 0 for r in _table(routing).routes.values())
    assert routing.read_text() == REPO_ROUTING.read_text()


def test_rollback_needs_a_route_or_all(routing: Path, ctl: Ctl) -> None:
    assert ctl("rollback", "--file", str(routing))[0] == 2
    assert ctl("rollback", "calc_price", "--all", "--file", str(routing))[0] == 2


# --- validate ------------------------------------------------------------------------------------


def test_validate_prints_one_line_per_route_and_per_event_type(ctl: Ctl) -> None:
    code, out, err = ctl("validate", str(REPO_ROUTING))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == len(_table(REPO_ROUTING).routes) + len(CONSUMER_EVENTS) + 1
    assert lines[0] == "calc_price  POST  /shopping/cal_price/v4_4  new_percent=0  shadow=off  writes=no"
    assert lines[-1 - len(CONSUMER_EVENTS):-1] == [f"consumer {event}  legacy" for event in CONSUMER_EVENTS]
    assert "valid, 11 routes" in lines[-1]


def _unknown_key(text: str) -> tuple[str, str, str]:
    bad = text.replace("    timeout_ms: 2000\n", "    timeout_ms: 2000\n    colour: red\n", 1)
    return bad, "routes.calc_price.colour", "    colour: red"


def _writes_and_shadow(text: str) -> tuple[str, str, str]:
    anchor = "  place_order:\n"
    head, tail = text.split(anchor, 1)
    bad = head + anchor + tail.replace("    writes: true\n", "    writes: true\n    shadow: {percent: 5}\n", 1)
    return bad, "routes.place_order.shadow", "    shadow: {percent: 5}"


def _duplicate_path(text: str) -> tuple[str, str, str]:
    bad = text.replace("path: /shopping/user_coupons_for_order", "path: /shopping/cal_price/v4_4")
    return bad, "routes.coupons.match.path", "  coupons:\n    match:"


@pytest.mark.parametrize("make_bad", [_unknown_key, _writes_and_shadow, _duplicate_path])
def test_validate_names_the_key_and_line_of_a_bad_file(tmp_path: Path, ctl: Ctl, make_bad: Callable[[str], tuple[str, str, str]]) -> None:
    bad, key, needle = make_bad(REPO_ROUTING.read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    line = _line_of(bad, needle) + needle.count("\n")
    code, out, err = ctl("validate", str(path))
    assert code == 1 and out == ""
    assert f"{key} (line {line})" in err
    assert "Traceback" not in err


def test_validate_missing_file_is_a_clean_error(tmp_path: Path, ctl: Ctl) -> None:
    code, _, err = ctl("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err.startswith("edgectl: cannot read") and "Traceback" not in err


# --- against an admin API (in-process stand-in) ----------------------------------------------------


def _metrics_text(with_shadow: bool) -> str:
    registry = CollectorRegistry()
    m = EdgeMetrics(registry)
    for _ in range(3):
        m.observe("calc_price", "legacy", "POST", 200, 0.01)
    m.observe("calc_price", "new", "POST", 502, 0.01)
    m.upstream_error("calc_price", "new", "connect")
    m.observe("passthrough", "legacy", "GET", 200, 0.01)
    if with_shadow:
        m.shadow_requests.labels("calc_price", "match").inc(7)
        m.shadow_requests.labels("calc_price", "mismatch").inc(3)
        m.shadow_requests.labels("calc_price", "rounding").inc(2)
    return generate_latest(registry).decode()


def _admin_app(*, with_shadow: bool, reload_status: int = 200, seen: list[str] | None = None) -> web.Application:
    described = {
        "file": "/etc/edge/routing.yaml",
        "hash": "ab" * 32,
        "loaded_at": 1_700_000_000.0,
        "last_reload": {"ok": False, "changed": False, "error": "routes.x.new_percent (line 9): 150 is outside 0..100", "at": 1_700_000_100.0},
        "routes": {
            "calc_price": {"methods": ["POST"], "path": "/a", "new_percent": 25.0, "writes": False, "shadow": {"percent": 10.0}},
            "place_order": {"methods": ["POST"], "path": "/b", "new_percent": 0.0, "writes": True, "shadow": None},
        },
    }

    async def routes(request: web.Request) -> web.Response:
        return web.json_response(described)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=_metrics_text(with_shadow), content_type="text/plain")

    async def shadow(request: web.Request) -> web.Response:
        # The edge's real report, built from real stats and examples.
        stats, store = DiffStats(NoiseRule()), ExampleStore()
        for i in range(10):
            fields = ["data.total"] if i < 3 else []
            if i == 0:
                fields.append("data.currency")
            stats.record_comparison("calc_price", fields)
        sizes = SizeStats()
        for i in range(10):
            sizes.record("calc_price", {"data.total": "rounding"} if i < 3 else {}, {"data.total": Decimal("0.01")} if i < 3 else {})
        diff = {"values_changed": {"root['data']['total']": {"new": "10.00", "legacy": "10.01"}}}
        store.add("calc_price", "data.total", {"request_id": "r1", "primary_side": "new", "diff": diff})
        report = render_json(stats, store, {"calc_price": {"match": 4, "rounding": 3, "mismatch": 3}},
                             route=request.query.get("route"), sizes=sizes)
        return web.json_response(report)

    async def reload(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": reload_status == 200, "changed": True, "error": "bad file" if reload_status != 200 else None, "hash": "x"}, status=reload_status)

    app = web.Application()
    app.router.add_get("/_edge/routes", routes)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_edge/reload", reload)
    if with_shadow:
        app.router.add_get("/_edge/shadow", shadow)
    return app


async def _ctl_async(ctl: Ctl, *args: str) -> tuple[int, str, str]:
    # edgectl blocks on urllib; the stand-in server needs this event loop free meanwhile.
    return await asyncio.to_thread(ctl, *args)


async def test_status_shows_routes_traffic_errors_and_reload_state(aiohttp_server, ctl: Ctl) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(_admin_app(with_shadow=False))
    code, out, err = await _ctl_async(ctl, "status", "--admin", str(server.make_url("")))
    assert (code, err) == (0, "")
    assert "ab" * 32 in out
    assert "REJECTED" in out and "150 is outside 0..100" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in ("calc_price", "place_order", "passthrough", "TOTAL")}
    # route, new%, shadow%, writes, req legacy, req new, 5xx rate, upstream errors
    # …and shadow mismatch/compared, zero while no shadow traffic has run
    assert rows["calc_price"] == ["calc_price", "25", "10", "no", "3", "1", "25.00%", "1", "0/0"]
    assert rows["place_order"] == ["place_order", "0", "-", "yes", "0", "0", "-", "0", "0/0"]
    assert rows["passthrough"] == ["passthrough", "-", "-", "-", "1", "0", "0.00%", "0", "0/0"]
    assert rows["TOTAL"] == ["TOTAL", "4", "1", "20.00%", "1", "0/0"]


async def test_status_shows_shadow_mismatches_when_the_edge_exports_them(aiohttp_server, ctl: Ctl) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(_admin_app(with_shadow=True))
    code, out, _ = await _ctl_async(ctl, "status", "--admin", str(server.make_url("")))
    assert code == 0
    assert "shadow mismatch/compared" in out
    assert next(line for line in out.splitlines() if line.startswith("calc_price")).endswith("3/12")  # rounding-only comparisons count as made


async def test_shadow_prints_top_fields_with_an_example(aiohttp_server, ctl: Ctl) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(_admin_app(with_shadow=True))
    code, out, _ = await _ctl_async(ctl, "shadow", "calc_price", "--admin", str(server.make_url("")))
    assert code == 0
    lines = out.splitlines()
    assert "requests: match=4, rounding=3, mismatch=3, error=0, skipped=0, total=10" in lines
    top = lines.index(next(line for line in lines if line.endswith("data.total")))
    # mismatches, rounding, beyond, max |Δ|, noise, verdict
    assert lines[top].split()[:6] == ["3", "3", "0", "0.01", "0", "rounding"]  # every difference within rounding
    # Real mismatches first (data.currency, fewer of them), then the rounding-only fields.
    assert lines.index(next(line for line in lines if line.endswith("data.currency"))) < top
    # Values under the side that produced them, and which side was serving.
    assert '(primary new)' in lines[top + 1] and '"legacy": "10.01"' in lines[top + 1] and '"new": "10.00"' in lines[top + 1]


async def test_shadow_of_an_unknown_route_fails_and_names_the_routes(aiohttp_server, ctl: Ctl) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(_admin_app(with_shadow=True))
    code, out, err = await _ctl_async(ctl, "shadow", "calc_prise", "--admin", str(server.make_url("")))
    assert (code, out) == (1, "")
    assert err.strip() == "edgectl: unknown route 'calc_prise'; the edge's routes are: calc_price, place_order"


async def test_shadow_without_the_endpoint_says_so(aiohttp_server, ctl: Ctl) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(_admin_app(with_shadow=False))
    code, out, err = await _ctl_async(ctl, "shadow", "calc_price", "--admin", str(server.make_url("")))
    assert (code, out) == (1, "")
    assert err.strip() == "edgectl: shadow report not available on this edge"


async def test_set_sends_the_admin_token_and_fails_when_the_edge_rejects_the_file(
    aiohttp_server, ctl: Ctl, routing: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "s3cret")
    seen: list[str] = []
    server = await aiohttp_server(_admin_app(with_shadow=False, reload_status=422, seen=seen))
    code, _, err = await _ctl_async(ctl, "set", "calc_price", "5", "--file", str(routing), "--admin", str(server.make_url("")))
    assert seen == ["Bearer s3cret"]
    assert code == 1
    assert "rejected the file" in err and "bad file" in err
    assert "s3cret" not in err


def test_status_with_no_edge_is_a_clean_error(ctl: Ctl, unused_tcp_port: int) -> None:
    code, out, err = ctl("status", "--admin", f"http://127.0.0.1:{unused_tcp_port}")
    assert (code, out) == (1, "")
    assert "unreachable" in err and "Traceback" not in err



# --- issue 9: the edge's bounded loader, placeholders, where the token may go -----------------------


def test_validate_refuses_an_alias_bomb_at_once(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(routing_text("http://old:9000", "0", alias_bomb(9)))  # 9**9 values once expanded
    started = time.monotonic()
    code, _, err = ctl("validate", str(path))
    assert code == 1 and "bomb.a0 (line 8): YAML anchors (&a0) are not allowed" in err
    assert time.monotonic() - started < 1.0


def test_set_refuses_a_file_with_an_alias_bomb_before_the_round_trip_parser_sees_it(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(routing_text("http://old:9000", "0", alias_bomb(9)))
    started = time.monotonic()
    code, _, err = ctl("set", "calc_price", "5", "--file", str(path), "--no-reload")
    assert code == 1 and "YAML anchors (&a0) are not allowed" in err
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_validate_refuses_what_is_not_a_regular_file(tmp_path: Path, ctl: Ctl, target: str) -> None:
    path = tmp_path / "routing.yaml"
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)
    started = time.monotonic()
    code, _, err = ctl("validate", str(path))
    assert code == 1 and "must be a regular file" in err and "Traceback" not in err
    assert time.monotonic() - started < 1.0


def test_validate_follows_a_symlink_to_a_regular_file_as_kubernetes_mounts_it(tmp_path: Path, ctl: Ctl) -> None:
    data = tmp_path / "..2026_12_02" / "routing.yaml"
    data.parent.mkdir()
    shutil.copyfile(REPO_ROUTING, data)
    link = tmp_path / "routing.yaml"
    link.symlink_to(data)
    code, out, err = ctl("validate", str(link))
    assert (code, err) == (0, "") and "valid, 11 routes" in out


def test_validate_obeys_the_edge_s_size_cap(tmp_path: Path, ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_ROUTING_MAX_BYTES", "1024")
    code, _, err = ctl("validate", str(REPO_ROUTING))
    assert code == 1 and "more than the 1024 allowed (EDGE_ROUTING_MAX_BYTES)" in err


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8081", True), ("http://127.9.9.9:8081", True), ("http://[::1]:8081", True),
        ("http://localhost:8081", True), ("https://edge.internal:8081", True),
        ("http://10.0.0.5:8081", False), ("http://edge.internal:8081", False), ("http://127.0.0.1.evil.example", False),
        ("ftp://127.0.0.1", False),
    ],
)
def test_the_token_goes_only_to_loopback_or_https(url: str, allowed: bool) -> None:
    assert token_may_go_to(url) is allowed


def test_an_edit_whose_reload_would_send_the_token_in_clear_text_is_refused_before_writing(
    routing: Path, ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "s3cret")
    before = routing.read_bytes()
    code, out, err = ctl("set", "calc_price", "5", "--file", str(routing), "--admin", "http://10.0.0.5:8081")
    assert (code, out) == (1, "")
    assert "not sending EDGE_ADMIN_TOKEN to http://10.0.0.5:8081" in err and "--insecure-token" in err
    assert "s3cret" not in err
    assert routing.read_bytes() == before
    # Only writing the file needs no token; --insecure-token is the explicit override.
    assert ctl("set", "calc_price", "5", "--file", str(routing), "--admin", "http://10.0.0.5:8081", "--no-reload")[0] == 0
    AdminClient("http://10.0.0.5:8081", "s3cret", insecure_token=True).check_token_destination()
    with pytest.raises(TokenNotSent):
        AdminClient("http://10.0.0.5:8081", "s3cret").post("/_edge/reload")


async def test_the_token_does_not_follow_a_redirect(aiohttp_server, ctl: Ctl, routing: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "s3cret")
    collected: list[str] = []

    async def collect(request: web.Request) -> web.Response:
        collected.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True, "changed": True, "hash": "x"})

    collector = web.Application()
    collector.router.add_route("*", "/{tail:.*}", collect)
    elsewhere = await aiohttp_server(collector)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(elsewhere.make_url("/steal")))

    redirector = web.Application()
    redirector.router.add_post("/_edge/reload", redirect)
    admin = await aiohttp_server(redirector)
    code, _, err = await _ctl_async(ctl, "set", "calc_price", "5", "--file", str(routing), "--admin", str(admin.make_url("")))
    assert collected == []
    assert code == 1 and "302" in err


# --- consumer: who applies each event type (issue 10 §4) ---------------------------------------------


def _owners(path: Path) -> dict[str, str]:
    """Every event type's owner as the consumers process reads the file (its own parser)."""
    table = parse_consumers_file(path.read_text(), {}, interpolation_vars=ROUTING_INTERPOLATION_VARS)
    return {event: str(table.rule(event).new_percent) for event in CONSUMER_EVENTS}


PICKUP = "the running consumers apply it within 1 s by themselves"


@pytest.mark.parametrize(("owner", "written", "shown", "percent"), [
    ("new", "new", "new", "100"),
    ("30", "{new_percent: 30}", "{new_percent: 30}", "30"),
    ("0.25", "{new_percent: 0.25}", "{new_percent: 0.25}", "0.25"),
    ("100", "{new_percent: 100}", "{new_percent: 100}", "100"),
])
def test_consumer_changes_exactly_the_one_value_line(routing: Path, ctl: Ctl, owner: str, written: str, shown: str, percent: str) -> None:
    before = routing.read_text()
    code, out, err = ctl("consumer", "purchased", owner, "--file", str(routing))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"purchased: legacy → {shown}"
    assert PICKUP in out and "no edge reload needed" in out
    assert _changed_lines(before, routing.read_text()) == [("  purchased: legacy\n", f"  purchased: {written}\n")]
    assert _owners(routing) == {e: (percent if e == "purchased" else "0") for e in CONSUMER_EVENTS}
    assert _table(routing).routes == _table(REPO_ROUTING).routes  # the edge's part did not move


def test_consumer_from_a_split_back_to_legacy_returns_to_the_original_bytes(routing: Path, ctl: Ctl) -> None:
    before = routing.read_bytes()
    assert ctl("consumer", "payment_notified", "10", "--file", str(routing))[0] == 0
    code, out, _ = ctl("consumer", "payment_notified", "legacy", "--file", str(routing))
    assert code == 0 and out.splitlines()[0] == "payment_notified: {new_percent: 10} → legacy"
    assert routing.read_bytes() == before


def test_consumer_already_there_writes_nothing(routing: Path, ctl: Ctl) -> None:
    inode = routing.stat().st_ino
    code, out, _ = ctl("consumer", "purchased", "0", "--file", str(routing))  # {new_percent: 0} is legacy
    assert code == 0
    assert out.splitlines() == ["purchased: legacy → legacy (unchanged)", "nothing written"]
    assert routing.stat().st_ino == inode and routing.read_text() == REPO_ROUTING.read_text()


HAND_CONSUMERS = """\
# ops' file
version: 1
routes:
  calc_price: {match: {methods: [POST], path: /a}, new_percent: 10}   # flow
consumers:                         # who applies each event type
  payment_notified: 'new'          # since 12-01
  payment_failed: {new_percent: 25}   # quarter
  purchased:
    new_percent: "40"              # block style, quoted
  group_update: legacy             # deprecated event
"""


@pytest.mark.parametrize(("event", "owner", "old_line", "new_line"), [
    ("payment_notified", "legacy", "  payment_notified: 'new'          # since 12-01\n", "  payment_notified: 'legacy'       # since 12-01\n"),
    ("payment_notified", "5", "  payment_notified: 'new'          # since 12-01\n", "  payment_notified: {new_percent: 5} # since 12-01\n"),
    ("payment_failed", "12.5", "  payment_failed: {new_percent: 25}   # quarter\n", "  payment_failed: {new_percent: 12.5} # quarter\n"),
    ("payment_failed", "new", "  payment_failed: {new_percent: 25}   # quarter\n", "  payment_failed: new                 # quarter\n"),
    ("purchased", "55", '    new_percent: "40"              # block style, quoted\n', '    new_percent: "55"              # block style, quoted\n'),
    ("group_update", "new", "  group_update: legacy             # deprecated event\n", "  group_update: new                # deprecated event\n"),
])
def test_consumer_keeps_every_other_byte_quoting_and_comment_columns(
    tmp_path: Path, ctl: Ctl, event: str, owner: str, old_line: str, new_line: str,
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(HAND_CONSUMERS)
    code, _, err = ctl("consumer", event, owner, "--file", str(path))
    assert (code, err) == (0, "")
    assert path.read_text() == HAND_CONSUMERS.replace(old_line, new_line)


def test_consumer_block_mapping_to_a_word_keeps_the_mapping_and_says_so(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(HAND_CONSUMERS)
    code, out, _ = ctl("consumer", "purchased", "legacy", "--file", str(path))
    assert code == 0
    assert out.splitlines()[:2] == [
        "purchased: {new_percent: 40} → legacy",
        "  (written as new_percent: 0 in its block mapping, the same as legacy)",
    ]
    assert path.read_text() == HAND_CONSUMERS.replace('new_percent: "40" ', 'new_percent: "0"  ')
    assert _owners(path)["purchased"] == "0"


def test_consumer_inserts_an_absent_event_type_in_domain_order(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(HAND_CONSUMERS)
    code, out, _ = ctl("consumer", "refund_notified", "20", "--file", str(path))
    assert code == 0 and out.splitlines()[0] == "refund_notified: legacy → {new_percent: 20}"
    assert path.read_text() == HAND_CONSUMERS.replace("  group_update:", "  refund_notified: {new_percent: 20}\n  group_update:")


def test_consumer_appends_a_missing_consumers_section(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    head = "version: 1\nroutes:\n    calc_price: {match: {methods: [POST], path: /a}}  # no trailing newline"
    path.write_text(head)
    code, out, _ = ctl("consumer", "payment_failed", "new", "--file", str(path))
    assert code == 0 and out.splitlines()[0] == "payment_failed: legacy → new"
    assert path.read_text() == head + "\nconsumers:\n    payment_failed: new\n"
    path.write_text("version: 1\nroutes: {}\nconsumers:   # none yet\n")
    assert ctl("consumer", "purchased", "1", "--file", str(path))[0] == 0
    assert path.read_text() == "version: 1\nroutes: {}\nconsumers:   # none yet\n  purchased: {new_percent: 1}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("version: 1\nroutes: {}\nconsumers: {}\n", "write `consumers: {purchased: new}` by hand"),
    ("version: 1\nroutes: {}\nconsumers: ~\n", "consumers: (line 3) is '~': replace it by hand"),
    ("version: 1\nroutes: {}\nconsumers:\n  purchased: {\n    new_percent: 5}\n", "flow mapping over several lines: edit it by hand"),
    ("version: 1\nroutes: {}\nconsumers:\n  purchased: both\n", "the consumers reject the file as it is (consumers.purchased (line 4): must be legacy"),
])
def test_consumer_refuses_what_it_cannot_edit_safely(tmp_path: Path, ctl: Ctl, text: str, message: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    code, out, err = ctl("consumer", "purchased", "new", "--file", str(path))
    assert (code, out) == (1, "")
    assert message in err and "Traceback" not in err
    assert path.read_text() == text


def test_consumer_expect_refuses_when_the_current_owner_differs(routing: Path, ctl: Ctl) -> None:
    assert ctl("consumer", "payment_notified", "10", "--file", str(routing))[0] == 0
    before = routing.read_bytes()
    for expect in ("legacy", "new", "20"):
        code, out, err = ctl("consumer", "payment_notified", "50", "--expect", expect, "--file", str(routing))
        assert (code, out) == (1, "")
        assert "payment_notified is {new_percent: 10}, not the expected" in err and "nothing written" in err
        assert routing.read_bytes() == before
    code, out, _ = ctl("consumer", "payment_notified", "50", "--expect", "10", "--file", str(routing))
    assert code == 0 and out.splitlines()[0] == "payment_notified: {new_percent: 10} → {new_percent: 50}"
    # An absent event type is old shopping's: --expect legacy holds for it.
    code, _, _ = ctl("consumer", "refund_notified", "new", "--expect", "legacy", "--file", str(routing))
    assert code == 0


def test_consumer_unknown_event_is_refused_listing_the_known_ones(routing: Path, ctl: Ctl) -> None:
    before = routing.read_bytes()
    code, out, err = ctl("consumer", "payment_notifed", "new", "--file", str(routing))
    assert (code, out) == (1, "")
    assert "unknown event type 'payment_notifed' (event types: " + ", ".join(CONSUMER_EVENTS) + ")" in err
    code, _, err = ctl("consumer", "payment_notified_cm", "new", "--file", str(routing))
    assert code == 1 and "payment_notified_cm is the topic, the event type is payment_notified" in err
    assert routing.read_bytes() == before


@pytest.mark.parametrize("owner", ["101", "-1", "0.001", "abc", "nan", "", "{new_percent: 5}"])
def test_consumer_bad_owner_is_a_usage_error(routing: Path, ctl: Ctl, owner: str) -> None:
    before = routing.read_bytes()
    code, _, err = ctl("consumer", "purchased", owner, "--file", str(routing))
    assert code == 2
    assert "OWNER" in err and "legacy, new or a percentage" in err
    assert routing.read_bytes() == before


@pytest.mark.parametrize("args", [(), ("purchased",), ("purchased", "new", "--rollback-all"), ("--rollback-all", "--expect", "new")])
def test_consumer_usage(routing: Path, ctl: Ctl, args: tuple[str, ...]) -> None:
    assert ctl("consumer", *args, "--file", str(routing))[0] == 2


def test_consumer_refuses_when_the_file_changed_meanwhile(routing: Path, ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = routing.read_text().replace("  group_update: legacy", "  group_update: new")

    def another_operator_saves_meanwhile(text, wanted):  # type: ignore[no-untyped-def]
        result = set_consumers(text, wanted)  # the real edit, computed from what was read…
        routing.write_text(theirs)  # …while someone else saves the file
        return result

    monkeypatch.setattr(proxy.edgectl, "set_consumers", another_operator_saves_meanwhile)
    code, out, err = ctl("consumer", "purchased", "new", "--file", str(routing))
    assert (code, out) == (1, "")
    assert "changed while edgectl was editing it; nothing written, run the command again" in err
    assert routing.read_text() == theirs
    assert sorted(p.name for p in routing.parent.iterdir()) == ["routing.yaml"]


def test_consumer_edit_the_edge_would_reject_is_not_written(tmp_path: Path, ctl: Ctl) -> None:
    # The consumers' parse accepts this file; the edge's does not (a route's key it does not know).
    path = tmp_path / "routing.yaml"
    text = REPO_ROUTING.read_text().replace(
        '"/shopping/orders/{order_id}/pay/{ptype}/paypal"}\n    new_percent: 0', '"/shopping/orders/{order_id}/pay/{ptype}/paypal"}\n    new_percnt: 5')
    assert text != REPO_ROUTING.read_text()
    path.write_text(text)
    code, _, err = ctl("consumer", "purchased", "new", "--file", str(path))
    assert code == 1 and "would be rejected" in err and "routes.paypal_pay" in err
    assert path.read_text() == text


def test_consumer_rollback_all_sets_every_event_type_to_legacy_and_nothing_else(routing: Path, ctl: Ctl) -> None:
    for event, owner in (("payment_notified", "new"), ("purchased", "25"), ("refund_notified", "0.5")):
        assert ctl("consumer", event, owner, "--file", str(routing))[0] == 0
    assert ctl("set", "calc_price", "20", "--file", str(routing), "--no-reload")[0] == 0
    routes_before = _table(routing).routes
    code, out, err = ctl("consumer", "--rollback-all", "--file", str(routing))
    assert (code, err) == (0, "")
    assert out.splitlines()[:4] == [
        "payment_notified: new → legacy",
        "purchased: {new_percent: 25} → legacy",
        "refund_notified: {new_percent: 0.5} → legacy",
        "2 other event type(s) already legacy",
    ]
    assert PICKUP in out
    assert set(_owners(routing).values()) == {"0"}
    assert _table(routing).routes == routes_before  # routes are not rolled back by this command
    code, out, _ = ctl("consumer", "--rollback-all", "--file", str(routing))
    assert code == 0 and out.splitlines()[-1] == "nothing written"


def test_consumer_rollback_all_in_a_hand_written_file(tmp_path: Path, ctl: Ctl) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(HAND_CONSUMERS)
    assert ctl("consumer", "--rollback-all", "--file", str(path))[0] == 0
    assert path.read_text() == (
        HAND_CONSUMERS.replace("'new'          #", "'legacy'       #")
        .replace("{new_percent: 25}   # quarter", "legacy              # quarter")
        .replace('new_percent: "40" ', 'new_percent: "0"  ')
    )
    assert set(_owners(path).values()) == {"0"}


async def test_a_running_consumers_ownership_sees_the_edgectl_edit_within_2_seconds(routing: Path, ctl: Ctl) -> None:
    # The consumers' own watcher, with the process's default poll interval and drop settle.
    settings = Settings.from_env({"EDGE_ROUTING_FILE": str(routing)})
    ownership = Ownership.for_settings(settings, CollectorRegistry())
    watch = asyncio.create_task(ownership.watch(settings.routing_poll_seconds))
    orders = [f"O-{n}" for n in range(200)]

    async def flip(*args: str, until: Callable[[], bool]) -> float:
        started = time.monotonic()
        code, _, err = await _ctl_async(ctl, "consumer", *args)
        assert (code, err) == (0, "")
        while not until():
            assert time.monotonic() - started < 2.0, f"the consumers did not apply {args} within 2 s"
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    try:
        assert {ownership.owner("payment_notified", o) for o in orders} == {"legacy"}
        took = [await flip("payment_notified", "new", "--file", str(routing),
                           until=lambda: {ownership.owner("payment_notified", o) for o in orders} == {"new"})]
        took.append(await flip("purchased", "50", "--file", str(routing),
                               until=lambda: ownership.table.rule("purchased").new_percent == Decimal(50)))
        assert {ownership.owner("purchased", o) for o in orders} == {"new", "legacy"}
        took.append(await flip("--rollback-all", "--file", str(routing),
                               until=lambda: all(ownership.table.rule(e).new_percent == 0 for e in CONSUMER_EVENTS)))
        assert ownership.last_error is None
        print(f"consumers applied edgectl edits after {', '.join(f'{t:.2f}' for t in took)} s")
    finally:
        watch.cancel()


# --- route groups and the audit log (issue 12) ---------------------------------------------------

CHECKOUT = ["calc_price", "coupons", "place_order", "paypal_pay", "paypal_finished", "adyen_pay", "payment_methods", "paid_from_client"]


@pytest.fixture
def grouped(routing: Path) -> Path:
    routing.write_text(routing.read_text() + "groups:\n  checkout:\n    routes: [" + ", ".join(CHECKOUT) + "]\n")
    return routing


def test_set_a_group_moves_every_member_and_keeps_the_rest_of_the_file(grouped: Path, ctl: Ctl) -> None:
    before = grouped.read_text()
    code, out, err = ctl("set", "checkout", "20", "--file", str(grouped), "--no-reload", "--who", "alice")
    assert code == 0, err
    table = parse_routing(grouped.read_text(), new_routes=NEW_ROUTES.keys())
    assert {name: table.routes[name].new_percent for name in CHECKOUT} == {name: 20 for name in CHECKOUT}
    assert table.routes["detail"].new_percent == 0 and table.routes["refund"].new_percent == 0
    assert "place_order: 0 → 20" in out
    # Only the new_percent values changed: comments and layout stay.
    changed = [(a, b) for a, b in zip(before.splitlines(), grouped.read_text().splitlines()) if a != b]
    assert len(changed) == len(CHECKOUT) and all("new_percent: 20" in b for _, b in changed)


def test_set_a_member_of_a_group_is_refused_and_names_the_group(grouped: Path, ctl: Ctl) -> None:
    before = grouped.read_bytes()
    code, out, err = ctl("set", "place_order", "10", "--file", str(grouped), "--no-reload")
    assert code == 1
    assert "route group 'checkout'" in err and "edgectl set checkout 10" in err
    assert grouped.read_bytes() == before
    assert not Path(f"{grouped}.audit.jsonl").exists()


def test_a_member_of_an_allow_split_group_may_be_set_alone(grouped: Path, ctl: Ctl) -> None:
    grouped.write_text(grouped.read_text() + "    allow_split: true\n")
    assert ctl("set", "place_order", "10", "--file", str(grouped), "--no-reload")[0] == 0
    assert parse_routing(grouped.read_text(), new_routes=NEW_ROUTES.keys()).routes["place_order"].new_percent == 10


def test_rollback_of_a_member_takes_the_whole_group_back(grouped: Path, ctl: Ctl) -> None:
    assert ctl("set", "checkout", "50", "--file", str(grouped), "--no-reload")[0] == 0
    code, out, _ = ctl("rollback", "coupons", "--file", str(grouped), "--no-reload")
    assert code == 0 and "rolling back the whole group" in out
    table = parse_routing(grouped.read_text(), new_routes=NEW_ROUTES.keys())
    assert {table.routes[name].new_percent for name in CHECKOUT} == {0}


@pytest.mark.parametrize("args", [("set", "checkout", "20"), ("rollback", "--all"), ("consumer", "purchased", "new")])
def test_dry_run_prints_the_diff_and_writes_nothing(grouped: Path, ctl: Ctl, args: tuple[str, ...]) -> None:
    if args[0] == "rollback":
        assert ctl("set", "checkout", "20", "--file", str(grouped), "--no-reload")[0] == 0
    before = grouped.read_bytes()
    audit = Path(f"{grouped}.audit.jsonl")
    logged = audit.read_bytes() if audit.exists() else b""
    code, out, err = ctl(*args, "--file", str(grouped), "--dry-run")
    assert code == 0, err
    assert "dry run: nothing written" in out and "\n-" in out and "\n+" in out
    assert grouped.read_bytes() == before
    assert (audit.read_bytes() if audit.exists() else b"") == logged


def test_history_shows_who_when_from_and_to(grouped: Path, ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "bob")
    assert ctl("set", "checkout", "10", "--file", str(grouped), "--no-reload")[0] == 0
    assert ctl("set", "checkout", "20", "--file", str(grouped), "--no-reload", "--who", "carol")[0] == 0
    assert ctl("consumer", "purchased", "new", "--file", str(grouped))[0] == 0
    code, out, _ = ctl("history", "--file", str(grouped), "--route", "place_order", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["who"], r["from"], r["to"]) for r in records] == [("bob", "0", "10"), ("carol", "10", "20")]
    assert records[1]["command"].startswith("edgectl set checkout 20") and records[1]["file"] == str(grouped.resolve())
    assert records[1]["at"].endswith("Z")
    code, out, _ = ctl("history", "--file", str(grouped), "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 1 and "purchased: legacy → new" in out


async def _edge_reading(aiohttp_server: Any, path: Path) -> Any:
    """An admin API that says, as the running edge's does, which routing file it reads."""
    async def routes(request: web.Request) -> web.Response:
        return web.json_response({"file": "routing.yaml", "routing_file": str(path.resolve())})

    app = web.Application()
    app.router.add_get("/_edge/routes", routes)
    return await aiohttp_server(app)


async def test_without_file_edgectl_edits_the_file_the_running_edge_reads(  # type: ignore[no-untyped-def]
    aiohttp_server, ctl: Ctl, grouped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await _edge_reading(aiohttp_server, grouped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no routing.yaml here
    code, out, err = await _ctl_async(ctl, "set", "checkout", "10", "--no-reload", "--admin", str(server.make_url("")))
    assert code == 0, err
    assert parse_routing(grouped.read_text(), new_routes=NEW_ROUTES.keys()).routes["adyen_pay"].new_percent == 10
    assert not (elsewhere / "routing.yaml").exists()


async def test_consumer_takes_admin_to_find_the_file_the_running_edge_reads(  # type: ignore[no-untyped-def]
    aiohttp_server, ctl: Ctl, grouped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found trying it as ops: `edgectl consumer … --admin URL` was a usage error while set/rollback took it.
    server = await _edge_reading(aiohttp_server, grouped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = await _ctl_async(ctl, "consumer", "purchased", "new", "--admin", str(server.make_url("")))
    assert code == 0, err
    assert "purchased: new" in grouped.read_text().replace("  ", " ")
    assert not (elsewhere / "routing.yaml").exists()


async def test_without_file_edgectl_refuses_a_local_file_the_running_edge_does_not_read(  # type: ignore[no-untyped-def]
    aiohttp_server, ctl: Ctl, grouped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found trying it as ops: run from the repo (its routing.yaml) against a stack started with
    # --routing elsewhere, `edgectl set checkout 20 --admin …` edited the repo's file, then warned.
    server = await _edge_reading(aiohttp_server, grouped)
    here = tmp_path / "repo"
    here.mkdir()
    (here / "routing.yaml").write_bytes(grouped.read_bytes())
    before = (here / "routing.yaml").read_bytes()
    monkeypatch.chdir(here)
    for argv in (("set", "checkout", "10", "--no-reload"), ("consumer", "purchased", "new"), ("rollback", "--all")):
        code, out, err = await _ctl_async(ctl, *argv, "--admin", str(server.make_url("")))
        assert code == 1 and str(grouped.resolve()) in err and "--file" in err, (argv, err)
    assert (here / "routing.yaml").read_bytes() == before and not (here / "routing.yaml.audit.jsonl").exists()
    assert parse_routing(grouped.read_text(), new_routes=NEW_ROUTES.keys()).routes["adyen_pay"].new_percent == 0
    # Naming the file is the way to edit that one anyway (an edge elsewhere, or none).
    code, _, err = await _ctl_async(ctl, "set", "checkout", "10", "--no-reload", "--file", "routing.yaml",
                                    "--admin", str(server.make_url("")))
    assert code == 0, err
    # The edge's own file, reached through a local path, is the same file: no refusal.
    monkeypatch.chdir(grouped.parent)
    code, _, err = await _ctl_async(ctl, "set", "checkout", "20", "--no-reload", "--admin", str(server.make_url("")))
    assert code == 0, err
