"""`edgectl status --prometheus` against a real Prometheus scraping the edge's real metrics every second.

The target is an EdgeMetrics registry served by prometheus_client (what the edge's /metrics exports),
fed a fixed pattern of requests four times a second, so each rate, share and verdict has a known
value; Prometheus's extrapolation and a scrape landing mid-pattern make them close, not exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from proxy.edgectl import main
from proxy.edgectl_admin import ReportError
from proxy.edgectl_prometheus import PrometheusClient, PrometheusUnreachable, read_status
from proxy.metrics import EdgeMetrics
from tests.support.net import free_port

TICK = 0.25  # seconds between two rounds of the pattern
WINDOW = 5.0  # five scrapes


def _pattern(metrics: EdgeMetrics) -> None:
    """One round: calc_price 4 new (one 404, one 409 price_changed), 4 legacy (one 502), 10% shadow mismatch."""
    for status in (200, 200, 409, 404):
        metrics.observe("calc_price", "new", "POST", status, 0.3)
    metrics.price_changed.labels("calc_price", "new").inc()
    for status in (200, 200, 200, 502):
        metrics.observe("calc_price", "legacy", "POST", status, 0.02)
    for outcome, n in (("match", 8), ("rounding", 1), ("mismatch", 1), ("error", 2)):
        metrics.shadow_requests.labels("calc_price", outcome).inc(n)
    for backend in ("new", "new", "legacy", "legacy"):
        metrics.observe("coupons", backend, "POST", 200, 0.02)


def _prometheus(binary: str, tmp: Any, target_port: int, port: int) -> subprocess.Popen[bytes]:
    """Prometheus scraping the one target every second, its data (and its log) in `tmp`."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{"job_name": "edge", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=(tmp / "prometheus.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Live:
    prometheus: str
    started: float


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not on PATH: `bash scripts/ensure-promtool.sh` installs it (make test does)", pytrace=False)
    tmp = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry)
    metrics.set_percentages([("calc_price", 25.0), ("coupons", 50.0), ("place_order", 0.0)])
    target_port = free_port()
    server, _ = start_http_server(target_port, addr="127.0.0.1", registry=registry)
    port = free_port()
    proc = _prometheus(binary, tmp, target_port, port)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(TICK):
            _pattern(metrics)

    feeder = threading.Thread(target=feed, name="traffic", daemon=True)
    feeder.start()
    try:
        yield Live(f"http://127.0.0.1:{port}", time.monotonic())
    finally:
        stop.set()
        feeder.join(timeout=5)
        _stop(proc)
        server.shutdown()


def _whole_window(client: PrometheusClient) -> bool:
    """Prometheus scraped the target every second for longer than a window: a rate over it is of the
    whole window, not extrapolated from its last scrapes (a slow start halved a rate once)."""
    span = WINDOW + 2
    counts = client.vector(f'count_over_time(up{{job="edge"}}[{span:g}s])', client.now())
    return bool(counts) and counts[0][1] >= span - 1


def _filled(live: Live) -> dict[str, Any]:
    """The live answer once Prometheus holds a whole window of the pattern (polled: the box is loaded)."""
    client = PrometheusClient(live.prometheus)
    deadline = time.monotonic() + 90
    last: Any = None
    while time.monotonic() < deadline:
        if time.monotonic() - live.started > WINDOW:
            try:
                if not _whole_window(client):
                    last = "not a whole window scraped yet"
                    time.sleep(0.5)
                    continue
                _, _, last = read_status(client, WINDOW)
            except PrometheusUnreachable:
                last = "unreachable"  # still starting
            else:
                routes = last["routes"]
                if routes.get("calc_price", {}).get("new", {}).get("req_per_s", 0) > 0 and "coupons" in routes:
                    return dict(last)
        time.sleep(0.5)
    raise AssertionError(f"no window of traffic in Prometheus within 90 s (last: {last!r})")


def _near(value: float | None, expected: float, within: float) -> bool:
    return value is not None and abs(value - expected) <= within


def test_rates_shares_and_verdicts_come_from_prometheus(live: Live) -> None:
    routes = _filled(live)["routes"]
    price = routes["calc_price"]
    new, legacy = price["new"], price["legacy"]
    # 4 requests a side every 0.25 s; a loaded box ticks slower, never faster.
    assert 8 <= new["req_per_s"] <= 20 and 8 <= legacy["req_per_s"] <= 20, (new, legacy)
    assert _near(price["observed_new_percent"], 50.0, 6), price
    assert price["set_new_percent"] == 25.0  # the gauge, not the traffic
    assert _near(new["4xx_rate"], 0.25, 0.06) and _near(new["price_changed_rate"], 0.25, 0.06), new  # the 409s apart
    assert _near(legacy["5xx_rate"], 0.25, 0.06) and new["5xx_rate"] == 0.0, (new, legacy)
    assert 0.25 < new["p50_seconds"] <= 0.5 and 0.01 < legacy["p50_seconds"] <= 0.025, (new, legacy)
    assert _near(price["shadow"]["mismatch_rate"], 0.1, 0.03), price["shadow"]  # errors are no comparison
    assert price["verdict"] == "worse than legacy"  # the mismatches, not the legacy 5xx
    assert routes["coupons"]["verdict"] == "ok" and routes["coupons"]["set_new_percent"] == 50.0
    assert routes["place_order"]["verdict"] == "no traffic" and routes["place_order"]["new"]["req_per_s"] == 0.0


