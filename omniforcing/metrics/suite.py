"""A configured set of metrics behind three calls: update with clips, compute a flat dict, reset.

This is the API the evaluation callback and ``omniforcing evaluate`` build on::

    suite = MetricSuite(["video_stats", "audio_stats", "i3d", "vggish", "sync", "desync"])
    suite.prepare_real_stats(real_batches, fps=24, sample_rate=16000, cache_dir="runs/x/metric_cache",
                             description="val shards data/synth/val-*.tar, 2 s clips")
    for video, audio in generated:
        suite.update(video, audio, fps=24, sample_rate=16000)
    values = suite.compute()          # {"fd_video_stats": ..., "fd_video_stats_n_fake": ..., "av_align": ...}
    suite.reset()                     # generated side only; cached real statistics stay

Missing or wrong reference weights never raise: the metric is skipped with one warning at construction and
listed in :attr:`MetricSuite.skipped`. Clips a metric cannot use (e.g. shorter than I3D's 16 frames) and
failures at compute time (e.g. fewer than 2 samples) are logged, counted in :attr:`MetricSuite.failures` and
left out of the result.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from omniforcing.errors import InvalidInputError
from omniforcing.metrics.extractors import (
    EXTRACTOR_NAMES,
    ExtractorSpec,
    InvalidWeightsError,
    MissingWeightsError,
    SynchformerOffsets,
    build_extractor,
    extractor_class_spec,
)
from omniforcing.metrics.frechet_metric import FrechetAudioDistance, FrechetDistance, FrechetVideoDistance
from omniforcing.metrics.sync import SyncAnalyzer
from omniforcing.metrics.sync_metrics import AVAlign, AVSyncOffset, DeSync, EventSync
from omniforcing.types import AVBatch

logger = logging.getLogger(__name__)

PAIRED_METRICS = ("sync", "desync")
"""Metrics of a clip's audio and video together (not a Fréchet distance of one extractor's features)."""

SUITE_METRICS = (*EXTRACTOR_NAMES, *PAIRED_METRICS)
"""Short names accepted by :class:`MetricSuite`: the extractor names plus ``"sync"`` and ``"desync"``
(Synchformer). Any :class:`~omniforcing.metrics.extractors.FeatureExtractor` class path is accepted too."""


def check_metric_specs(metrics: Sequence[ExtractorSpec]) -> None:
    """Raise one :class:`~omniforcing.errors.InvalidInputError` naming every spec that is neither a paired metric,
    a short extractor name nor a class path (class paths are imported when the suite is built)."""
    unknown = []
    for spec in metrics:
        if isinstance(spec, str) and spec in PAIRED_METRICS:
            continue
        try:
            extractor_class_spec(spec)
        except InvalidInputError:
            unknown.append(spec)
    if unknown:
        raise InvalidInputError(f"unknown metrics {unknown}; choose from {', '.join(SUITE_METRICS)} or give the "
                                "class path of a FeatureExtractor")


def metric_key(spec: ExtractorSpec) -> str:
    """How a metric spec is named in :attr:`MetricSuite.skipped` (its short name or class path)."""
    return spec if isinstance(spec, str) else str(spec["class_path"])


def real_stats_cache_path(cache_dir: str | Path, metric: FrechetDistance, description: str) -> Path:
    """Cache file of a metric's real statistics: keyed by the extractor fingerprint and the data description."""
    key = hashlib.sha256(f"{metric.extractor.fingerprint}\n{description}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"real_{metric.name}_{key}.npz"


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_rank_zero() -> bool:
    return not _is_distributed() or torch.distributed.get_rank() == 0


class MetricSuite(nn.Module):
    """Fréchet distances for the chosen extractors plus the sync metrics, with one update/compute/reset API.

    Args:
        metrics: names from :data:`SUITE_METRICS`: ``"video_stats"``, ``"audio_stats"`` (weight-free FDs),
            ``"i3d"`` (FVD), ``"vggish"`` (FAD), ``"sync"`` (AV-Align, AV offset, event sync), ``"desync"``
            (Synchformer DeSync; clips of at least 4.8 s); or a :class:`FeatureExtractor` class path (string or
            ``{"class_path", "init_args"}``), whose Fréchet distance is logged as ``fd_<its name>``.
        i3d_path: ``i3d_torchscript.pt`` (None: ``$OMNIFORCING_I3D_PATH``).
        vggish_path: ``vggish-10086976.pth`` (None: ``$OMNIFORCING_VGGISH_PATH``).
        synchformer_path: ``synchformer_state_dict.pth`` (None: ``$OMNIFORCING_SYNCHFORMER_PATH``).
        keep_features: keep raw features to also report the kernel distance ``kd_<extractor>`` and
            ``<name>_inf`` (FD-infinity); memory grows with the number of clips.
        sync_tolerance_frames: event-matching tolerance of :class:`EventSync`, in video frames.
        max_offset_ms: search range of :class:`AVSyncOffset`.

    Raises:
        InvalidInputError: an unknown metric name or an unusable class path (a ``ValueError``; a configuration
            error, raised at construction).
    """

    def __init__(self, metrics: Sequence[ExtractorSpec] = ("video_stats", "audio_stats", "sync"), *,
                 i3d_path: str | Path | None = None, vggish_path: str | Path | None = None,
                 synchformer_path: str | Path | None = None, keep_features: bool = False,
                 sync_tolerance_frames: float = 1.0,
                 max_offset_ms: float = 500.0) -> None:
        super().__init__()
        check_metric_specs(metrics)
        self.frechet = nn.ModuleDict()
        self.sync = nn.ModuleDict()
        self.skipped: dict[str, str] = {}
        self.failures: Counter[str] = Counter()
        self.keep_features = keep_features
        self.analyzer = SyncAnalyzer()
        self.synchformer: SynchformerOffsets | None = None
        self.desync: DeSync | None = None
        paired = {"sync": lambda: self._add_sync(sync_tolerance_frames, max_offset_ms),
                  "desync": lambda: self._add_desync(synchformer_path)}
        weight_paths = {"i3d": i3d_path, "vggish": vggish_path}
        for spec in metrics:
            if isinstance(spec, str) and spec in paired:
                paired[spec]()
            else:
                self._add_frechet(spec, weight_paths)

    def _add_frechet(self, spec: ExtractorSpec, weight_paths: dict[str, str | Path | None]) -> None:
        """A Fréchet distance on the features of the extractor of ``spec``; skipped with one warning when its
        weights are missing or wrong."""
        try:
            extractor = build_extractor(spec, weight_paths=weight_paths)
        except (MissingWeightsError, InvalidWeightsError) as error:
            logger.warning("metric %r is skipped: %s", metric_key(spec), error)
            self.skipped[metric_key(spec)] = str(error)
            return
        if extractor.name in self.frechet:
            raise InvalidInputError(f"two metrics use extractors named {extractor.name!r}; keep one")
        metric_class = FrechetVideoDistance if extractor.modality == "video" else FrechetAudioDistance
        self.frechet[extractor.name] = metric_class(extractor, reset_real_features=False,
                                                    keep_features=self.keep_features)

    def _add_sync(self, tolerance_frames: float, max_offset_ms: float) -> None:
        """AV-Align, AV offset and event sync on the synchrony signals of each generated clip."""
        self.sync.update({"av_align": AVAlign(), "av_offset": AVSyncOffset(max_offset_ms=max_offset_ms),
                          "event_sync": EventSync(tolerance_frames=tolerance_frames)})

    def _add_desync(self, path: str | Path | None) -> None:
        """DeSync only with a recognised Synchformer state dict; otherwise skipped with one warning."""
        try:
            synchformer = SynchformerOffsets(path)
        except (MissingWeightsError, InvalidWeightsError) as error:
            logger.warning("metric 'desync' is skipped: %s", error)
            self.skipped["desync"] = str(error)
            return
        if not synchformer.is_reference:
            self.skipped["desync"] = "the Synchformer file is not the published one (MD5 differs)"
            return
        self.synchformer, self.desync = synchformer, DeSync()

    @property
    def names(self) -> list[str]:
        """Logging names of the active Fréchet metrics (e.g. ``["fd_video_stats", "fvd"]``)."""
        return [metric.name for metric in self.frechet.values()]

    def extractor_info(self) -> dict[str, dict[str, str | int | bool | None]]:
        """Per active Fréchet metric (logging name): extractor name, fingerprint, reference flag, weight sha256, dim.

        Record it next to every value: only equal fingerprints give comparable numbers.
        """
        return {metric.name: {"extractor": metric.extractor.name, "fingerprint": metric.extractor.fingerprint,
                              "reference": metric.extractor.is_reference, "dim": metric.extractor.dim,
                              "weights_sha256": metric.extractor.weight_sha256}
                for metric in self.frechet.values()}

    def _fail(self, what: str, error: Exception) -> None:
        self.failures[what] += 1
        if self.failures[what] == 1:
            logger.warning("%s failed and is left out (counted in MetricSuite.failures): %s", what, error)

    def update(self, video: Tensor | None, audio: Tensor | None, *, fps: float, sample_rate: int,
               real: bool = False, event_times: Sequence[Tensor] | None = None) -> None:
        """Add a batch of clips.

        Args:
            video: ``(B, T, 3, H, W)`` uint8 or float in ``[-1, 1]``, or None.
            audio: ``(B, 1, S)`` float in ``[-1, 1]``, or None.
            fps: video frame rate.
            sample_rate: audio sample rate in Hz.
            real: True for reference clips (only the Fréchet metrics use them), False for generated clips.
            event_times: per clip ``(E,)`` ground-truth event times in seconds (synthetic data), or None.
        """
        for metric in self.frechet.values():
            media, rate = (video, fps) if metric.modality == "video" else (audio, sample_rate)
            if media is None:
                continue
            try:
                metric.update(media, rate, real=real)
            except ValueError as error:
                self._fail(f"{metric.name} update", error)
        if real or video is None or audio is None:
            return
        if self.synchformer is not None:
            self._update_desync(video, audio, fps, sample_rate)
        if not self.sync:
            return
        try:
            signals = self.analyzer(video, audio, fps, sample_rate)
        except ValueError as error:
            self._fail("sync analysis", error)
            return
        self.sync["av_align"].update(signals)
        self.sync["av_offset"].update(signals)
        self.sync["event_sync"].update(signals, event_times)

    def _update_desync(self, video: Tensor, audio: Tensor, fps: float, sample_rate: int) -> None:
        try:
            offsets = self.synchformer(video, audio, fps, sample_rate)
        except ValueError as error:
            self._fail("desync", error)
            return
        self.desync.update(offsets)

    def prepare_real_stats(self, batches: Iterable[AVBatch], *, fps: float, sample_rate: int,
                           cache_dir: str | Path, description: str) -> dict[str, Path]:
        """Load each Fréchet metric's real statistics from the cache, or compute them once from ``batches``.

        Statistics are keyed by extractor fingerprint + ``description`` (say which data, split, clip length and
        rates, since the key cannot see the data). Under DDP every rank iterates its own share of the batches;
        the merged statistics are pinned on every rank and written by rank 0.

        Returns:
            metric name -> cache file.
        """
        paths = {name: real_stats_cache_path(cache_dir, metric, description) for name, metric in self.frechet.items()}
        missing = []
        for name, path in paths.items():
            if not path.is_file():
                missing.append(name)
                continue
            try:
                self.frechet[name].load_real_stats(path)
            except ValueError as error:
                logger.warning("cached statistics %s are unusable (%s); recomputing", path, error)
                missing.append(name)
        if missing:
            for metric in (self.frechet[name] for name in missing):
                metric.clear_real()
            for batch in batches:
                for metric in (self.frechet[name] for name in missing):
                    media, rate = (batch.video, fps) if metric.modality == "video" else (batch.audio, sample_rate)
                    if media is not None:
                        try:
                            metric.update(media, rate, real=True)
                        except ValueError as error:
                            self._fail(f"{metric.name} real update", error)
            for name in missing:
                self._pin_and_save(self.frechet[name], paths[name], description)
        return {self.frechet[name].name: path for name, path in paths.items()}

    def _pin_and_save(self, metric: FrechetDistance, path: Path, description: str) -> None:
        stats = metric.real_stats()
        if stats.count < 2:
            self._fail(f"{metric.name} real statistics", ValueError(f"only {stats.count} real feature vectors"))
            return
        metric.pin_real_stats(stats)
        if _is_rank_zero():  # the merged stats in hand: writing must not start another (rank-0-only) collective
            metric.save_real_stats(path, description, stats)

    def compute(self) -> dict[str, float]:
        """Flat dict of finite scalars (merged over processes).

        Keys: per Fréchet metric ``<name>`` (``fvd``, ``fad``, ``fd_video_stats``, ...), ``<name>_n_real`` and
        ``<name>_n_fake`` (always report N: FD is biased by ~c/N), with ``keep_features`` also
        ``kd_<extractor>`` and ``<name>_inf``; with ``"sync"`` the keys of :class:`AVAlign`,
        :class:`AVSyncOffset` and :class:`EventSync` (``av_align``, ``av_offset_ms``, ``event_f1_audio_visual``...);
        with ``"desync"`` (real Synchformer weights given) ``desync``, ``desync_signed`` and ``desync_clips``.
        """
        values: dict[str, float] = {}
        for metric in self.frechet.values():
            values.update(self._compute_frechet(metric))
        for metric in [*self.sync.values(), *([self.desync] if self.desync is not None else [])]:
            # under DDP every rank must take part in the sync, also a rank that saw no clip
            if not metric.update_called and not _is_distributed():
                continue
            for name, value in metric.compute().items():
                if math.isfinite(float(value)):
                    values[name] = float(value)
        return values

    def _compute_frechet(self, metric: FrechetDistance) -> dict[str, float]:
        try:
            values = {metric.name: float(metric.compute())}
        except (ValueError, RuntimeError) as error:
            self._fail(f"{metric.name} compute", error)
            return {}
        values[f"{metric.name}_n_real"] = float(metric.real_stats().count)
        values[f"{metric.name}_n_fake"] = float(metric.fake_stats().count)
        if self.keep_features:
            try:
                values[f"kd_{metric.extractor.name}"] = metric.kernel_distance()[0]
                values[f"{metric.name}_inf"] = metric.fd_infinity().value
            except ValueError as error:
                self._fail(f"{metric.name} kernel distance / FD-infinity", error)
        return values

    def reset(self, include_real: bool = False) -> None:
        """Clear the generated side of every metric (and the real statistics too if ``include_real``)."""
        for metric in self.frechet.values():
            metric.reset()
            if include_real:
                metric.clear_real()
        for metric in [*self.sync.values(), *([self.desync] if self.desync is not None else [])]:
            metric.reset()
