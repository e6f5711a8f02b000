"""Per-stream state without a server: the bounded queue, prompt switches, pacing, the metrics text."""

from __future__ import annotations

import asyncio
import threading

import pytest

from omniforcing.serving.metrics import ServerCounters, metrics_prometheus
from omniforcing.serving.streams import BlockQueue, BlockTiming, Chunk, LiveStream


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_queue_is_bounded_ordered_and_closes():
    async def scenario() -> list:
        queue = BlockQueue(2, asyncio.get_running_loop())
        taken = []
        queue.on_take = lambda: taken.append(queue.depth)
        producer = threading.Thread(target=lambda: [queue.put(Chunk(i, b"x")) for i in range(2)])
        producer.start()
        producer.join()
        assert not queue.has_room() and queue.max_depth == 2
        with pytest.raises(RuntimeError, match="overflow"):
            queue.put(Chunk(2, b"x"))
        got = [(await queue.get()).index, (await queue.get()).index]
        queue.close()
        return [got, taken, await queue.get()]

    got, taken, after_close = asyncio.run(scenario())
    assert got == [0, 1] and taken == [1, 0] and after_close is None


def test_prompt_switches_are_recorded_at_the_block_that_asks(loop):
    stream = LiveStream(1, "old", 0, None, None, BlockQueue(1, loop))
    assert [stream.prompt_at(i) for i in range(2)] == ["old", "old"]
    stream.prompt = "new"
    assert stream.prompt_at(2) == "new" and stream.prompt_at(3) == "new"
    assert stream.prompt_switches == [(2, "new")]


def test_pacing_wants_blocks_until_the_lead_is_reached(loop):
    stream = LiveStream(1, "p", 0, None, 2.0, BlockQueue(4, loop))
    assert stream.wants_block()
    stream.record(BlockTiming(1, 100.0, 50.0, 10.0, 1.0), media_end=2.04)
    assert not stream.wants_block()  # 2.04 s generated, nothing played, 2-s lead
    stream.played_seconds = 0.5
    assert stream.wants_block()
    assert stream.last.latency_ms == 160.0 and stream.last.real_time_factor == pytest.approx(0.16)


def test_prometheus_text_has_one_sample_per_stream_and_counters_by_reason(loop):
    stream = LiveStream(7, "a secret prompt", 0, None, None, BlockQueue(2, loop))
    stream.record(BlockTiming(1, 200.0, 40.0, 10.0, 1.0), media_end=1.04)
    counters = ServerCounters(started=3, rejected_busy=1)
    counters.count_end("disconnected")
    counters.count_end("finished")
    text = metrics_prometheus([stream], counters, max_streams=2)
    assert 'omniforcing_stream_block_latency_ms{stream="7"} 250.0' in text
    assert 'omniforcing_stream_real_time_factor{stream="7"} 0.25' in text
    assert 'omniforcing_streams_ended_total{reason="disconnected"} 1' in text
    assert "omniforcing_streams_rejected_total 1" in text
    assert stream.id not in text and "secret" not in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(len(line.split(" ")) == 2 for line in samples)  # name{labels} value
