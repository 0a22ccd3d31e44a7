"""structlog set-up: one JSON object per line, request id bound per request by the edge.

The libraries' own records (aiokafka, aiohttp, asyncio, warnings, an uncaught exception) go through
the stdlib `logging` root handler, rendered by structlog's ProcessorFormatter into the same JSON
lines on the same stream: `level`, `logger`, `timestamp`, `event` (the record's message) and, for
a record with exc_info, the traceback as one `exception` string field, never as lines of its own.

Lines go to a buffered stdout and are flushed at least every `FLUSH_SECONDS` (and at exit)
rather than one write(2) per line: at thousands of requests a second the per-line flush was
the access log's main cost (≈ 40 µs of ≈ 55 µs per request in bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

FLUSH_SECONDS = 0.5
STDOUT_BUFFER = 256 * 1024


class LineLogger:
    """structlog logger writing rendered (bytes) lines to a buffered binary stream, no flush."""

    def __init__(self, stream: BinaryIO) -> None:
        self._write = stream.write

    def msg(self, message: bytes) -> None:
        self._write(message + b"\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure_logging(level: str = "info", stream: BinaryIO | None = None) -> None:
    """Called once by each process's entry point, never at import time."""
    numeric = logging.getLevelName(level.upper())
    if stream is None:
        # stdout with a 256 KiB buffer instead of 8 KiB: one write(2) per ~1,000 access lines, not per ~40.
        sys.stdout.flush()
        raw = io.FileIO(sys.stdout.fileno(), "wb", closefd=False)
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=STDOUT_BUFFER), encoding="utf-8")
    out = stream if stream is not None else sys.stdout.buffer
    _route_stdlib_logging(out, numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            IsoStamper(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *args: LineLogger(out),
        cache_logger_on_first_use=True,
    )


class StdlibLineHandler(logging.Handler):
    """The root handler: each stdlib record as one JSON line (bytes) on the processes' log stream."""

    def __init__(self, stream: BinaryIO, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._write = stream.write
        self.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                IsoStamper(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_dumps_text),
            ],
        ))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        # One write per line: the buffered stream's lock keeps a line whole across threads.
        self._write(line.encode("utf-8", "backslashreplace") + b"\n")


def _route_stdlib_logging(stream: BinaryIO, level: int) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(StdlibLineHandler(stream))
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn → the py.warnings logger, not a bare stderr line
    crashes = logging.getLogger("uncaught")

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        crashes.critical("uncaught_exception", exc_info=(kind, exc, tb))
        stream.flush()

    def unraisablehook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        crashes.error("unraisable_exception: %s", unraisable.err_msg or "exception ignored",
                      exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None)

    sys.excepthook = excepthook
    sys.unraisablehook = unraisablehook


class IsoStamper:
    """structlog processor: `timestamp` as ISO 8601 UTC with microseconds, like TimeStamper(fmt="iso",
    utc=True), but formatting the date and time once per second (TimeStamper was ≈ 1.5 % of a
    passthrough's py-spy samples)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _dumps(event: Any, **_: Any) -> bytes:
    # default=str: a stray Decimal or exception in an event must not lose the line.
    return orjson.dumps(event, default=str)


def _dumps_text(event: Any, **_: Any) -> str:
    return _dumps(event).decode("utf-8")


async def flush_stdout_periodically(app: Any) -> AsyncIterator[None]:
    """aiohttp cleanup_ctx: keeps buffered log lines at most FLUSH_SECONDS old."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            sys.stdout.flush()

    task = asyncio.create_task(loop(), name="log-flush")
    yield
    task.cancel()
    sys.stdout.flush()
