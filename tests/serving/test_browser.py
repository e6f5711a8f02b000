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
DEADLINE = 90.0


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


class _Page:
    """Evaluates JavaScript in a page over its DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket, self.message_id = socket, 0

    async def evaluate(self, expression: str) -> object:
        self.message_id += 1
        await self.socket.send_json({"id": self.message_id, "method": "Runtime.evaluate",
                                     "params": {"expression": expression, "returnByValue": True}})
        reply = await self.socket.receive_json()
        while reply.get("id") != self.message_id:  # skip events
            reply = await self.socket.receive_json()
        return reply["result"]["result"].get("value")


async def _play(devtools_port: int, page_url: str, seconds: float, change_prompt: bool) -> dict:
    """Poll the page's ``omniforcingPlayer.state()`` until it has played ``seconds`` (and, with
    ``change_prompt``, shows a prompt switch: after 1 s of playback the prompt box gets a new prompt and
    **Change prompt** is pressed)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t.get("url", "").startswith(page_url))
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            page, deadline, state, pending = _Page(socket), time.monotonic() + DEADLINE, {}, change_prompt
            while time.monotonic() < deadline:
                state = json.loads(await page.evaluate(
                    "window.omniforcingPlayer ? JSON.stringify(omniforcingPlayer.state()) : '{}'"))
                if state.get("mediaError") or state.get("lastError"):
                    return state
                if pending and state.get("currentTime", 0) >= 1.0:
                    await page.evaluate("document.getElementById('prompt').value = 'a white triangle bounces'; "
                                        "document.getElementById('apply').click()")
                    pending = False
                switched = not change_prompt or state.get("switches", "-") != "-"
                if state.get("currentTime", 0) >= seconds and switched:
                    return state
                await asyncio.sleep(0.25)
            return state


def _run_page(port: int, profile: Path, query: str, seconds: float, change_prompt: bool) -> dict:
    page = f"http://127.0.0.1:{port}/"
    browser = _launch(page + query, profile)
    try:
        return asyncio.run(_play(_devtools_port(profile, browser), page, seconds, change_prompt))
    finally:
        browser.terminate()
        browser.wait(10)


def test_headless_chromium_plays_the_live_stream(serve, tmp_path):
    live = serve()
    state = _run_page(live.port, tmp_path / "profile", "?autostart=1&seconds=10", PLAY_SECONDS, change_prompt=True)
    assert state.get("mediaError") is None and state.get("lastError") is None, state
    assert state["codecs"] == 'video/mp4; codecs="avc1.64000a, mp4a.40.2"'
    assert state["currentTime"] >= PLAY_SECONDS, f"played only {state.get('currentTime')} s: {state}"
    assert state["audioDecodedBytes"] > 0 and state["videoDecodedBytes"] > 0, state
    assert re.fullmatch(r"\d+\.\d ms", state["latency"]) and re.fullmatch(r"\d+\.\d{3}", state["realTimeFactor"]), state
    assert re.fullmatch(r"\d+", state["switches"]), state  # the block the new prompt took effect at
    assert live.metrics()["streams_started"] == 1


@pytest.mark.slow
def test_the_page_drops_played_media_from_its_source_buffer(serve, tmp_path):
    live = serve()
    state = _run_page(live.port, tmp_path / "profile", "?autostart=1", 25.0, change_prompt=False)
    assert state.get("mediaError") is None and state.get("lastError") is None, state
    assert state["currentTime"] >= 25.0, state
    start, end = state["buffered"][0]
    assert start >= 5.0 and end - start <= 25.0, f"played media stays buffered: {state['buffered']}"
