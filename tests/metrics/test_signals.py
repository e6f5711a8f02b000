"""Building blocks of the sync metrics: optical flow, onset detection, peak picking, mel filters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniforcing.metrics.motion import dense_flow, estimate_flow, flow_change, motion_magnitude
from omniforcing.metrics.onsets import ENVELOPE_RATE, detect_onsets, onset_strength
from omniforcing.metrics.peaks import pick_peaks, strict_local_maxima
from omniforcing.metrics.spectral import htk_mel_matrix, mfcc_from_log_mel


def _shifted(image: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """``image`` moved by (dx, dy) pixels (bilinear)."""
    height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([2 * (xs - dx) / (width - 1) - 1, 2 * (ys - dy) / (height - 1) - 1], dim=-1)
    return F.grid_sample(image[None, None], grid[None], align_corners=True, padding_mode="border")[0, 0]


@pytest.mark.parametrize(("dx", "dy"), [(0.4, 0.0), (1.5, -0.7), (4.0, 3.0)])
def test_flow_recovers_a_known_translation(dx: float, dy: float):
    texture = F.interpolate(torch.rand(1, 1, 24, 24), size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
    flow = estimate_flow(texture[None], _shifted(texture, dx, dy)[None])
    centre = flow[0, :, 16:80, 16:80].mean(dim=(1, 2))
    assert centre.tolist() == pytest.approx([dx, dy], abs=0.05)


def test_flow_is_reported_in_native_pixels_after_downscaling():
    texture = F.interpolate(torch.rand(1, 1, 32, 32), size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    frames = torch.stack([texture, _shifted(texture, 4.0, 0.0)])
    video = frames[None, :, None].expand(1, 2, 3, 128, 128)  # (B, T, 3, H, W), gray
    full, half = dense_flow(video, max_side=128), dense_flow(video, max_side=64)
    assert half.shape[-1] == 64 and full.shape[-1] == 128
    assert full[0, 0, 0, 32:96, 32:96].mean().item() == pytest.approx(4.0, abs=0.1)
    assert half[0, 0, 0, 16:48, 16:48].mean().item() == pytest.approx(4.0, abs=0.2)


def test_motion_envelopes_follow_the_av_align_time_convention(synthetic_clip):
    clip = synthetic_clip("jumps")
    flow = dense_flow(clip.video.float() / 255)
    motion = motion_magnitude(flow)[0]
    assert motion.shape == (clip.video.shape[1],)
    assert strict_local_maxima(motion, 0.1).tolist() == [9, 27, 41, 60]  # the jump into frame i is at i / fps
    impacts = flow_change(flow)[0]
    assert impacts[0] == 0 and impacts[-1] == 0 and impacts.shape == motion.shape


def test_onsets_of_clicks_are_found_within_15_ms(synthetic_clip):
    clip = synthetic_clip("wall")
    envelope = onset_strength(clip.audio[:, 0], clip.sample_rate)[0]
    assert envelope.shape == (1 + clip.audio.shape[-1] // 160,)
    onsets = detect_onsets(envelope, ENVELOPE_RATE)
    assert len(onsets) == len(clip.events)
    assert (onsets - clip.events).abs().max().item() < 0.015


def test_onsets_at_another_sample_rate_and_silence():
    rate = 44100
    audio = torch.zeros(1, rate * 2)
    audio[0, rate // 2:rate // 2 + 400] = torch.randn(400) * 0.5
    onsets = detect_onsets(onset_strength(audio, rate)[0])
    assert onsets.tolist() == pytest.approx([0.5], abs=0.015)
    assert detect_onsets(onset_strength(torch.zeros(1, rate), rate)[0]).numel() == 0


def test_pick_peaks_follows_the_librosa_rule():
    x = torch.tensor([0.0, 0.2, 1.0, 0.3, 0.0, 0.0, 0.9, 0.95, 0.1, 0.0, 0.0, 0.0])
    # rising-edge semantics of post_max = 1: a value that is the max of itself and the 2 before is a peak
    peaks = pick_peaks(x, pre_max=2, post_max=1, pre_avg=2, post_avg=3, delta=0.1, wait=2)
    assert peaks.tolist() == [2, 6]
    centred = pick_peaks(x, pre_max=1, post_max=2, pre_avg=2, post_avg=3, delta=0.1, wait=0)
    assert centred.tolist() == [2, 7]
    assert strict_local_maxima(x, 0.5).tolist() == [2, 7]
    assert strict_local_maxima(x, 0.96).tolist() == [2]


def test_mel_matrix_and_mfcc():
    weights = htk_mel_matrix(64, 257, 16000, 125.0, 7500.0)
    assert weights.shape == (257, 64) and weights[0].abs().sum() == 0 and weights.max() <= 1.0
    assert (weights.sum(dim=0) > 0).all()  # every band covers some FFT bins
    flat = torch.ones(3, 32)
    coefficients = mfcc_from_log_mel(flat, 13)
    assert coefficients[:, 0].tolist() == pytest.approx([32**0.5] * 3)
    assert coefficients[:, 1:].abs().max() < 1e-5
