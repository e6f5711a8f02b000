"""Causal ODE regression (CausVid / Self-Forcing initialisation; OmniForcing Stage II; ALGORITHMS.md §4).

The teacher's deterministic sampler (Euler with per-modality CFG, :func:`teacher_trajectory`) gives, per clip,
the states ``x_{t_k}`` at the student's few-step times ``t_0 > ... > t_{K-1}`` and the final sample ``x_0``
(stored by :mod:`omniforcing.data.ode_pairs`). The Euler grid is built by :func:`student_grid` so that every
student time *is* a grid point: the stored states sit exactly on the student's grid (the σ-grid mismatch of
ALGORITHMS.md §4.1, where a 48-step shift-8 trajectory was used for a shift-5 student, cannot happen). The
causal student regresses ``x_0`` from mixed-noise inputs:

* every macro-block ``j`` of every clip draws its own level ``k_j`` (diffusion-forcing-style mixed noise);
  the block's video *and* audio latents take the state at ``t_{k_j}`` (audio inherits its block's level, via
  the layout's block index maps, so the asymmetric 3:25 rates never split a block);
* one parallel forward under the block-causal mask (no KV cache) predicts velocities; the clean estimate is
  ``x̂_0 = x - t v`` and the loss is the per-modality MSE to ``x_0`` over latents with ``t > 0`` (a latent at
  ``t = 0`` is its own target).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from omniforcing.diffusion.flow import x0_from_velocity
from omniforcing.diffusion.samplers import Denoiser, sample_euler
from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import check_times
from omniforcing.models.layout import BlockLayout
from omniforcing.types import AVLatents


def student_grid(steps: int, shift: float, student_times: Sequence[float]) -> tuple[Tensor, list[int]]:
    """An Euler grid of ``steps`` steps that contains every student time exactly.

    Starts from :func:`omniforcing.diffusion.schedules.euler_schedule` and replaces, for each student time, the
    nearest interior grid point by that time (``1.0`` is the first point already). Replacing the nearest point
    keeps the grid strictly decreasing, and the step count stays ``steps``.

    Args:
        steps: Euler steps of the teacher's sampler (e.g. 48).
        shift: schedule shift of the teacher's sampler.
        student_times: the student's few-step times, decreasing, in ``(0, 1]``.

    Returns:
        ``(grid, indices)``: float64 ``(steps + 1,)`` times from 1 to 0, and the grid index of each student time
        (``grid[indices[k]] == student_times[k]`` exactly).

    Raises:
        ValueError: two student times would share a grid point (use more steps).
    """
    times = list(check_times(student_times, "student times"))
    grid = euler_schedule(steps, shift).clone()
    indices: list[int] = []
    for t in times:
        if t == 1.0:
            index = 0
        else:
            index = int((grid[1:-1] - t).abs().argmin()) + 1
        if index in indices:
            raise ValueError(f"student times {times} are too close for a {steps}-step grid (two share grid point "
                             f"{index}); use more steps")
        grid[index] = t
        indices.append(index)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"student times {times} do not fit a {steps}-step grid monotonically; use more steps")
    return grid, indices


def trajectory_states(denoiser: Denoiser, noise: AVLatents, grid: Tensor, indices: Sequence[int]) -> AVLatents:
    """Euler-integrate from ``noise`` over ``grid`` and keep the states at ``indices`` plus the final one.

    Args:
        denoiser: velocity denoiser (``denoiser(x, t (B,)) -> velocity``).
        noise: latents at ``grid[0]``.
        grid: decreasing times ending at 0 (:func:`student_grid`).
        indices: increasing grid indices whose states are kept.

    Returns:
        States stacked on a new axis 1: video ``(B, K+1, Tv, ...)`` / audio ``(B, K+1, Ta, C)``, state ``k`` at
        ``grid[indices[k]]`` and the last at ``grid[-1]``; each equals ``sample_euler`` over ``grid[:i + 1]``.
    """
    states, x, position = [], noise, 0
    for index in [*indices, len(grid) - 1]:
        x = sample_euler(denoiser, x, grid[position:index + 1])
        states.append(x)
        position = index
    return AVLatents(*(None if parts[0] is None else torch.stack(parts, dim=1)
                       for parts in ([s.video for s in states], [s.audio for s in states])))


@torch.no_grad()
def teacher_trajectory(teacher: AVBackbone, captions: list[str], noise: AVLatents, grid: Tensor,
                       indices: Sequence[int], video_cfg: float, audio_cfg: float) -> AVLatents:
    """The teacher's Euler trajectory with per-modality CFG, sampled at ``indices`` (see :func:`trajectory_states`).

    The teacher is called bidirectionally on the whole clip; guidance uses the package's convention
    (``omniforcing.diffusion.guidance``).
    """
    text = teacher.encode_text(captions)
    guided = video_cfg != 1.0 or audio_cfg != 1.0
    null_text = teacher.encode_text(captions, drop=torch.ones(len(captions), dtype=torch.bool)) if guided else None
    denoiser = GuidedDenoiser(teacher, text, null_text, video_cfg, audio_cfg, causal=False)
    return trajectory_states(denoiser, noise, grid, indices)


def block_levels(layout: BlockLayout, batch_size: int, num_levels: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """An independent level per macro-block, spread to the latents of the block.

    Args:
        layout: the clip's block layout.
        batch_size: clips.
        num_levels: levels to draw from (``0 .. num_levels - 1``).
        generator: source of the draw.

    Returns:
        ``(video_levels (B, Tv), audio_levels (B, Ta))`` long; every latent has the level of its block.
    """
    per_block = torch.randint(num_levels, (batch_size, layout.num_blocks), generator=generator)
    return per_block[:, layout.video_block_index], per_block[:, layout.audio_block_index]


def gather_levels(states: Tensor, levels: Tensor) -> Tensor:
    """Pick, per clip and latent, the state of its level.

    Args:
        states: ``(B, L, T, ...)`` states of ``L`` levels.
        levels: ``(B, T)`` long, values in ``[0, L)``.

    Returns:
        ``(B, T, ...)`` with ``out[b, i] = states[b, levels[b, i], i]``.
    """
    batch, _, length = states.shape[:3]
    rows = torch.arange(batch, device=states.device)[:, None]
    cols = torch.arange(length, device=states.device)[None, :]
    return states[rows, levels.to(states.device), cols]


class ODERegression:
    """Regression of the teacher's final sample from its ODE states under the block-causal mask.

    Args:
        video_weight: weight of the video MSE (OmniForcing v2: 1; legacy v1: 1 with audio 0.16).
        audio_weight: weight of the audio MSE.
        include_clean: also draw the clean level (``t = 0``) for a block, which then acts as clean context
            and is excluded from the loss; off by default (Self-Forcing draws only the student's times).
    """

    def __init__(self, video_weight: float = 1.0, audio_weight: float = 1.0, include_clean: bool = False) -> None:
        self.weights = {"video": video_weight, "audio": audio_weight}
        self.include_clean = include_clean

    def inputs(self, states: AVLatents, times: Tensor, layout: BlockLayout,
               generator: torch.Generator | None) -> tuple[AVLatents, AVLatents]:
        """Mixed-noise inputs and their per-latent times.

        Args:
            states: video ``(B, K+1, Tv, C, h, w)`` / audio ``(B, K+1, Ta, C)``: the states at ``times[:-1]``
                followed by the final sample.
            times: ``(K+1,)`` decreasing, ``times[-1] == 0``.
            layout: the clip's block layout (the student's prefix layout).
            generator: source of the per-block levels.

        Returns:
            ``(x, t)``: inputs ``(B, T, ...)`` and times ``(B, T)`` per modality.
        """
        num_levels = times.numel() if self.include_clean else times.numel() - 1
        video_levels, audio_levels = block_levels(layout, states.batch_size, num_levels, generator)
        levels = AVLatents(None if states.video is None else video_levels,
                           None if states.audio is None else audio_levels)
        x = AVLatents(*(None if s is None else gather_levels(s, lv)
                        for s, lv in ((states.video, levels.video), (states.audio, levels.audio))))
        t = x.zip_map(levels, lambda m, lv: times.to(m.device, torch.float32)[lv.to(m.device)])
        return x, t

    def loss(self, network: AVBackbone, states: AVLatents, times: Tensor, captions: list[str],
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """ODE-regression losses of a batch of ODE pairs (see :meth:`inputs` for the shapes).

        Returns:
            ``loss`` (weighted sum), ``loss_<m>`` (MSE over latents with ``t > 0``) and ``mean_time``.
        """
        if times.dim() != 1 or float(times[-1]) != 0.0:
            raise ValueError(f"times must be (K+1,) ending with the clean time 0, got {times.tolist()}")
        layout = network.layout(None if states.video is None else states.video.shape[2],
                                None if states.audio is None else states.audio.shape[2])
        x, t = self.inputs(states, times, layout, generator)
        text = network.encode_text(captions)
        v_video, v_audio = network(x.video, x.audio, t.video, t.audio, text, causal=True)
        velocity = AVLatents(v_video, v_audio)
        target = AVLatents(*(None if s is None else s[:, -1] for s in (states.video, states.audio)))
        losses: dict[str, Tensor] = {}
        for (name, xm), (_, vm), (_, tm), (_, ym) in zip(x.items(), velocity.items(), t.items(), target.items()):
            x0 = x0_from_velocity(xm.float(), vm.float(), tm)
            mask = (tm > 0).reshape(*tm.shape, *([1] * (xm.dim() - 2))).expand_as(xm)
            squared = (x0 - ym.float()).pow(2) * mask
            losses[f"loss_{name}"] = squared.sum() / mask.sum().clamp_min(1)
        losses["loss"] = sum(self.weights[name] * losses[f"loss_{name}"] for name, _ in x.items())
        losses["mean_time"] = torch.cat([tm.flatten() for _, tm in t.items()]).mean()
        return losses
