"""Sampling schedules on flow time: the shift warp and the Euler grid."""

from __future__ import annotations

import torch
from torch import Tensor


def shift_time(t: Tensor | float, shift: float) -> Tensor:
    """Warp flow time towards noise: ``s t / (1 + (s - 1) t)`` (Wan/SD3 shift; ALGORITHMS.md §2.2).

    ``shift = 1`` is the identity; ``shift > 1`` spends more of a schedule at high noise.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def euler_schedule(num_steps: int, shift: float = 1.0) -> Tensor:
    """``num_steps + 1`` decreasing times from 1 to 0: a uniform grid warped by :func:`shift_time`.

    Returns:
        float64 tensor ``(num_steps + 1,)`` with ``ts[0] = 1`` and ``ts[-1] = 0``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_time(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)
