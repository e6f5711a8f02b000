"""The two samplers of a Mutual Forcing model: few-step and multi-step modes of one set of weights.

A Mutual Forcing backbone (``causal=True``, ``step_size_conditioning=True``) is told which mode it runs in by
the step-size conditioning (OURS, docs/mutual_forcing.md): the multi-step mode is ``d = 0`` (a flow-matching
velocity, integrated with many Euler steps), the few-step mode ``d = 1/K`` (x0 prediction with re-noising).
Blocks are generated one at a time against (rolling) KV caches by the cached block generator
(:class:`~omniforcing.sampling.blocks.BlockGenerator`); a finished block is committed always with the few-step
value, so the cached history does not depend on the sampler that wrote it. The training objective
(:mod:`omniforcing.methods.mutual_forcing`) uses the same caches for its history rollout and its targets;
generation (:mod:`omniforcing.inference.dual_mode`) streams with :func:`stream_blocks`.

The training history is written by a :class:`HistorySource` (the objective's ``history`` argument):
:class:`HistoryFromRealClip` (default) lets the few-step mode denoise the real history noised to a drawn flow time,
so the history is the model's own kind of output while its content leads to the real next block;
:class:`HistoryFromNoise` (the ablation, the variant before issue 14) samples it from fresh noise, unrelated to
the real block the multi-step mode then regresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise
from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.blocks import BlockDraws, BlockGenerator, EulerSteps, block_step
from omniforcing.sampling.few_step import draw_renoise
from omniforcing.sampling.guidance import Branch, GuidedDenoiser
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, BlockTimes, check_times
from omniforcing.types import AVLatents

Mode = Literal["few_step", "multi_step"]


@dataclass(frozen=True)
class DualModes:
    """The two samplers of one weight-shared model and the streaming settings they share.

    Args:
        few_step_times: flow times of the few-step sampler (decreasing, all ``> 0``), e.g. ``(1, .75, .5, .25)``.
        few_step_size: step-size conditioning of the few-step mode (also used for every cache commit).
        multi_step_size: step-size conditioning of the multi-step mode (0 = flow-matching velocity).
        multi_steps: Euler steps of the multi-step sampler when generating.
        multi_shift: schedule shift of the multi-step sampler.
        video_cfg: video CFG scale of the multi-step mode (generation and distillation targets; 1 = none).
        audio_cfg: audio CFG scale of the multi-step mode.
        context_time: flow time at which committed blocks are re-encoded (0 = clean, Self-Forcing default).
        window_seconds: rolling KV-cache window (video keys) in whole seconds, training and generation alike.
        audio_window_seconds: window of audio keys (``None`` = ``window_seconds``).
    """

    few_step_times: tuple[float, ...] = DEFAULT_FEW_STEP_TIMES
    few_step_size: float = 0.25
    multi_step_size: float = 0.0
    multi_steps: int = 48
    multi_shift: float = 1.0
    video_cfg: float = 1.0
    audio_cfg: float = 1.0
    context_time: float = 0.0
    window_seconds: float | None = None
    audio_window_seconds: float | None = None

    def __post_init__(self) -> None:
        check_times(self.few_step_times, "few_step_times")
        if self.few_step_size == self.multi_step_size:
            raise ValueError(f"the two modes need different step sizes, both are {self.few_step_size}")
        if self.multi_steps < 1:
            raise ValueError(f"multi_steps must be >= 1, got {self.multi_steps}")
        if not 0.0 <= self.context_time < 1.0:
            raise ValueError(f"context_time must lie in [0, 1), got {self.context_time}")

    @property
    def guided(self) -> bool:
        """Whether the multi-step mode uses classifier-free guidance (needs a second, unconditional cache)."""
        return self.video_cfg != 1.0 or self.audio_cfg != 1.0

    def step_size(self, mode: Mode, batch_size: int, device: torch.device) -> Tensor:
        """``(B,)`` step-size conditioning of ``mode``."""
        value = self.few_step_size if mode == "few_step" else self.multi_step_size
        return torch.full((batch_size,), float(value), device=device)


def latents_device(x: AVLatents) -> torch.device:
    """Device of the present latents."""
    return x.items()[0][1].device


@dataclass
class HistoryCaches:
    """The caches one rollout keeps in step: conditional, unconditional (CFG) and the critic's (DMD)."""

    cond: Branch
    uncond: Branch | None = None
    critic: Branch | None = None

    @property
    def branches(self) -> tuple[Branch, ...]:
        """Every cache a block is committed to."""
        return tuple(b for b in (self.cond, self.uncond, self.critic) if b is not None)

    @property
    def device(self) -> torch.device:
        """Device of the conditional network."""
        return self.cond.network.device

    def few_step_denoiser(self) -> GuidedDenoiser:
        """The few-step mode's denoiser: the conditional branch, no guidance (distilled in)."""
        return GuidedDenoiser(self.cond.network, self.cond.text, cache=self.cond.cache)

    def multi_step_denoiser(self, modes: DualModes) -> GuidedDenoiser:
        """The multi-step mode's denoiser, with CFG when configured (bind ``block``/``step_size`` per call)."""
        return GuidedDenoiser(self.cond.network, self.cond.text, None if self.uncond is None else self.uncond.text,
                              modes.video_cfg, modes.audio_cfg, cache=self.cond.cache,
                              null_cache=None if self.uncond is None else self.uncond.cache)

    def generator(self, modes: DualModes, times: tuple[float, ...] | None = None, *, video: bool = True,
                  audio: bool = True, euler: EulerSteps | None = None,
                  dtype: torch.dtype = torch.float32) -> BlockGenerator:
        """The cached block generator of these caches: few-step mode (or ``euler``), committing to every cache.

        With several caches and context noise, the context noise comes from one drawn seed (the order these
        caches have always used, so numbers for a seed stay the same).
        """
        network = self.cond.network
        branches = self.branches
        return BlockGenerator(
            self.few_step_denoiser() if euler is None else self.multi_step_denoiser(modes),
            BlockTimes.of(times or modes.few_step_times, video=video, audio=audio),
            (network.video_channels, *network.video_grid) if video else None,
            (network.audio_channels,) if audio else None,
            step_size=modes.step_size("few_step", self.cond.text.batch_size, self.device),
            context_time=modes.context_time, euler=euler, commit_to=branches,
            seeded_context=len(branches) > 1, dtype=dtype)


