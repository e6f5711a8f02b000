"""OmniForcing Stage III: joint Self-Forcing DMD of the causal student (ALGORITHMS.md §5.2, §6.4).

The student rolls out a clip block by block with its KV cache (fresh noise per block, one exit step for every
block drawn identically on all ranks, gradient only through each block's checkpointed exit forward,
clean-context refresh), and DMD scores the whole rollout against the bidirectional teacher and critic at one
flow time. The critic is trained on rollouts made under ``no_grad``. Schedule, clipping and checkpoints:
:mod:`omniforcing.training.distillation`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.clips import GeneratedClips, decode_latents
from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.flow_matching import Modality
from omniforcing.methods.self_forcing import SelfForcing, blocks_for_seconds, rollout
from omniforcing.training.base import default_optimizer
from omniforcing.training.distillation import DistillationLitModule
from omniforcing.types import AVLatents, ClipSpec


class SelfForcingLitModule(DistillationLitModule):
    """Causal student trained by DMD on its own autoregressive rollouts (Stage III).

    Args:
        network: the causal student (``causal: true``; sinks / prefix as in Stage II).
        codec: frozen codec; must equal the teacher's.
        teacher_from: checkpoint of the bidirectional teacher (real score; also the critic's initialisation).
        objective: DMD losses (guidance scales, time range, modality weights).
        clip: clip geometry; the rollout covers its blocks unless ``rollout_blocks`` is set.
        modality: ``joint``, ``video`` or ``audio``.
        optimizer: generator optimiser factory.
        critic_optimizer: critic optimiser factory.
        scheduler: generator LR scheduler factory.
        init_from: checkpoint initialising the student (Stage II).
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss.
        seed: base seed of per-step randomness.
        critic_from: checkpoint initialising the critic (default: the teacher).
        critic_steps_per_generator_step: TTUR ratio.
        generator_clip: generator gradient-norm clip.
        critic_clip: critic gradient-norm clip.
        times: the student's few-step times (those of its Stage II ODE pairs).
        context_time: flow time of the clean-context refresh of each block in the cache (0 = clean).
        rollout_blocks: macro-blocks per training rollout (``None``: the blocks of ``clip``).
        checkpoint_exit: activation-checkpoint each block's exit forward (cache snapshotted and restored).
    """

    def __init__(self, network: nn.Module, codec: AVCodec, teacher_from: str,
                 objective: DistributionMatching | None = None, clip: ClipSpec = ClipSpec(),
                 modality: Modality = "joint", optimizer: OptimizerCallable = default_optimizer,
                 critic_optimizer: OptimizerCallable = default_optimizer,
                 scheduler: LRSchedulerCallable | None = None, init_from: str | None = None,
                 on_nonfinite: Literal["stop", "skip"] = "stop", seed: int = 0, critic_from: str | None = None,
                 critic_steps_per_generator_step: int = 5, generator_clip: float | None = 1.0,
                 critic_clip: float | None = 1.0, times: list[float] | None = None, context_time: float = 0.0,
                 rollout_blocks: int | None = None, checkpoint_exit: bool = True) -> None:
        super().__init__(network, codec, teacher_from, objective, clip, modality, optimizer, critic_optimizer,
                         scheduler, init_from, on_nonfinite, seed, critic_from, critic_steps_per_generator_step,
                         generator_clip, critic_clip, times)
        if not network.causal:
            raise ValueError("Stage III trains a causal student: set network.init_args.causal: true")
        self.context_time = context_time
        self.self_forcing = SelfForcing(self.times, context_time, rollout_blocks, checkpoint_exit)

    def generation_settings(self) -> dict[str, Any]:
        """The few-step times and the clean-context refresh time of streaming."""
        return {**super().generation_settings(), "context_time": self.context_time}

    def generate_latents(self, captions: list[str], exit_step: int, generator: torch.Generator) -> AVLatents:
        """One Self-Forcing rollout of the training length (gradient through each block's exit forward)."""
        video, audio = self.latent_shapes()
        text = self.network.encode_text(captions)
        blocks = self.self_forcing.num_blocks(self.network, self.clip.seconds)
        return self.self_forcing.rollout(self.network, text, blocks, exit_step, video_latent=video,
                                         audio_latent=audio, generator=generator)

    @torch.no_grad()
    def generate_clips(self, captions: list[str], seconds: int, seed: int = 0) -> GeneratedClips:
        """Stream whole clips block by block with the KV cache (all few steps per block)."""
        return stream_clips(self, captions, seconds, seed)


@torch.no_grad()
def stream_clips(module: DistillationLitModule | nn.Module, captions: list[str], seconds: int,
                 seed: int = 0) -> GeneratedClips:
    """Block-by-block generation of a causal student module (``network``, ``codec``, ``times``,
    ``context_time``, ``modality``) under ``no_grad``, decoded to media."""
    generator = torch.Generator().manual_seed(seed)
    video = None if module.modality == "audio" else (module.codec.video.latent_channels,
                                                     *module.codec.video.latent_size)
    audio = None if module.modality == "video" else (module.codec.audio.latent_channels,)
    network = module.network
    text = network.encode_text(captions)
    latents = rollout(network, text, blocks_for_seconds(network, seconds), module.times, video_latent=video,
                      audio_latent=audio, context_time=module.context_time, generator=generator)
    return decode_latents(module.codec, latents, captions)
