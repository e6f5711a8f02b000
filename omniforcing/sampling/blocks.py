"""The cached block generator: noise -> few-step denoising against the KV cache -> commit forward, per block.

One macro-block at a time (ALGORITHMS.md §5.2, §5.4): fresh noise, the few-step loop
(:func:`omniforcing.sampling.few_step.few_step`) against the cache(s), which hold the committed history and are
never written by the denoising calls, then one more forward at the context time (clean-context refresh,
default ``t = 0``) that commits the block's output to every cache (both CFG branches). Self-Forcing's rollout
(with its exit step and activation checkpointing), Mutual Forcing's history, dual-mode generation and the
streaming engine all run this; Mutual Forcing's multi-step mode runs Euler on the same cache
(:func:`multi_step_block`).

:func:`block_step` is the whole step as one function over explicit tensors with nothing random inside: the
noise it consumes is drawn before it (:meth:`BlockGenerator.draw`, in the order the step consumes it), so it can be
captured and replayed (``omniforcing.sampling.capture``) with the same numbers as eager execution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise
from omniforcing.diffusion.samplers import fresh_noise, sample_euler
from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.models.layout import block_start
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.few_step import draw_renoise, few_step
from omniforcing.sampling.guidance import Branch, GuidedDenoiser, clip_time
from omniforcing.sampling.schedule import BlockTimes, time_tensor
from omniforcing.types import AVLatents


@dataclass(frozen=True)
class BlockShape:
    """Latent shapes of one macro-block: ``video`` ``(Tv_k, C, h, w)`` and ``audio`` ``(Ta_k, C)``."""

    video: tuple[int, ...] | None
    audio: tuple[int, ...] | None


def block_shape(network: AVBackbone, block: int, video_latent: tuple[int, ...] | None,
                audio_latent: tuple[int, ...] | None) -> BlockShape:
    """Shapes of ``block`` under the network's prefix layout, from one latent's shape per present modality.

    Args:
        network: the backbone (its ``prefix`` decides how many latents block 0 holds).
        block: macro-block index (any, streams are unbounded).
        video_latent: ``(C, h, w)`` of one video latent, or ``None`` for audio-only models.
        audio_latent: ``(C,)`` of one audio latent, or ``None`` for video-only models.
    """
    def count(rate: int) -> int:
        return block_start(block + 1, network.prefix, rate) - block_start(block, network.prefix, rate)

    return BlockShape(None if video_latent is None else (count(3), *video_latent),
                      None if audio_latent is None else (count(25), *audio_latent))


def block_noise(shape: BlockShape, batch_size: int, generator: torch.Generator | None, device: torch.device,
                dtype: torch.dtype = torch.float32) -> AVLatents:
    """Fresh standard-normal latents for one block (video drawn before audio)."""
    def draw(dims: tuple[int, ...] | None) -> Tensor | None:
        if dims is None:
            return None
        return fresh_noise(torch.empty((batch_size, *dims), device=device, dtype=dtype), generator)

    return AVLatents(draw(shape.video), draw(shape.audio))


@dataclass(frozen=True)
class BlockDraws:
    """Every random tensor one block step consumes.

    Args:
        noise: the block's starting noise, video ``(B, Tv_k, C, h, w)`` / audio ``(B, Ta_k, C)``.
        renoise: fresh noise after each step that re-noises (:func:`~omniforcing.sampling.few_step.draw_renoise`).
        context: noise of the commit input when the context time is ``> 0``, else ``None``.
    """

    noise: AVLatents
    renoise: tuple[AVLatents, ...]
    context: AVLatents | None


def denoise_block(denoiser: GuidedDenoiser, block: int, noise: AVLatents, renoise: Sequence[AVLatents],
                  times: BlockTimes, *, step_size: Tensor | None = None, exit_step: int | None = None,
                  checkpoint_exit: bool = True) -> AVLatents:
    """Few-step denoising of ``block`` against the cached history (no cache is modified).

    Args:
        denoiser: the branches (and CFG) to call; ``denoiser.cond.cache.next_block`` must equal ``block``.
        block: macro-block index.
        noise: pure noise of the block's shape (:func:`block_noise`).
        renoise: fresh noise per step (:func:`~omniforcing.sampling.few_step.draw_renoise`, same ``exit_step``).
        times: per-modality few-step times.
        step_size: ``(B,)`` mode conditioning of step-size-conditioned models (Mutual Forcing).
        exit_step: Self-Forcing's exit step (:func:`~omniforcing.sampling.few_step.few_step`); unguided only.
        checkpoint_exit: activation-checkpoint the exit forward with the cache snapshotted.

    Returns:
        The block's clean estimate (``(B, Tv_k, C, h, w)`` / ``(B, Ta_k, C)``).
    """
    if exit_step is not None and denoiser.uncond is not None:
        raise ValueError("exit_step (training) cannot be combined with guidance")

    def velocity(x: AVLatents, t: AVLatents, exit: bool) -> AVLatents:
        checkpointed = exit and checkpoint_exit and torch.is_grad_enabled()
        return denoiser.velocity(x, t, block=block, step_size=step_size, checkpointed=checkpointed)

    return few_step(velocity, noise, times, renoise, exit_step)


@torch.no_grad()
def commit_block(branches: Sequence[Branch], block: int, x0: AVLatents, *, context_time: float = 0.0,
                 context_noise: AVLatents | None = None, step_size: Tensor | None = None) -> None:
    """Write the block's output into every branch's cache (clean-context refresh, ALGORITHMS.md §5.2).

    The block is re-noised to ``context_time`` with ``context_noise`` (0 = exactly clean, no noise needed) and
    run once per branch with ``commit=True``; caches store detached keys/values, so no gradient ever flows into
    the past. Every branch commits the same input.
    """
    x0 = x0.detach()
    time = time_tensor(context_time, x0.batch_size, x0.items()[0][1].device)
    if context_time > 0:
        if context_noise is None:
            raise ValueError("a context time > 0 needs the context noise")
        x0 = x0.zip_map(context_noise, lambda m, e: add_noise(m, e, time))
    for branch in branches:
        branch.velocity(x0, clip_time(time, x0), block=block, commit=True, step_size=step_size)


@dataclass(frozen=True)
class EulerSteps:
    """Denoise a block by Euler steps on the velocity instead (Mutual Forcing's multi-step mode, same cache).

    Args:
        steps: Euler steps on :func:`~omniforcing.diffusion.schedules.euler_schedule`.
        shift: its schedule shift.
        step_size: ``(B,)`` step-size conditioning of the multi-step mode (``d = 0``), or ``None``.
    """

    steps: int
    shift: float = 1.0
    step_size: Tensor | None = None


def block_step(denoiser: GuidedDenoiser, block: int, draws: BlockDraws, times: BlockTimes,
               step_size: Tensor | None = None, context_time: float = 0.0, *, exit_step: int | None = None,
               checkpoint_exit: bool = True, euler: EulerSteps | None = None,
               commit_to: Sequence[Branch] | None = None) -> AVLatents:
    """One whole block: the denoising forwards, then the commit forward on every branch.

    Nothing random happens inside (``draws`` holds every noise tensor), which is what lets
    ``omniforcing.sampling.capture`` replay it as a graph.

    Args:
        denoiser: branches and CFG of the denoising forwards.
        block: macro-block index (``next_block`` of the caches).
        draws: the block's noise (:meth:`BlockGenerator.draw`).
        times: per-modality few-step times.
        step_size: ``(B,)`` step-size conditioning of the few-step forwards and of the commit.
        context_time: flow time of the commit input.
        exit_step: Self-Forcing's exit step (training), see :func:`denoise_block`.
        checkpoint_exit: activation-checkpoint the exit forward.
        euler: denoise with :func:`multi_step_block` instead of the few-step loop.
        commit_to: branches to commit to (default: ``denoiser.branches``; Mutual Forcing's history also
            commits to the critic's cache).

    Returns:
        The block's clean latents (with gradient through the exit forward when ``exit_step`` is given).
    """
    if euler is None:
        x0 = denoise_block(denoiser, block, draws.noise, draws.renoise, times, step_size=step_size,
                           exit_step=exit_step, checkpoint_exit=checkpoint_exit)
    else:
        x0 = multi_step_block(denoiser, block, draws.noise, euler.steps, euler.shift, euler.step_size)
    commit_block(denoiser.branches if commit_to is None else commit_to, block, x0, context_time=context_time,
                 context_noise=draws.context, step_size=step_size)
    return x0


BlockStep = Callable[..., AVLatents]
""":func:`block_step` or a captured replacement with its signature."""


class BlockGenerator:
    """The cached block generator: draws a block's noise and runs :func:`block_step`, block after block.

    Args:
        denoiser: network, text(s), cache(s) and CFG scales; its caches must be fresh or hold the earlier blocks.
        times: per-modality few-step times.
        video_latent: ``(C, h, w)`` of one video latent, or ``None`` (audio-only).
        audio_latent: ``(C,)`` of one audio latent, or ``None`` (video-only).
        step_size: ``(B,)`` step-size conditioning of the few-step forwards and commits, or ``None``.
        context_time: flow time at which each block is committed (0 = clean).
        exit_step: Self-Forcing's exit step (training), or ``None``.
        checkpoint_exit: activation-checkpoint the exit forward.
        euler: Mutual Forcing's multi-step mode instead of the few-step loop.
        commit_to: branches every block is committed to (default: the denoiser's).
        seeded_context: draw one seed, then the context noise from a generator seeded with it (Mutual
            Forcing's history has always drawn it this way when several caches commit; kept so its numbers
            for a seed stay the same).
        step: the block step to run (:func:`block_step`, or its captured form).
        dtype: latent dtype of the noise.
    """

    def __init__(self, denoiser: GuidedDenoiser, times: BlockTimes, video_latent: tuple[int, ...] | None,
                 audio_latent: tuple[int, ...] | None, *, step_size: Tensor | None = None, context_time: float = 0.0,
                 exit_step: int | None = None, checkpoint_exit: bool = True, euler: EulerSteps | None = None,
                 commit_to: Sequence[Branch] | None = None, seeded_context: bool = False,
                 step: BlockStep = block_step, dtype: torch.dtype = torch.float32) -> None:
        self.denoiser, self.times = denoiser, times
        self.video_latent, self.audio_latent = video_latent, audio_latent
        self.step_size, self.context_time = step_size, context_time
        self.exit_step, self.checkpoint_exit = exit_step, checkpoint_exit
        self.euler, self.commit_to, self.seeded_context = euler, commit_to, seeded_context
        self.step, self.dtype = step, dtype

    def noise(self, block: int, generator: torch.Generator | None) -> AVLatents:
        """The starting noise of ``block`` (``(B, Tv_k, C, h, w)`` / ``(B, Ta_k, C)``)."""
        network = self.denoiser.network
        shape = block_shape(network, block, self.video_latent, self.audio_latent)
        return block_noise(shape, self.denoiser.cond.text.batch_size, generator, network.device,
                           self.dtype)

    def draw(self, block: int, generator: torch.Generator | None) -> BlockDraws:
        """All noise of ``block``: its starting noise, re-noising and context noise, in the loop's order."""
        noise = self.noise(block, generator)
        if self.euler is not None:
            renoise: tuple[AVLatents, ...] = ()
        else:
            renoise = draw_renoise(noise, self.times, generator, self.exit_step)
        return BlockDraws(noise, renoise, self.context_noise(noise, generator))

    def context_noise(self, like: AVLatents, generator: torch.Generator | None) -> AVLatents | None:
        """Noise of the commit input (``None`` for a clean commit, which draws nothing)."""
        if self.context_time == 0:
            return None
        if self.seeded_context:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        return like.map(lambda m: fresh_noise(m, generator))

    def __call__(self, block: int, generator: torch.Generator | None) -> AVLatents:
        """Generate ``block`` and commit it; returns its clean latents.

        ``step`` (possibly captured) runs the streaming case: the few-step loop, committing to the denoiser's own
        branches. Training (an exit step), the multi-step mode and extra commit branches run :func:`block_step`.
        """
        draws = self.draw(block, generator)
        if self.exit_step is None and self.euler is None and self.commit_to is None:
            return self.step(self.denoiser, block, draws, self.times, self.step_size, self.context_time)
        return block_step(self.denoiser, block, draws, self.times, self.step_size, self.context_time,
                          exit_step=self.exit_step, checkpoint_exit=self.checkpoint_exit, euler=self.euler,
                          commit_to=self.commit_to)


def multi_step_block(denoiser: GuidedDenoiser, block: int, noise: AVLatents, steps: int, shift: float = 1.0,
                     step_size: Tensor | None = None) -> AVLatents:
    """Multi-step sampling of ``block``: Euler on the (guided) velocity against the same cache(s), no commit.

    Mutual Forcing's multi-step mode (``step_size`` = its ``d = 0`` conditioning); ``steps`` Euler steps on
    :func:`~omniforcing.diffusion.schedules.euler_schedule` with ``shift``.
    """
    def velocity(x: AVLatents, t: Tensor) -> AVLatents:
        return denoiser.velocity(x, clip_time(t, x), block=block, step_size=step_size)

    return sample_euler(velocity, noise, euler_schedule(steps, shift))
