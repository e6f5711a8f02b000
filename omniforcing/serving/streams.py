"""One live stream: its unguessable id, the prompt the viewer asks for, a bounded queue of encoded blocks and
its measurements.

The generation thread (:class:`~omniforcing.serving.scheduler.BlockScheduler`) produces into the queue; the
HTTP handler on the event loop consumes it. The queue holds at most ``capacity`` encoded blocks: the scheduler
generates a block for a stream only when its queue has room (and, when the client paces, only when the
client has played close enough to the end of what exists), so a slow client makes the generator wait
instead of piling up blocks.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

StreamState = Literal["starting", "running", "waiting", "finished", "stopped", "failed"]
"""``waiting``: the stream could generate but its client is behind (queue full or pacing lead reached)."""

EndReason = Literal["finished", "disconnected", "stopped", "stalled", "failed", "shutdown"]


@dataclass
class Chunk:
    """What the generation thread hands to the HTTP handler for one block.

    Args:
        index: macro-block index.
        data: fragmented-mp4 bytes now complete (the init segment at the start of the first non-empty one).
        last: the stream ends after this chunk.
        error: a one-line message when generation failed (then ``last``).
    """

    index: int
    data: bytes
    last: bool = False
    error: str | None = None


class BlockQueue:
    """A bounded queue from the generation thread (``put``) to the event loop (``await get``).

    Only the generation thread puts, and it checks :meth:`has_room` first, so the depth never exceeds
    ``capacity``; ``on_take`` is called (on the event loop) after each ``get`` to wake the generation thread.
    """

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_depth = 0
        self._items: collections.deque[Chunk] = collections.deque()
        self._closed = False
        self._lock = threading.Lock()
        self._loop = loop
        self._ready = asyncio.Event()
        self.on_take = lambda: None

    @property
    def depth(self) -> int:
        """Chunks waiting for the client."""
        with self._lock:
            return len(self._items)

    def has_room(self) -> bool:
        """Whether one more chunk fits."""
        return self.depth < self.capacity

    def put(self, chunk: Chunk) -> None:
        """Append (generation thread); raises if full, which the scheduler never lets happen."""
        with self._lock:
            if len(self._items) >= self.capacity:
                raise RuntimeError("block queue overflow: the scheduler produced without room")
            self._items.append(chunk)
            self.max_depth = max(self.max_depth, len(self._items))
        self._loop.call_soon_threadsafe(self._ready.set)

    def close(self) -> None:
        """No more chunks will come (event loop): :meth:`get` returns ``None`` once the queue is empty."""
        with self._lock:
            self._closed = True
        self._ready.set()

    async def get(self) -> Chunk | None:
        """The next chunk (event loop); waits while the queue is empty; ``None`` once closed and empty."""
        while True:
            with self._lock:
                if self._items:
                    chunk = self._items.popleft()
                    break
                if self._closed:
                    return None
                self._ready.clear()  # under the lock: a put after this check sets it again
            await self._ready.wait()
        self.on_take()
        return chunk


@dataclass
class BlockTiming:
    """Timings of one delivered block (milliseconds; ``media_seconds`` is the block's media duration)."""

    index: int
    generate_ms: float
    decode_ms: float
    encode_ms: float
    media_seconds: float

    @property
    def latency_ms(self) -> float:
        """Generation, decoding and mp4 encoding of the block."""
        return self.generate_ms + self.decode_ms + self.encode_ms

    @property
    def real_time_factor(self) -> float:
        """Latency over the block's media time (< 1: faster than real time)."""
        return self.latency_ms / 1e3 / self.media_seconds


@dataclass
class LiveStream:
    """State of one stream, shared by the HTTP handlers (event loop) and the generation thread.

    Args:
        number: public serial number (shown in metrics; the ``id`` is the secret that grants access).
        prompt: the caption asked for now (the viewer may change it; it applies from the next block).
        seed: noise seed.
        seconds: whole seconds after the lead frame, or ``None`` until stopped.
        lead_seconds: pacing: generate at most this much media ahead of the client's reported playback
            position (``None``: no pacing; then only the queue and the connection bound it).
        queue: the stream's bounded block queue.

    The other fields are state: ``id`` (``secrets.token_urlsafe(18)``, 144 random bits: the capability that
    lets its client see, steer and stop it), ``mime_type`` (known once the init segment exists), ``state`` and
    ``end_reason``, the client's ``played_seconds``, the generator's ``media_seconds`` and ``blocks``,
    ``bytes_sent``, ``client_waits`` (times the generator waited for this client), ``prompt_switches``
    (``(block, prompt)`` pairs) and the ``last`` block's timing.
    """

    number: int
    prompt: str
    seed: int
    seconds: int | None
    lead_seconds: float | None
    queue: BlockQueue
    id: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    mime_type: str | None = None
    state: StreamState = "starting"
    end_reason: EndReason | None = None
    played_seconds: float = 0.0
    media_seconds: float = 0.0
    blocks: int = 0
    bytes_sent: int = 0
    client_waits: int = 0
    full_since: float | None = None
    prompt_switches: list[tuple[int, str]] = field(default_factory=list)
    last: BlockTiming | None = None
    total_latency_ms: float = 0.0
    created: float = field(default_factory=time.monotonic)
    _applied_prompt: str | None = None

    def prompt_at(self, index: int) -> str:
        """The prompt for block ``index`` (asked by the generator at each block boundary); records switches."""
        prompt = self.prompt
        if prompt != self._applied_prompt:
            if self._applied_prompt is not None:
                self.prompt_switches.append((index, prompt))
            self._applied_prompt = prompt
        return prompt

    @property
    def active(self) -> bool:
        """Still generating or delivering."""
        return self.end_reason is None

    def end(self, reason: EndReason) -> None:
        """Mark the stream over (the first reason wins); the scheduler then frees its generator and cache."""
        if self.end_reason is None:
            self.end_reason = reason
            self.state = {"finished": "finished", "failed": "failed"}.get(reason, "stopped")

    def record(self, timing: BlockTiming, media_end: float) -> None:
        """Account a generated block."""
        self.blocks += 1
        self.last = timing
        self.total_latency_ms += timing.latency_ms
        self.media_seconds = media_end

    def wants_block(self) -> bool:
        """Whether the client has room for another block now (queue not full, pacing lead not reached)."""
        if not self.queue.has_room():
            return False
        return self.lead_seconds is None or self.media_seconds < self.played_seconds + self.lead_seconds
