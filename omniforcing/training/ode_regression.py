"""OmniForcing Stage II: causal ODE regression of the block-causal student (ALGORITHMS.md §4, §6.4).

:class:`ODERegressionLitModule` trains the student (block-causal, sinks and prefix as configured) on ODE pairs
from ``omniforcing data ode-pairs``; :class:`ODEPairDataModule` reads those shards. The pairs' time grid must
be the student's few-step times exactly (checked on every batch: the σ-grid mismatch of ALGORITHMS.md §4.1 is
an error, not a silent shift).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from omniforcing.codecs.base import AVCodec
from omniforcing.data.datamodule import StreamLoader
from omniforcing.data.ode_pairs import ODEPairBatch, ODEPairStream
from omniforcing.data.shards import resolve_shards
from omniforcing.inference.clips import GeneratedClips
from omniforcing.methods.flow_matching import Modality, select_modality
from omniforcing.methods.ode_regression import ODERegression
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, check_times
from omniforcing.training.base import AVLitModule, default_optimizer
from omniforcing.training.self_forcing import stream_clips
from omniforcing.types import ClipSpec


class ODERegressionLitModule(AVLitModule):
    """Causal student regressing the teacher's final samples from its ODE states (Stage II).

    Args:
        network: the student, configured block-causal (``causal: true``) with its sinks and prefix layout.
        codec: frozen codec (the teacher's; used to decode samples).
        objective: ODE-regression loss (modality weights).
        clip: clip geometry (linked from the datamodule).
        modality: ``joint``, ``video`` or ``audio``.
        optimizer: optimiser factory.
        scheduler: LR scheduler factory.
        init_from: checkpoint initialising the student (Stage I, or the teacher for the v2 pipeline); new sink
            tokens keep their initialisation.
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss.
        seed: base seed of per-step randomness.
        times: the student's few-step times; the ODE pairs must have been made for exactly these.
        context_time: flow time of the clean-context refresh when this student streams samples.
    """

    def __init__(self, network: nn.Module, codec: AVCodec, objective: ODERegression | None = None,
                 clip: ClipSpec = ClipSpec(), modality: Modality = "joint",
                 optimizer: OptimizerCallable = default_optimizer, scheduler: LRSchedulerCallable | None = None,
                 init_from: str | None = None, on_nonfinite: Literal["stop", "skip"] = "stop", seed: int = 0,
                 times: list[float] | None = None, context_time: float = 0.0) -> None:
        super().__init__(network, codec, clip, modality, optimizer, scheduler, init_from, on_nonfinite, seed)
        if not network.causal:
            raise ValueError("Stage II trains a causal student: set network.init_args.causal: true")
        self.objective = objective or ODERegression()
        self.times = list(check_times(DEFAULT_FEW_STEP_TIMES if times is None else times))
        self.context_time = context_time

    def generation_settings(self) -> dict[str, Any]:
        """The student's few-step times and the clean-context refresh time of streaming."""
        return {**super().generation_settings(), "times": list(self.times), "context_time": self.context_time}

    def check_pairs(self, batch: ODEPairBatch) -> None:
        """The pairs must sit on the student's grid (``times`` then 0) and have the clip's length."""
        expected = torch.tensor([*self.times, 0.0], dtype=torch.float32)
        if not torch.equal(batch.times.cpu().float(), expected):
            raise ValueError(f"ODE pairs were made for times {batch.times.tolist()}, the student uses "
                             f"{[*self.times, 0.0]}: regenerate them with --student-times "
                             f"{' '.join(map(str, self.times))} (or set model.init_args.times)")
        latents = batch.audio_states.shape[2] if batch.audio_states is not None else None
        if latents is not None and latents != 1 + self.codec.audio.latent_rate * self.clip.seconds:
            raise ValueError(f"ODE pairs hold {latents} audio latents, clips of {self.clip.seconds} s have "
                             f"{1 + self.codec.audio.latent_rate * self.clip.seconds}: make the pairs with "
                             f"--seconds {self.clip.seconds} or set data.init_args.clip.seconds")

    def _losses(self, batch: ODEPairBatch, generator: torch.Generator) -> dict[str, Tensor]:
        self.check_pairs(batch)
        states = select_modality(batch.states, self.modality)
        self.tokens_in_last_batch = sum(m[:, 0].numel() // m.shape[3] for _, m in states.items())
        return self.objective.loss(self.network, states, batch.times, batch.captions, generator)

    def training_step(self, batch: ODEPairBatch, batch_idx: int) -> Tensor | None:
        losses = self._losses(batch, self.step_generator())
        if not self.guard_finite(losses):
            return None
        self.log_losses(losses, "train", len(batch))
        return losses["loss"]

    @torch.no_grad()
    def validation_step(self, batch: ODEPairBatch, batch_idx: int) -> None:
        losses = self._losses(batch, torch.Generator().manual_seed(self.seed + batch_idx))
        self.log_losses(losses, "val", len(batch))

    @torch.no_grad()
    def generate_clips(self, captions: list[str], seconds: int, seed: int = 0) -> GeneratedClips:
        """Stream whole clips block by block with the KV cache."""
        return stream_clips(self, captions, seconds, seed)


def ode_pair_loader(stream: ODEPairStream, position: Callable[[], tuple[int, int]],
                    num_workers: int = 0) -> StreamLoader:
    """A :class:`~omniforcing.data.datamodule.StreamLoader` over ODE pairs (seeded passes, clear empty-pass error)."""
    return StreamLoader(stream, position, num_workers, empty_message=lambda: (
        f"no readable ODE pair in {len(stream.urls)} shards ({stream.urls[0]} ...); {stream.counter.summary()}"))


class ODEPairDataModule(L.LightningDataModule):
    """ODE-pair shards (``omniforcing data ode-pairs``) for Stage II.

    Args:
        train_shards: training pair shards (folder, brace pattern, glob or comma-separated list).
        val_shards: validation pair shards, or ``None``.
        clip: clip geometry (linked to the module; the pairs must have been made for ``clip.seconds``).
        batch_size: pairs per batch (per rank).
        num_workers: DataLoader worker processes.
        shuffle_buffer: pairs held for shuffling per worker.
        seed: base seed of shard order and shuffling.
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, clip: ClipSpec = ClipSpec(),
                 batch_size: int = 4, num_workers: int = 1, shuffle_buffer: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.train_shards, self.val_shards, self.clip = train_shards, val_shards, clip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.passes = 0

    def _position(self) -> tuple[int, int]:
        self.passes += 1
        trainer = self.trainer
        return (trainer.current_epoch, trainer.global_step) if trainer is not None else (self.passes - 1, 0)

    def train_dataloader(self) -> StreamLoader:
        """Shuffled batches of pairs, one pass over the shards per epoch."""
        stream = ODEPairStream(resolve_shards(self.train_shards), self.batch_size, self.seed, shuffle=True,
                               shuffle_buffer=self.shuffle_buffer)
        return ode_pair_loader(stream, self._position, self.num_workers)

    def val_dataloader(self) -> StreamLoader | list:
        """Validation pairs in order (none without ``val_shards``: validation is skipped)."""
        if self.val_shards is None:
            return []
        stream = ODEPairStream(resolve_shards(self.val_shards), self.batch_size, self.seed, shuffle=False)
        return ode_pair_loader(stream, lambda: (0, 0), self.num_workers)

    def state_dict(self) -> dict[str, Any]:
        """Pass counter (seeds passes when no Trainer is attached)."""
        return {"passes": self.passes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pass counter."""
        self.passes = int(state_dict["passes"])