def new_history_caches(network: AVBackbone, captions: list[str], modes: DualModes, *, drop: Tensor | None = None,
                       guided: bool = False, critic: AVBackbone | None = None) -> HistoryCaches:
    """Empty caches (with the modes' window) and text contexts for ``captions``.

    Args:
        network: the Mutual Forcing backbone.
        captions: ``B`` prompts.
        modes: sampler settings (window).
        drop: ``(B,)`` bool, captions replaced by the null embedding (CFG dropout) in every branch but ``uncond``.
        guided: also build the unconditional branch (null captions).
        critic: also build a branch for this critic network (DMD distillation).
    """
    batch = len(captions)

    def branch(net: AVBackbone, text) -> Branch:
        return Branch(net, text, net.new_cache(batch, window_seconds=modes.window_seconds,
                                               audio_window_seconds=modes.audio_window_seconds))

    uncond = None
    if guided:
        with torch.no_grad():
            uncond = branch(network, network.encode_text(captions, drop=torch.ones(batch, dtype=torch.bool)))
    return HistoryCaches(branch(network, network.encode_text(captions, drop=drop)), uncond,
                         None if critic is None else branch(critic, critic.encode_text(captions, drop=drop)))


@torch.no_grad()
def stream_blocks(network: AVBackbone, captions: list[str], num_blocks: int, modes: DualModes, *,
                  video: bool = True, audio: bool = True, mode: Mode = "few_step",
                  generator: torch.Generator | None = None, few_step_times: tuple[float, ...] | None = None,
                  multi_steps: int | None = None) -> Iterator[AVLatents]:
    """Generate macro-blocks ``0 .. num_blocks - 1`` one at a time against (rolling) KV caches.

    Yields:
        Clean latents of each block: video ``(B, Tv_k, C, h, w)``, audio ``(B, Ta_k, C)`` (absent modality None).
    """
    caches = new_history_caches(network, captions, modes, guided=mode == "multi_step" and modes.guided)
    euler = None
    if mode == "multi_step":
        euler = EulerSteps(multi_steps or modes.multi_steps, modes.multi_shift,
                           modes.step_size("multi_step", len(captions), caches.device))
    blocks = caches.generator(modes, few_step_times, video=video, audio=audio, euler=euler)
    for block in range(num_blocks):
        yield blocks(block, generator)


