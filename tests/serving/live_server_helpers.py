"""A live server on a free 127.0.0.1 port, in a background event-loop thread, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omniforcing.serving.app import LiveServer, start_server

STUDENT = Path(__file__).resolve().parents[2] / "checkpoints" / "reference" / "student"
TIMEOUT = 30.0
"""Upper bound of every network wait in these tests (seconds)."""


class RunningServer:
    """A :class:`LiveServer` served from its own event loop on a daemon thread."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner, self.port = self.call(start_server(server, "127.0.0.1", 0))

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT)

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        """One whole request: status, headers, body."""
        connection = self.connection()
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def open_stream(self, **body: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Start a stream and return once its headers arrived (the body is left to the caller)."""
        connection = self.connection()
        connection.request("POST", "/streams", body=json.dumps(body), headers={"Content-Type": "application/json"})
        return connection, connection.getresponse()

    def metrics(self) -> dict[str, Any]:
        status, _, body = self.request("GET", "/metrics.json")
        assert status == 200
        return json.loads(body)

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll ``/metrics.json`` until ``condition`` holds (bounded by :data:`TIMEOUT`)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            metrics = self.metrics()
            if condition(metrics):
                return metrics
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; metrics: {metrics}")