def test_the_cli_renders_the_shared_table_and_json(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(live)
    assert main(["status", "--prometheus", live.prometheus, "--window", f"{WINDOW:g}s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"source        prometheus {live.prometheus}")
    start = next(i for i, line in enumerate(lines) if line.startswith("live, last 5.0 s"))
    rows = [line.split() for line in lines[start:]]
    price = next(i for i, r in enumerate(rows) if r[:2] == ["calc_price", "legacy"])
    assert rows[price][-2].startswith("25/")  # set/observed new%
    assert rows[price + 1][0] == "new" and rows[price + 1][-3:] == ["worse", "than", "legacy"]
    since = lines.index("since each edge started, summed over the edges scraped:")
    coupons = next(line.split() for line in lines[since:start] if line.startswith("coupons "))
    assert coupons[1:4] == ["50", "-", "-"] and float(coupons[4]) > 0  # no shadow% or writes in Prometheus

    assert main(["status", "--prometheus", live.prometheus, "--window", "5", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == f"prometheus {live.prometheus}" and shown["hash"] is None
    assert shown["routes"]["calc_price"] == {"new_percent": 25.0}
    assert shown["since_start"]["calc_price"]["requests"]["new"] > 0
    assert shown["live"]["routes"]["calc_price"]["verdict"] == "worse than legacy"


def test_a_window_shorter_than_two_scrapes_is_refused(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(live)
    assert main(["status", "--prometheus", live.prometheus, "--window", "1.5s"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two scrapes" in err and "--window 2 or more" in err, err


def test_prometheus_errors_are_one_line(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    client = PrometheusClient(live.prometheus)
    with pytest.raises(ReportError, match="refused 'sum\\(': bad_data"):
        client.vector("sum(", client.now())
    # Not Prometheus at all (its UI path answers HTML / 404), then nothing listening.
    assert main(["status", "--prometheus", f"{live.prometheus}/graph"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not Prometheus's API" in err, err
    assert main(["status", "--prometheus", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is unreachable" in err and "Traceback" not in err, err


def test_since_start_counts_only_what_the_edges_export_now_after_prometheus_restarted(tmp_path: Any) -> None:
    """Found in the demo trial: `make observe` again (Prometheus restarted on its data) with a restarted edge,
    and the since-start table still showed the previous run's 5xx, series the new edge no longer exports."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not on PATH: `bash scripts/ensure-promtool.sh` installs it (make test does)", pytrace=False)
    target_port, port = free_port(), free_port()
    client = PrometheusClient(f"http://127.0.0.1:{port}")

    def since_start_until(check: Any) -> Any:
        deadline, last = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                _, last, _ = read_status(client, WINDOW)
            except PrometheusUnreachable:
                last = None
            if last is not None and check(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"not within 60 s: {last!r}")

    before = CollectorRegistry()
    EdgeMetrics(before).observe("adyen_pay", "new", "POST", 502, 0.1)
    server, _ = start_http_server(target_port, addr="127.0.0.1", registry=before)
    proc = _prometheus(binary, tmp_path, target_port, port)
    try:
        since_start_until(lambda s: "adyen_pay" in s.routes and s.routes["adyen_pay"].server_errors == 1)
    finally:
        _stop(proc)
        server.shutdown()
        server.server_close()
    after = CollectorRegistry()  # the restarted edge: one 2xx so far, no 5xx series at all
    EdgeMetrics(after).observe("adyen_pay", "new", "POST", 200, 0.1)
    server, _ = start_http_server(target_port, addr="127.0.0.1", registry=after)
    restarted = time.time()
    proc = _prometheus(binary, tmp_path, target_port, port)

    def scraped_since_restart(_: Any) -> bool:  # before its first scrape, `up` too is the last run's sample
        return any(value > restarted for _, value in client.vector("timestamp(up)", time.time()))

    try:
        summary = since_start_until(scraped_since_restart)
        assert summary.routes["adyen_pay"].server_errors == 0
        assert summary.routes["adyen_pay"].requests["new"] == 1
    finally:
        _stop(proc)
        server.shutdown()
        server.server_close()
