"""Shared base of the DMD stages (OmniForcing Stage I and Stage III): teacher, critic, two optimisers, TTUR.

The teacher is rebuilt from its own checkpoint (``teacher_from``; network, codec and config come from the
file, so no network config is repeated in recipes), frozen, and used as the real score with CFG. The critic
(fake score) is a trainable copy of the teacher (or of ``critic_from``). ``network`` is the generator,
initialised from ``init_from`` (the teacher for Stage I, Stage II for Stage III). The codec must be the
teacher's: the recipe's codec is checked against the one stored with the teacher and a mismatch is an error
(latents of another codec would be meaningless to the teacher).

Optimisation is manual (``automatic_optimization = False``, ALGORITHMS.md §3.3 and §10): every training batch
updates the critic once; every ``critic_steps_per_generator_step``-th batch (counted from 0, as Self-Forcing)
first updates the generator. Lightning counts ``global_step`` per optimiser step, so ``trainer.max_steps``
counts both kinds (with ratio ``r``: ``r + 1`` steps per ``r`` batches). Gradients are clipped by this module
(``generator_clip`` / ``critic_clip``; the trainer's ``gradient_clip_val`` must be unset in manual mode) after
their norms are logged, so the logged norms are the raw ones (explosions are visible).

Checkpoints: the frozen teacher is not written (it is rebuilt from ``teacher_from``); network, critic,
optimiser states and the batch counter are. The EMA callback tracks ``network`` only and advances once per
generator step (it recognises the generator optimiser by its parameters), not once per batch.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.export import load_model
from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.flow_matching import Modality
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, check_times
from omniforcing.training.base import AVLitModule, default_optimizer
from omniforcing.types import AVBatch, AVLatents, ClipSpec

log = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher."


def check_same_codec(codec: AVCodec, reference: AVCodec, source: str) -> None:
    """Raise ``ValueError`` unless ``codec`` equals ``reference`` (classes, geometry and weights/statistics)."""
    problems = []
    for name in ("video", "audio"):
        mine, theirs = getattr(codec, name), getattr(reference, name)
        if type(mine) is not type(theirs):
            problems.append(f"{name}: {type(mine).__name__} vs {type(theirs).__name__}")
            continue
        for attribute in ("latent_channels", "latent_size", "fps", "sample_rate", "temporal_stride"):
            if getattr(mine, attribute, None) != getattr(theirs, attribute, None):
                problems.append(f"{name}.{attribute}: {getattr(mine, attribute)} vs {getattr(theirs, attribute)}")
    mine_state, theirs_state = codec.state_dict(), reference.state_dict()
    if set(mine_state) != set(theirs_state):
        problems.append("different codec tensors")
    else:
        changed = [k for k, v in mine_state.items() if not torch.equal(v.cpu(), theirs_state[k].cpu())]
        problems += [f"weights/statistics differ: {', '.join(changed[:4])}"] if changed else []
    if problems:
        raise ValueError(f"the recipe's codec is not the teacher's ({source}): " + "; ".join(problems) +
                         ". Use the latents recipe the teacher was trained with.")


def copy_weights(target: nn.Module, source: nn.Module, source_name: str) -> None:
    """Initialise ``target`` from the matching tensors of ``source`` (e.g. the generator from the loaded teacher).

    Same rules as :func:`omniforcing.inference.checkpoints.load_network_weights`: a shape mismatch is an
    error, tensors the source lacks (new sinks) keep their initialisation and are logged.
    """
    state, own = source.state_dict(), target.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"shape mismatch initialising from {source_name}: " + "; ".join(wrong[:5]) +
                         " (use the model size the teacher was trained with)")
    missing = target.load_state_dict(state, strict=False).missing_keys
    if missing:
        log.warning("initialised from %s; %d tensors keep their init: %s", source_name, len(missing),
                    ", ".join(missing[:8]))


class DistillationLitModule(AVLitModule):
    """Base of the DMD stages: teacher (real score), critic (fake score), generator (``network``).

    Subclasses implement :meth:`generate_latents` (the generator's samples, with or without gradient) and
    ``generate_clips``.

    Args:
        network: the generator being trained.
        codec: frozen codec; must equal the teacher's.
        teacher_from: checkpoint (``.ckpt`` or exported folder) of the bidirectional teacher.
        objective: DMD losses (guidance scales, time range, modality weights).
        clip: clip geometry of the generated samples (linked from the datamodule).
        modality: ``joint``, ``video`` or ``audio``.
        optimizer: generator optimiser factory.
        critic_optimizer: critic optimiser factory.
        scheduler: optional LR scheduler of the generator (stepped after every generator step).
        init_from: checkpoint initialising the generator.
        on_nonfinite: ``stop`` or ``skip`` when a loss is NaN/inf.
        seed: base seed of the per-step randomness.
        critic_from: checkpoint initialising the critic (default: the teacher).
        critic_steps_per_generator_step: critic updates per generator update (TTUR ratio, 5 in the sources).
        generator_clip: max gradient norm of the generator (``None``: no clipping).
        critic_clip: max gradient norm of the critic.
        times: the generator's few-step times (decreasing, in ``(0, 1]``).
    """

    def __init__(self, network: nn.Module, codec: AVCodec, teacher_from: str,
                 objective: DistributionMatching | None = None, clip: ClipSpec = ClipSpec(),
                 modality: Modality = "joint", optimizer: OptimizerCallable = default_optimizer,
                 critic_optimizer: OptimizerCallable = default_optimizer,
                 scheduler: LRSchedulerCallable | None = None, init_from: str | None = None,
                 on_nonfinite: Literal["stop", "skip"] = "stop", seed: int = 0, critic_from: str | None = None,
                 critic_steps_per_generator_step: int = 5, generator_clip: float | None = 1.0,
                 critic_clip: float | None = 1.0, times: list[float] | None = None) -> None:
        super().__init__(network, codec, clip, modality, optimizer, scheduler, init_from, on_nonfinite, seed)
        if critic_steps_per_generator_step < 1:
            raise ValueError(f"critic_steps_per_generator_step must be >= 1, got {critic_steps_per_generator_step}")
        teacher, teacher_codec, _ = load_model(teacher_from)
        check_same_codec(self.codec, teacher_codec, teacher_from)
        self.teacher = teacher.requires_grad_(False).eval()
        self.critic = load_model(critic_from or teacher_from)[0].requires_grad_(True).train()
        self.objective = objective or DistributionMatching()
        self.critic_optimizer_factory = critic_optimizer
        self.ratio = critic_steps_per_generator_step
        self.generator_clip, self.critic_clip = generator_clip, critic_clip
        self.times = list(check_times(DEFAULT_FEW_STEP_TIMES if times is None else times))
        self.automatic_optimization = False
        self.register_buffer("distill_batches", torch.zeros((), dtype=torch.long))

    def backbones(self) -> dict[str, AVBackbone]:
        """The generator, the frozen teacher (real score) and the critic (fake score)."""
        return {**super().backbones(), "teacher": self.teacher, "critic": self.critic}

    # ---------------------------------------------------------------- modes and checkpoints
    def generation_settings(self) -> dict[str, Any]:
        """The student's few-step times."""
        return {**super().generation_settings(), "times": list(self.times)}

    def train(self, mode: bool = True) -> DistillationLitModule:
        super().train(mode)
        self.teacher.eval()  # frozen real score: never in training mode
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen teacher out of the checkpoint (it is rebuilt from ``teacher_from``)."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt teacher's weights back, so strict loading of the module succeeds."""
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)

    def configure_optimizers(self):
        generator = self.optimizer_factory(self.trainable_parameters())
        critic = self.critic_optimizer_factory([p for p in self.critic.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return [generator, critic]
        return [generator, critic], [{"scheduler": self.scheduler_factory(generator), "interval": "step"}]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Norms are logged by :meth:`update` before clipping instead."""

    # ---------------------------------------------------------------- generator side (subclasses)
    def generate_latents(self, captions: list[str], exit_step: int, generator: torch.Generator) -> AVLatents:
        """The generator's samples for ``captions``, stopped at few-step index ``exit_step`` (gradient through
        that step only, in the caller's grad mode)."""
        raise NotImplementedError

    def draw_exit_step(self, shared: torch.Generator) -> int:
        """The exit step, uniform over the few-step indices (``shared`` is seeded identically on every rank)."""
        return int(torch.randint(len(self.times), (1,), generator=shared))

    def latent_shapes(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """``(C, h, w)`` of one video latent and ``(C,)`` of one audio latent for the trained modalities."""
        video = (self.codec.video.latent_channels, *self.codec.video.latent_size)
        audio = (self.codec.audio.latent_channels,)
        return (None if self.modality == "audio" else video), (None if self.modality == "video" else audio)

    # ---------------------------------------------------------------- losses
    def _texts(self, captions: list[str]):
        text = self.teacher.encode_text(captions)
        drop = torch.ones(len(captions), dtype=torch.bool, device=self.device)
        return text, self.teacher.encode_text(captions, drop=drop)

    def generator_losses(self, captions: list[str], exit_step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """DMD losses of a fresh generator sample (gradient reaches ``network`` only)."""
        x = self.generate_latents(captions, exit_step, generator)
        with torch.no_grad():
            text, null_text = self._texts(captions)
            critic_text = self.critic.encode_text(captions)
        real = self.objective.real_score(self.teacher, text, null_text)
        fake = self.objective.fake_score(self.critic, critic_text)
        return self.objective.generator_loss(x, real, fake, generator)

    def critic_losses(self, captions: list[str], exit_step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Flow loss of the critic on a generator sample made under ``no_grad``."""
        with torch.no_grad():
            x = self.generate_latents(captions, exit_step, generator)
        fake = self.objective.fake_score(self.critic, self.critic.encode_text(captions))
        return self.objective.critic_loss(x, fake, generator)

    # ---------------------------------------------------------------- the TTUR loop
    def is_generator_batch(self) -> bool:
        """Whether this batch also updates the generator (batches ``0, r, 2r, ...``)."""
        return int(self.distill_batches) % self.ratio == 0

    def update(self, optimizer: Any, loss: Tensor, module: nn.Module, clip: float | None, prefix: str) -> None:
        """Backward, log the raw gradient norms, clip, step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.log_grad_norms(module, prefix)
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: AVBatch, batch_idx: int) -> None:
        # Graph-changing draws (exit steps) come from a generator shared by all ranks; noise and times from a
        # per-rank one, so data-parallel ranks still see different samples.
        shared, local = self.step_generator(shared_across_ranks=True), self.step_generator()
        generator_optimizer, critic_optimizer = self.optimizers()
        if self.is_generator_batch():
            exit_step = self.draw_exit_step(shared)
            losses = self.generator_losses(batch.captions, exit_step, local)
            if self.guard_finite(losses):
                self.update(generator_optimizer, losses["loss_dmd"], self.network, self.generator_clip,
                            "train/grad_norm")
                self.log_losses({**losses, "exit_step": torch.tensor(float(exit_step))}, "train", len(batch))
                self._step_scheduler()
        critic = self.critic_losses(batch.captions, self.draw_exit_step(shared), local)
        if self.guard_finite(critic):
            self.update(critic_optimizer, critic["loss_critic"], self.critic, self.critic_clip,
                        "train/grad_norm_critic")
            self.log_losses(critic, "train", len(batch))
        self.distill_batches += 1

    def _step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    @torch.no_grad()
    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.seed + batch_idx)  # the same draws at every validation
        last = len(self.times) - 1  # validate the samples the generator is used for: all steps
        losses = self.generator_losses(batch.captions, last, generator)
        losses.update(self.critic_losses(batch.captions, last, generator))
        self.log_losses(losses, "val", len(batch))
