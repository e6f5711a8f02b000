"""A real browser plays the live page: headless Chromium (Debian's ``chromium``) driven over the DevTools
protocol on 127.0.0.1; the check reads the page's own JavaScript state (``currentTime``, media errors)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package "
                                "`chromium`: apt-get install -y chromium); the browser check needs it")

PLAY_SECONDS = 3.0
DEADLINE = 60.0


def _launch(url: str, profile: Path) -> subprocess.Popen:
    flags = ["--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root (containers, CI)
    return subprocess.Popen([CHROMIUM, *flags, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _devtools_port(profile: Path, browser: subprocess.Popen) -> int:
    marker = profile / "DevToolsActivePort"  # Chromium writes the chosen port here
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        assert browser.poll() is None, f"chromium exited with {browser.returncode}"
        time.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


async def _play(devtools_port: int, page_url: str) -> dict:
    """Poll the page's ``omniforcingPlayer.state()`` until it has played :data:`PLAY_SECONDS`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t.get("url", "").startswith(page_url))
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            deadline, state, message_id = time.monotonic() + DEADLINE, {}, 0
            while time.monotonic() < deadline:
                message_id += 1
                await socket.send_json({"id": message_id, "method": "Runtime.evaluate", "params": {
                    "expression": "window.omniforcingPlayer ? JSON.stringify(omniforcingPlayer.state()) : '{}'",
                    "returnByValue": True}})
                reply = await socket.receive_json()
                while reply.get("id") != message_id:
                    reply = await socket.receive_json()
                state = json.loads(reply["result"]["result"]["value"])
                if state.get("mediaError") or state.get("lastError") or state.get("currentTime", 0) >= PLAY_SECONDS:
                    return state
                await asyncio.sleep(0.25)
            return state


def test_headless_chromium_plays_the_live_stream(serve, tmp_path):
    live = serve()
    page = f"http://127.0.0.1:{live.port}/"
    browser = _launch(page + "?autostart=1&seconds=6", tmp_path / "profile")
    try:
        state = asyncio.run(_play(_devtools_port(tmp_path / "profile", browser), page))
    finally:
        browser.terminate()
        browser.wait(10)
    assert state.get("mediaError") is None and state.get("lastError") is None, state
    assert state["codecs"] == 'video/mp4; codecs="avc1.64000a, mp4a.40.2"'
    assert state["currentTime"] >= PLAY_SECONDS, f"played only {state.get('currentTime')} s: {state}"
    assert state["audioDecodedBytes"] > 0 and state["videoDecodedBytes"] > 0, state
    assert re.fullmatch(r"\d+\.\d ms", state["latency"]) and re.fullmatch(r"\d+\.\d{3}", state["realTimeFactor"]), state
    assert live.metrics()["streams_started"] == 1
