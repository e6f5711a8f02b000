"""Server metrics as JSON and as Prometheus text (exposition format 0.0.4).

Streams are labelled by their public serial ``number``, never by their id: the id is the secret that lets a
client see, steer and stop its own stream, and the metrics endpoint is open to anyone who can reach the server.
Prompts are left out for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omniforcing.serving.streams import LiveStream


@dataclass
class ServerCounters:
    """Totals since the server started."""

    started: int = 0
    rejected_busy: int = 0
    ended: dict[str, int] = field(default_factory=dict)

    def count_end(self, reason: str) -> None:
        """One more stream ended for ``reason`` (finished, disconnected, stopped, stalled, failed, shutdown)."""
        self.ended[reason] = self.ended.get(reason, 0) + 1


def stream_metrics(stream: LiveStream) -> dict[str, Any]:
    """Measurements of one stream (no id, no prompt)."""
    last = stream.last
    return {
        "stream": stream.number,
        "state": stream.state,
        "blocks": stream.blocks,
        "media_seconds": round(stream.media_seconds, 4),
        "played_seconds": round(stream.played_seconds, 4),
        "block_latency_ms": None if last is None else round(last.latency_ms, 2),
        "mean_block_latency_ms": round(stream.total_latency_ms / stream.blocks, 2) if stream.blocks else None,
        "real_time_factor": None if last is None else round(last.real_time_factor, 4),
        "generate_ms": None if last is None else round(last.generate_ms, 2),
        "decode_ms": None if last is None else round(last.decode_ms, 2),
        "encode_ms": None if last is None else round(last.encode_ms, 2),
        "queue_depth": stream.queue.depth,
        "queue_capacity": stream.queue.capacity,
        "max_queue_depth": stream.queue.max_depth,
        "client_waits": stream.client_waits,
        "bytes_sent": stream.bytes_sent,
        "prompt_switches": len(stream.prompt_switches),
    }


def metrics_json(streams: list[LiveStream], counters: ServerCounters, max_streams: int) -> dict[str, Any]:
    """The whole ``/metrics.json`` document."""
    return {
        "max_streams": max_streams,
        "active_streams": len(streams),
        "streams_started": counters.started,
        "rejected_busy": counters.rejected_busy,
        "streams_ended": dict(counters.ended),
        "streams": [stream_metrics(s) for s in streams],
    }


_STREAM_GAUGES = {
    "block_latency_ms": "Generation + decoding + mp4 encoding of the last block (ms)",
    "real_time_factor": "Last block's latency over its media time (< 1: faster than real time)",
    "queue_depth": "Encoded blocks waiting for the client",
    "queue_capacity": "Bound of the stream's block queue",
    "max_queue_depth": "Largest queue depth seen",
    "media_seconds": "Media generated so far (s)",
    "blocks": "Blocks generated so far",
    "client_waits": "Times the generator waited for this client (slow client or pacing)",
    "bytes_sent": "Fragmented-mp4 bytes written to the client",
}


def metrics_prometheus(streams: list[LiveStream], counters: ServerCounters, max_streams: int) -> str:
    """The ``/metrics`` text for Prometheus."""
    lines = [
        "# HELP omniforcing_active_streams Streams generating or delivering now",
        "# TYPE omniforcing_active_streams gauge",
        f"omniforcing_active_streams {len(streams)}",
        "# HELP omniforcing_max_streams Concurrent stream limit (--max-streams)",
        "# TYPE omniforcing_max_streams gauge",
        f"omniforcing_max_streams {max_streams}",
        "# HELP omniforcing_streams_started_total Streams accepted",
        "# TYPE omniforcing_streams_started_total counter",
        f"omniforcing_streams_started_total {counters.started}",
        "# HELP omniforcing_streams_rejected_total Requests answered 503 because every slot was busy",
        "# TYPE omniforcing_streams_rejected_total counter",
        f"omniforcing_streams_rejected_total {counters.rejected_busy}",
        "# HELP omniforcing_streams_ended_total Streams ended, by reason (disconnected and stalled: dropped clients)",
        "# TYPE omniforcing_streams_ended_total counter",
    ]
    lines += [f'omniforcing_streams_ended_total{{reason="{reason}"}} {count}'
              for reason, count in sorted(counters.ended.items())]
    rows = [stream_metrics(s) for s in streams]
    for name, help_text in _STREAM_GAUGES.items():
        kind = "counter" if name in ("blocks", "client_waits", "bytes_sent") else "gauge"
        metric = f"omniforcing_stream_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{stream="{row["stream"]}"}} {row[name]}' for row in rows if row[name] is not None]
    return "\n".join(lines) + "\n"