class HistorySource:
    """How the few-step mode writes one training history block (Mutual Forcing's ``history`` argument).

    Subclasses implement :meth:`write_block`; they are selected by ``class_path`` in the objective's recipe.
    """

    def write_block(self, blocks: BlockGenerator, real: AVLatents, block: int, generator: torch.Generator | None,
                    shared_generator: torch.Generator | None) -> AVLatents:
        """Write history block ``block`` with ``blocks`` (few-step mode, committing to every cache).

        Args:
            blocks: the history's cached block generator (:meth:`HistoryCaches.generator`).
            real: the real clip's latents of this block, video ``(B, Tv_k, C, h, w)`` / audio ``(B, Ta_k, C)``.
            block: macro-block index (``next_block`` of the caches).
            generator: per-rank randomness (noise).
            shared_generator: randomness identical on every rank (anything that changes the number of forwards).

        Returns:
            The block's clean latents as committed, shaped like ``real``.
        """
        raise NotImplementedError


class HistoryFromNoise(HistorySource):
    """Ablation (the history before issue 14): the few-step sampler from fresh noise, ignoring the real clip.

    The real block the multi-step mode then regresses has nothing to do with this history, so the best the model
    can learn is the block given the caption alone (docs/mutual_forcing.md). Draws exactly what it always drew,
    so its numbers for a seed are those recorded before the change.
    """

    def write_block(self, blocks: BlockGenerator, real: AVLatents, block: int, generator: torch.Generator | None,
                    shared_generator: torch.Generator | None) -> AVLatents:
        return blocks(block, generator)


class HistoryFromRealClip(HistorySource):
    """The few-step mode denoises the real block noised to a start time ``s`` (default; OURS, ALGORITHMS.md §7.3).

    ``x_s = (1 - s) x_real + s eps`` (fresh ``eps``), then the few-step loop from ``s`` through the grid's times
    below ``s`` against the cache, then the usual commit. The context is the model's own few-step output (its
    errors, the training-inference consistency the paper claims), yet it follows the real clip, so the real next
    block that the multi-step mode regresses is a plausible continuation of it. ``s`` is drawn per block from the
    shared generator (it sets the number of forwards, which must agree across ranks under FSDP).

    The default draws ``s`` from the grid's first two times (1.0 and 0.75 for the 4-step grid): at ``s = 1`` the
    block is the model's own sample given the history before it, as every block is when it streams; at 0.75 it
    keeps the real block's layout, so the history as a whole still leads to the real next block. Starting only
    below 1 (0.75, 0.5, 0.25, the default until 2026-12-05) gives histories closer to the data than any the
    model streams from, and cost 130-155 in few-step video stats FD over five seeds
    (docs/mutual_forcing.md, "Results over seeds"); it is kept as an ablation
    (``recipes/mutual_forcing/ablations/history_from_clip_low_noise.yaml``).

    Args:
        start_times: flow times ``s`` a history block starts from, drawn uniformly per block (``None`` = the
            few-step grid's first two times; ``[1.0]`` alone is pure noise, i.e. :class:`HistoryFromNoise`).
            Choose times the few-step mode is distilled at.
    """

    DEFAULT_STARTS = 2
    """``start_times=None``: this many of the grid's first times."""

    def __init__(self, start_times: list[float] | None = None) -> None:
        if start_times is not None and (not start_times or not all(0 < t <= 1 for t in start_times)):
            raise ValueError(f"start_times must be non-empty values in (0, 1], got {start_times}")
        self.start_times = None if start_times is None else tuple(float(t) for t in start_times)

    def draw_start_time(self, times: BlockTimes, shared_generator: torch.Generator | None) -> float:
        """One start time from ``start_times`` (default: the grid's first two times)."""
        grid = times.items()[0][1]
        if self.start_times is None and len(grid) < self.DEFAULT_STARTS:
            raise ValueError("a one-step grid starts only from noise, which ignores the real clip: give "
                             "HistoryFromRealClip start_times")
        choices = self.start_times or grid[:self.DEFAULT_STARTS]
        return float(choices[int(torch.randint(len(choices), (1,), generator=shared_generator))])

    def write_block(self, blocks: BlockGenerator, real: AVLatents, block: int, generator: torch.Generator | None,
                    shared_generator: torch.Generator | None) -> AVLatents:
        start = self.draw_start_time(blocks.times, shared_generator)
        times = BlockTimes(*(None if ts is None else (start, *(t for t in ts if t < start))
                             for ts in (blocks.times.video, blocks.times.audio)))
        t = torch.full((real.batch_size,), start, device=latents_device(real))
        noised = real.map(lambda m: add_noise(m, fresh_noise(m, generator), t))
        draws = BlockDraws(noised, draw_renoise(noised, times, generator), blocks.context_noise(noised, generator))
        return block_step(blocks.denoiser, block, draws, times, blocks.step_size, blocks.context_time,
                          commit_to=blocks.commit_to)
