"""The HTTP side of ``omniforcing serve`` (aiohttp): the page, the live fragmented-mp4 streams, prompt
changes, progress reports and metrics. Endpoints are listed in docs/serving.md.

Nothing here computes: handlers only move encoded bytes from a stream's bounded queue to its socket and
flip flags that the generation thread (:class:`~omniforcing.serving.scheduler.BlockScheduler`) reads. Writing
to the socket waits while the client is slow (aiohttp's transport high-water mark), the queue then fills,
and the generation thread skips the stream: back-pressure end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.serving.metrics import ServerCounters, metrics_json, metrics_prometheus, stream_metrics
from omniforcing.serving.scheduler import BlockScheduler
from omniforcing.serving.streams import BlockQueue, LiveStream

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page (``index.html``) and its script (``player.js``)."""

MAX_PROMPT_CHARS = 2000
"""Longer prompts are refused (the text encoder truncates long before; this only bounds request size)."""

SHUTDOWN_SECONDS = 5.0
"""How long stopping the server (Ctrl-C) waits for open responses once every stream has ended (aiohttp's
default is 60 s)."""

PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; style-src 'unsafe-inline'",
                "Cache-Control": "no-store"}


class LiveServer:
    """Live audio-video streams of one shared model over HTTP.

    Args:
        generator: the streaming engine; its model is loaded once and shared read-only by every stream.
        max_streams: concurrent streams; one more is answered ``503``.
        queue_blocks: encoded blocks a stream may hold for its client before the generator waits.
        stall_seconds: a client that takes nothing for this long is dropped and its slot freed.
        send_buffer_bytes: kernel send buffer of each stream's socket, and the high-water mark of its
            transport buffer. Linux grows a send buffer to megabytes on its own (about 4 MiB on loopback,
            measured), which at a small stream's bitrate is minutes of media written before a slow client holds
            the generator back; fixed, it bounds that backlog. It also caps throughput at about
            ``send_buffer_bytes / round-trip time`` (256 KiB at 100 ms: 20 Mbit/s).
    """

    def __init__(self, generator: StreamingGenerator, max_streams: int = 2, queue_blocks: int = 2,
                 stall_seconds: float = 60.0, send_buffer_bytes: int = 256 * 1024) -> None:
        if max_streams < 1:
            raise ValueError(f"--max-streams must be >= 1, got {max_streams}")
        if generator.settings.modality == "audio":
            raise ValueError("this model generates audio only; the live page plays mp4 video with sound")
        self.generator = generator
        self.max_streams = max_streams
        self.queue_blocks = queue_blocks
        self.send_buffer_bytes = send_buffer_bytes
        self.counters = ServerCounters()
        self.streams: dict[str, LiveStream] = {}
        self.scheduler = BlockScheduler(generator, stall_seconds, self._on_release)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._numbers = 0

    def application(self) -> web.Application:
        """The aiohttp application (routes, scheduler start and stop)."""
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/player.js", self._script)
        app.router.add_post("/streams", self._create_stream)
        app.router.add_get("/streams/{id}", self._status)
        app.router.add_post("/streams/{id}/prompt", self._set_prompt)
        app.router.add_post("/streams/{id}/progress", self._progress)
        app.router.add_delete("/streams/{id}", self._stop)
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/metrics.json", self._metrics_json)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._close_streams)
        return app

    # ---------------------------------------------------------------- lifecycle
    async def _start(self, _: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()

    async def _close_streams(self, _: web.Application) -> None:
        """Stop the generation thread and end every stream (``shutdown``), so their responses finish.

        Runs on shutdown (``runner.cleanup()`` shuts down first), before aiohttp waits for open responses: a live
        stream's would otherwise go on until :data:`SHUTDOWN_SECONDS`."""
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.close)
        await asyncio.sleep(0)  # the releases the thread scheduled on this loop close the streams' queues

    def _on_release(self, stream: LiveStream) -> None:
        """From the generation thread: the stream's generator and cache are freed; free its slot."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release, stream)

    def _release(self, stream: LiveStream) -> None:
        self.streams.pop(stream.id, None)
        self.counters.count_end(stream.end_reason or "stopped")
        stream.queue.close()

    # ---------------------------------------------------------------- page
    async def _page(self, _: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def _script(self, _: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "player.js", headers=PAGE_HEADERS)

    # ---------------------------------------------------------------- streams
    async def _create_stream(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        prompt, seed = _prompt(body), _integer(body, "seed", 0, minimum=0)
        seconds = _integer(body, "seconds", None, minimum=1)
        lead = _number(body, "lead_seconds")
        if len(self.streams) >= self.max_streams:
            self.counters.rejected_busy += 1
            return _error(503, f"all {self.max_streams} stream slots are busy; try again when one ends",
                          headers={"Retry-After": "5"})
        self._numbers += 1
        stream = LiveStream(self._numbers, prompt, seed, seconds, lead,
                            BlockQueue(self.queue_blocks, asyncio.get_running_loop()))
        stream.queue.on_take = self.scheduler.wake
        self.streams[stream.id] = stream
        self.counters.started += 1
        self.scheduler.add(stream)
        log.info("stream %d started (%s s, seed %d)", stream.number, seconds or "unbounded", seed)
        try:
            return await self._deliver(request, stream)
        finally:
            stream.end("disconnected")  # no-op when it ended otherwise
            self.scheduler.wake()

    async def _deliver(self, request: web.Request, stream: LiveStream) -> web.StreamResponse:
        """Send the stream's chunks as one chunked ``video/mp4`` body, headers once the init segment exists."""
        chunk = await stream.queue.get()
        while chunk is not None and not chunk.data and not chunk.last:
            chunk = await stream.queue.get()
        if chunk is None or chunk.error or stream.mime_type is None:
            message = chunk.error if chunk is not None and chunk.error else "the stream ended before any media"
            return _error(500, message)
        response = web.StreamResponse(headers={
            "Content-Type": stream.mime_type, "X-Stream-Id": stream.id, "X-Stream-Number": str(stream.number),
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # nginx: do not buffer this response
        self._bound_send_buffers(request)
        await response.prepare(request)
        while chunk is not None:
            if chunk.data:
                await response.write(chunk.data)  # waits while the client is slow
                stream.bytes_sent += len(chunk.data)
            if chunk.last and chunk.error:
                # cut the connection without the final empty chunk: the client sees a broken transfer, not an end
                log.error("stream %d: %s", stream.number, chunk.error)
                if request.transport is not None:
                    request.transport.close()
                return response
            if chunk.last:
                break
            chunk = await stream.queue.get()
        await response.write_eof()
        return response

    def _bound_send_buffers(self, request: web.Request) -> None:
        """Fix the socket's kernel send buffer and the transport's high-water mark at ``send_buffer_bytes``."""
        if request.transport is None:
            return
        request.transport.set_write_buffer_limits(high=self.send_buffer_bytes)
        connection = request.transport.get_extra_info("socket")
        if connection is not None:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)

    def _find(self, request: web.Request) -> LiveStream:
        stream = self.streams.get(request.match_info["id"])
        if stream is None:
            raise _http_error(web.HTTPNotFound, "no such active stream")
        return stream

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(_status(self._find(request)))

    async def _set_prompt(self, request: web.Request) -> web.Response:
        stream = self._find(request)
        stream.prompt = _prompt(await _json_body(request))
        return web.json_response({"prompt": stream.prompt, "from_block": stream.blocks})

    async def _progress(self, request: web.Request) -> web.Response:
        stream = self._find(request)
        played = _number(await _json_body(request), "played_seconds")
        if played is not None:
            stream.played_seconds = played
            self.scheduler.wake()
        return web.json_response(_status(stream))

    async def _stop(self, request: web.Request) -> web.Response:
        self._find(request).end("stopped")
        self.scheduler.wake()
        return web.Response(status=204)

    # ---------------------------------------------------------------- metrics
    def _active(self) -> list[LiveStream]:
        return sorted(self.streams.values(), key=lambda s: s.number)

    async def _metrics_text(self, _: web.Request) -> web.Response:
        text = metrics_prometheus(self._active(), self.counters, self.max_streams)
        return web.Response(text=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                                                 "Cache-Control": "no-store"})

    async def _metrics_json(self, _: web.Request) -> web.Response:
        return web.json_response(metrics_json(self._active(), self.counters, self.max_streams))


