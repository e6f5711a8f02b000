"""Samplers over a denoiser that predicts velocity for a pair of modalities.

The few-step loop lives in :mod:`omniforcing.sampling.few_step` (with the block generator that also uses it).

Contract (k-diffusion style, one signature for every sampler): ``denoiser(x, t)`` takes noisy latents
:class:`~omniforcing.types.AVLatents` and a per-clip time ``t`` of shape ``(B,)`` shared by every token being
denoised, and returns velocities of the same shapes. Guidance, per-token time expansion, text and KV caches
are bound inside the closure by the caller, so the same samplers serve the bidirectional teacher (the
whole clip at once) and causal students (one macro-block at a time against a cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from omniforcing.types import AVLatents

Denoiser = Callable[[AVLatents, Tensor], AVLatents]


def _time(value: float | Tensor, x: AVLatents) -> Tensor:
    ref = x.items()[0][1]
    return torch.full((x.batch_size,), float(value), device=ref.device, dtype=torch.float32)


def sample_euler(denoiser: Denoiser, noise: AVLatents, ts: Sequence[float] | Tensor) -> AVLatents:
    """Integrate the flow ODE ``dx/dt = v`` with Euler steps from ``ts[0]`` down to ``ts[-1]``.

    Args:
        denoiser: velocity model (see the module docstring).
        noise: starting latents at time ``ts[0]`` (pure noise when ``ts[0] = 1``).
        ts: decreasing times, e.g. :func:`omniforcing.diffusion.schedules.euler_schedule`.

    Returns:
        Latents at ``ts[-1]`` (clean samples when ``ts[-1] = 0``).
    """
    ts = [float(t) for t in ts]
    x = noise
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        v = denoiser(x, _time(t_now, x))
        x = x.zip_map(v, lambda xm, vm, dt=t_next - t_now: xm + dt * vm)
    return x


def fresh_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device then moved (so a CPU generator
    gives the same stream whatever device the model runs on)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device).to(like)
