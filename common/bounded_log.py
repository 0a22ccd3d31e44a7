"""A component's output, written to its log file with a size bound (rotated like logrotate's `size`).

`make run` used to hand each process an open file as stdout: the edge's access lines grew
var/log/edge.log by 23 MB in 15 minutes of demo traffic, without end. Now the process writes
to a pipe, and a thread copies whole lines into `<name>.log`, which is renamed to `.log.1`
(`.1` to `.2`, …, the oldest dropped) once it would pass `max_bytes`: at most
`max_bytes * (backups + 1)` on disk per component, the newest lines always in `<name>.log`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO


class BoundedLog:
    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups not negative")
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = open(path, "ab")
        self._size = self._file.tell()
        self._thread: threading.Thread | None = None

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")
        self._size = 0

    def write(self, line: bytes) -> None:
        # A line longer than the bound is cut: it still must not grow the file past it.
        line = line[: self.max_bytes]
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()  # the log is read while the stack runs (tail -f, the tests)
        self._size += len(line)

    def drain(self, stream: BinaryIO) -> threading.Thread:
        """Copy `stream` (a child's stdout pipe) line by line until it closes, in a daemon thread."""

        def run() -> None:
            try:
                for line in iter(stream.readline, b""):
                    self.write(line)
            finally:
                stream.close()
                self._file.close()

        self._thread = threading.Thread(target=run, name=f"log:{self.path.name}", daemon=True)
        self._thread.start()
        return self._thread
