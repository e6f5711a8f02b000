"""Fréchet distances as torchmetrics Metrics with an injectable feature extractor (FVD, FAD, weight-free FDs).

States are the float64 sufficient statistics of :mod:`omniforcing.metrics.frechet` for the real and the
generated set (count, sum, sum of outer products), all with ``dist_reduce_fx="sum"``: memory is constant in
the number of clips and a DDP ``compute`` equals one process that saw everything (the torchmetrics FID
pattern). ``keep_features=True`` additionally keeps the raw features (``dist_reduce_fx="cat"``) for KID,
FD-infinity and the sample-space distance.

Naming rule (METRICS.md §5.3): :attr:`FrechetDistance.name` is ``"fvd"`` / ``"fad"`` only when the extractor
is a reference network (``extractor.is_reference``) of the video / audio modality, and
``"fd_<extractor name>"`` otherwise (e.g. ``fd_video_stats``), so a weight-free value can never be logged as
FVD or FAD.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from omniforcing.metrics.extractors import FeatureExtractor, build_extractor
from omniforcing.metrics.frechet import (
    FDInfinity,
    GaussianStats,
    fd_infinity,
    frechet_distance,
    frechet_distance_from_features,
)
from omniforcing.metrics.kernel_distance import kernel_distance

REFERENCE_METRIC_NAMES = {"video": "fvd", "audio": "fad"}
"""The only names reserved for reference extractors."""


def metric_name(extractor: FeatureExtractor) -> str:
    """``"fvd"``/``"fad"`` for a reference video/audio extractor, ``"fd_<name>"`` for anything else."""
    if extractor.is_reference and extractor.modality in REFERENCE_METRIC_NAMES:
        return REFERENCE_METRIC_NAMES[extractor.modality]
    return f"fd_{extractor.name}"


class FrechetDistance(Metric):
    """Fréchet distance between the feature distributions of real and generated clips.

    Args:
        extractor: a :class:`FeatureExtractor`, or one of the names of
            :func:`~omniforcing.metrics.extractors.build_extractor` (default presets, weights from env vars).
        reset_real_features: if False, ``reset()`` keeps the real-set statistics (compute them once per run).
        keep_features: also keep raw features (memory grows with N) for :meth:`kernel_distance`,
            :meth:`fd_infinity` and the exact sample-space form when ``N < d``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    modality: ClassVar[str | None] = None

    def __init__(self, extractor: FeatureExtractor | str, *, reset_real_features: bool = True,
                 keep_features: bool = False) -> None:
        super().__init__()
        if isinstance(extractor, str):
            extractor = build_extractor(extractor)
        if self.modality is not None and extractor.modality != self.modality:
            raise ValueError(f"{type(self).__name__} needs a {self.modality} extractor, got {extractor.name!r} "
                             f"({extractor.modality})")
        self.extractor = extractor.eval().requires_grad_(False)
        self.reset_real_features = reset_real_features
        self.keep_features = keep_features
        self._pinned_real: GaussianStats | None = None
        dim = extractor.dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer_sum", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            if keep_features:
                self.add_state(f"{side}_features", [], dist_reduce_fx="cat")

    @property
    def name(self) -> str:
        """Logging name: ``fvd``/``fad`` for reference extractors, ``fd_<extractor name>`` otherwise."""
        return metric_name(self.extractor)

    def update(self, media: Tensor | None = None, rate: float | None = None, *, real: bool,
               features: Tensor | None = None) -> None:
        """Add clips (or precomputed features) to the real or the generated set.

        Args:
            media: video ``(B, T, 3, H, W)`` / audio ``(B, 1, S)`` as the extractor expects, or None.
            rate: fps / sample rate of ``media``.
            real: True for the reference (real) set, False for generated clips.
            features: ``(N, dim)`` features already extracted with this metric's extractor, instead of media.
        """
        if (media is None) == (features is None) or (media is not None and rate is None):
            raise ValueError("pass either media with its rate, or features")
        if features is None:
            features = self.extractor(media.to(self.device), rate)
        if features.ndim != 2 or features.shape[1] != self.extractor.dim:
            raise ValueError(f"{self.name}: features must be (N, {self.extractor.dim}), got {tuple(features.shape)}")
        if real and self._pinned_real is not None:
            raise ValueError(f"{self.name}: real statistics are pinned (loaded or precomputed); "
                             "do not add real clips on top of them")
        x = features.detach().to(self.device, torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + x.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(0))
        setattr(self, f"{side}_outer_sum", getattr(self, f"{side}_outer_sum") + x.T @ x)
        if self.keep_features:
            getattr(self, f"{side}_features").append(x.float())

    def _stats(self, side: str) -> GaussianStats:
        if side == "real" and self._pinned_real is not None:
            pinned = self._pinned_real
            return GaussianStats(pinned.count, pinned.feature_sum.to(self.device), pinned.outer_sum.to(self.device))
        return GaussianStats(int(getattr(self, f"{side}_count")), getattr(self, f"{side}_sum").clone(),
                             getattr(self, f"{side}_outer_sum").clone())

    def _features(self, side: str) -> Tensor | None:
        if not self.keep_features or (side == "real" and self._pinned_real is not None):
            return None
        stored = getattr(self, f"{side}_features")
        if isinstance(stored, Tensor):
            return stored
        return torch.cat(stored) if stored else None

    def compute(self) -> Tensor:
        """The Fréchet distance (float64 scalar) between real and generated features, merged over processes.

        Raises:
            ValueError: fewer than 2 real or 2 generated feature vectors.
        """
        real, fake = self._stats("real"), self._stats("fake")
        if real.count < 2 or fake.count < 2:
            raise ValueError(f"{self.name} needs at least 2 real and 2 generated feature vectors, "
                             f"has {real.count} real and {fake.count} generated")
        real_features, fake_features = self._features("real"), self._features("fake")
        if real_features is not None and fake_features is not None:
            return frechet_distance_from_features(real_features, fake_features)
        return frechet_distance(real.mean(), real.covariance(), fake.mean(), fake.covariance())

    def real_stats(self) -> GaussianStats:
        """Real-set statistics merged over processes (the pinned ones if any)."""
        with self.sync_context(should_sync=not self._is_synced):
            return self._stats("real")

    def fake_stats(self) -> GaussianStats:
        """Generated-set statistics merged over processes."""
        with self.sync_context(should_sync=not self._is_synced):
            return self._stats("fake")

    def pin_real_stats(self, stats: GaussianStats) -> None:
        """Use ``stats`` as the real set from now on; the accumulated real states are cleared.

        Pinned statistics are kept by ``reset`` and never summed across processes, so every rank must pin the
        same statistics.
        """
        if stats.dim != self.extractor.dim:
            raise ValueError(f"{self.name}: statistics have dimension {stats.dim}, extractor has {self.extractor.dim}")
        self._pinned_real = GaussianStats(stats.count, stats.feature_sum.detach().cpu().double(),
                                          stats.outer_sum.detach().cpu().double())
        self.real_count = torch.zeros_like(self.real_count)
        self.real_sum = torch.zeros_like(self.real_sum)
        self.real_outer_sum = torch.zeros_like(self.real_outer_sum)
        self._computed = None  # torchmetrics' cached compute() result is stale now

    def save_real_stats(self, path: str | Path, description: str = "", stats: GaussianStats | None = None) -> None:
        """Write real-set statistics to ``path`` (``.npz``) with the extractor's fingerprint.

        Args:
            path: output file.
            description: what the real set is (stored as metadata).
            stats: the statistics to write; ``None`` merges this metric's real states over processes first,
                a collective call that every rank must make (pass ``stats`` to write from one rank only).
        """
        metadata = {"metric": self.name, "extractor": self.extractor.name, "fingerprint": self.extractor.fingerprint,
                    "description": description}
        (self.real_stats() if stats is None else stats).save_npz(path, metadata)

    def load_real_stats(self, path: str | Path) -> None:
        """Pin real-set statistics saved by :meth:`save_real_stats`.

        Raises:
            ValueError: the file was computed with a different extractor (fingerprint mismatch) or is not a
                statistics file.
        """
        stats, metadata = GaussianStats.load_npz(path)
        if metadata.get("fingerprint") != self.extractor.fingerprint:
            raise ValueError(f"{path} holds statistics of extractor {metadata.get('extractor')!r} with fingerprint "
                             f"{metadata.get('fingerprint', '?')[:12]}..., but {self.name} uses "
                             f"{self.extractor.name!r} with fingerprint {self.extractor.fingerprint[:12]}...")
        self.pin_real_stats(stats)

    def kernel_distance(self, *, subsets: int = 100, subset_size: int | None = None,
                        seed: int = 0) -> tuple[float, float]:
        """KID-style kernel distance ``(mean, std)`` of the kept features.

        Needs ``keep_features=True`` and real features (pinned statistics hold none); ``subset_size`` defaults
        to ``min(1000, n_real, n_fake)``.
        """
        with self.sync_context(should_sync=not self._is_synced):
            real, fake = self._features("real"), self._features("fake")
        if real is None or fake is None:
            raise ValueError(f"{self.name}: the kernel distance needs keep_features=True and real features "
                             "(pinned statistics hold no features)")
        size = min(1000, real.shape[0], fake.shape[0]) if subset_size is None else subset_size
        generator = torch.Generator().manual_seed(seed)
        return kernel_distance(real, fake, subsets=subsets, subset_size=size, generator=generator)

    def fd_infinity(self, *, num_points: int = 15, min_samples: int | None = None, seed: int = 0) -> FDInfinity:
        """FD-infinity of the kept generated features against the real statistics (needs ``keep_features``)."""
        with self.sync_context(should_sync=not self._is_synced):
            real, fake = self._stats("real"), self._features("fake")
        if fake is None:
            raise ValueError(f"{self.name}: FD-infinity needs keep_features=True and generated features")
        generator = torch.Generator().manual_seed(seed)
        return fd_infinity(fake, real.mean(), real.covariance(), num_points=num_points, min_samples=min_samples,
                           generator=generator)

    def clear_real(self) -> None:
        """Forget the real set: unpin statistics and zero the accumulated real states."""
        self._pinned_real = None
        for name, default in self._defaults.items():
            if name.startswith("real_"):
                setattr(self, name, [] if isinstance(default, list) else default.detach().clone().to(self.device))
        self._computed = None

    def reset(self) -> None:
        """Reset the generated set, and the real set unless ``reset_real_features`` is False.

        Pinned statistics are always kept (see :meth:`clear_real`).
        """
        if self.reset_real_features:
            super().reset()
            return
        kept = {name: getattr(self, name) for name in self._defaults if name.startswith("real_")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)


class FrechetVideoDistance(FrechetDistance):
    """Fréchet distance on video features: named ``fvd`` with the reference I3D extractor, ``fd_<name>`` else."""

    modality = "video"


class FrechetAudioDistance(FrechetDistance):
    """Fréchet distance on audio features: named ``fad`` with the reference VGGish extractor, ``fd_<name>`` else."""

    modality = "audio"
