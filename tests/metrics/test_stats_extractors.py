"""Weight-free extractors (video_stats, audio_stats), the builder, and input validation."""

from __future__ import annotations

import pytest
import torch

from omniforcing.metrics.extractors import (
    AUDIO_STATS_FEATURES,
    EXTRACTOR_NAMES,
    VIDEO_STATS_FEATURES,
    AudioStatistics,
    VideoStatistics,
    build_extractor,
)
from omniforcing.metrics.frechet_metric import FrechetDistance


def _feature(features: torch.Tensor, names: tuple[str, ...], name: str) -> torch.Tensor:
    return features[:, names.index(name)]


def test_video_stats_shape_determinism_and_motion_response(synthetic_clip):
    moving = synthetic_clip("wall").video
    static = moving[:, :1].expand_as(moving).contiguous()
    extractor = VideoStatistics()
    features = extractor(torch.cat([moving, static]), 24.0)
    assert features.shape == (2, extractor.dim) == (2, len(VIDEO_STATS_FEATURES)) == (2, 66)
    assert torch.isfinite(features).all()
    torch.testing.assert_close(extractor(moving, 24.0), features[:1])
    flow = _feature(features, VIDEO_STATS_FEATURES, "flow_magnitude_mean")
    difference = _feature(features, VIDEO_STATS_FEATURES, "frame_difference_mean")
    impacts = _feature(features, VIDEO_STATS_FEATURES, "impact_rate")
    assert flow[0] > 0.3 and flow[1] == 0 and difference[1] == 0
    # the wall clip has 4 impacts in 3 s
    assert impacts[0] == pytest.approx(4 / (73 / 24), rel=0.01) and impacts[1] == 0


def test_video_stats_colour_features_follow_the_pixels():
    red = torch.zeros(1, 4, 3, 16, 16, dtype=torch.uint8)
    red[:, :, 0] = 255
    features = VideoStatistics()(red, 24.0)
    assert _feature(features, VIDEO_STATS_FEATURES, "colour_mean_r").item() == pytest.approx(1.0)
    assert _feature(features, VIDEO_STATS_FEATURES, "colour_mean_g").item() == pytest.approx(0.0)
    assert _feature(features, VIDEO_STATS_FEATURES, "colour_hist_r7").item() == pytest.approx(1.0)
    float_video = red.float() / 127.5 - 1  # the same clip in the project's [-1, 1] convention
    torch.testing.assert_close(VideoStatistics()(float_video, 24.0), features)


def test_audio_stats_shape_and_onset_rate(synthetic_clip):
    clip = synthetic_clip("gravity")
    silence = torch.zeros_like(clip.audio)
    extractor = AudioStatistics()
    features = extractor(torch.cat([clip.audio, silence]), clip.sample_rate)
    assert features.shape == (2, extractor.dim) == (2, len(AUDIO_STATS_FEATURES)) == (2, 111)
    assert torch.isfinite(features).all()
    onset_rate = _feature(features, AUDIO_STATS_FEATURES, "onset_rate")
    assert onset_rate[0] == pytest.approx(len(clip.events) / 3.0, rel=0.01) and onset_rate[1] == 0
    resampled = extractor(clip.audio.repeat(1, 2, 1), clip.sample_rate)  # stereo input is mixed to mono
    torch.testing.assert_close(resampled, features[:1])


def test_fd_on_weight_free_features_separates_different_clip_sets(synthetic_clip):
    metric = FrechetDistance("video_stats", reset_real_features=False)
    for seed in range(3):
        metric.update(synthetic_clip("gravity", seed=seed, seconds=1.0).video, 24.0, real=True)
        metric.update(synthetic_clip("gravity", seed=seed + 10, seconds=1.0).video, 24.0, real=False)
    same = float(metric.compute())
    metric.reset()
    for seed in range(3):
        metric.update(synthetic_clip("jumps", seed=seed, seconds=3.0).video[:, :25], 24.0, real=False)
    assert float(metric.compute()) > 2 * same


def test_build_extractor_names_and_errors():
    assert {build_extractor(name).name for name in ("video_stats", "audio_stats")} == {"video_stats", "audio_stats"}
    assert set(EXTRACTOR_NAMES) == {"video_stats", "audio_stats", "i3d", "vggish"}
    with pytest.raises(ValueError, match="unknown extractor 'clip'"):
        build_extractor("clip")


def test_inputs_are_validated_with_clear_messages():
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        VideoStatistics()(torch.full((1, 4, 3, 8, 8), 200.0), 24.0)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        VideoStatistics()(torch.zeros(1, 4, 8, 8), 24.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        VideoStatistics()(torch.zeros(1, 1, 3, 8, 8), 24.0)
    with pytest.raises(ValueError, match="fps must be positive"):
        VideoStatistics()(torch.zeros(1, 4, 3, 8, 8), 0.0)
    with pytest.raises(ValueError, match="at least 50 ms"):
        AudioStatistics()(torch.zeros(1, 1, 100), 16000)
