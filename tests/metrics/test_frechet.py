"""Fréchet math: closed forms, SciPy parity, sample-space form, streaming statistics, FD-infinity, KID."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from omniforcing.metrics.frechet import (
    GaussianStats,
    fd_infinity,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrt_product,
)
from omniforcing.metrics.kernel_distance import kernel_distance


def _random_covariance(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, 2 * dim, generator=generator, dtype=torch.float64)
    return factor @ factor.T / (2 * dim) + 0.05 * torch.eye(dim, dtype=torch.float64)


def _scipy_fd(mu1, cov1, mu2, cov2) -> float:
    root = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1.numpy() + cov2.numpy() - 2 * np.real(root)))


def test_closed_form_diagonal_and_rotated():
    generator = torch.Generator().manual_seed(0)
    dim = 64
    mu1 = torch.randn(dim, generator=generator, dtype=torch.float64)
    mu2 = torch.randn(dim, generator=generator, dtype=torch.float64)
    a = torch.rand(dim, generator=generator, dtype=torch.float64) + 0.1
    b = torch.rand(dim, generator=generator, dtype=torch.float64) + 0.1
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert float(frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))) == pytest.approx(expected, rel=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    rotated = frechet_distance(rotation @ mu1, rotation @ torch.diag(a) @ rotation.T,
                               rotation @ mu2, rotation @ torch.diag(b) @ rotation.T)
    assert float(rotated) == pytest.approx(expected, rel=1e-10)


def test_closed_form_isotropic_and_one_dimensional():
    eye = torch.eye(64, dtype=torch.float64)
    assert float(frechet_distance(torch.zeros(64), eye, torch.zeros(64), 4 * eye)) == pytest.approx(64.0, rel=1e-12)
    one_d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]]))
    assert float(one_d) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-12)


def test_agrees_with_scipy_sqrtm_full_rank():
    mu1, mu2 = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    cov1, cov2 = _random_covariance(100, 1), _random_covariance(100, 2)
    ours = float(frechet_distance(mu1, cov1, mu2, cov2))
    assert ours == pytest.approx(_scipy_fd(mu1, cov1, mu2, cov2), rel=1e-9)
    assert ours == pytest.approx(float(frechet_distance(mu2, cov2, mu1, cov1)), rel=1e-10)  # symmetric


def test_sample_space_form_matches_eigen_form_and_scipy_when_n_below_d():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(40, 90, generator=generator, dtype=torch.float64) * 2 + 1
    y = torch.randn(30, 90, generator=generator, dtype=torch.float64)
    sample = float(frechet_distance_from_features(x, y, method="sample"))
    eigen = float(frechet_distance_from_features(x, y, method="eigh"))
    assert float(frechet_distance_from_features(x, y)) == sample  # auto picks the sample-space form
    assert sample == pytest.approx(eigen, rel=1e-8)
    mu1, mu2 = x.mean(0), y.mean(0)
    cov1, cov2 = torch.from_numpy(np.cov(x.numpy(), rowvar=False)), torch.from_numpy(np.cov(y.numpy(), rowvar=False))
    assert sample == pytest.approx(_scipy_fd(mu1, cov1, mu2, cov2), rel=1e-6)


def test_identical_sets_give_zero_and_shift_gives_mean_term():
    x = torch.randn(500, 16, dtype=torch.float64)
    assert float(frechet_distance_from_features(x, x)) < 1e-9
    shifted = float(frechet_distance_from_features(x, x + 0.5))
    assert shifted == pytest.approx(16 * 0.25, rel=1e-9)


def test_trace_sqrt_product_handles_rank_deficient_covariances():
    x = torch.randn(5, 50, dtype=torch.float64)
    cov = GaussianStats.from_features(x).covariance()
    assert float(trace_sqrt_product(cov, cov)) == pytest.approx(float(cov.trace()), rel=1e-12)
    assert float(frechet_distance_from_features(x, x, method="eigh")) < 1e-10


def test_streaming_statistics_match_numpy_and_merge_by_summing():
    x = torch.randn(301, 12, dtype=torch.float64) * 3 + 7
    full = GaussianStats.from_features(x)
    merged = GaussianStats.from_features(x[:100]) + GaussianStats.from_features(x[100:])
    assert merged.count == 301
    torch.testing.assert_close(merged.covariance(), full.covariance(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.covariance(), torch.from_numpy(np.cov(x.numpy(), rowvar=False)))
    torch.testing.assert_close(full.covariance(unbiased=False) * 301 / 300, full.covariance())


def test_float32_features_with_large_mean_keep_an_accurate_covariance():
    # METRICS.md §4.2: a float32 outer-product sum loses this covariance; the float64 state must not
    x = (torch.randn(20000, 8, dtype=torch.float64) * 0.5 + 100).float()
    stats = GaussianStats.from_features(x[:10000]) + GaussianStats.from_features(x[10000:])
    expected = torch.from_numpy(np.cov(x.double().numpy(), rowvar=False))
    torch.testing.assert_close(stats.covariance(), expected, rtol=0, atol=1e-9)


def test_npz_round_trip_without_pickle(tmp_path):
    stats = GaussianStats.from_features(torch.randn(10, 4))
    path = tmp_path / "stats.npz"
    stats.save_npz(path, {"fingerprint": "abc", "description": "unit test"})
    loaded, metadata = GaussianStats.load_npz(path)
    assert loaded.count == 10 and metadata == {"fingerprint": "abc", "description": "unit test"}
    torch.testing.assert_close(loaded.outer_sum, stats.outer_sum)
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="not an omniforcing statistics file"):
        GaussianStats.load_npz(tmp_path / "other.npz")


def test_errors_are_specific():
    with pytest.raises(ValueError, match="at least 2"):
        GaussianStats.from_features(torch.randn(1, 3)).covariance()
    with pytest.raises(ValueError, match="NaN"):
        GaussianStats.from_features(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_from_features(torch.randn(4, 3), torch.randn(4, 5))


def test_fd_infinity_recovers_a_known_distance():
    generator = torch.Generator().manual_seed(0)
    dim, shift = 32, 0.5
    features = torch.randn(20000, dim, generator=generator, dtype=torch.float64) + shift
    true_distance = dim * shift**2
    result = fd_infinity(features, torch.zeros(dim), torch.eye(dim), num_points=20, min_samples=100,
                         generator=generator)
    assert result.value == pytest.approx(true_distance, rel=0.05)
    assert result.slope > 0 and result.r_squared > 0.9
    assert float(result.distances[0]) > result.value  # small subsets are biased upwards (~ c / n)


def test_kernel_distance_is_near_zero_for_one_distribution_and_positive_otherwise():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 16, generator=generator), torch.randn(400, 16, generator=generator)
    same, _ = kernel_distance(x, y, subsets=20, subset_size=200, generator=generator)
    different, _ = kernel_distance(x, y + 0.5, subsets=20, subset_size=200, generator=generator)
    assert abs(same) < 0.02 < different
    with pytest.raises(ValueError, match="subset_size"):
        kernel_distance(x, y, subset_size=1000)
