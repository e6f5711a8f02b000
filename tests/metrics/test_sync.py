"""Sync metrics on synthetic clips with known events: AV-Align, offset estimate, event precision/recall."""

from __future__ import annotations

import pytest
import torch

from omniforcing.metrics.sync import (
    SyncAnalyzer,
    av_align_score,
    detect_visual_impacts,
    estimate_av_offset,
    match_events,
    merge_close_events,
)
from omniforcing.metrics.sync_metrics import AVAlign, AVSyncOffset, EventSync

FPS = 24.0
FRAME_MS = 1000 / FPS


def _seconds(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_av_align_score_reference_semantics():
    peaks = _seconds([0.5, 1.0, 1.5])
    assert av_align_score(peaks, peaks, FPS) == 1.0
    assert av_align_score(peaks + 0.5 / FPS, peaks, FPS) == 1.0  # inside the +-1 frame window
    assert av_align_score(peaks + 2 / FPS, peaks, FPS) == 0.0  # displaced by two frames
    assert av_align_score(peaks[:2], peaks, FPS) == pytest.approx(2 / 3)  # IoU: 2 / (2 + 3 - 2)
    # one-to-one: two audio peaks next to one video peak give a single match
    assert av_align_score(_seconds([1.0, 1.01]), _seconds([1.0]), FPS) == pytest.approx(1 / 2)
    assert av_align_score(_seconds([]), _seconds([]), FPS) is None
    assert av_align_score(_seconds([]), peaks, FPS) == 0.0


def test_av_align_is_one_for_matched_clip_and_falls_when_audio_is_displaced(synthetic_clip):
    analyzer, metric = SyncAnalyzer(), AVAlign()
    aligned = synthetic_clip("jumps")
    metric.update(analyzer(aligned.video, aligned.audio, FPS, aligned.sample_rate))
    assert float(metric.compute()["av_align"]) == 1.0
    scores = []
    for frames in (1.5, 3):
        metric.reset()
        displaced = synthetic_clip("jumps", audio_delay=frames / FPS)
        metric.update(analyzer(displaced.video, displaced.audio, FPS, displaced.sample_rate))
        scores.append(float(metric.compute()["av_align"]))
    assert scores[0] < 1.0 and scores[1] == 0.0


def test_av_align_counts_clips_without_any_peak_separately():
    metric = AVAlign()
    still = torch.zeros(1, 10, 3, 16, 16, dtype=torch.uint8)
    metric.update(SyncAnalyzer()(still, torch.zeros(1, 1, 16000), FPS, 16000))
    result = metric.compute()
    assert torch.isnan(result["av_align"]) and result["av_align_empty_clips"] == 1 and result["av_align_clips"] == 0


@pytest.mark.parametrize("kind", ["gravity", "wall"])
def test_offset_of_a_synchronous_clip_is_within_half_a_frame(synthetic_clip, kind):
    clip = synthetic_clip(kind)
    signals = SyncAnalyzer()(clip.video, clip.audio, FPS, clip.sample_rate)[0]
    estimate = estimate_av_offset(signals.onset_envelope, signals.envelope_rate, signals.impact_envelope, FPS)
    assert abs(estimate.offset_ms) < FRAME_MS / 2
    assert estimate.correlation > 0.4 and estimate.confidence > 0.4


@pytest.mark.parametrize("kind", ["gravity", "wall"])
def test_shifting_audio_by_k_frames_shifts_the_offset_by_k_frames(synthetic_clip, kind):
    metric, analyzer = AVSyncOffset(), SyncAnalyzer()
    offsets = {}
    for frames in (0, 3, -2):
        clip = synthetic_clip(kind, audio_delay=frames / FPS)
        metric.reset()
        metric.update(analyzer(clip.video, clip.audio, FPS, clip.sample_rate))
        offsets[frames] = float(metric.compute()["av_offset_ms"])
    for frames in (3, -2):
        assert offsets[frames] - offsets[0] == pytest.approx(frames * FRAME_MS, abs=5.0)


def test_offset_is_undefined_for_constant_envelopes():
    flat = torch.ones(300)
    assert estimate_av_offset(flat, 100.0, torch.rand(72), FPS) is None
    assert estimate_av_offset(torch.rand(300), 100.0, torch.zeros(72), FPS) is None


def test_offset_metric_accumulates_over_clips(synthetic_clip):
    metric, analyzer = AVSyncOffset(), SyncAnalyzer()
    for frames in (2, -2):
        clip = synthetic_clip("gravity", audio_delay=frames / FPS, seed=frames + 5)
        metric.update(analyzer(clip.video, clip.audio, FPS, clip.sample_rate))
    result = metric.compute()
    assert result["av_offset_clips"] == 2 and result["av_offset_skipped_clips"] == 0
    assert float(result["av_offset_abs_ms"]) == pytest.approx(2 * FRAME_MS, abs=12.0)
    assert abs(float(result["av_offset_ms"])) < 12.0  # +2 and -2 frames average out
    assert float(result["av_offset_std_ms"]) == pytest.approx(2 * FRAME_MS, abs=12.0)
    assert float(result["av_offset_in_sync"]) == 0.0  # both clips are 2 frames off
    assert float(result["av_offset_median_ms"]) == pytest.approx(-2 * FRAME_MS, abs=15.0)  # lower median of 2


def test_match_events_is_one_to_one_and_closest_first():
    detected, reference = _seconds([1.00, 1.03, 2.0]), _seconds([1.02, 3.0])
    assert match_events(detected, reference, 0.05) == [(1, 0)]
    assert match_events(_seconds([]), reference, 0.05) == []


def test_visual_impacts_use_local_contrast_and_skip_the_placeholder_ends():
    envelope = torch.full((48,), 0.3)
    envelope[[0, -1]] = 0.0  # flow_change's placeholders
    envelope[10] = 6.0  # a floor bounce
    envelope[30] = 0.7  # a weak sideways bounce: 2.3x its surroundings, 0.12x the strongest impact
    envelope[40] = 0.4  # noise: 1.3x its surroundings
    assert (detect_visual_impacts(envelope, FPS) * FPS).tolist() == [10, 30]
    assert detect_visual_impacts(torch.full((48,), 0.01), FPS).numel() == 0  # below the absolute threshold
    rising = torch.linspace(0, 1, 48)
    rising[[0, -1]] = 0.0
    assert detect_visual_impacts(rising, FPS).numel() == 0  # frame T-1 is never an impact
    assert merge_close_events(_seconds([0.5, 0.2, 0.51, 0.2]), 1 / FPS).tolist() == [0.2, 0.5]


def test_event_sync_against_ground_truth_and_own_visual_impacts(synthetic_clip):
    analyzer = SyncAnalyzer()
    synced, late = EventSync(), EventSync()
    for seed, kind in enumerate(("gravity", "wall")):
        clip = synthetic_clip(kind, seed=seed)
        synced.update(analyzer(clip.video, clip.audio, FPS, clip.sample_rate), [clip.events])
        shifted = synthetic_clip(kind, seed=seed, audio_delay=3 / FPS)
        late.update(analyzer(shifted.video, shifted.audio, FPS, shifted.sample_rate), [shifted.events])
    good, bad = synced.compute(), late.compute()
    for pair in ("audio_visual", "audio_truth", "visual_truth"):
        assert float(good[f"event_f1_{pair}"]) == 1.0, pair
    assert float(good["event_timing_error_ms"]) < FRAME_MS / 2
    assert float(bad["event_f1_audio_visual"]) == 0.0 and float(bad["event_f1_audio_truth"]) == 0.0
    assert float(bad["event_f1_visual_truth"]) == 1.0  # the video did not move
    assert float(bad["event_timing_error_ms"]) == pytest.approx(3 * FRAME_MS, abs=FRAME_MS / 2)


def test_event_sync_without_ground_truth_reports_only_the_audio_visual_pair(synthetic_clip):
    clip = synthetic_clip("wall")
    metric = EventSync()
    metric.update(SyncAnalyzer()(clip.video, clip.audio, FPS, clip.sample_rate))
    assert not any(key.endswith("_truth") for key in metric.compute())
    with pytest.raises(ValueError, match="event-time tensors for 1 clips"):
        metric.update(SyncAnalyzer()(clip.video, clip.audio, FPS, clip.sample_rate), [clip.events, clip.events])


def test_sync_metrics_on_the_project_synthetic_dataset():
    """Detectors and offset on the dataset the models train on (one object per scene, 32x32, 24 fps)."""
    synthetic = pytest.importorskip("omniforcing.data.synthetic")
    from omniforcing.types import ClipSpec

    spec = ClipSpec(seconds=3)
    clips = [synthetic.synthesize_clip(0, index, spec, synthetic.SceneSettings(max_objects=1)) for index in range(4)]
    video = torch.stack([torch.from_numpy(clip.video).permute(0, 3, 1, 2) for clip in clips])
    audio = torch.stack([torch.from_numpy(clip.audio)[None] for clip in clips])
    truth = [torch.from_numpy(clip.event_times) for clip in clips]
    analyzer, events, offset, late = SyncAnalyzer(), EventSync(), AVSyncOffset(), AVSyncOffset()
    signals = analyzer(video, audio, spec.fps, spec.sample_rate)
    events.update(signals, truth)
    offset.update(signals)
    delay = 3 * spec.sample_rate // spec.fps
    late.update(analyzer(video, torch.nn.functional.pad(audio, (delay, 0))[..., :audio.shape[-1]], spec.fps,
                         spec.sample_rate))
    scores, synced, delayed = events.compute(), offset.compute(), late.compute()
    for pair in ("audio_truth", "visual_truth", "audio_visual"):
        assert float(scores[f"event_f1_{pair}"]) >= 0.9, pair
    assert float(synced["av_offset_in_sync"]) == 1.0 and abs(float(synced["av_offset_median_ms"])) <= FRAME_MS
    assert float(delayed["av_offset_in_sync"]) == 0.0
    shift = float(delayed["av_offset_median_ms"]) - float(synced["av_offset_median_ms"])
    assert shift == pytest.approx(3 * FRAME_MS, abs=15.0)
