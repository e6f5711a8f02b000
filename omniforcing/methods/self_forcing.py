"""Self-Forcing: the causal generator's own autoregressive rollout, with gradient truncation (ALGORITHMS.md §5.2).

One rollout = for each macro-block: fresh noise, the few-step sampler against the KV cache of the blocks
already generated, then a clean-context refresh that commits the block's output to the cache (re-noised to
``context_time``, default 0). For training, one exit step ``s`` (the same for every block, drawn identically
on all ranks by the caller) decides where the chain stops: steps before ``s`` run under ``no_grad``, step ``s``
runs with gradient (activation-checkpointed with the cache snapshotted and restored, so the recompute in
backward sees the history the forward saw) and its ``x0`` is the block's output. The cache stores detached
keys/values, so no gradient flows into the past: each block's parameters receive gradient only through its
exit forward ("stochastic gradient truncation"). The loop itself is the cached block generator of
:mod:`omniforcing.sampling.blocks`, the one streaming inference and Mutual Forcing use.

OmniForcing Stage III applies DMD to the whole rollout (:mod:`omniforcing.methods.dmd`): the bidirectional
teacher and critic see the full generated clip at one flow time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from omniforcing.models.layout import BlockLayout
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.text import TextContext
from omniforcing.sampling.blocks import BlockGenerator
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, BlockTimes, check_times
from omniforcing.types import AVLatents


def blocks_for_seconds(network: AVBackbone, seconds: int) -> int:
    """Macro-blocks of a clip of ``seconds`` whole seconds after the lead, under the network's prefix layout."""
    return BlockLayout.for_seconds(seconds, network.prefix).num_blocks


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.cat(parts, dim=1)


def rollout(network: AVBackbone, text: TextContext, num_blocks: int, times: Sequence[float], *,
            video_latent: tuple[int, ...] | None, audio_latent: tuple[int, ...] | None,
            exit_step: int | None = None, context_time: float = 0.0, checkpoint_exit: bool = True,
            window_seconds: float | None = None, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32) -> AVLatents:
    """Generate ``num_blocks`` macro-blocks autoregressively with a fresh KV cache.

    Args:
        network: the causal backbone.
        text: its text context for the batch (``network.encode_text``).
        num_blocks: macro-blocks to generate.
        times: few-step times (decreasing, ``> 0``).
        video_latent: ``(C, h, w)`` of one video latent, or ``None`` (audio-only).
        audio_latent: ``(C,)`` of one audio latent, or ``None`` (video-only).
        exit_step: Self-Forcing exit step (training): every block stops there and only that forward keeps its
            gradient; ``None`` runs all steps in the caller's grad mode (generation under ``no_grad``).
        context_time: flow time at which each block is committed to the cache (0 = clean).
        checkpoint_exit: activation-checkpoint the exit forward (cache snapshotted and restored).
        window_seconds: rolling cache window for long streams (``None`` = keep everything, as in training).
        generator: source of the block noise, the re-noising and the context noise.
        dtype: latent dtype (the latents live on the network's device).

    Returns:
        Clean latents of the whole rollout: video ``(B, Tv, C, h, w)``, audio ``(B, Ta, C)``.
    """
    cache = network.new_cache(text.batch_size, window_seconds=window_seconds)
    blocks = BlockGenerator(GuidedDenoiser(network, text, cache=cache),
                            BlockTimes.of(times, video=video_latent is not None, audio=audio_latent is not None),
                            video_latent, audio_latent, context_time=context_time, exit_step=exit_step,
                            checkpoint_exit=checkpoint_exit, dtype=dtype)
    videos, audios = [], []
    for block in range(num_blocks):
        x0 = blocks(block, generator)
        videos.append(x0.video)
        audios.append(x0.audio)
    return AVLatents(_cat(videos), _cat(audios))


class SelfForcing:
    """Settings of the Self-Forcing rollout used by OmniForcing Stage III.

    Args:
        times: the student's few-step times (must be those of Stage II's ODE pairs).
        context_time: flow time of the clean-context refresh (Self-Forcing / OmniForcing v2: 0).
        rollout_blocks: macro-blocks per training rollout; ``None`` = the blocks of the training clip.
        checkpoint_exit: activation-checkpoint each block's exit forward.
    """

    def __init__(self, times: list[float] | None = None, context_time: float = 0.0, rollout_blocks: int | None = None,
                 checkpoint_exit: bool = True) -> None:
        self.times = list(check_times(DEFAULT_FEW_STEP_TIMES if times is None else times))
        if not 0.0 <= context_time < 1.0:
            raise ValueError(f"context_time must lie in [0, 1), got {context_time}")
        if rollout_blocks is not None and rollout_blocks < 1:
            raise ValueError(f"rollout_blocks must be >= 1, got {rollout_blocks}")
        self.context_time = context_time
        self.rollout_blocks = rollout_blocks
        self.checkpoint_exit = checkpoint_exit

    def num_blocks(self, network: AVBackbone, seconds: int) -> int:
        """Blocks of one training rollout for clips of ``seconds`` seconds."""
        return self.rollout_blocks or blocks_for_seconds(network, seconds)

    def rollout(self, network: AVBackbone, text: TextContext, num_blocks: int, exit_step: int | None, *,
                video_latent: tuple[int, ...] | None, audio_latent: tuple[int, ...] | None,
                generator: torch.Generator | None) -> AVLatents:
        """One training rollout (see :func:`rollout`); gradient only through each block's exit forward."""
        return rollout(network, text, num_blocks, self.times, video_latent=video_latent, audio_latent=audio_latent,
                       exit_step=exit_step, context_time=self.context_time, checkpoint_exit=self.checkpoint_exit,
                       generator=generator)
