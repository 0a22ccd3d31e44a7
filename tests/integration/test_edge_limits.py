"""What the edge refuses before routing, on a real socket: headers over the cap (431), a body
trickled past its time limit (408), malformed HTTP (400), each in the legacy envelope, counted,
logged as one JSON line, and never forwarded to old shopping.

The edge runs as it does in production: through proxy/server.py's EdgeRunner in-process, and as
the real `shopping-edge` process, in one process and with gunicorn workers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.app import METRICS, create_app
from proxy.server import EdgeRunner
from tests.support.edge import calc_price_route, edge_settings, routing_doc, write_routing
from tests.support.edge_process import running_edge
from tests.support.net import free_port
from tests.support.upstream import CALLS, create_echo_app

CAP = 32 * 1024


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_echo_app())


def legacy_url(upstream: TestServer) -> str:
    return str(upstream.make_url("")).rstrip("/")


@pytest.fixture
async def edge(upstream: TestServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[int, CollectorRegistry]]]]:
    """Starts an edge (EdgeRunner on a TCP port) with settings overrides; gives its port and registry."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> tuple[int, CollectorRegistry]:
        routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url(upstream), calc_price=calc_price_route(0)))
        settings = edge_settings(routing, legacy_url(upstream), **overrides)
        registry = CollectorRegistry()
        app = create_app(settings, registry=registry)
        runner = EdgeRunner(app, settings=settings, metrics=app[METRICS], access_log=None)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return port, registry

    yield start
    for runner in runners:
        await runner.cleanup()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, await reader.readexactly(int(headers.get("content-length", "0"))))


