"""The two samplers of a Mutual Forcing model: few-step and multi-step modes of one set of weights.

A Mutual Forcing backbone (``causal=True``, ``step_size_conditioning=True``) is told which mode it runs in by
the step-size conditioning (OURS, docs/mutual_forcing.md): the multi-step mode is ``d = 0`` (a flow-matching
velocity, integrated with many Euler steps), the few-step mode ``d = 1/K`` (x0 prediction with re-noising,
``rollout.denoise_block``). Blocks are generated one at a time against (rolling) KV caches; a finished block
is committed with the clean-context refresh of ``rollout.commit_block``, always with the few-step value, so the
cached history does not depend on the sampler that wrote it. The training objective
(:mod:`omniforcing.methods.mutual_forcing`) uses the same functions for its history rollout and its targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.diffusion.samplers import sample_euler
from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.inference.clips import GeneratedClips, decode_latents
from omniforcing.inference.denoise import GuidedDenoiser, per_frame_time
from omniforcing.inference.rollout import block_noise, block_shape, commit_block, denoise_block
from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.layout import BlockLayout
from omniforcing.models.text import TextContext
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

    few_step_times: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
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
        times = [float(t) for t in self.few_step_times]
        if not times or min(times) <= 0 or max(times) > 1 or any(a <= b for a, b in zip(times, times[1:])):
            raise ValueError(f"few_step_times must be decreasing values in (0, 1], got {times}")
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


def cached_velocity(network: nn.Module, x: AVLatents, t: Tensor, text: TextContext, cache: AVKVCache, block: int,
                    step_size: Tensor) -> AVLatents:
    """Velocity of one block against the cached history (no commit); ``t`` ``(B,)`` is shared by the block."""
    tt = per_frame_time(t, x)
    video, audio = network(x.video, x.audio, tt.video, tt.audio, text, cache=cache, block=block,
                           step_size=step_size)
    return AVLatents(video, audio)


@dataclass
class BranchCache:
    """A KV cache with the network and text context every call on it uses (one per CFG branch or network)."""

    network: nn.Module
    text: TextContext
    cache: AVKVCache

    def commit(self, block: int, x0: AVLatents, modes: DualModes, generator: torch.Generator | None) -> None:
        """Clean-context refresh of ``block`` with the few-step step size (module docstring)."""
        step = modes.step_size("few_step", x0.batch_size, latents_device(x0))
        commit_block(self.network, self.text, self.cache, block, x0, context_time=modes.context_time,
                     step_size=step, generator=generator)


@dataclass
class HistoryCaches:
    """The caches one rollout keeps in step: conditional, unconditional (CFG) and the critic's (DMD)."""

    cond: BranchCache
    uncond: BranchCache | None = None
    critic: BranchCache | None = None

    @torch.no_grad()
    def commit(self, block: int, x0: AVLatents, modes: DualModes, generator: torch.Generator | None) -> None:
        """Commit ``block`` to every cache; with ``context_time > 0`` all of them see the same context noise.

        One branch, or a clean commit (which draws nothing), uses ``generator`` directly: the random draws then
        follow :class:`~omniforcing.inference.streaming.StreamingGenerator`'s order, so a few-step stream of
        one caption equals the streaming engine's for the same seed (a test checks it).
        """
        branches = [b for b in (self.cond, self.uncond, self.critic) if b is not None]
        if len(branches) == 1 or modes.context_time == 0:
            for branch in branches:
                branch.commit(block, x0, modes, generator)
            return
        seed = int(torch.randint(2**62, (1,), generator=generator))
        for branch in branches:
            branch.commit(block, x0, modes, torch.Generator().manual_seed(seed))

    def multi_step_denoiser(self, modes: DualModes, block: int) -> GuidedDenoiser:
        """``denoiser(x, t)`` of the multi-step mode (with CFG when configured) for ``block``."""
        device = self.cond.network.video.proj_in.weight.device
        step = modes.step_size("multi_step", self.cond.cache.batch_size, device)
        return GuidedDenoiser(self.cond.network, self.cond.text, None if self.uncond is None else self.uncond.text,
                              modes.video_cfg, modes.audio_cfg, cache=self.cond.cache,
                              null_cache=None if self.uncond is None else self.uncond.cache, block=block,
                              step_size=step)


def new_history_caches(network: nn.Module, captions: list[str], modes: DualModes, *, drop: Tensor | None = None,
                       guided: bool = False, critic: nn.Module | None = None) -> HistoryCaches:
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

    def branch(net: nn.Module, text: TextContext) -> BranchCache:
        return BranchCache(net, text, net.new_cache(batch, window_seconds=modes.window_seconds,
                                                    audio_window_seconds=modes.audio_window_seconds))

    uncond = None
    if guided:
        with torch.no_grad():
            uncond = branch(network, network.encode_text(captions, drop=torch.ones(batch, dtype=torch.bool)))
    return HistoryCaches(branch(network, network.encode_text(captions, drop=drop)), uncond,
                         None if critic is None else branch(critic, critic.encode_text(captions, drop=drop)))


