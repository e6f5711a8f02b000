"""MetricSuite: configured metrics, skips instead of crashes, cached real statistics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from omniforcing.metrics.suite import MetricSuite, real_stats_cache_path
from omniforcing.types import AVBatch

FPS, RATE = 24.0, 16000


def _batch(synthetic_clip, kind: str, seeds: range, seconds: float = 2.0) -> AVBatch:
    clips = [synthetic_clip(kind, seed=seed, seconds=seconds) for seed in seeds]
    return AVBatch(captions=[kind] * len(clips), video=torch.cat([clip.video for clip in clips]),
                   audio=torch.cat([clip.audio for clip in clips]))


def test_missing_reference_weights_are_skipped_with_one_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("OMNIFORCING_I3D_PATH", raising=False)
    monkeypatch.setenv("OMNIFORCING_VGGISH_PATH", str(tmp_path / "absent.pth"))
    with caplog.at_level(logging.WARNING):
        suite = MetricSuite(["video_stats", "i3d", "vggish"])
    assert suite.names == ["fd_video_stats"]
    assert set(suite.skipped) == {"i3d", "vggish"}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("OMNIFORCING_I3D_PATH" in message for message in warnings)
    assert any("absent.pth" in message and "does not exist" in message for message in warnings)
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSuite(["fvd"])


def test_update_and_compute_give_named_scalars(synthetic_clip):
    suite = MetricSuite(["video_stats", "audio_stats", "sync"])
    real = _batch(synthetic_clip, "gravity", range(3))
    fake = _batch(synthetic_clip, "wall", range(3))
    suite.update(real.video, real.audio, fps=FPS, sample_rate=RATE, real=True)
    events = [synthetic_clip("wall", seed=seed, seconds=2.0).events for seed in range(3)]
    suite.update(fake.video, fake.audio, fps=FPS, sample_rate=RATE, event_times=events)
    values = suite.compute()
    for key in ("fd_video_stats", "fd_audio_stats", "av_align", "av_offset_ms", "av_offset_confidence",
                "event_f1_audio_visual", "event_f1_audio_truth", "event_timing_error_ms"):
        assert key in values, key
    assert values["fd_video_stats_n_real"] == 3 and values["fd_audio_stats_n_fake"] == 3
    assert values["fd_video_stats"] > 0 and values["event_f1_audio_truth"] == 1.0
    assert not any(key.startswith(("fvd", "fad")) for key in values)
    suite.reset()
    suite.update(real.video, real.audio, fps=FPS, sample_rate=RATE)
    assert suite.compute()["fd_video_stats"] < values["fd_video_stats"]  # real set kept, fake replaced


def test_unusable_clips_are_counted_not_raised(synthetic_clip, caplog):
    suite = MetricSuite(["video_stats", "sync"])
    one_frame = torch.zeros(2, 1, 3, 16, 16, dtype=torch.uint8)
    with caplog.at_level(logging.WARNING):
        suite.update(one_frame, torch.zeros(2, 1, 8000), fps=FPS, sample_rate=RATE)
        suite.update(one_frame, torch.zeros(2, 1, 8000), fps=FPS, sample_rate=RATE)
        values = suite.compute()
    assert suite.failures["fd_video_stats update"] == 2 and suite.failures["sync analysis"] == 2
    assert suite.failures["fd_video_stats compute"] == 1
    assert "fd_video_stats" not in values
    assert sum("fd_video_stats update failed" in record.getMessage() for record in caplog.records) == 1


def test_real_statistics_are_computed_once_and_cached(synthetic_clip, tmp_path: Path):
    description = "synthetic gravity clips, 2 s, 24 fps, 16 kHz"
    first = MetricSuite(["video_stats", "audio_stats"])
    paths = first.prepare_real_stats([_batch(synthetic_clip, "gravity", range(4))], fps=FPS, sample_rate=RATE,
                                     cache_dir=tmp_path, description=description)
    assert set(paths) == {"fd_video_stats", "fd_audio_stats"} and all(path.is_file() for path in paths.values())
    assert paths["fd_video_stats"] == real_stats_cache_path(tmp_path, first.frechet["video_stats"], description)

    def must_not_be_read() -> Iterator[AVBatch]:
        raise AssertionError("cached statistics should have been used")
        yield

    second = MetricSuite(["video_stats", "audio_stats"])
    second.prepare_real_stats(must_not_be_read(), fps=FPS, sample_rate=RATE, cache_dir=tmp_path,
                              description=description)
    fake = _batch(synthetic_clip, "wall", range(2))
    for suite in (first, second):
        suite.update(fake.video, fake.audio, fps=FPS, sample_rate=RATE)
    assert second.compute() == pytest.approx(first.compute(), rel=1e-12)
    other = real_stats_cache_path(tmp_path, first.frechet["video_stats"], "another data set")
    assert other != paths["fd_video_stats"]


def test_keep_features_adds_kernel_distance_and_fd_infinity(synthetic_clip):
    suite = MetricSuite(["audio_stats"], keep_features=True)
    real, fake = _batch(synthetic_clip, "gravity", range(6), 1.0), _batch(synthetic_clip, "wall", range(6), 1.0)
    suite.update(None, real.audio, fps=FPS, sample_rate=RATE, real=True)
    suite.update(None, fake.audio, fps=FPS, sample_rate=RATE)
    values = suite.compute()
    assert {"fd_audio_stats", "kd_audio_stats", "fd_audio_stats_inf"} <= set(values)