async def exchange(port: int, data: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


def request_with(headers: list[tuple[str, str]], path: str = "/shopping/cart") -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"GET {path} HTTP/1.1\r\nHost: edge\r\n{lines}\r\n".encode()


def bad(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("edge_bad_requests_total", {"reason": reason}) or 0.0


async def test_one_header_longer_than_the_cap_is_431_in_the_envelope(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    answer = await exchange(port, request_with([("X-Big", "a" * (CAP + 1))]))
    assert answer.status == 431
    assert answer.json() == {"code": 43101, "msg": "headers_too_large", "data": {"limit_bytes": CAP, "max_headers": 128}}
    assert upstream.app[CALLS] == []
    assert bad(registry, "headers_too_large") == 1


async def test_many_medium_headers_over_the_cap_together_are_431(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    answer = await exchange(port, request_with([(f"X-Medium-{i}", "m" * 1000) for i in range(40)]))
    assert answer.status == 431 and answer.json()["code"] == 43101
    assert upstream.app[CALLS] == []
    assert bad(registry, "headers_too_large") == 1


async def test_more_header_lines_than_the_parser_takes_is_431(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    answer = await exchange(port, request_with([(f"X-{i}", "1") for i in range(200)]))
    assert answer.status == 431 and answer.json()["msg"] == "headers_too_large"
    assert upstream.app[CALLS] == []


async def test_headers_under_the_cap_are_forwarded(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    answer = await exchange(port, request_with([(f"X-Medium-{i}", "m" * 1000) for i in range(28)]))
    assert answer.status == 200
    assert upstream.app[CALLS] == [("GET", "/shopping/cart")]
    assert bad(registry, "headers_too_large") == 0


async def test_the_header_cap_is_a_setting(edge, upstream: TestServer) -> None:
    port, _ = await edge(max_header_bytes=64 * 1024)
    answer = await exchange(port, request_with([("X-Big", "a" * (CAP + 1))]))
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("path", ["/shopping/cart", "/order2/calc_price"])
async def test_a_body_trickled_past_the_read_timeout_is_408_on_both_sides(edge, upstream: TestServer, path: str) -> None:
    port, registry = await edge(body_read_timeout_seconds=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{".encode())
    answer_task = asyncio.ensure_future(read_answer(reader))
    try:
        while not answer_task.done() and loop.time() - started < 5:
            writer.write(b" ")  # one byte every 200 ms: never idle, never done
            await writer.drain()
            await asyncio.wait([answer_task], timeout=0.2)
        answer = await asyncio.wait_for(answer_task, 1)
    finally:
        writer.close()
    assert 1.0 <= loop.time() - started < 2.0
    assert answer.status == 408
    assert answer.json() == {"code": 40801, "msg": "request_timeout", "data": {"limit_seconds": 1.0}}
    assert answer.headers["connection"] == "close"
    assert upstream.app[CALLS] == []
    assert bad(registry, "body_timeout") == 1


async def test_a_body_sent_in_time_is_forwarded(edge, upstream: TestServer) -> None:
    port, registry = await edge(body_read_timeout_seconds=1.0)
    answer = await exchange(port, b"POST /shopping/cart HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\nhello")
    assert answer.status == 200
    assert bad(registry, "body_timeout") == 0


async def test_a_broken_chunked_body_is_400_not_500(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    answer = await exchange(port, b"POST /shopping/cart HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    assert answer.status == 400 and answer.json()["code"] == 40001
    assert upstream.app[CALLS] == []


GARBAGE = [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "bad_method"),  # TLS on the HTTP port
    (b"HELLO THERE\r\n\r\n", "bad_method"),
    (b"GET /shopping/cart HTTP/9.9\r\nHost: edge\r\n\r\n", "bad_request_line"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: edge\r\n\r\n", "request_line_too_long"),
    (b"GET /shopping/cart HTTP/1.1\r\nHost: edge\r\nBad Header: x\r\n\r\n", "bad_request"),
]


async def test_malformed_requests_get_the_envelope_and_count_by_reason(edge, upstream: TestServer) -> None:
    port, registry = await edge()
    for data, reason in GARBAGE:
        answer = await exchange(port, data)
        assert answer.status == 400, (data[:40], answer.body)
        assert answer.json() == {"code": 40001, "msg": "bad_request", "data": {"reason": reason}}
    assert upstream.app[CALLS] == []
    assert bad(registry, "bad_method") == 2 and bad(registry, "request_line_too_long") == 1


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric(text: str, name: str, reason: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def send_garbage_and_wait_for_lines(port: int, stdout: Path, count: int) -> list[dict[str, Any]]:
    for data, _ in GARBAGE[:count]:
        answer = await exchange(port, data)
        assert answer.status == 400
    for _ in range(50):  # the log is flushed every 0.5 s
        lines = [line for line in log_lines(stdout) if line.get("event") == "bad_http_request"]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.1)
    raise AssertionError(stdout.read_text())


async def test_the_real_edge_logs_one_json_line_per_malformed_request_and_no_traceback(upstream: TestServer, tmp_path: Path) -> None:
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url(upstream)))
    env = {"EDGE_LEGACY_URL": legacy_url(upstream), "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"}
    with running_edge(routing, tmp_path, env) as edge:
        lines = await send_garbage_and_wait_for_lines(edge.port, edge.stdout, 3)
        assert [line["reason"] for line in lines] == ["bad_method", "bad_method", "bad_request_line"]
        assert all(line["peer"] == "127.0.0.1" and line["level"] == "warning" for line in lines)
        assert all("exception" not in line for line in lines)
        metrics = edge.metrics()
        assert metric(metrics, "edge_bad_requests_total", "bad_method") == 2
        assert metric(metrics, "edge_bad_requests_total", "bad_request_line") == 1
    assert "Traceback" not in edge.stdout.read_text() + edge.stderr.read_text()
    assert "Error handling request" not in edge.stderr.read_text()
    assert edge.proc.returncode == 0  # SIGTERM still stops it cleanly


async def test_gunicorn_workers_get_the_same_limits_and_answers(upstream: TestServer, tmp_path: Path) -> None:
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url(upstream)))
    env = {"EDGE_LEGACY_URL": legacy_url(upstream), "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
           "EDGE_BODY_READ_TIMEOUT_SECONDS": "1"}
    with running_edge(routing, tmp_path, env, "--workers", "2") as edge:
        answer = await exchange(edge.port, request_with([("X-Big", "a" * (CAP + 1))]))
        assert answer.status == 431 and answer.json()["code"] == 43101
        many = await exchange(edge.port, request_with([(f"X-Medium-{i}", "m" * 1000) for i in range(40)]))
        assert many.status == 431
        await send_garbage_and_wait_for_lines(edge.port, edge.stdout, 1)
        assert (await exchange(edge.port, request_with([]))).status == 200
    assert "Traceback" not in edge.stdout.read_text() + edge.stderr.read_text()
    assert upstream.app[CALLS] == [("GET", "/shopping/cart")]
