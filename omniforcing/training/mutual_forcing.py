"""Mutual Forcing as a thin LightningModule (DESIGN.md "Methods", last row; the math is in ``methods``).

One network, one optimiser: the objective rolls out the history with the network's few-step mode, trains its
multi-step mode with flow matching on the real clip and distils the few-step mode from it
(:class:`~omniforcing.methods.mutual_forcing.MutualForcing`). Uni-modal runs (``modality: video|audio``) train
one stream of the same backbone; the joint run starts from two of them coupled with
:func:`~omniforcing.models.weights.couple_unimodal` (``init_video_from`` + ``init_audio_from``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.clips import GeneratedClips
from omniforcing.inference.dual_mode import DualModes, Mode, generate_dual_mode_clips
from omniforcing.methods.flow_matching import Modality
from omniforcing.methods.mutual_forcing import MutualForcing, MutualForcingStep
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES
from omniforcing.training.base import AVLitModule, default_optimizer
from omniforcing.types import AVBatch, ClipSpec

log = logging.getLogger(__name__)


class MutualForcingLitModule(AVLitModule):
    """Native causal audio-video model with weight-shared few-step and multi-step modes (Mutual Forcing).

    Args:
        network: the backbone, built with ``causal: true`` and ``step_size_conditioning: true``.
        codec: frozen codec.
        objective: the Mutual Forcing objective (history, losses, distillation target).
        clip: clip geometry (linked from the datamodule).
        modality: ``joint``, or ``video`` / ``audio`` for the uni-modal first stage.
        optimizer: optimiser factory (one optimiser; with DMD distillation it also holds the critic).
        scheduler: LR scheduler factory.
        init_from: checkpoint whose network weights initialise this one (e.g. to continue a run's weights).
        init_video_from: video-only Mutual Forcing checkpoint; with ``init_audio_from``, the two are coupled
            into the initial joint model (cross-modal gates zero).
        init_audio_from: audio-only checkpoint to couple with ``init_video_from``.
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss.
        seed: base seed of per-step randomness.
        few_step_times: few-step sampler grid (training rollouts, distillation, streaming).
        step_size: step-size conditioning of the few-step mode (the value a streaming engine passes).
        multi_step_size: step-size conditioning of the multi-step mode.
        context_time: flow time of the clean-context refresh when a block is committed.
        window_seconds: rolling KV-cache window in seconds (training and generation; ``None`` = no eviction).
        audio_window_seconds: window of audio keys (``None`` = ``window_seconds``).
        sample_mode: sampler of :meth:`generate_clips` (``few_step`` streams; ``multi_step`` for evaluation).
        sample_steps: Euler steps of the multi-step sampler.
        sample_shift: schedule shift of the multi-step sampler.
        video_cfg: video CFG scale of the multi-step mode (generation and distillation targets).
        audio_cfg: audio CFG scale of the multi-step mode.
    """

    def __init__(
        self,
        network: nn.Module,
        codec: AVCodec,
        objective: MutualForcing | None = None,
        clip: ClipSpec = ClipSpec(),
        modality: Modality = "joint",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        init_video_from: str | None = None,
        init_audio_from: str | None = None,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        seed: int = 0,
        few_step_times: tuple[float, ...] = DEFAULT_FEW_STEP_TIMES,
        step_size: float = 0.25,
        multi_step_size: float = 0.0,
        context_time: float = 0.0,
        window_seconds: float | None = None,
        audio_window_seconds: float | None = None,
        sample_mode: Mode = "few_step",
        sample_steps: int = 48,
        sample_shift: float = 1.0,
        video_cfg: float = 1.0,
        audio_cfg: float = 1.0,
    ) -> None:
        check_dual_mode_network(network)
        super().__init__(network, codec, clip, modality, optimizer, scheduler, init_from, on_nonfinite, seed,
                         init_video_from, init_audio_from)
        self.objective = objective or MutualForcing()
        self.modes = DualModes(tuple(few_step_times), step_size, multi_step_size, sample_steps, sample_shift,
                               video_cfg, audio_cfg, context_time, window_seconds, audio_window_seconds)
        self.sample_mode = sample_mode
        # DMD's fake score starts as a copy of the network (DMD2 initialises it from the real score)
        self.critic = copy.deepcopy(self.network) if self.objective.needs_critic else None
        self.last_history_blocks = -1

    def backbones(self) -> dict[str, AVBackbone]:
        """The network (both modes share it) and, with DMD distillation, its critic."""
        return {**super().backbones(), **({} if self.critic is None else {"critic": self.critic})}

    def generation_settings(self) -> dict[str, Any]:
        """Both samplers (few-step with its step-size signal, multi-step Euler with guidance) and the cache policy."""
        modes = self.modes
        return {**super().generation_settings(), "few_step_times": list(modes.few_step_times),
                "step_size": modes.few_step_size, "multi_step_size": modes.multi_step_size,
                "sample_steps": modes.multi_steps, "sample_shift": modes.multi_shift, "video_cfg": modes.video_cfg,
                "audio_cfg": modes.audio_cfg, "context_time": modes.context_time,
                "window_seconds": modes.window_seconds, "audio_window_seconds": modes.audio_window_seconds,
                "sample_mode": self.sample_mode}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The network's parameters, plus the critic's when DMD distillation trains one (same optimiser)."""
        critic = [] if self.critic is None else [p for p in self.critic.parameters() if p.requires_grad]
        return super().trainable_parameters() + critic

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.critic is not None:
            self.log_grad_norms(self.critic, "train/grad_norm_critic")

    def compute_step(self, batch: AVBatch, generator: torch.Generator,
                     shared_generator: torch.Generator) -> MutualForcingStep:
        """The objective on one batch with the given per-rank and cross-rank generators."""
        return self.objective.loss(self.network, self.latents(batch), batch.captions, self.modes,
                                   generator=generator, shared_generator=shared_generator, critic=self.critic)

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor | None:
        step = self.compute_step(batch, self.step_generator(), self.step_generator(shared_across_ranks=True, salt=1))
        self.last_history_blocks = step.history_blocks
        if not self.guard_finite(step.losses):
            return None
        self.log_losses(step.losses, "train", len(batch))
        self.log("train/history_blocks", float(step.history_blocks), on_step=True, batch_size=len(batch))
        self.log("train/distill_time", step.distill_time, on_step=True, batch_size=len(batch))
        return step.losses["loss"]

    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        # fixed draws, so every validation measures the same thing
        step = self.compute_step(batch, torch.Generator().manual_seed(self.seed + batch_idx),
                                 torch.Generator().manual_seed(self.seed + batch_idx + 1))
        self.log_losses(step.losses, "val", len(batch))

    @torch.no_grad()
    def generate_clips(self, captions: list[str], seconds: int, seed: int = 0) -> GeneratedClips:
        """Generate block by block with the configured sampler (few-step streaming by default) and decode."""
        return generate_dual_mode_clips(self.network, self.codec, captions, seconds, self.modes,
                                        video=self.modality != "audio", audio=self.modality != "video",
                                        mode=self.sample_mode, seed=seed)


def check_dual_mode_network(network: AVBackbone) -> None:
    """Mutual Forcing needs a block-causal backbone conditioned on the step size (the mode signal)."""
    if not isinstance(network, AVBackbone) or not network.causal or not network.step_size_conditioning:
        raise ValueError("Mutual Forcing needs network init_args causal: true and step_size_conditioning: true "
                         "(the step size tells the shared weights which mode they run in)")
