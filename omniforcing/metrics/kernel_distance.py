"""Kernel distance (KID / KVD): unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets.

Binkowski et al. 2018 ("Demystifying MMD GANs") proposed it because, unlike the Fréchet distance, its
estimator is unbiased in the number of samples, so values at different ``N`` are comparable. The kernel is
``k(x, y) = (x^T y / d + 1)^3`` as in torchmetrics' ``KernelInceptionDistance`` and MM-Diffusion's KVD.
"""

from __future__ import annotations

import torch
from torch import Tensor


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """``(x y^T / d + coef) ** degree`` for ``x`` ``(n, d)`` and ``y`` ``(m, d)``; returns ``(n, m)``."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def unbiased_mmd2(x: Tensor, y: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """Unbiased estimate of MMD^2 between the distributions of ``x`` ``(m, d)`` and ``y`` ``(m', d)``.

    Eq. 3 of Gretton et al. 2012 (U-statistic form); a scalar that may be slightly negative when both agree.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x, degree, coef)
    k_yy = polynomial_kernel(y, y, degree, coef)
    k_xy = polynomial_kernel(x, y, degree, coef)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kernel_distance(
    features1: Tensor,
    features2: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel distance between two feature sets: mean and std of unbiased MMD^2 over random subsets.

    Args:
        features1: ``(n1, d)`` features (e.g. real).
        features2: ``(n2, d)`` features (e.g. generated).
        subsets: number of random subsets.
        subset_size: samples per subset drawn without replacement from each set; must be ``<= min(n1, n2)``.
        degree: polynomial kernel degree.
        coef: polynomial kernel offset.
        generator: random generator for the subsets.

    Returns:
        ``(mean, std)`` of the per-subset MMD^2 estimates (std is 0 for a single subset).
    """
    x, y = features1.to(torch.float64), features2.to(torch.float64).to(features1.device)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (n, d) with equal d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not 2 <= subset_size <= min(x.shape[0], y.shape[0]):
        raise ValueError(f"subset_size={subset_size} must be in [2, min(n1, n2)={min(x.shape[0], y.shape[0])}]; "
                         "lower it or collect more samples")
    values = []
    for _ in range(subsets):
        pick_x = torch.randperm(x.shape[0], generator=generator)[:subset_size].to(x.device)
        pick_y = torch.randperm(y.shape[0], generator=generator)[:subset_size].to(y.device)
        values.append(unbiased_mmd2(x[pick_x], y[pick_y], degree, coef))
    stacked = torch.stack(values)
    std = stacked.std().item() if subsets > 1 else 0.0
    return stacked.mean().item(), std
