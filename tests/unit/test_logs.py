"""The log set-up (common/logs.py): one JSON object per line, an ISO-8601 UTC timestamp, bound context."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog

from common.logs import IsoStamper, configure_logging


@pytest.fixture
def lines() -> Iterator[io.BytesIO]:
    buf = io.BytesIO()
    configure_logging("info", stream=buf)
    yield buf
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_one_json_line_per_event_with_context_and_timestamp(lines: io.BytesIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1")
    log = structlog.get_logger("t")
    log.info("request", status=200, price="9.99")
    log.debug("hidden")  # below the level
    log.warning("second")
    out = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["request_id"]) for e in out] == [("request", "info", "r-1"), ("second", "warning", "r-1")]
    assert out[0]["status"] == 200 and out[0]["price"] == "9.99"
    for e in out:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["timestamp"]), e["timestamp"]
        stamped = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - stamped).total_seconds()) < 5


def test_iso_stamper_agrees_with_the_clock_and_never_goes_back() -> None:
    stamp = IsoStamper()
    seen = []
    for _ in range(2000):
        seen.append(stamp(None, "info", {})["timestamp"])
    assert seen == sorted(seen)  # same width, so string order is time order, across second boundaries too
    assert abs((datetime.now(UTC) - datetime.fromisoformat(seen[-1].replace("Z", "+00:00"))).total_seconds()) < 5


def test_stdlib_records_are_json_lines_with_the_traceback_in_a_field(lines: io.BytesIO) -> None:
    """aiokafka and aiohttp log through `logging`: their records, exc_info included, are JSON lines too."""
    import logging

    structlog.contextvars.bind_contextvars(request_id="r-2")
    logger = logging.getLogger("aiokafka.conn")
    logger.info("Connected to %s:%d", "127.0.0.1", 9092)
    try:
        raise ConnectionError("broker gone")
    except ConnectionError:
        logger.error("Unable to update metadata", exc_info=True)
    logging.getLogger("aiohttp.access").debug("hidden")  # below the level
    raw = lines.getvalue().splitlines()
    out = [json.loads(line) for line in raw]
    assert [(e["logger"], e["level"], e["event"]) for e in out[:2]] == [
        ("aiokafka.conn", "info", "Connected to 127.0.0.1:9092"), ("aiokafka.conn", "error", "Unable to update metadata")]
    assert out[0]["request_id"] == "r-2"
    assert "Traceback" in out[1]["exception"] and "ConnectionError: broker gone" in out[1]["exception"]
    assert len(out) == len(raw) == 2
    for e in out:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["timestamp"])
