"""OmniForcing Stage I: bidirectional DMD of the teacher into a few-step generator (ALGORITHMS.md §3, §6.4).

The generator keeps global (bidirectional) attention and learns few-step denoising; its inputs come from its
own few-step chain (backward simulation). See :mod:`omniforcing.training.distillation` for the teacher,
critic and update schedule.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.clips import GeneratedClips, decode_latents, latent_noise
from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.flow_matching import Modality
from omniforcing.sampling.few_step import sample_few_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.training.base import default_optimizer
from omniforcing.training.distillation import DistillationLitModule, copy_weights
from omniforcing.types import AVLatents, ClipSpec


class DMDLitModule(DistillationLitModule):
    """Few-step bidirectional generator trained by DMD against the teacher (Stage I).

    Args:
        network: the generator, configured bidirectional (``causal: false``).
        codec: frozen codec; must equal the teacher's.
        teacher_from: checkpoint of the bidirectional teacher.
        objective: DMD losses.
        clip: clip geometry (linked from the datamodule; only captions are read from the data).
        modality: ``joint``, ``video`` or ``audio``.
        optimizer: generator optimiser factory.
        critic_optimizer: critic optimiser factory.
        scheduler: generator LR scheduler factory.
        init_from: checkpoint initialising the generator; ``None`` = the teacher (``teacher_from``).
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss.
        seed: base seed of per-step randomness.
        critic_from: checkpoint initialising the critic (default: the teacher).
        critic_steps_per_generator_step: TTUR ratio.
        generator_clip: generator gradient-norm clip.
        critic_clip: critic gradient-norm clip.
        times: few-step times of the generator.
    """

    def __init__(self, network: nn.Module, codec: AVCodec, teacher_from: str,
                 objective: DistributionMatching | None = None, clip: ClipSpec = ClipSpec(),
                 modality: Modality = "joint", optimizer: OptimizerCallable = default_optimizer,
                 critic_optimizer: OptimizerCallable = default_optimizer,
                 scheduler: LRSchedulerCallable | None = None, init_from: str | None = None,
                 on_nonfinite: Literal["stop", "skip"] = "stop", seed: int = 0, critic_from: str | None = None,
                 critic_steps_per_generator_step: int = 5, generator_clip: float | None = 1.0,
                 critic_clip: float | None = 1.0, times: list[float] | None = None) -> None:
        super().__init__(network, codec, teacher_from, objective, clip, modality, optimizer, critic_optimizer,
                         scheduler, init_from, on_nonfinite, seed, critic_from, critic_steps_per_generator_step,
                         generator_clip, critic_clip, times)
        if init_from is None:
            copy_weights(self.network, self.teacher, teacher_from)

    def _noise(self, batch_size: int, seconds: int, generator: torch.Generator) -> AVLatents:
        return latent_noise(self.codec, seconds, batch_size, video=self.modality != "audio",
                            audio=self.modality != "video", generator=generator, device=self.device)

    def generate_latents(self, captions: list[str], exit_step: int, generator: torch.Generator) -> AVLatents:
        """Backward simulation: the generator's own chain from noise, gradient through step ``exit_step``."""
        denoiser = GuidedDenoiser(self.network, self.network.encode_text(captions), causal=False)
        noise = self._noise(len(captions), self.clip.seconds, generator)
        return sample_few_step(denoiser, noise, self.times, generator, exit_step)

    @torch.no_grad()
    def generate_clips(self, captions: list[str], seconds: int, seed: int = 0) -> GeneratedClips:
        """Few-step bidirectional generation of whole clips (no guidance: DMD distilled it in)."""
        generator = torch.Generator().manual_seed(seed)
        denoiser = GuidedDenoiser(self.network, self.network.encode_text(captions), causal=False)
        latents = sample_few_step(denoiser, self._noise(len(captions), seconds, generator), self.times, generator)
        return decode_latents(self.codec, latents, captions)