def _status(stream: LiveStream) -> dict[str, Any]:
    """What the stream's own client may see: its metrics plus its prompt and prompt switches."""
    return {**stream_metrics(stream), "prompt": stream.prompt, "mime_type": stream.mime_type,
            "prompt_switches": [{"block": index, "prompt": text} for index, text in stream.prompt_switches]}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _http_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _http_error(web.HTTPBadRequest, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _http_error(web.HTTPBadRequest, "the request body must be a JSON object")
    return body


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _http_error(web.HTTPBadRequest, "give a non-empty \"prompt\" string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _http_error(web.HTTPBadRequest, f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    return prompt.strip()


def _integer(body: dict[str, Any], name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _http_error(web.HTTPBadRequest, f"\"{name}\" must be an integer >= {minimum}")
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _http_error(web.HTTPBadRequest, f"\"{name}\" must be a number >= 0")
    return float(value)


async def start_server(server: LiveServer, host: str = "127.0.0.1", port: int = 8000) -> tuple[web.AppRunner, int]:
    """Start ``server`` on ``host:port`` (``port=0``: a free one) in the running event loop.

    Handlers are cancelled when their client disconnects, so a stream stops at once (not at its next write).

    Returns:
        The runner (``await runner.cleanup()`` stops everything) and the bound port.
    """
    runner = web.AppRunner(server.application(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]
