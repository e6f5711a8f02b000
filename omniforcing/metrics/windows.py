"""Per-window evaluation of long streams: how quality and sync drift along a stream (``evaluate --per-window``).

A generated stream of ``N`` seconds (after its lead frame) is cut into consecutive windows of ``W`` whole
seconds, each with the geometry of a ``W``-second training clip (a lead frame plus ``W * fps`` frames, the
matching audio), starting at ``0, W, 2W, ...`` s; a last partial window is dropped. Window ``k`` of every stream
forms one evaluation set, scored by one :class:`~omniforcing.metrics.MetricSuite` against real clips of ``W``
seconds: the Fréchet distances (the same real statistics for every window), the sync metrics (AV offset,
event F1, AV-Align) and DeSync when the Synchformer weights are given (windows of at least 4.8 s). One row per
window goes to the JSON and, as scalars ``per_window/<metric>`` at the window's start second, to TensorBoard.

Fréchet values of one window rest on as many samples as there are streams: compare windows with each other
(drift) at equal N, not with clip-level values at larger N.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from omniforcing.data.pipeline import SkipCounter
from omniforcing.metrics.clip_sources import describe_source, event_times_of, iter_clip_batches, probe_spec
from omniforcing.metrics.suite import MetricSuite
from omniforcing.types import AVBatch, ClipSpec

TENSORBOARD_PREFIX = "per_window"


@dataclass(frozen=True)
class StreamWindow:
    """Window ``index`` of a stream: ``seconds`` whole seconds (plus the lead frame) from ``start_s``."""

    index: int
    start_s: int
    seconds: int


def stream_windows(stream_seconds: int, window_seconds: int) -> list[StreamWindow]:
    """The whole windows of a stream of ``stream_seconds`` (after the lead frame).

    Raises:
        ValueError: a window shorter than 1 s, or a stream shorter than one window.
    """
    if window_seconds < 1:
        raise ValueError(f"--per-window needs a window of at least 1 s, got {window_seconds}")
    count = stream_seconds // window_seconds
    if count == 0:
        raise ValueError(f"streams of {stream_seconds} s hold no window of {window_seconds} s")
    return [StreamWindow(k, k * window_seconds, window_seconds) for k in range(count)]


def cut_window(batch: AVBatch, spec: ClipSpec, window: StreamWindow) -> AVBatch:
    """Window ``window`` of a batch of streams, shaped as clips of ``spec`` (``spec.seconds == window.seconds``).

    Video ``(B, spec.num_frames, 3, H, W)`` from frame ``start_s * fps``, audio ``(B, 1, spec.num_samples)`` from
    sample ``start_s * sample_rate``; ground-truth event times (synthetic data) are shifted into the window.
    """
    first_frame, first_sample = window.start_s * spec.fps, window.start_s * spec.sample_rate
    video = batch.video[:, first_frame:first_frame + spec.num_frames]
    audio = batch.audio[..., first_sample:first_sample + spec.num_samples]
    if video.shape[1] != spec.num_frames or audio.shape[-1] != spec.num_samples:
        raise ValueError(f"window {window.index} ({window.start_s} s + {window.seconds} s) runs past the stream")
    info = [replace(clip, offset=clip.offset + window.start_s, event_times=_events_inside(
        clip.event_times, window.start_s, spec.num_frames / spec.fps)) for clip in batch.info]
    return AVBatch(list(batch.captions), video=video, audio=audio, info=info)


def _events_inside(times: Tensor, start_s: float, duration_s: float) -> Tensor:
    """Event times ``(E,)`` relative to ``start_s``, keeping those inside ``[0, duration_s)``."""
    shifted = times - start_s
    return shifted[(shifted >= 0) & (shifted < duration_s)]


def window_rows(streams: Sequence[AVBatch], suite: MetricSuite, spec: ClipSpec,
                windows: Sequence[StreamWindow]) -> list[dict[str, Any]]:
    """One row per window: its bounds, the suite's values over that window of every stream, and its failures.

    ``suite`` holds the real statistics already (pinned or accumulated with ``real=True``); its generated side is
    reset after each window.
    """
    rows = []
    for window in windows:
        before = Counter(suite.failures)
        for batch in streams:
            part = cut_window(batch, spec, window)
            suite.update(part.video, part.audio, fps=spec.fps, sample_rate=spec.sample_rate,
                         event_times=event_times_of(part))
        values = suite.compute()
        suite.reset()
        failures = {key: count - before[key] for key, count in suite.failures.items() if count > before[key]}
        rows.append({"window": window.index, "start_s": window.start_s, "end_s": window.start_s + window.seconds,
                     "n_streams": sum(len(batch) for batch in streams), "metrics": values, "failures": failures})
    return rows


def write_window_scalars(rows: Sequence[dict[str, Any]], log_dir: Path) -> None:
    """TensorBoard scalars ``per_window/<metric>`` at step = the window's start second (a curve over the stream)."""
    writer = SummaryWriter(str(log_dir))
    try:
        for row in rows:
            for key, value in row["metrics"].items():
                if math.isfinite(value):
                    writer.add_scalar(f"{TENSORBOARD_PREFIX}/{key}", value, global_step=row["start_s"])
    finally:
        writer.close()