def few_step_block(caches: HistoryCaches, block: int, noise: AVLatents, modes: DualModes,
                   generator: torch.Generator | None, times: tuple[float, ...] | None = None) -> AVLatents:
    """Few-step sampler for one block (``rollout.denoise_block``: predict x0, re-noise with fresh noise)."""
    step = modes.step_size("few_step", noise.batch_size, latents_device(noise))
    cond = caches.cond
    return denoise_block(cond.network, cond.text, cond.cache, block, noise, list(times or modes.few_step_times),
                         step_size=step, generator=generator)


def multi_step_block(caches: HistoryCaches, block: int, noise: AVLatents, modes: DualModes,
                     steps: int | None = None) -> AVLatents:
    """Multi-step sampler for one block: Euler on the multi-step mode's velocity against the cache (with CFG)."""
    return sample_euler(caches.multi_step_denoiser(modes, block), noise,
                        euler_schedule(steps or modes.multi_steps, modes.multi_shift))


@torch.no_grad()
def stream_blocks(network: nn.Module, captions: list[str], num_blocks: int, modes: DualModes, *,
                  video: bool = True, audio: bool = True, mode: Mode = "few_step",
                  generator: torch.Generator | None = None, few_step_times: tuple[float, ...] | None = None,
                  multi_steps: int | None = None) -> Iterator[AVLatents]:
    """Generate macro-blocks ``0 .. num_blocks - 1`` one at a time against a (rolling) KV cache.

    Yields:
        Clean latents of each block: video ``(B, Tv_k, C, h, w)``, audio ``(B, Ta_k, C)`` (absent modality None).
    """
    device = network.video.proj_in.weight.device
    caches = new_history_caches(network, captions, modes, guided=mode == "multi_step" and modes.guided)
    latent_v = (network.video_channels, *network.video_grid) if video else None
    latent_a = (network.audio_channels,) if audio else None
    for block in range(num_blocks):
        noise = block_noise(block_shape(network, block, latent_v, latent_a), len(captions), generator, device)
        if mode == "few_step":
            x0 = few_step_block(caches, block, noise, modes, generator, few_step_times)
        else:
            x0 = multi_step_block(caches, block, noise, modes, multi_steps)
        if block + 1 < num_blocks:
            caches.commit(block, x0, modes, generator)
        yield x0


def concat_blocks(blocks: list[AVLatents]) -> AVLatents:
    """Join per-block latents along latent time."""
    def cat(name: str) -> Tensor | None:
        parts = [getattr(b, name) for b in blocks]
        return None if parts[0] is None else torch.cat(parts, dim=1)

    return AVLatents(cat("video"), cat("audio"))


@torch.no_grad()
def generate_dual_mode_clips(network: nn.Module, codec: AVCodec, captions: list[str], seconds: int,
                             modes: DualModes, *, video: bool = True, audio: bool = True, mode: Mode = "few_step",
                             seed: int = 0, few_step_times: tuple[float, ...] | None = None,
                             multi_steps: int | None = None) -> GeneratedClips:
    """Generate ``seconds`` (+ the lead) per caption block by block in ``mode`` and decode them.

    Args:
        network: the Mutual Forcing backbone.
        codec: its codec (decodes the latents).
        captions: ``B`` prompts.
        seconds: whole seconds after the lead frame.
        modes: sampler settings (from the training run).
        video: generate the video stream.
        audio: generate the audio stream.
        mode: ``few_step`` (streaming default) or ``multi_step`` (evaluation).
        seed: noise seed.
        few_step_times: override of the few-step grid (e.g. 8 steps).
        multi_steps: override of the multi-step Euler steps.
    """
    num_blocks = BlockLayout.for_seconds(seconds, network.prefix).num_blocks
    blocks = list(stream_blocks(network, captions, num_blocks, modes, video=video, audio=audio, mode=mode,
                                generator=torch.Generator().manual_seed(seed), few_step_times=few_step_times,
                                multi_steps=multi_steps))
    return decode_latents(codec, concat_blocks(blocks), captions)


def dual_modes_from_config(config: dict) -> DualModes:
    """The :class:`DualModes` recorded with an exported model (``config["method_args"]``)."""
    args = config.get("method_args", {})
    missing = [k for k in ("few_step_times", "step_size") if k not in args]
    if missing:
        raise ValueError(f"this model records no Mutual Forcing sampler settings ({', '.join(missing)} missing); "
                         f"was it trained by MutualForcingLitModule? (method: {config.get('method')})")
    return DualModes(few_step_times=tuple(args["few_step_times"]), few_step_size=args["step_size"],
                     multi_step_size=args.get("multi_step_size", 0.0), multi_steps=args.get("sample_steps", 48),
                     multi_shift=args.get("sample_shift", 1.0), video_cfg=args.get("video_cfg", 1.0),
                     audio_cfg=args.get("audio_cfg", 1.0), context_time=args.get("context_time", 0.0),
                     window_seconds=args.get("window_seconds"), audio_window_seconds=args.get("audio_window_seconds"))
