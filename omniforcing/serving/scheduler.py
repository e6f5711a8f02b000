"""One generation thread for every live stream, one block per stream in turn (round-robin).

Why one thread and not one per stream: the model is loaded once and shared, and a single thread is the only
user of it, so nothing in the forward pass (captured CUDA graphs with their static buffers, lazily built
tables) is ever entered twice at once; on a GPU, kernels of several Python threads would be queued on the
same device one after the other anyway, and on a CPU torch's intra-op threads already use every core, so
more Python threads only oversubscribe them. Round-robin gives each of ``N`` streams one block per round:
each stream's real-time factor is about ``N`` times the single-stream one, which is what ``--max-streams``
must be sized against (docs/serving.md).

Each stream keeps its own generator iterator (hence its own KV cache and incremental decoder, created by
``StreamingGenerator.stream``) and its own :class:`~omniforcing.data.mp4_writers.Mp4FragmentStream`. A stream whose
client is behind (:meth:`LiveStream.wants_block` false) is skipped: the generator waits for it. When a stream
ends (finished, disconnected, stopped, stalled, failed) its iterator is closed here, on this thread, which
frees its cache, and ``on_release`` is called.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from omniforcing.data.mp4_writers import Mp4FragmentStream
from omniforcing.inference.streaming import StreamedBlock, StreamingGenerator
from omniforcing.serving.streams import BlockTiming, Chunk, LiveStream

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.25
"""How often the idle thread re-checks stall deadlines and pacing when nothing woke it."""


@dataclass
class _Work:
    """What the generation thread holds for one stream."""

    blocks: Iterator[StreamedBlock]
    fragments: Mp4FragmentStream
    waiting_since: float | None = None


class BlockScheduler:
    """The generation thread.

    Args:
        generator: the shared streaming engine (model loaded once; each ``stream()`` call has its own cache).
        stall_seconds: a stream whose client has taken nothing for this long is dropped (``stalled``).
        on_release: called from this thread once a stream's generator and cache are freed.
    """

    def __init__(self, generator: StreamingGenerator, stall_seconds: float,
                 on_release: Callable[[LiveStream], None]) -> None:
        self.generator = generator
        self.stall_seconds = stall_seconds
        self.on_release = on_release
        self._work: dict[int, tuple[LiveStream, _Work]] = {}
        self._pending: list[LiveStream] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="omniforcing-serve", daemon=True)

    def start(self) -> None:
        """Start the generation thread."""
        self._thread.start()

    def add(self, stream: LiveStream) -> None:
        """Schedule a new stream (its generation starts on the next round)."""
        with self._wake:
            self._pending.append(stream)
            self._wake.notify()

    def wake(self) -> None:
        """Re-check the streams now (a client took a block, reported progress, or left)."""
        with self._wake:
            self._wake.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after its current block and free every stream."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(self._has_work, timeout=IDLE_POLL_SECONDS)
                if self._closing:
                    break
                for stream in self._pending:
                    self._work[stream.number] = (stream, self._open(stream))
                self._pending.clear()
            for stream, work in list(self._work.values()):
                self._visit(stream, work)
        for stream in [s for s, _ in self._work.values()] + self._pending:
            stream.end("shutdown")
            self._release(stream)

    def _has_work(self) -> bool:
        return self._closing or bool(self._pending) or any(
            not stream.active or stream.wants_block() for stream, _ in self._work.values())

    def _open(self, stream: LiveStream) -> _Work:
        codec, has_audio = self.generator.codec, self.generator.settings.modality != "video"
        blocks = self.generator.stream(stream.prompt_at, stream.seconds, stream.seed)  # asked at each block
        return _Work(blocks, Mp4FragmentStream(codec.video.fps, codec.audio.sample_rate if has_audio else 0))

    def _visit(self, stream: LiveStream, work: _Work) -> None:
        if not stream.active:
            self._release(stream)
        elif stream.wants_block():
            work.waiting_since = None
            stream.state = "running"
            self._step(stream, work)
        else:
            now = time.monotonic()
            if work.waiting_since is None:
                work.waiting_since = now
                stream.client_waits += 1
                stream.state = "waiting"
            elif now - work.waiting_since > self.stall_seconds:
                log.warning("stream %d: client behind for %.0f s, dropped", stream.number, self.stall_seconds)
                stream.end("stalled")

    def _step(self, stream: LiveStream, work: _Work) -> None:
        index = stream.blocks
        try:
            block = next(work.blocks)
            start = time.perf_counter()
            data = work.fragments.write(block.video, block.audio)
            encode_ms = (time.perf_counter() - start) * 1e3
        except StopIteration:
            stream.end("finished")  # before the last chunk: its handler may end the stream as soon as it has it
            stream.queue.put(Chunk(index, work.fragments.close(), last=True))
            return
        except Exception as error:  # noqa: BLE001 - one stream's failure must not stop the others
            log.exception("stream %d failed at block %d", stream.number, index)
            stream.end("failed")
            stream.queue.put(Chunk(index, b"", last=True, error=f"generation failed: {error}"))
            return
        stream.mime_type = work.fragments.mime_type
        stream.record(BlockTiming(block.index, block.generate_ms, block.decode_ms, encode_ms, block.seconds),
                      block.start_seconds + block.seconds)
        stream.queue.put(Chunk(block.index, data))

    def _release(self, stream: LiveStream) -> None:
        """Close the stream's generator on this thread (frees its KV cache and decoder state) and report it."""
        _, work = self._work.pop(stream.number, (stream, None))
        try:
            if work is not None:
                work.blocks.close()  # type: ignore[attr-defined]  # a generator
                work.fragments.close()
        except Exception:  # noqa: BLE001 - the slot is freed anyway; the thread must go on for the others
            log.exception("stream %d: closing its generator failed", stream.number)
        finally:
            self.on_release(stream)
