"""Feature extractors behind one interface (:class:`FeatureExtractor`) and a builder by name.

Names: ``"i3d"`` (FVD reference, needs ``i3d_torchscript.pt``), ``"vggish"`` (FAD reference, needs
``vggish-10086976.pth``), ``"video_stats"`` and ``"audio_stats"`` (weight-free, always available).
Synchformer (:class:`SynchformerOffsets`, needs ``synchformer_state_dict.pth``) is a paired audio-visual model,
not a feature extractor of one modality: it predicts offsets for DeSync (``MetricSuite`` name ``"desync"``).
"""

from __future__ import annotations

from pathlib import Path

from omniforcing.metrics.extractors.audio_stats import AUDIO_STATS_FEATURES, AudioStatistics
from omniforcing.metrics.extractors.base import (
    FeatureExtractor,
    InvalidWeightsError,
    MissingWeightsError,
    PreprocessingSpec,
)
from omniforcing.metrics.extractors.i3d import I3D_PATH_ENV, I3DFeatures
from omniforcing.metrics.extractors.synchformer import SYNCHFORMER_PATH_ENV, SynchformerOffsets
from omniforcing.metrics.extractors.synchformer_network import SynchformerNetwork
from omniforcing.metrics.extractors.vggish import VGGISH_PATH_ENV, VGGishFeatures, VGGishNetwork
from omniforcing.metrics.extractors.video_stats import VIDEO_STATS_FEATURES, VideoStatistics

EXTRACTOR_NAMES = ("video_stats", "audio_stats", "i3d", "vggish")
"""Names accepted by :func:`build_extractor`."""


def build_extractor(name: str, *, i3d_path: str | Path | None = None,
                    vggish_path: str | Path | None = None) -> FeatureExtractor:
    """The extractor called ``name`` with its default preset.

    Args:
        name: one of :data:`EXTRACTOR_NAMES`.
        i3d_path: weight file for ``"i3d"`` (None: ``$OMNIFORCING_I3D_PATH``).
        vggish_path: weight file for ``"vggish"`` (None: ``$OMNIFORCING_VGGISH_PATH``).

    Raises:
        ValueError: unknown name.
        MissingWeightsError / InvalidWeightsError: a reference extractor's weight file is absent or wrong.
    """
    if name == "video_stats":
        return VideoStatistics()
    if name == "audio_stats":
        return AudioStatistics()
    if name == "i3d":
        return I3DFeatures(i3d_path)
    if name == "vggish":
        return VGGishFeatures(vggish_path)
    raise ValueError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTOR_NAMES)}")


__all__ = [
    "AUDIO_STATS_FEATURES",
    "EXTRACTOR_NAMES",
    "I3D_PATH_ENV",
    "SYNCHFORMER_PATH_ENV",
    "VGGISH_PATH_ENV",
    "VIDEO_STATS_FEATURES",
    "AudioStatistics",
    "FeatureExtractor",
    "I3DFeatures",
    "InvalidWeightsError",
    "MissingWeightsError",
    "PreprocessingSpec",
    "SynchformerNetwork",
    "SynchformerOffsets",
    "VGGishFeatures",
    "VGGishNetwork",
    "VideoStatistics",
    "build_extractor",
]
