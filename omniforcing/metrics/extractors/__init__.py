"""Feature extractors behind one interface (:class:`FeatureExtractor`), built from a name or a class path.

Short names of the extractors shipped here: ``"i3d"`` (FVD reference, needs ``i3d_torchscript.pt``),
``"vggish"`` (FAD reference, needs ``vggish-10086976.pth``), ``"video_stats"`` and ``"audio_stats"``
(weight-free, always available). Any other :class:`FeatureExtractor` is named by its class path, as a string
(``"mypackage.features.MyFeatures"``) or a recipe-style ``{"class_path": ..., "init_args": {...}}``; nothing here
needs to change for it (docs/extending.md, "A metric").
Synchformer (:class:`SynchformerOffsets`, needs ``synchformer_state_dict.pth``) is a paired audio-visual model,
not a feature extractor of one modality: it predicts offsets for DeSync (``MetricSuite`` name ``"desync"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omniforcing.class_paths import import_class
from omniforcing.errors import InvalidInputError
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

EXTRACTORS = {
    "video_stats": "omniforcing.metrics.extractors.video_stats.VideoStatistics",
    "audio_stats": "omniforcing.metrics.extractors.audio_stats.AudioStatistics",
    "i3d": "omniforcing.metrics.extractors.i3d.I3DFeatures",
    "vggish": "omniforcing.metrics.extractors.vggish.VGGishFeatures",
}
"""Short names of the shipped extractors and their class paths (a name is only an abbreviation)."""

EXTRACTOR_NAMES = tuple(EXTRACTORS)
"""Short names accepted by :func:`build_extractor` besides class paths."""

ExtractorSpec = str | Mapping[str, Any]
"""A short name, a class path, or ``{"class_path": ..., "init_args": {...}}``."""


def extractor_class_spec(spec: ExtractorSpec) -> tuple[str, dict[str, Any]]:
    """``(class path, init args)`` of a spec (short names expanded); unknown short names are a one-line error."""
    if isinstance(spec, Mapping):
        if "class_path" not in spec:
            raise InvalidInputError(f"extractor spec {dict(spec)} has no 'class_path'")
        return str(spec["class_path"]), dict(spec.get("init_args") or {})
    if spec in EXTRACTORS:
        return EXTRACTORS[spec], {}
    if "." not in spec:
        raise InvalidInputError(f"unknown extractor {spec!r}; choose from {', '.join(EXTRACTOR_NAMES)} or give the "
                                "class path of a FeatureExtractor")
    return spec, {}


def build_extractor(spec: ExtractorSpec, *,
                    weight_paths: Mapping[str, str | Path | None] | None = None) -> FeatureExtractor:
    """The extractor of ``spec`` (:data:`ExtractorSpec`), with its default preset unless ``init_args`` say otherwise.

    Args:
        spec: a short name of :data:`EXTRACTOR_NAMES`, a class path, or a ``class_path``/``init_args`` mapping.
        weight_paths: weight file per extractor ``name`` (the class attribute), passed as its ``path`` argument
            unless the spec sets one, e.g. ``{"i3d": "i3d_torchscript.pt"}``; absent or ``None``: the extractor's
            own default (``$OMNIFORCING_I3D_PATH``, ``$OMNIFORCING_VGGISH_PATH``).

    Raises:
        InvalidInputError: unknown name, a class path that does not import or is not a :class:`FeatureExtractor`.
        MissingWeightsError / InvalidWeightsError: a reference extractor's weight file is absent or wrong.
    """
    class_path, init_args = extractor_class_spec(spec)
    cls = import_class(class_path, FeatureExtractor, "feature extractor")
    path = (weight_paths or {}).get(cls.name)
    if path is not None:
        init_args.setdefault("path", path)
    return cls(**init_args)


__all__ = [
    "AUDIO_STATS_FEATURES",
    "EXTRACTORS",
    "EXTRACTOR_NAMES",
    "I3D_PATH_ENV",
    "SYNCHFORMER_PATH_ENV",
    "VGGISH_PATH_ENV",
    "VIDEO_STATS_FEATURES",
    "AudioStatistics",
    "ExtractorSpec",
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
    "extractor_class_spec",
]
