"""Rectified flow (ALGORITHMS.md §2.1): ``x_t = (1 - t) x0 + t eps``, velocity ``v = eps - x0``.

``t`` in ``[0, 1]`` is flow time, ``t = 1`` pure noise. Times are per latent frame: ``(B, T)`` broadcast over
the trailing feature axes of ``(B, T, ...)`` latents, so every block of a sequence may sit at its own noise level.
"""

from __future__ import annotations

from torch import Tensor


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast ``t`` of shape ``(B,)`` or ``(B, T)`` to the rank of ``x`` (``(B, T, ...)``)."""
    if t.dim() > x.dim() or t.shape != x.shape[: t.dim()]:
        raise ValueError(f"time of shape {tuple(t.shape)} does not prefix latents of shape {tuple(x.shape)}")
    return t.reshape(*t.shape, *([1] * (x.dim() - t.dim()))).to(x.dtype)


def add_noise(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Point on the straight path: ``(1 - t) x0 + t eps``."""
    tt = expand_time(t, x0)
    return (1 - tt) * x0 + tt * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """Training target of the velocity parameterisation: ``eps - x0``."""
    return eps - x0


def x0_from_velocity(xt: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Denoised estimate ``x0 = x_t - t v``."""
    return xt - expand_time(t, xt) * v


def eps_from_velocity(xt: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Noise estimate ``eps = x_t + (1 - t) v``."""
    return xt + (1 - expand_time(t, xt)) * v


def velocity_from_x0(xt: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """Velocity implied by a clean estimate: ``(x_t - x0) / t`` (undefined at ``t = 0``)."""
    return (xt - x0) / expand_time(t, xt)
