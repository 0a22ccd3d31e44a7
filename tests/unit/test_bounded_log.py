"""A component's log stays within its bound however much the process writes (scripts/stack.py's logs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.bounded_log import BoundedLog


def test_a_chatty_process_log_is_rotated_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "edge.log"
    log = BoundedLog(path, max_bytes=10_000, backups=2)
    # 5000 access-log-like lines of ~60 bytes: 300 KB written, 30 times the bound.
    code = "import sys\nfor i in range(5000): sys.stdout.write(f'GET /shopping/cart 200 request_id=r{i:06d} ' + 'x' * 20 + '\\n')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    thread = log.drain(proc.stdout)
    assert proc.wait(timeout=30) == 0
    thread.join(timeout=30)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["edge.log", "edge.log.1", "edge.log.2"]
    assert all(f.stat().st_size <= 10_000 for f in files)
    # The newest lines are in edge.log, whole; the rotated ones hold the lines just before.
    newest = path.read_text().splitlines()
    assert newest[-1].startswith("GET /shopping/cart 200 request_id=r004999 ")
    before = (tmp_path / "edge.log.1").read_text().splitlines()
    assert int(before[-1].split("request_id=r")[1][:6]) + 1 == int(newest[0].split("request_id=r")[1][:6])


def test_an_existing_log_is_appended_to_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(b"a" * 90 + b"\n")
    log = BoundedLog(path, max_bytes=100, backups=1)
    log.write(b"b" * 20 + b"\n")  # 91 + 21 > 100: the old content moves to c.log.1 first
    assert (tmp_path / "c.log.1").read_bytes() == b"a" * 90 + b"\n"
    assert path.read_bytes() == b"b" * 20 + b"\n"
