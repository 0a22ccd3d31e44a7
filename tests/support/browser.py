"""A real headless Chromium for the e2e tests, driven over the DevTools protocol (no driver, no
extra package: aiohttp's websocket client). ``scripts/ensure-chromium.sh`` installs it.

Each browser gets its own profile directory, so tests and helpers running side by side never
share one, and is killed (its own process only) when the context ends."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

WIDTH, HEIGHT = 1280, 1000  # the first screen a person sees on a laptop


def chromium() -> str:
    """Chromium's path; called inside each test (not a fixture) so a missing one is a FAILED test."""
    # CHROMIUM=path picks another build (a Chrome, say); it must exist like the one on PATH.
    wanted = os.environ.get("CHROMIUM")
    path = shutil.which(wanted) if wanted else (shutil.which("chromium") or shutil.which("chromium-browser"))
    if path is None:
        pytest.fail(
            "chromium is not on PATH, so the shadow diff page cannot be checked in a real browser. "
            "Install it with `bash scripts/ensure-chromium.sh` (Debian package `chromium`); "
            "`make test` does this first.",
            pytrace=False,
        )
    return path


class Tab:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def send(self, method: str, timeout: float = 15, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._ws.receive_json()
                if msg.get("id") == call_id:
                    if "error" in msg:
                        raise AssertionError(f"{method}: {msg['error']}")
                    result: dict[str, Any] = msg.get("result", {})
                    return result
                self._events.append(msg)

    async def _event(self, method: str, timeout: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for i, event in enumerate(self._events):
                    if event.get("method") == method:
                        return self._events.pop(i)
                self._events.append(await self._ws.receive_json())

    async def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self._event("Page.loadEventFired")

    async def click(self, selector: str) -> None:
        """Click the first element matching ``selector`` as a person would, and wait for the page it opens."""
        self._events.clear()
        found = await self.eval(f"(() => {{ const a = document.querySelector({selector!r}); if (!a) return false; a.click(); return true; }})()")
        assert found, f"nothing matches {selector} on {await self.eval('location.href')}"
        await self._event("Page.loadEventFired")

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """The first screen (the viewport), as PNG."""
        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@asynccontextmanager
async def headless_tab(profile: Path) -> AsyncIterator[Tab]:
    """One Chromium (headless, its own profile) and a tab of ``WIDTH`` x ``HEIGHT``."""
    binary = chromium()
    profile.mkdir(parents=True, exist_ok=True)
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)
    # --no-sandbox: the sandbox refuses to start as root (CI containers); the pages are the edge's own.
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"chromium exited with {proc.returncode} before it listened"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port within 30 s"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split("\n")[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t.get("type") == "page"]
            assert pages, "chromium has no page to drive"
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
                tab = Tab(ws)
                await tab.send("Page.enable")
                await tab.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                               deviceScaleFactor=1, mobile=False)
                yield tab
    finally:
        # Its own process group (start_new_session): the renderer and GPU children go with it.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
