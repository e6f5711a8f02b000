"""The bidirectional teacher: joint (or uni-modal) audio-video flow matching on the shared backbone."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import GeneratedClips, decode_latents, latent_noise
from omniforcing.methods.flow_matching import FlowMatching, Modality
from omniforcing.training.base import AVLitModule, default_optimizer
from omniforcing.types import AVBatch, ClipSpec


class TeacherLitModule(AVLitModule):
    """Bidirectional flow-matching teacher (DESIGN.md "Methods", first row).

    Args:
        network: the backbone, configured bidirectional.
        codec: frozen codec.
        objective: flow-matching objective (time sampler, loss weights, condition dropout).
        clip: clip geometry (linked from the datamodule).
        modality: ``joint``, ``video`` or ``audio`` (uni-modal pretraining).
        optimizer: optimiser factory.
        scheduler: LR scheduler factory.
        init_from: checkpoint whose network weights initialise this one (e.g. to continue from a run's weights).
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss.
        seed: base seed of per-step randomness.
        init_video_from: video-only teacher checkpoint; with ``init_audio_from`` the two uni-modal teachers are
            coupled into this joint one (cross-modal gates zero).
        init_audio_from: audio-only teacher checkpoint to couple with ``init_video_from``.
        sample_steps: Euler steps when this module generates (evaluation, ``omniforcing generate``).
        sample_shift: schedule shift for generation.
        video_cfg: video CFG scale for generation.
        audio_cfg: audio CFG scale for generation.
    """

    def __init__(
        self,
        network: nn.Module,
        codec: AVCodec,
        objective: FlowMatching | None = None,
        clip: ClipSpec = ClipSpec(),
        modality: Modality = "joint",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        seed: int = 0,
        init_video_from: str | None = None,
        init_audio_from: str | None = None,
        sample_steps: int = 32,
        sample_shift: float = 1.0,
        video_cfg: float = 3.0,
        audio_cfg: float = 3.0,
    ) -> None:
        super().__init__(network, codec, clip, modality, optimizer, scheduler, init_from, on_nonfinite, seed,
                         init_video_from, init_audio_from)
        self.objective = objective or FlowMatching()
        self.sample_steps, self.sample_shift = sample_steps, sample_shift
        self.video_cfg, self.audio_cfg = video_cfg, audio_cfg

    def generation_settings(self) -> dict[str, Any]:
        """The Euler sampler and guidance of whole-clip generation."""
        return {**super().generation_settings(), "sample_steps": self.sample_steps, "sample_shift": self.sample_shift,
                "video_cfg": self.video_cfg, "audio_cfg": self.audio_cfg}

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor | None:
        losses = self.objective.loss(self.network, self.latents(batch), batch.captions, self.step_generator())
        if not self.guard_finite(losses):
            return None
        self.log_losses(losses, "train", len(batch))
        return losses["loss"]

    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.seed + batch_idx)  # same noise at every validation
        losses = self.objective.loss(self.network, self.latents(batch), batch.captions, generator)
        self.log_losses(losses, "val", len(batch))

    @torch.no_grad()
    def generate_clips(self, captions: list[str], seconds: int, seed: int = 0) -> GeneratedClips:
        """Generate and decode clips with the multi-step Euler sampler and CFG (whole clip at once)."""
        generator = torch.Generator().manual_seed(seed)
        noise = latent_noise(self.codec, seconds, len(captions), video=self.modality != "audio",
                             audio=self.modality != "video", generator=generator, device=self.device)
        latents = generate_bidirectional(self.network, captions, noise, steps=self.sample_steps,
                                         shift=self.sample_shift, video_scale=self.video_cfg,
                                         audio_scale=self.audio_cfg)
        return decode_latents(self.codec, latents, captions)
