"""Metrics: Fréchet distances (FVD, FAD, weight-free FDs), kernel distance, audio-visual sync metrics.

Plain PyTorch + torchmetrics (no Lightning). See ``docs/metrics.md`` for protocols and comparability.
"""

from omniforcing.metrics.extractors import (
    EXTRACTOR_NAMES,
    AudioStatistics,
    FeatureExtractor,
    I3DFeatures,
    InvalidWeightsError,
    MissingWeightsError,
    VGGishFeatures,
    VideoStatistics,
    build_extractor,
)
from omniforcing.metrics.frechet import FDInfinity, GaussianStats, fd_infinity, frechet_distance
from omniforcing.metrics.frechet_metric import (
    FrechetAudioDistance,
    FrechetDistance,
    FrechetVideoDistance,
    metric_name,
)
from omniforcing.metrics.kernel_distance import kernel_distance
from omniforcing.metrics.suite import SUITE_METRICS, MetricSuite, real_stats_cache_path
from omniforcing.metrics.sync import AVOffset, ClipSignals, SyncAnalyzer, av_align_score, estimate_av_offset
from omniforcing.metrics.sync_metrics import AVAlign, AVSyncOffset, EventSync

__all__ = [
    "EXTRACTOR_NAMES",
    "SUITE_METRICS",
    "AVAlign",
    "AVOffset",
    "AVSyncOffset",
    "AudioStatistics",
    "ClipSignals",
    "EventSync",
    "FDInfinity",
    "FeatureExtractor",
    "FrechetAudioDistance",
    "FrechetDistance",
    "FrechetVideoDistance",
    "GaussianStats",
    "I3DFeatures",
    "InvalidWeightsError",
    "MetricSuite",
    "MissingWeightsError",
    "SyncAnalyzer",
    "VGGishFeatures",
    "VideoStatistics",
    "av_align_score",
    "build_extractor",
    "estimate_av_offset",
    "fd_infinity",
    "frechet_distance",
    "kernel_distance",
    "metric_name",
    "real_stats_cache_path",
]
