"""Weight-free video features (``video_stats``): colour, texture and motion statistics of each clip.

They need no downloaded network, so a Fréchet distance on them (``fd_video_stats``) always works offline.
They respond to gross changes of colour, sharpness, amount and regularity of motion and of impacts, but
have no published scale: never compare ``fd_video_stats`` with FVD numbers from papers.

Every clip is resized to ``size x size`` (area averaging) and converted to ``[0, 1]``; motion is our
Lucas-Kanade flow (:mod:`omniforcing.metrics.motion`) at that size, in pixels of the resized frame per frame.
Features, in order (:data:`VIDEO_STATS_FEATURES`, 66 values):

1. colour moments: mean, standard deviation and skewness of R, G, B over all pixels and frames (9);
2. colour histograms: 8 equal bins on ``[0, 1]`` per channel, as fractions of pixels (24);
3. luma gradient (Sobel): mean and std of the magnitude, std over frames of the per-frame mean magnitude (3),
   and an 8-bin histogram of unsigned gradient orientation on ``[0, pi)`` weighted by magnitude (8);
4. frame-difference energy (mean absolute luma change per frame): trajectory statistics (4);
5. optical-flow magnitude per frame (mean over pixels): trajectory statistics (4), an 8-bin histogram of
   flow direction on ``[-pi, pi)`` weighted by magnitude (8), and the fraction of pixels moving faster than
   0.5 px/frame (1);
6. impact envelope (change of the cell-averaged flow, :func:`~omniforcing.metrics.motion.flow_change`):
   trajectory statistics (4) and detected impacts per second (1).

"Trajectory statistics" are the mean, standard deviation, maximum and lag-1 autocorrelation over frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from omniforcing.metrics.extractors.base import FeatureExtractor, PreprocessingSpec
from omniforcing.metrics.inputs import check_rate, video_to_unit_range
from omniforcing.metrics.motion import estimate_flow, flow_change, to_luma
from omniforcing.metrics.sync import detect_visual_impacts

_TRAJECTORY = ("mean", "std", "max", "autocorr")
HISTOGRAM_BINS = 8
VIDEO_STATS_FEATURES: tuple[str, ...] = (
    *(f"colour_{stat}_{c}" for stat in ("mean", "std", "skew") for c in "rgb"),
    *(f"colour_hist_{c}{b}" for c in "rgb" for b in range(HISTOGRAM_BINS)),
    "gradient_mean", "gradient_std", "gradient_temporal_std",
    *(f"gradient_orientation_{b}" for b in range(HISTOGRAM_BINS)),
    *(f"frame_difference_{stat}" for stat in _TRAJECTORY),
    *(f"flow_magnitude_{stat}" for stat in _TRAJECTORY),
    *(f"flow_direction_{b}" for b in range(HISTOGRAM_BINS)),
    "moving_fraction",
    *(f"impact_envelope_{stat}" for stat in _TRAJECTORY),
    "impact_rate",
)
"""Names of the ``video_stats`` features, in output order."""


def trajectory_statistics(values: Tensor) -> Tensor:
    """Mean, std, max and lag-1 autocorrelation over time of ``(B, T)`` -> ``(B, 4)`` (autocorr 0 if flat)."""
    centred = values - values.mean(dim=1, keepdim=True)
    scale = centred.square().sum(dim=1)
    lagged = (centred[:, 1:] * centred[:, :-1]).sum(dim=1)
    autocorr = torch.where(scale > 1e-12, lagged / scale.clamp(min=1e-12), torch.zeros_like(scale))
    spread = values.std(dim=1) if values.shape[1] > 1 else torch.zeros_like(scale)
    return torch.stack([values.mean(dim=1), spread, values.amax(dim=1), autocorr], dim=1)


def weighted_histogram(angles: Tensor, weights: Tensor, low: float, high: float, bins: int) -> Tensor:
    """Histogram ``(B, bins)`` of ``angles`` ``(B, N)`` in ``[low, high)`` weighted by ``weights``.

    Each row sums to 1 (uniform when all weights are 0).
    """
    index = ((angles - low) / (high - low) * bins).long().clamp(0, bins - 1)
    histogram = torch.zeros(angles.shape[0], bins, dtype=weights.dtype, device=weights.device)
    histogram.scatter_add_(1, index, weights)
    total = histogram.sum(dim=1, keepdim=True)
    return torch.where(total > 0, histogram / total.clamp(min=1e-12), torch.full_like(histogram, 1 / bins))


def _colour_features(video: Tensor) -> Tensor:
    pixels = video.transpose(1, 2).flatten(2)
    mean = pixels.mean(dim=2)
    std = pixels.std(dim=2)
    skew = ((pixels - mean[..., None]) ** 3).mean(dim=2) / std.clamp(min=1e-6) ** 3
    index = (pixels * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1)
    counts = torch.zeros(*pixels.shape[:2], HISTOGRAM_BINS, device=pixels.device)
    histogram = (counts.scatter_add_(2, index, torch.ones_like(pixels)) / pixels.shape[2]).flatten(1)
    return torch.cat([mean, std, skew, histogram], dim=1)


def _gradient_features(luma: Tensor) -> Tensor:
    frames = F.pad(luma.flatten(0, 1)[:, None], (1, 1, 1, 1), mode="replicate")
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=luma.device) / 8
    grad_x = F.conv2d(frames, sobel.view(1, 1, 3, 3))
    grad_y = F.conv2d(frames, sobel.T.reshape(1, 1, 3, 3))
    magnitude = torch.hypot(grad_x, grad_y).view(*luma.shape[:2], -1)
    orientation = torch.atan2(grad_y, grad_x).remainder(math.pi).view(luma.shape[0], -1)
    per_frame = magnitude.mean(dim=2)
    temporal = per_frame.std(dim=1) if luma.shape[1] > 1 else torch.zeros_like(per_frame[:, 0])
    summary = torch.stack([magnitude.mean(dim=(1, 2)), magnitude.flatten(1).std(dim=1), temporal], dim=1)
    histogram = weighted_histogram(orientation, magnitude.flatten(1), 0.0, math.pi, HISTOGRAM_BINS)
    return torch.cat([summary, histogram], dim=1)


def _motion_features(luma: Tensor, fps: float) -> Tensor:
    batch, frames = luma.shape[:2]
    flow = estimate_flow(luma[:, :-1].flatten(0, 1), luma[:, 1:].flatten(0, 1))
    flow = flow.view(batch, frames - 1, 2, *luma.shape[-2:])
    magnitude = flow.norm(dim=2)
    direction = torch.atan2(flow[:, :, 1], flow[:, :, 0]).flatten(1)
    difference = (luma[:, 1:] - luma[:, :-1]).abs().mean(dim=(2, 3))
    impacts = flow_change(flow)
    seconds = frames / fps
    rate = torch.tensor([len(detect_visual_impacts(impacts[i].cpu(), fps)) / seconds for i in range(batch)],
                        device=luma.device)
    return torch.cat([
        trajectory_statistics(difference),
        trajectory_statistics(magnitude.mean(dim=(2, 3))),
        weighted_histogram(direction, magnitude.flatten(1), -math.pi, math.pi, HISTOGRAM_BINS),
        (magnitude > 0.5).float().mean(dim=(1, 2, 3))[:, None],
        trajectory_statistics(impacts),
        rate[:, None],
    ], dim=1)


class VideoStatistics(FeatureExtractor):
    """Weight-free per-clip video features (module docstring lists all 66).

    Args:
        size: side of the square the frames are resized to before analysis.
    """

    name = "video_stats"
    modality = "video"
    dim = len(VIDEO_STATS_FEATURES)
    is_reference = False
    weight_sha256 = None

    def __init__(self, *, size: int = 64) -> None:
        super().__init__()
        self.size = size

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """Resize policy, value range, flow method and feature-list version."""
        return {"version": 1, "resize": f"area to {self.size}x{self.size}", "range": "[0,1]",
                "flow": "pyramidal Lucas-Kanade, 3 levels", "features": len(VIDEO_STATS_FEATURES)}

    @torch.no_grad()
    def forward(self, media: Tensor, rate: float) -> Tensor:
        """Features ``(B, 66)`` of videos ``(B, T, 3, H, W)`` (uint8 or float in ``[-1, 1]``, ``T >= 2``)."""
        fps = check_rate(rate, "fps")
        video = video_to_unit_range(media)
        if video.shape[1] < 2:
            raise ValueError(f"video_stats needs at least 2 frames per clip, got {video.shape[1]}")
        batch, frames = video.shape[:2]
        resized = F.interpolate(video.flatten(0, 1), size=(self.size, self.size), mode="area")
        resized = resized.view(batch, frames, 3, self.size, self.size)
        luma = to_luma(resized)
        features = torch.cat([_colour_features(resized), _gradient_features(luma), _motion_features(luma, fps)], dim=1)
        return features.float()
