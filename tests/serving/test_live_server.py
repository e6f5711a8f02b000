"""The live server end to end over HTTP on 127.0.0.1: media, slots, back-pressure, metrics, input errors."""

from __future__ import annotations

import gc
import http.client
import json
import socket
import threading
import time

import pytest

from live_server_helpers import RunningServer

from omniforcing.data.media import read_av
from omniforcing.models.kv_cache import AVKVCache
from omniforcing.serving.app import LiveServer


def test_three_seconds_of_one_stream_decode_with_video_and_audio_of_the_right_length(serve):
    live = serve()
    status, headers, body = live.request("POST", "/streams", {"prompt": "a red ball bounces", "seconds": 3})
    assert status == 200
    assert headers["Content-Type"] == 'video/mp4; codecs="avc1.64000a, mp4a.40.2"'
    assert len(headers["X-Stream-Id"]) >= 24  # secrets.token_urlsafe(18): 144 random bits
    clip = read_av(body)
    assert clip.video.shape == (1 + 3 * 24, 32, 32, 3)
    samples = 640 + 3 * 16000
    assert samples <= clip.audio.shape[-1] < samples + 1024  # AAC pads its last frame only
    assert abs(clip.video_end - clip.audio_end) < 1024 / 16000
    metrics = live.wait_for(lambda m: m["active_streams"] == 0, "the finished stream to free its slot")
    assert metrics["streams_ended"] == {"finished": 1}


def test_the_same_seed_streams_the_same_pictures(serve):
    live = serve()
    clips = [read_av(live.request("POST", "/streams", {"prompt": "a drum", "seconds": 1, "seed": 3})[2])
             for _ in range(2)]
    other = read_av(live.request("POST", "/streams", {"prompt": "a drum", "seconds": 1, "seed": 4})[2])
    assert (clips[0].video.float() - clips[1].video.float()).abs().mean() < 1.0  # x264's fast kernels may vary
    assert (clips[0].video.float() - other.video.float()).abs().mean() > 2.0


def test_one_stream_too_many_gets_503_and_a_disconnect_frees_the_slot(serve):
    live = serve(max_streams=1)
    caches_before = _live_caches()
    connection, response = live.open_stream(prompt="waves on a shore")  # unbounded
    assert response.status == 200
    assert len(response.read(2000)) == 2000
    status, headers, body = live.request("POST", "/streams", {"prompt": "a second viewer"})
    assert status == 503 and headers["Retry-After"] == "5"
    assert "all 1 stream slots are busy" in json.loads(body)["error"]
    connection.close()
    metrics = live.wait_for(lambda m: m["active_streams"] == 0, "the disconnected stream to free its slot")
    assert metrics["streams_ended"] == {"disconnected": 1} and metrics["rejected_busy"] == 1
    assert _live_caches() == caches_before, "the stream's KV cache is still alive"
    status, _, body = live.request("POST", "/streams", {"prompt": "the next viewer", "seconds": 1})
    assert status == 200 and read_av(body).video.shape[0] == 25


def test_a_slow_client_makes_the_generator_wait_with_the_queue_at_its_bound(serve):
    live = serve(queue_blocks=2, send_buffer_bytes=16384)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small receive window
    client.settimeout(30)
    client.connect(("127.0.0.1", live.port))
    body = json.dumps({"prompt": "rain on a tin roof"}).encode()
    client.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        # the client reads nothing: socket buffers fill, then the queue, then the generator must wait
        metrics = live.wait_for(lambda m: m["streams"] and m["streams"][0]["state"] == "waiting"
                                and m["streams"][0]["queue_depth"] == 2, "the generator to wait for the client")
        blocks = metrics["streams"][0]["blocks"]
        time.sleep(1.0)
        stream = live.metrics()["streams"][0]
        assert stream["blocks"] == blocks, "the generator went on while the client read nothing"
        assert stream["max_queue_depth"] == stream["queue_capacity"] == 2
        assert stream["client_waits"] >= 1
        deadline = time.monotonic() + 30
        while live.metrics()["streams"][0]["blocks"] == blocks:  # now read: the generator resumes
            assert time.monotonic() < deadline, "the generator did not resume once the client read"
            client.recv(65536)
        assert live.metrics()["streams"][0]["max_queue_depth"] == 2
    finally:
        client.close()
    live.wait_for(lambda m: m["active_streams"] == 0, "the slot to be freed")


def test_a_client_that_takes_nothing_is_dropped_after_the_stall_timeout(serve):
    live = serve(queue_blocks=1, stall_seconds=0.5)
    connection, response = live.open_stream(prompt="a slow reader", lead_seconds=0.5)  # pacing, no progress
    assert response.status == 200
    metrics = live.wait_for(lambda m: m["active_streams"] == 0, "the stalled stream to be dropped")
    assert metrics["streams_ended"] == {"stalled": 1}
    connection.close()


def test_pacing_keeps_generation_a_lead_ahead_of_reported_playback(serve):
    live = serve()
    connection, response = live.open_stream(prompt="a bell", lead_seconds=2)
    stream_id = response.getheader("X-Stream-Id")
    waiting = live.wait_for(lambda m: m["streams"][0]["state"] == "waiting", "the lead to be reached")
    assert 2 <= waiting["streams"][0]["media_seconds"] < 3.1  # stops within one block past the lead
    status, _, body = live.request("POST", f"/streams/{stream_id}/progress", {"played_seconds": 3})
    assert status == 200 and json.loads(body)["played_seconds"] == 3
    live.wait_for(lambda m: m["streams"][0]["state"] == "waiting" and m["streams"][0]["media_seconds"] >= 5,
                  "generation to follow playback")
    assert live.metrics()["streams"][0]["media_seconds"] < 6.1
    connection.close()


