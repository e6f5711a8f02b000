"""Shared LightningModule base: codec encoding, optimisers, seeded randomness, gradient norms, non-finite guard.

Every method module (teacher, OmniForcing stages, Mutual Forcing) subclasses :class:`AVLitModule`; the
objective math lives in ``omniforcing.methods`` and the modules only wire network + objective + optimiser and
log with consistent keys (``train/loss``, ``train/loss_video``, ``train/grad_norm/video``, ...).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.methods.flow_matching import Modality, select_modality
from omniforcing.inference.checkpoints import load_coupled, load_network_weights
from omniforcing.inference.export import GENERATION_SETTINGS_KEY
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.weights import freeze_unused_parameters
from omniforcing.types import AVBatch, AVLatents, ClipSpec

log = logging.getLogger(__name__)


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW with the settings used when a recipe gives none."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss is NaN/inf and the run is configured to stop."""


class AVLitModule(L.LightningModule):
    """Base of every method: owns ``network`` (the trained model) and a frozen ``codec``.

    Args:
        network: the backbone being trained (one class for every method).
        codec: frozen clip <-> latent codec; batches that already carry latents skip it.
        clip: clip geometry shared with the datamodule (linked by the CLI).
        modality: ``joint``, or ``video`` / ``audio`` for uni-modal training of the same backbone.
        optimizer: optimiser factory (LightningCLI ``OptimizerCallable``).
        scheduler: optional LR scheduler factory, stepped every optimiser step.
        init_from: path of a checkpoint (Lightning ``.ckpt`` or exported ``.safetensors``) whose network
            weights initialise ``network`` before training; missing keys (e.g. new sink tokens) are reported.
        on_nonfinite: ``stop`` raises :class:`NonFiniteLossError`; ``skip`` drops the step and counts it.
        seed: base seed of the per-step random generators (see :meth:`step_generator`).
        init_video_from: video-only checkpoint of the same backbone; with ``init_audio_from`` the two streams are
            coupled into this (joint) network, cross-modal gates zero (uni-modal pretraining, then joint).
        init_audio_from: audio-only checkpoint to couple with ``init_video_from``.

    A uni-modal run (``modality`` video or audio) freezes the other stream and the cross-modal attention.
    """

    def __init__(
        self,
        network: nn.Module,
        codec: AVCodec,
        clip: ClipSpec = ClipSpec(),
        modality: Modality = "joint",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        seed: int = 0,
        init_video_from: str | None = None,
        init_audio_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        keep_plain_hyperparameters(self._hparams)
        self.network = network
        self.codec = codec.requires_grad_(False).eval()
        self.clip = clip
        self.modality = modality
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.init_from = init_from
        self.on_nonfinite = on_nonfinite
        self.seed = seed
        self.skipped_nonfinite_steps = 0
        self.tokens_in_last_batch = 0
        check_latent_geometry(network, codec)
        self.initialise_network(init_from, init_video_from, init_audio_from)
        if modality != "joint":
            freeze_unused_parameters(self.network, modality)

    def initialise_network(self, init_from: str | None, init_video_from: str | None,
                           init_audio_from: str | None) -> None:
        """Load the starting weights: one checkpoint, or a video-only and an audio-only one coupled."""
        if (init_video_from is None) != (init_audio_from is None):
            raise ValueError("coupling needs both init_video_from and init_audio_from")
        if init_video_from is not None:
            if init_from:
                raise ValueError("give either init_from or init_video_from + init_audio_from, not both")
            load_coupled(self.network, init_video_from, init_audio_from)
        elif init_from:
            load_network_weights(self.network, init_from)

    def backbones(self) -> dict[str, AVBackbone]:
        """Every backbone this method runs in a training step, by attribute name: the trained ``network`` here;
        methods add their teacher and critic. What :class:`~omniforcing.callbacks.CompileBackbones` compiles."""
        return {"network": self.network}

    # ---------------------------------------------------------------- what generation needs
    def generation_settings(self) -> dict[str, Any]:
        """Settings that generation and streaming read from an exported model (its ``method_args``).

        Saved in every checkpoint and copied by ``omniforcing export``; the keys are those of
        :data:`omniforcing.inference.stream_settings.GENERATION_SETTINGS`. Methods add theirs to this dict.
        """
        return {"modality": self.modality}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[GENERATION_SETTINGS_KEY] = self.generation_settings()

    # ---------------------------------------------------------------- data
    def train(self, mode: bool = True) -> AVLitModule:
        super().train(mode)
        self.codec.eval()  # frozen: never switch to train-mode behaviour (noise, dropout)
        return self

    @torch.no_grad()
    def latents(self, batch: AVBatch) -> AVLatents:
        """Clean normalised latents of a batch for the configured modality, encoding raw media if needed."""
        want_video, want_audio = self.modality in ("joint", "video"), self.modality in ("joint", "audio")
        video = batch.video_latents
        if want_video and video is None:
            if batch.video is None:
                raise ValueError("batch has neither video latents nor raw video")
            video = self.codec.video.encode(batch.video)
        audio = batch.audio_latents
        if want_audio and audio is None:
            if batch.audio is None:
                raise ValueError("batch has neither audio latents nor raw audio")
            audio = self.codec.audio.encode(batch.audio)
        latents = select_modality(AVLatents(video, audio), self.modality)
        self.tokens_in_last_batch = sum(m[0].numel() // m.shape[2] for _, m in latents.items()) * len(batch)
        return latents

    # ---------------------------------------------------------------- randomness
    def step_generator(self, shared_across_ranks: bool = False, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``(seed, global_step, salt[, rank])``.

        Seeding by step makes a resumed run draw exactly what the uninterrupted run would have drawn, and with
        ``shared_across_ranks`` every rank draws the same value (for choices that change the graph, such as
        the Self-Forcing exit step), without any collective call.
        """
        rank = 0 if shared_across_ranks else self.global_rank
        mixed = (self.seed * 1_000_003 + self.global_step) * 1_000_033 + salt * 7919 + rank
        return torch.Generator().manual_seed(mixed % (2**63 - 1))

    # ---------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of ``network`` that require grad."""
        return [p for p in self.network.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log_grad_norms(self.network)

    def log_grad_norms(self, module: AVBackbone, prefix: str = "train/grad_norm") -> None:
        """Log the gradient norm in total and per parameter group (video, audio, cross-modal, sinks, text), as
        the backbone groups its parameters (:meth:`~omniforcing.models.protocol.AVBackbone.parameter_group`)."""
        groups: dict[str, float] = {}
        for name, p in module.named_parameters():
            if p.grad is not None:
                key = module.parameter_group(name)
                groups[key] = groups.get(key, 0.0) + float(p.grad.detach().float().pow(2).sum())
        if groups:
            self.log(prefix, math.sqrt(sum(groups.values())), on_step=True)
            for key, sq in groups.items():
                self.log(f"{prefix}/{key}", math.sqrt(sq), on_step=True)

    def guard_finite(self, losses: dict[str, Tensor]) -> bool:
        """True when every loss is finite; otherwise report the step and modality, then stop or skip."""
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        if not bad:
            return True
        message = f"non-finite loss at step {self.global_step}: {', '.join(bad)}"
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(message + " (set on_nonfinite: skip to drop such steps instead)")
        self.skipped_nonfinite_steps += 1
        log.warning("%s; step skipped (%d so far)", message, self.skipped_nonfinite_steps)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite_steps), on_step=True)
        return False

    def log_losses(self, losses: dict[str, Tensor], split: str, batch_size: int) -> None:
        """Log every loss as ``<split>/<name>`` (synced across ranks at epoch end)."""
        for key, value in losses.items():
            self.log(f"{split}/{key}", value.detach(), prog_bar=key == "loss", batch_size=batch_size,
                     sync_dist=split != "train")


def check_latent_geometry(network: AVBackbone, codec: AVCodec) -> None:
    """The backbone's latent channels and grid must be the codec's (they are set side by side in recipes)."""
    expected = {"video_channels": codec.video.latent_channels, "audio_channels": codec.audio.latent_channels,
                "video_grid": tuple(codec.video.latent_size)}
    actual = {"video_channels": network.video_channels, "audio_channels": network.audio_channels,
              "video_grid": tuple(network.video_grid)}
    wrong = [f"{k}: network {actual[k]} vs codec {v}" for k, v in expected.items() if actual[k] != v]
    if wrong:
        raise ValueError("network and codec disagree on the latent geometry (" + "; ".join(wrong) +
                         "); set network.init_args to the codec's values (recipes/latents/*.yaml do)")


def _is_plain(value: object) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def keep_plain_hyperparameters(hparams: dict) -> None:
    """Drop hyperparameters that are objects rather than config values.

    Under LightningCLI the hyperparameters are the parsed config tree (plain dicts: ``class_path`` /
    ``init_args``), which is what export and ``load_from_checkpoint`` need. Modules built directly in Python
    would otherwise pickle networks and callables into the checkpoint and break ``weights_only`` loading.
    """
    for key in [k for k, v in hparams.items() if not _is_plain(v)]:
        del hparams[key]
