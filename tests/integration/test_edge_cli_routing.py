"""`shopping-edge` refuses a bad routing.yaml at start, in one process and in the gunicorn master,
with the same bounded loader as the running edge: quickly, with one clear line, never reading forever."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.bad_routing import alias_bomb, routing_text
from tests.support.net import free_port

BIN = Path(sys.executable).parent
ALL_ROUTES = Path(__file__).resolve().parents[1] / "fixtures" / "routing-all-legacy.yaml"


def _start(routing: Path, tmp_path: Path, workers: int) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"}
    env.pop("EDGE_ROUTING_FILE", None)
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "shopping-edge"), "--routing", str(routing), "--workers", str(workers),
         "--host", "127.0.0.1", "--port", "0", "--admin-port", "1"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("workers", [1, 2])
def test_a_symlink_to_dev_zero_is_refused_at_start(tmp_path: Path, workers: int) -> None:
    routing = tmp_path / "routing.yaml"
    routing.symlink_to("/dev/zero")
    done, took = _start(routing, tmp_path, workers)
    assert done.returncode != 0
    assert "shopping-edge: cannot load routing:" in done.stderr and "is a character device" in done.stderr
    assert took < 20


def test_the_gunicorn_master_refuses_an_alias_bomb_at_once(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(routing_text("http://127.0.0.1:8090", "0", alias_bomb(9)))
    done, took = _start(routing, tmp_path, 2)
    assert done.returncode != 0 and "YAML anchors (&a0) are not allowed" in done.stderr
    assert "Traceback" not in done.stderr and took < 20



def _healthy(admin: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{admin}/healthz", timeout=0.5) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_a_running_edge_keeps_answering_and_obeys_sigterm_after_routing_yaml_becomes_dev_zero(tmp_path: Path) -> None:
    """The probe's case: the edge read /dev/zero on its event loop, grew to 6.9 GB and ignored SIGTERM."""
    routing = tmp_path / "routing.yaml"
    shutil.copyfile(ALL_ROUTES, routing)
    admin = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", "EDGE_ROUTING_POLL_SECONDS": "0.05"}
    env.pop("EDGE_ROUTING_FILE", None)
    with (tmp_path / "edge.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1", "--port", str(free_port()),
             "--admin-port", admin.rsplit(":", 1)[1], "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while not _healthy(admin):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "edge.log").read_text()
                time.sleep(0.05)
            routing.unlink()
            routing.symlink_to("/dev/zero")
            time.sleep(1.0)  # twenty polls of /dev/zero
            started = time.monotonic()
            assert _healthy(admin) and time.monotonic() - started < 0.5
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) is not None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "is a character device" in (tmp_path / "edge.log").read_text()
