"""The one few-step loop: predict ``x0``, re-noise with fresh noise, return the last ``x0`` (ALGORITHMS.md §2.2).

For each step ``k``: ``x0 = x - t_k v(x, t_k)``; if a later time follows, ``x <- (1 - t_{k+1}) x0 + t_{k+1} eps_k``
with fresh noise ``eps_k``. This is not an ODE step, so the times must be those the student was trained on.
Every user runs this loop: whole-clip few-step generation (Stage I), DMD's backward simulation, Self-Forcing's
rollout (with its exit step), Mutual Forcing's few-step mode and the streaming engine (per block, against a
KV cache, :mod:`omniforcing.sampling.blocks`).

The loop draws nothing: the fresh noise comes in as tensors (:func:`draw_renoise`, which draws in the order
the loop consumes it: per step, video before audio), so a block step can be captured as a CUDA graph and the
numbers for a seed do not depend on whether it was.

Per-modality times (asymmetric steps): the loop runs ``max(len(video), len(audio))`` joint forwards, both
schedules starting at the first. A modality whose schedule has ended is held at its clean estimate at
``t = 0`` (exactly what the commit forward will store), so the other keeps attending to the finished result;
its outputs are discarded. A joint forward cannot drop a modality (that would also drop cross-modal
attention), so this saves no backbone compute; it sets each modality's sampling schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise, x0_from_velocity
from omniforcing.diffusion.samplers import Denoiser, fresh_noise
from omniforcing.sampling.schedule import BlockTimes, time_tensor
from omniforcing.types import AVLatents

StepVelocity = Callable[[AVLatents, AVLatents, bool], AVLatents]
"""``velocity(x, t, exit)``: velocities of ``x`` at ``(B,)`` times per modality; ``exit`` marks the step whose
gradient is kept (Self-Forcing checkpoints that forward)."""


def renoise_steps(times: BlockTimes, exit_step: int | None) -> int:
    """Steps after which fresh noise is drawn: all but the last, or those before ``exit_step``."""
    return times.num_steps - 1 if exit_step is None else exit_step


def draw_renoise(like: AVLatents, times: BlockTimes, generator: torch.Generator | None,
                 exit_step: int | None = None) -> tuple[AVLatents, ...]:
    """The fresh noise the loop consumes, in its order: per step, video then audio (``None`` where unused)."""
    draws = []
    for k in range(renoise_steps(times, exit_step)):
        draws.append(AVLatents(*(fresh_noise(m, generator) if m is not None and times.renoised(name, k) else None
                                 for name, m in (("video", like.video), ("audio", like.audio)))))
    return tuple(draws)


def check_exit_step(times: BlockTimes, exit_step: int | None) -> None:
    """Raise unless ``exit_step`` is ``None`` or a step of (equal-length) schedules."""
    if exit_step is None:
        return
    if len({len(t) for _, t in times.items()}) != 1:
        raise ValueError("exit_step (training) needs the same few-step times for every modality")
    if not 0 <= exit_step < times.num_steps:
        raise ValueError(f"exit_step {exit_step} outside the {times.num_steps} few-step times")


def few_step(velocity: StepVelocity, noise: AVLatents, times: BlockTimes, renoise: Sequence[AVLatents],
             exit_step: int | None = None) -> AVLatents:
    """Run the few-step chain from ``noise`` (module docstring).

    Args:
        velocity: the denoiser (:data:`StepVelocity`).
        noise: pure noise at the first times, video ``(B, Tv, C, h, w)`` / audio ``(B, Ta, C)``.
        times: per-modality few-step times.
        renoise: fresh noise per step from :func:`draw_renoise` (same ``exit_step``).
        exit_step: when given, steps before it run under ``no_grad``, this step in the caller's grad mode, and
            its ``x0`` is returned at once (Self-Forcing's exit step, DMD2's backward simulation); when ``None``
            every step runs in the caller's grad mode and the input of each step is detached from the last.

    Returns:
        The clean estimate, shaped like ``noise``.
    """
    check_exit_step(times, exit_step)
    x = dict(noise.items())
    clean: dict[str, Tensor] = {}
    batch, device = noise.batch_size, noise.items()[0][1].device
    schedule = dict(times.items())
    for k in range(times.num_steps):
        inputs = AVLatents(*(_step_input(name, k, schedule, x, clean) for name in ("video", "audio")))
        t_now = AVLatents(*(None if name not in schedule else time_tensor(times.at(name, k), batch, device)
                            for name in ("video", "audio")))
        with torch.set_grad_enabled(torch.is_grad_enabled() and (exit_step is None or k == exit_step)):
            v = velocity(inputs, t_now, k == exit_step)
            x0 = {name: x0_from_velocity(m, vm, tm) for (name, m), (_, vm), (_, tm)
                  in zip(inputs.items(), v.items(), t_now.items()) if k < len(schedule[name])}
        if k == exit_step:
            return AVLatents(x0.get("video"), x0.get("audio"))
        for name, estimate in x0.items():
            if not times.renoised(name, k):
                clean[name] = estimate
            else:
                t_next = time_tensor(schedule[name][k + 1], batch, device)
                x[name] = add_noise(estimate.detach(), getattr(renoise[k], name), t_next)
    return AVLatents(clean.get("video"), clean.get("audio"))


def _step_input(name: str, k: int, schedule: dict[str, tuple[float, ...]], x: dict[str, Tensor],
                clean: dict[str, Tensor]) -> Tensor | None:
    """The modality's noisy state while its schedule runs, its clean estimate after (``None`` if absent)."""
    if name not in schedule:
        return None
    return x[name] if k < len(schedule[name]) else clean[name].detach()


def sample_few_step(denoiser: Denoiser, noise: AVLatents, times: Sequence[float],
                    generator: torch.Generator | None = None, exit_step: int | None = None) -> AVLatents:
    """Few-step sampling of a whole clip with a per-clip denoiser (``denoiser(x, t)``, ``t`` ``(B,)``).

    With ``exit_step`` this is DMD2's backward simulation (ALGORITHMS.md §3.3): the generator's own chain from
    noise, stopped at ``exit_step``, gradient only through that step.

    Args:
        denoiser: velocity model of the samplers' contract (:mod:`omniforcing.diffusion.samplers`).
        noise: pure noise at ``times[0]``.
        times: few-step times (strictly decreasing, in ``(0, 1]``), the same for every modality.
        generator: source of the fresh noise.
        exit_step: see :func:`few_step`.
    """
    block_times = BlockTimes.of(times, video=noise.video is not None, audio=noise.audio is not None)
    check_exit_step(block_times, exit_step)
    renoise = draw_renoise(noise, block_times, generator, exit_step)

    def velocity(x: AVLatents, t: AVLatents, _exit: bool) -> AVLatents:
        return denoiser(x, t.items()[0][1])

    return few_step(velocity, noise, block_times, renoise, exit_step)