def test_stream_ids_are_secret_metrics_show_numbers_only(serve):
    live = serve()
    connection, response = live.open_stream(prompt="a secret garden", lead_seconds=1)
    stream_id = response.getheader("X-Stream-Id")
    live.wait_for(lambda m: m["streams"] and m["streams"][0]["blocks"] >= 1, "a block")
    for path in ("/metrics", "/metrics.json"):
        text = live.request("GET", path)[2].decode()
        assert stream_id not in text and "secret garden" not in text
    status, headers, text = live.request("GET", "/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"  # Prometheus exposition 0.0.4
    assert 'omniforcing_stream_queue_depth{stream="1"}' in text.decode()
    status, _, body = live.request("GET", f"/streams/{stream_id}")
    assert status == 200 and json.loads(body)["prompt"] == "a secret garden"
    assert live.request("GET", "/streams/not-the-id")[0] == 404
    assert live.request("POST", "/streams/not-the-id/prompt", {"prompt": "hijack"})[0] == 404
    assert live.request("DELETE", f"/streams/{stream_id}")[0] == 204
    metrics = live.wait_for(lambda m: m["active_streams"] == 0, "the stopped stream to free its slot")
    assert metrics["streams_ended"] == {"stopped": 1}
    connection.close()


def test_bad_requests_get_a_one_line_json_error(serve):
    live = serve()
    for body, message in [({"seconds": 2}, "prompt"), ({"prompt": "x", "seconds": 0}, "seconds"),
                          ({"prompt": "x", "seed": -1}, "seed"), ({"prompt": "x" * 3000}, "longer than")]:
        status, _, reply = live.request("POST", "/streams", body)
        assert status == 400 and message in json.loads(reply)["error"]
    connection = live.connection()
    connection.request("POST", "/streams", body="not json")
    response = connection.getresponse()
    assert response.status == 400 and "JSON object" in json.loads(response.read())["error"]
    assert live.metrics()["streams_started"] == 0


def test_the_page_and_its_script_are_served_with_a_content_security_policy(serve):
    live = serve()
    status, headers, page = live.request("GET", "/")
    assert status == 200 and b'<script src="/player.js">' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, script = live.request("GET", "/player.js")
    assert status == 200 and b"MediaSource.isTypeSupported(mime)" in script


def test_a_failing_stream_breaks_its_own_connection_and_no_other(serve, generator, monkeypatch):
    original = generator.stream

    def failing(prompt, seconds=None, seed=0):
        for block in original(prompt, seconds, seed):
            if prompt(block.index) == "fail at block 2" and block.index == 2:
                raise RuntimeError("out of memory (simulated)")
            yield block

    monkeypatch.setattr(generator, "stream", failing)
    live = serve()
    connection, response = live.open_stream(prompt="fail at block 2", seconds=4)
    assert response.status == 200  # the headers left with block 1, before the failure
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    status, _, body = live.request("POST", "/streams", {"prompt": "a healthy stream", "seconds": 1})
    assert status == 200 and read_av(body).video.shape[0] == 25
    metrics = live.wait_for(lambda m: m["active_streams"] == 0, "both streams to end")
    assert metrics["streams_ended"] == {"failed": 1, "finished": 1}


def test_two_streams_share_the_generation_thread_in_turn(serve):
    live = serve(max_streams=2)
    opened = [live.open_stream(prompt=f"stream {i}", seed=i) for i in range(2)]
    readers = [threading.Thread(target=_drain, args=(response,), daemon=True) for _, response in opened]
    for reader in readers:
        reader.start()
    try:
        first = live.wait_for(lambda m: len(m["streams"]) == 2 and min(s["blocks"] for s in m["streams"]) >= 2,
                              "both streams to run")
        later = live.wait_for(lambda m: min(s["blocks"] for s in m["streams"]) >= 8, "more blocks")
        gained = [b["blocks"] - a["blocks"] for a, b in zip(first["streams"], later["streams"])]
        assert abs(gained[0] - gained[1]) <= 2, f"round-robin should advance both alike, gained {gained}"
    finally:
        for connection, _ in opened:
            connection.close()
    live.wait_for(lambda m: m["active_streams"] == 0, "both slots to be freed")


def _drain(response) -> None:
    try:
        while response.read(65536):
            pass
    except (OSError, ValueError, AttributeError, http.client.HTTPException):  # the test closed the connection
        pass


def _live_caches() -> int:
    """``AVKVCache`` objects alive in this process (other tests may hold some)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is AVKVCache)


def test_stopping_the_server_ends_a_live_stream_at_once_and_counts_it(generator):
    live = RunningServer(LiveServer(generator))
    connection, response = live.open_stream(prompt="rain on a roof")  # unbounded: it would never finish
    assert response.status == 200 and len(response.read(2000)) == 2000
    counters = live.server.counters
    # bounded by TIMEOUT (30 s): before the streams were ended on shutdown, aiohttp waited 60 s for this response
    live.stop()
    _drain(response)  # the body ends (final chunk) rather than hanging
    connection.close()
    assert counters.ended == {"shutdown": 1} and not live.server.streams
