"""Fréchet distance between Gaussians fitted to feature sets: sufficient statistics, distance, FD-infinity.

The Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is (Dowson & Landau 1982)::

    FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2)

FVD (Unterthiner et al. 2018) and FAD (Kilgour et al. 2019) are this distance on I3D / VGGish features.
Implementation choices, each from ``reference/METRICS.md`` §4:

* statistics are the count, the feature sum and the sum of outer products, accumulated in float64 (a float32
  outer-product sum loses the covariance of features with a large mean, §4.2), and they merge by summing;
* the covariance is the unbiased one, ``(S2 - n mu mu^T) / (n - 1)`` (np.cov, pytorch-fid, Google FAD);
* ``tr (S1 S2)^(1/2)`` is evaluated in the symmetric eigen form (§4.1 (c)),
  ``sum_i sqrt(lambda_i(S1^(1/2) S2 S1^(1/2)))`` with ``eigh`` — exact, the fastest CPU method, and free of
  the SciPy ``sqrtm`` regressions users hit (§6); when both raw feature sets are at hand and have fewer
  samples than dimensions, the sample-space form (§4.1 (d)) is used instead:
  ``tr (S1 S2)^(1/2) = ||A1 A2^T||_*`` with ``Ak`` the centred features scaled by ``1/sqrt(nk - 1)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

STATS_FORMAT = "omniforcing-gaussian-stats-v1"
"""Value of the ``format`` entry written into every statistics ``.npz`` file."""


@dataclass
class GaussianStats:
    """Sufficient statistics of a feature set: count, sum and sum of outer products (float64).

    Args:
        count: number of feature vectors ``n``.
        feature_sum: ``(d,)`` float64, ``sum_i x_i``.
        outer_sum: ``(d, d)`` float64, ``sum_i x_i x_i^T``.
    """

    count: int
    feature_sum: Tensor
    outer_sum: Tensor

    @classmethod
    def zeros(cls, dim: int) -> GaussianStats:
        """Empty statistics for ``dim``-dimensional features."""
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    @classmethod
    def from_features(cls, features: Tensor) -> GaussianStats:
        """Statistics of ``(n, d)`` features (any float dtype; accumulated in float64)."""
        x = _as_feature_matrix(features)
        return cls(x.shape[0], x.sum(0), x.T @ x)

    @classmethod
    def from_moments(cls, mean: Tensor, covariance: Tensor, count: int) -> GaussianStats:
        """Statistics whose unbiased mean/covariance are exactly ``mean`` ``(d,)`` and ``covariance`` ``(d, d)``."""
        mean = mean.to(torch.float64)
        covariance = covariance.to(torch.float64)
        return cls(count, mean * count, covariance * (count - 1) + count * torch.outer(mean, mean))

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.feature_sum.shape[0]

    def __add__(self, other: GaussianStats) -> GaussianStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        return GaussianStats(
            self.count + other.count,
            self.feature_sum + other.feature_sum.to(self.feature_sum.device),
            self.outer_sum + other.outer_sum.to(self.outer_sum.device),
        )

    def mean(self) -> Tensor:
        """``(d,)`` float64 sample mean; needs ``count >= 1``."""
        if self.count < 1:
            raise ValueError("the mean of an empty feature set is undefined")
        return self.feature_sum / self.count

    def covariance(self, unbiased: bool = True) -> Tensor:
        """``(d, d)`` float64 sample covariance, ``/(n - 1)`` if ``unbiased`` else ``/n``; needs ``count >= 2``."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.mean()
        scatter = self.outer_sum - self.count * torch.outer(mean, mean)
        cov = scatter / (self.count - 1 if unbiased else self.count)
        return (cov + cov.T) / 2

    def save_npz(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write ``count``, ``feature_sum``, ``outer_sum`` and string ``metadata`` to an uncompressed ``.npz``.

        The file is written beside ``path`` and renamed, so it appears atomically.
        """
        entries = {f"meta_{key}": np.array(value) for key, value in (metadata or {}).items()}
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as file:
            np.savez(
                file,
                format=np.array(STATS_FORMAT),
                count=np.array(self.count, dtype=np.int64),
                feature_sum=self.feature_sum.detach().cpu().numpy(),
                outer_sum=self.outer_sum.detach().cpu().numpy(),
                **entries,
            )
        # rename last, so an interrupted run never leaves a truncated cache file behind
        os.replace(partial, target)

    @classmethod
    def load_npz(cls, path: str | Path) -> tuple[GaussianStats, dict[str, str]]:
        """Read statistics written by :meth:`save_npz` (never unpickles); returns ``(stats, metadata)``."""
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != STATS_FORMAT:
                raise ValueError(f"{path} is not an omniforcing statistics file (no format={STATS_FORMAT!r} entry)")
            stats = cls(int(data["count"]), torch.from_numpy(data["feature_sum"]).double(),
                        torch.from_numpy(data["outer_sum"]).double())
            metadata = {name.removeprefix("meta_"): str(data[name]) for name in data.files if name.startswith("meta_")}
        if stats.outer_sum.shape != (stats.dim, stats.dim):
            raise ValueError(f"{path}: outer_sum has shape {tuple(stats.outer_sum.shape)}, expected {(stats.dim,) * 2}")
        return stats, metadata


def _as_feature_matrix(features: Tensor) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"features must have shape (n, d), got {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def _clamp_rounding(values: Tensor) -> Tensor:
    """Zero the eigenvalues that are rounding noise (below ``d * eps * max``, numpy's matrix-rank tolerance).

    Rank-deficient covariances (N < d) have many eigenvalues of size ~1e-15 with either sign; their square
    roots (~3e-8 each) would otherwise add up to a visible error, e.g. a non-zero distance between identical
    sets.
    """
    tolerance = values.shape[0] * torch.finfo(values.dtype).eps * values.abs().max().clamp(min=1e-300)
    return torch.where(values > tolerance, values, torch.zeros_like(values))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (rounding-level and negative eigenvalues set to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * _clamp_rounding(values).sqrt()) @ vectors.T


def trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    """``tr (S1 S2)^(1/2)`` by the symmetric eigen form (METRICS.md §4.1 (c)), float64 scalar."""
    root1 = _psd_sqrt(cov1.to(torch.float64))
    middle = root1 @ cov2.to(torch.float64) @ root1
    return _clamp_rounding(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Fréchet distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)`` (Dowson & Landau 1982).

    Args:
        mean1: ``(d,)`` mean of the first Gaussian.
        cov1: ``(d, d)`` symmetric PSD covariance of the first Gaussian.
        mean2: ``(d,)`` mean of the second Gaussian.
        cov2: ``(d, d)`` covariance of the second Gaussian.

    Returns:
        float64 scalar >= 0 (rounding below zero is clamped: identical sets give ~0, never a negative value).
    """
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (mean1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: means {tuple(mean1.shape)}/{tuple(mean2.shape)}, "
                         f"covariances {tuple(cov1.shape)}/{tuple(cov2.shape)}")
    mean1, mean2 = mean1.to(torch.float64), mean2.to(torch.float64)
    cov1, cov2 = cov1.to(torch.float64), cov2.to(torch.float64)
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt_product(cov1, cov2)
    return distance.clamp(min=0)


def frechet_distance_from_features(
    features1: Tensor, features2: Tensor, method: Literal["auto", "eigh", "sample"] = "auto"
) -> Tensor:
    """Fréchet distance between Gaussians fitted (unbiased covariance) to two feature sets.

    Args:
        features1: ``(n1, d)`` features, ``n1 >= 2``.
        features2: ``(n2, d)`` features, ``n2 >= 2``.
        method: ``"eigh"`` — symmetric eigen form on ``d x d`` covariances; ``"sample"`` — sample-space form
            ``||A1 A2^T||_*`` on an ``n1 x n2`` matrix (METRICS.md §4.1 (d)); ``"auto"`` picks ``"sample"``
            when ``max(n1, n2) < d`` (cheaper, and the covariances are rank-deficient anyway).

    Returns:
        float64 scalar >= 0.
    """
    x, y = _as_feature_matrix(features1), _as_feature_matrix(features2).to(features1.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"each feature set needs at least 2 vectors, got {x.shape[0]} and {y.shape[0]}")
    if method == "auto":
        method = "sample" if max(x.shape[0], y.shape[0]) < x.shape[1] else "eigh"
    if method == "eigh":
        s1, s2 = GaussianStats.from_features(x), GaussianStats.from_features(y)
        return frechet_distance(s1.mean(), s1.covariance(), s2.mean(), s2.covariance())
    a1 = (x - x.mean(0)) / (x.shape[0] - 1) ** 0.5
    a2 = (y - y.mean(0)) / (y.shape[0] - 1) ** 0.5
    trace_sqrt = _clamp_rounding(torch.linalg.svdvals(a1 @ a2.T)).sum()
    distance = (x.mean(0) - y.mean(0)).square().sum() + a1.square().sum() + a2.square().sum() - 2 * trace_sqrt
    return distance.clamp(min=0)


@dataclass
class FDInfinity:
    """Result of the FD-infinity extrapolation ``FD(n) ~ value + slope / n``.

    Args:
        value: extrapolated distance at ``1/n = 0`` (the bias-free estimate).
        slope: coefficient of ``1/n`` (the sample-count bias constant ``c`` of METRICS.md §4.2).
        r_squared: coefficient of determination of the linear fit.
        sample_sizes: ``(K,)`` the subset sizes ``n`` used.
        distances: ``(K,)`` the measured ``FD(n)``.
    """

    value: float
    slope: float
    r_squared: float
    sample_sizes: Tensor
    distances: Tensor


def fd_infinity(
    features: Tensor,
    reference_mean: Tensor,
    reference_cov: Tensor,
    *,
    num_points: int = 15,
    min_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> FDInfinity:
    """Bias-free Fréchet distance by extrapolation in ``1/n`` (Chong & Forsyth 2020, "FID-infinity").

    ``FD(n)`` is measured on random subsets of ``n`` generated features drawn **without replacement** for
    ``num_points`` sizes evenly spaced in ``[min_samples, N]``, a line is fitted to ``FD`` against ``1/n`` and
    its intercept is returned. Without replacement matters: bootstrap draws (with replacement, as fadtk's
    FAD-inf does) extrapolate to the FD of the finite pool, which still carries its own ``c / N`` bias
    (METRICS.md §4.2: 11.05 instead of 10; 9.68 without replacement).

    Args:
        features: ``(N, d)`` generated features.
        reference_mean: ``(d,)`` reference-set mean.
        reference_cov: ``(d, d)`` reference-set covariance.
        num_points: number of subset sizes (>= 2).
        min_samples: smallest subset size; default ``max(2, N // 10)``.
        generator: random generator for the subsets (pass a seeded one for reproducible values).

    Returns:
        :class:`FDInfinity` with the intercept, slope and r^2 of the fit.
    """
    x = _as_feature_matrix(features)
    total = x.shape[0]
    low = max(2, total // 10) if min_samples is None else min_samples
    if num_points < 2 or not 2 <= low < total:
        raise ValueError(f"FD-infinity needs num_points >= 2 and 2 <= min_samples < N; got num_points={num_points}, "
                         f"min_samples={low}, N={total}")
    sizes = torch.linspace(low, total, num_points).round().long().unique()
    distances = []
    for size in sizes.tolist():
        subset = x[torch.randperm(total, generator=generator)[:size].to(x.device)]
        stats = GaussianStats.from_features(subset)
        distances.append(frechet_distance(stats.mean(), stats.covariance(), reference_mean, reference_cov))
    y = torch.stack(distances).cpu()
    inverse = 1.0 / sizes.to(torch.float64)
    design = torch.stack([torch.ones_like(inverse), inverse], dim=1)
    (intercept, slope) = torch.linalg.lstsq(design, y[:, None]).solution[:, 0].tolist()
    residual = y - (intercept + slope * inverse)
    total_variance = (y - y.mean()).square().sum()
    r_squared = float(1 - residual.square().sum() / total_variance) if total_variance > 0 else 1.0
    return FDInfinity(intercept, slope, r_squared, sizes, y)