def _add_real_stats(suite: MetricSuite, real: str, spec: ClipSpec, batch_size: int, max_clips: int | None,
                    cache_dir: Path | None) -> SkipCounter:
    skipped = SkipCounter()
    batches = iter_clip_batches(real, spec, batch_size, limit=max_clips, counter=skipped)
    if cache_dir is not None:
        suite.prepare_real_stats(batches, fps=spec.fps, sample_rate=spec.sample_rate, cache_dir=cache_dir,
                                 description=describe_source(real, spec, max_clips))
        return skipped
    for batch in batches:
        suite.update(batch.video, batch.audio, fps=spec.fps, sample_rate=spec.sample_rate, real=True)
    return skipped


def evaluate_per_window(real: str, fake: str, names: list[str], settings: dict[str, Any], *, window_seconds: int,
                        max_clips: int | None, batch_size: int, cache_dir: Path | None, device: torch.device,
                        tensorboard_dir: Path | None = None) -> dict[str, Any]:
    """Per-window metrics of the long streams in ``fake`` against real clips of one window (module docstring).

    Args:
        real: real shards or media; their clips must hold at least ``window_seconds`` after the lead frame.
        fake: generated streams (a folder of media files or shards), all at least as long as the first one.
        names: :data:`~omniforcing.metrics.SUITE_METRICS` names.
        settings: weight paths for :class:`~omniforcing.metrics.MetricSuite` (``i3d_path`` ...).
        window_seconds: window length in whole seconds.
        max_clips: at most this many real clips and this many streams.
        batch_size: clips per batch.
        cache_dir: cache of the real statistics (None: computed every time).
        device: where the metrics run.
        tensorboard_dir: where to write the ``per_window/*`` curves (None: not written).

    Returns:
        The JSON record: sources, geometry, ``windows`` (one row per window) and what was skipped.
    """
    spec = probe_spec(real, window_seconds)
    stream_spec = replace(spec, seconds=probe_spec(fake).seconds)
    windows = stream_windows(stream_spec.seconds, window_seconds)
    suite = MetricSuite(names, **settings).to(device)
    skipped_real = _add_real_stats(suite, real, spec, batch_size, max_clips, cache_dir) if suite.frechet else None
    skipped_fake = SkipCounter()
    streams = list(iter_clip_batches(fake, stream_spec, batch_size, limit=max_clips, counter=skipped_fake))
    if not streams:
        raise ValueError(f"no stream of {stream_spec.seconds} s could be read from {fake}: {skipped_fake.summary()}")
    rows = window_rows(streams, suite, spec, windows)
    if tensorboard_dir is not None:
        write_window_scalars(rows, tensorboard_dir)
    return {"real": str(real), "fake": str(fake), "window": asdict(spec), "stream_seconds": stream_spec.seconds,
            "n_streams": rows[0]["n_streams"], "windows": rows, "extractors": suite.extractor_info(),
            "skipped_metrics": dict(suite.skipped), "skipped_fake": skipped_fake.summary(),
            "skipped_real": skipped_real.summary() if skipped_real is not None else {}}


TABLE_KEYS = ("fvd", "fad", "fd_video_stats", "fd_audio_stats", "av_align", "av_offset_median_ms", "av_offset_in_sync",
              "event_f1_audio_visual", "event_f1_audio_truth", "desync")
"""Columns of the printed table (the JSON holds every value)."""


def format_window_table(result: dict[str, Any], keys: Sequence[str] = TABLE_KEYS) -> str:
    """A markdown table, one row per window, of the ``keys`` that any window has."""
    rows = result["windows"]
    keys = [key for key in keys if any(key in row["metrics"] for row in rows)]
    lines = [f"{result['fake']}: {result['n_streams']} streams of {result['stream_seconds']} s, windows of "
             f"{result['window']['seconds']} s against {result['real']}", "",
             "| window | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row['metrics'][k]:.4g}" if k in row["metrics"] else "" for k in keys]
        lines.append(f"| {row['start_s']}-{row['end_s']} s | " + " | ".join(cells) + " |")
    return "\n".join(lines)
