"""Training-time samplers for flow time ``t`` (swappable by ``class_path`` in recipes).

A sampler draws an arbitrary shape, e.g. ``(B,)`` for one time per clip or ``(B, num_blocks)`` for an
independent time per macro-block (diffusion-forcing style noise for causal training).
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniforcing.diffusion.schedules import shift_time


class TimeSampler:
    """Base class: ``sampler(shape, device=..., generator=...)`` returns times in ``[t_min, t_max]``.

    Args:
        t_min: smallest time returned (keeps ``t`` away from 0, where the velocity target is degenerate).
        t_max: largest time returned.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min = t_min
        self.t_max = t_max

    def draw(self, shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        """Raw draw in ``[0, 1]``; subclasses implement."""
        raise NotImplementedError

    def __call__(
        self, shape: tuple[int, ...], *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw float32 times of ``shape`` mapped affinely into ``[t_min, t_max]``."""
        t = self.draw(shape, device, generator)
        return (self.t_min + (self.t_max - self.t_min) * t).float()


class UniformTimeSampler(TimeSampler):
    """``t ~ U[t_min, t_max]``."""

    def draw(self, shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        return torch.rand(shape, device=device, generator=generator)


class LogitNormalTimeSampler(TimeSampler):
    """``t = shift(sigmoid(N(mean, std)))`` (SD3 / LTX-2 "shifted logit-normal", ALGORITHMS.md §2.1).

    Args:
        mean: mean of the normal before the sigmoid (``> 0`` favours noisier times).
        std: its standard deviation.
        shift: :func:`omniforcing.diffusion.schedules.shift_time` applied after the sigmoid (1 = none).
        uniform_fraction: share of draws taken from ``U[0, 1]`` instead, so the tails are still trained
            (LTX-2 uses 10 %).
        t_min: see :class:`TimeSampler`.
        t_max: see :class:`TimeSampler`.
    """

    def __init__(
        self,
        mean: float = 0.0,
        std: float = 1.0,
        shift: float = 1.0,
        uniform_fraction: float = 0.1,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ) -> None:
        super().__init__(t_min, t_max)
        if std <= 0 or shift <= 0 or not 0.0 <= uniform_fraction <= 1.0:
            raise ValueError(f"invalid logit-normal parameters std={std}, shift={shift}, uniform={uniform_fraction}")
        self.mean, self.std, self.shift, self.uniform_fraction = mean, std, shift, uniform_fraction

    def draw(self, shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
        normal = torch.randn(shape, device=device, generator=generator) * self.std + self.mean
        t = shift_time(torch.sigmoid(normal), self.shift).to(normal.dtype)
        uniform = torch.rand(shape, device=device, generator=generator)
        use_uniform = torch.rand(shape, device=device, generator=generator) < self.uniform_fraction
        return torch.where(use_uniform, uniform, t)
