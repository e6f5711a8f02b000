"""Continuous evaluation during training: generate clips on a schedule, compute metrics, log them to TensorBoard.

The LightningModule only generates (``generate_clips``); this callback owns everything else (STYLE.md §3.7):
the schedule, fixed seeds and prompts, reference statistics of the validation data (computed once, cached on
disk and reused across runs), the metrics (:class:`~omniforcing.metrics.MetricSuite`), the time budget, rank
handling and logging. Evaluation must never break training: a missing extractor is skipped with one warning
(by the suite), a failing generation is logged once and the evaluation goes on with what it has.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.tensorboard import SummaryWriter

from omniforcing.callbacks.ema import EMA
from omniforcing.callbacks.samples import DEFAULT_PROMPTS
from omniforcing.callbacks.sync_plot import sync_plot
from omniforcing.callbacks.tensorboard_media import log_clip
from omniforcing.data.pipeline import SkipCounter
from omniforcing.inference.clips import GeneratedClips
from omniforcing.metrics import MetricSuite, SyncAnalyzer
from omniforcing.metrics.clip_sources import (
    conform_batch,
    describe_source,
    first_captions,
    generated_media,
    iter_clip_batches,
    real_batches_with_media,
)
from omniforcing.types import AVBatch, ClipSpec

log = logging.getLogger(__name__)

LOADER_KNOBS = frozenset({"batch_size", "num_workers", "shuffle_buffer"})
"""Datamodule arguments that do not change which validation clips exist (left out of the cache key)."""


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode inside, and back into the mode it had after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def datamodule_description(datamodule: L.LightningDataModule, spec: ClipSpec, limit: int) -> str:
    """What a datamodule's validation loader yields, for the cache key of reference statistics.

    Uses the attributes named like ``__init__`` arguments (the data's configuration: seeds, clip counts,
    shard paths, scene settings), leaving out loader knobs; shard paths also list their files with sizes and
    modification times, so rewritten shards get new statistics.
    """
    names = set(inspect.signature(type(datamodule).__init__).parameters) - LOADER_KNOBS
    values = vars(datamodule)
    parts = [f"{type(datamodule).__module__}.{type(datamodule).__qualname__}.val_dataloader"]
    for name in sorted(names & values.keys()):
        value = values[name]
        if isinstance(value, str | int | float | bool | None) or is_dataclass(value):
            parts.append(f"{name}={value!r}")
    shards = values.get("val_shards")
    if isinstance(shards, str):
        parts.append(describe_source(shards, spec, limit))
    return "; ".join(parts) + f"; evaluated as {spec}; at most {limit} clips"


class GuardedBatches:
    """Iterates ``batches`` and ends quietly (logged, :attr:`failed` set) when reading raises.

    Reference statistics are merged across ranks after the iteration; ending instead of raising keeps every
    rank on the way to that collective.
    """

    def __init__(self, batches: Iterator[AVBatch], failed: bool = False) -> None:
        self.batches, self.failed = batches, failed

    def __iter__(self) -> Iterator[AVBatch]:
        try:
            yield from self.batches
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            self.failed = True
            log.exception("evaluation: reading the reference clips failed; Fréchet values will be missing")


class PeriodicEvaluation(L.Callback):
    """Every ``every_n_steps`` training steps (and/or ``every_n_validations`` validations) generate ``clips``
    clips with the module's own sampler and log metrics against the validation data.

    The module must have ``clip`` (:class:`~omniforcing.types.ClipSpec`) and implement
    ``generate_clips(captions, seconds, seed) -> GeneratedClips`` (every method module does: the teacher
    samples whole clips, students stream). Clip ``i`` of the fixed evaluation set has the prompt
    ``prompts[i % len(prompts)]``; the batch starting at clip ``i`` is generated with seed ``seed + i`` (students
    seed clip ``j`` of a call with ``seed + j``, so every clip has its own seed). Evaluations are therefore
    comparable across steps and runs, and independent of the number of processes.

    Logged (``val/<key>``, at the global step): the keys of :meth:`MetricSuite.compute`
    (``fd_video_stats``, ``fd_audio_stats``, ``fvd``/``fad`` only with the reference weights, ``av_align``,
    ``av_offset_*``, ``event_*``, each Fréchet value with ``_n_real``/``_n_fake``), plus ``eval_clips``
    (clips used; fewer than ``clips`` when the time budget or a failure stopped generation) and
    ``eval_seconds``. Rank 0 also logs, under ``val_media/``, the first ``media_clips`` clips (GIF, audio, mel
    spectrogram) and a plot of the first clip's audio onsets against its visual motion peaks.

    Args:
        every_n_steps: evaluate after every this many optimiser steps (``None``: not by steps).
        every_n_validations: evaluate at the end of every this many validation runs (``None``: not then).
            The values then also land in ``trainer.callback_metrics`` before checkpoint callbacks that run
            later, so ``ModelCheckpoint(monitor="val/fd_video_stats")`` can use them.
        clips: clips per evaluation, K. Small K is fast but biases Fréchet values upwards (~c/K): compare
            values only at equal K (docs/metrics.md, "Sample count").
        batch_size: clips generated per ``generate_clips`` call.
        seconds: clip length after the lead frame (``None``: the module's ``clip.seconds``).
        seed: base seed of the evaluation set (the batch starting at clip ``i`` uses ``seed + i``).
        prompts: captions to generate from (``None``: the captions of the first ``clips`` validation clips,
            so the generated and reference sets describe the same content).
        metrics: :data:`~omniforcing.metrics.SUITE_METRICS` names: ``video_stats``, ``audio_stats``,
            ``sync``, and ``i3d`` / ``vggish`` when their weight files are given.
        i3d_path: ``i3d_torchscript.pt`` for FVD (``None``: ``$OMNIFORCING_I3D_PATH``; missing: skipped).
        vggish_path: ``vggish-10086976.pth`` for FAD (``None``: ``$OMNIFORCING_VGGISH_PATH``).
        reference_shards: media shards of the reference set (``None``: the datamodule's validation loader).
        reference_clips: at most this many reference clips (N real).
        cache_dir: folder of cached reference statistics (``None``: ``<logger save_dir>/metric_cache``,
            shared by the runs under one save_dir).
        time_budget_s: stop generating further batches once an evaluation has taken this long (at least one
            batch is always generated); ``None``: no budget.
        media_clips: clips logged as media by rank 0 (0: none).
        use_ema: generate with the EMA weights when an :class:`~omniforcing.callbacks.EMA` callback is present.
    """

    def __init__(self, every_n_steps: int | None = 1000, every_n_validations: int | None = None, clips: int = 8,
                 batch_size: int = 4, seconds: int | None = None, seed: int = 0, prompts: list[str] | None = None,
                 metrics: tuple[str, ...] = ("video_stats", "audio_stats", "sync"),
                 i3d_path: str | None = None, vggish_path: str | None = None,
                 reference_shards: str | None = None, reference_clips: int = 256, cache_dir: str | None = None,
                 time_budget_s: float | None = 300.0, media_clips: int = 1, use_ema: bool = True) -> None:
        if every_n_steps is None and every_n_validations is None:
            raise ValueError("PeriodicEvaluation needs every_n_steps or every_n_validations")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_validations", every_n_validations),
                            ("clips", clips), ("batch_size", batch_size), ("reference_clips", reference_clips)):
            if value is not None and value < 1:
                raise ValueError(f"PeriodicEvaluation.{name} must be >= 1, got {value}")
        self.every_n_steps, self.every_n_validations = every_n_steps, every_n_validations
        self.clips, self.batch_size, self.seconds, self.seed = clips, batch_size, seconds, seed
        self.prompts = list(prompts) if prompts else None
        self.metric_names = list(metrics)
        self.i3d_path, self.vggish_path = i3d_path, vggish_path
        self.reference_shards, self.reference_clips, self.cache_dir = reference_shards, reference_clips, cache_dir
        self.time_budget_s, self.media_clips, self.use_ema = time_budget_s, media_clips, use_ema
        self.suite: MetricSuite | None = None
        self.last_step = -1
        self.validations = 0
        self.generation_failures = 0
        self._reference_prepared = False
        self._captions: list[str] = []

    # ---------------------------------------------------------------- schedule
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.suite is None:  # one warning per missing extractor, here, not at every evaluation
            self.suite = MetricSuite(self.metric_names, i3d_path=self.i3d_path, vggish_path=self.vggish_path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.evaluate(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_validations:
            return
        self.validations += 1
        if self.validations % self.every_n_validations == 0 and trainer.global_step != self.last_step:
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict["last_step"])
        self.validations = int(state_dict["validations"])

    # ---------------------------------------------------------------- one evaluation
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Generate, compute and log one evaluation at the current step; returns the logged values (unprefixed)."""
        assert self.suite is not None, "setup() builds the suite"
        self.last_step = trainer.global_step
        self.suite.to(pl_module.device)
        self._prepare_reference(trainer, pl_module)
        start = time.perf_counter()
        self.suite.reset()
        ema = next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)
        weights = ema.averaged_weights(pl_module) if self.use_ema and ema is not None else nullcontext()
        cuda = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), weights, torch.no_grad(), eval_mode(pl_module):
            used, shown = self._generate(trainer, pl_module, start)
        values = self._compute()
        values["eval_clips"] = float(trainer.strategy.reduce(torch.tensor(float(used), device=pl_module.device),
                                                             reduce_op="sum"))
        values["eval_seconds"] = time.perf_counter() - start
        self._log_scalars(trainer, values)
        if shown is not None and trainer.is_global_zero:
            self._log_media(trainer, shown)
        return values

    def _generate(self, trainer: L.Trainer, pl_module: L.LightningModule,
                  start: float) -> tuple[int, GeneratedClips | None]:
        """Generate this rank's batches and update the suite; returns (clips used, first batch for media).

        Rank ``r`` takes batches ``r, r + W, ...``; whether to go on is decided collectively after every round,
        so all ranks run the same number of rounds (sharded models need all ranks in every forward).
        """
        num_batches = math.ceil(self.clips / self.batch_size)
        world, rank = trainer.world_size, trainer.global_rank
        used, shown = 0, None
        for first in range(0, num_batches, world):
            clips = self._run_batch(pl_module, first + rank) if first + rank < num_batches else None
            failed = first + rank < num_batches and clips is None
            if clips is not None:
                used += len(clips.captions)
                shown = clips if shown is None else shown
            over_budget = self.time_budget_s is not None and time.perf_counter() - start > self.time_budget_s
            if trainer.strategy.reduce_boolean_decision(failed or over_budget, all=False):
                if over_budget and first + world < num_batches:
                    log.info("evaluation time budget of %.0f s reached after %d of %d clips on rank %d",
                             self.time_budget_s, used, self.clips, rank)
                break
        return used, shown

    def _run_batch(self, pl_module: L.LightningModule, batch: int) -> GeneratedClips | None:
        """Generate batch ``batch`` of the evaluation set and add it to the suite; ``None`` if that failed."""
        assert self.suite is not None
        indices = range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.clips))
        captions = [self._captions[i % len(self._captions)] for i in indices]
        seconds = self.seconds if self.seconds is not None else pl_module.clip.seconds
        try:
            clips = pl_module.generate_clips(captions, seconds, self.seed + indices.start)
            video, audio = generated_media(clips)
            device = pl_module.device
            self.suite.update(None if video is None else video.to(device),
                              None if audio is None else audio.to(device), fps=clips.fps,
                              sample_rate=clips.sample_rate)
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            self.generation_failures += 1
            if self.generation_failures == 1:
                log.exception("evaluation: generating or measuring clips failed; this evaluation uses the clips "
                              "made so far (further failures are counted in PeriodicEvaluation.generation_failures)")
            return None
        return clips

    def _compute(self) -> dict[str, float]:
        assert self.suite is not None
        try:
            return self.suite.compute()
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            log.exception("evaluation: computing the metrics failed; nothing is logged for this step")
            return {}

    # ---------------------------------------------------------------- reference set
    def _prepare_reference(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Prompts and reference statistics, once per fit (statistics from the on-disk cache when possible).

        Every rank reaches the same collectives (caption broadcast, statistics merge) even when reading the
        data fails on one of them; a rank that fails contributes nothing to the merge.
        """
        if self._reference_prepared:
            return
        self._reference_prepared = True
        assert self.suite is not None
        spec, counter = self._spec(pl_module), SkipCounter()
        captions = self.prompts or (self._first_captions(trainer, spec, counter) if trainer.is_global_zero else [])
        self._captions = trainer.strategy.broadcast(captions, src=0) or list(DEFAULT_PROMPTS)
        if self.suite.frechet:
            self._prepare_statistics(trainer, spec, counter)
        if counter.skipped:
            log.warning("evaluation reference set: %s", counter.summary())

    def _prepare_statistics(self, trainer: L.Trainer, spec: ClipSpec, counter: SkipCounter) -> None:
        """Reference statistics from the cache or the data; a failed read leaves none (and caches none)."""
        assert self.suite is not None
        try:
            description = self._description(trainer, spec)
            reading = GuardedBatches(self._reference_batches(trainer, spec, counter))
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            log.exception("evaluation: the reference set cannot be read; Fréchet values will be missing")
            description, reading = "unreadable reference set", GuardedBatches(iter(()), failed=True)
        paths = self.suite.prepare_real_stats(reading, fps=spec.fps, sample_rate=spec.sample_rate,
                                              cache_dir=self._cache_dir(trainer), description=description)
        if trainer.strategy.reduce_boolean_decision(reading.failed, all=False):  # partial statistics: drop them
            for metric in self.suite.frechet.values():
                metric.clear_real()
            if trainer.is_global_zero:
                for path in paths.values():
                    path.unlink(missing_ok=True)

    def _first_captions(self, trainer: L.Trainer, spec: ClipSpec, counter: SkipCounter) -> list[str]:
        try:
            return first_captions(self._reference_batches(trainer, spec, counter), self.clips)
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            log.exception("evaluation: reading validation captions failed; using the default prompts")
            return []

    def _spec(self, pl_module: L.LightningModule) -> ClipSpec:
        clip: ClipSpec = pl_module.clip
        return clip if self.seconds is None else replace(clip, seconds=self.seconds)

    def _cache_dir(self, trainer: L.Trainer) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        save_dir = trainer.logger.save_dir if trainer.logger is not None else None
        return Path(save_dir or trainer.default_root_dir) / "metric_cache"

    def _description(self, trainer: L.Trainer, spec: ClipSpec) -> str:
        if self.reference_shards is not None:
            return describe_source(self.reference_shards, spec, self.reference_clips)
        return datamodule_description(trainer.datamodule, spec, self.reference_clips)

    def _reference_batches(self, trainer: L.Trainer, spec: ClipSpec, counter: SkipCounter) -> Iterator[AVBatch]:
        """This rank's share of at most ``reference_clips`` reference clips, trimmed to ``spec``."""
        world, rank = trainer.world_size, trainer.global_rank
        if self.reference_shards is not None:
            yield from iter_clip_batches(self.reference_shards, spec, self.batch_size, limit=self.reference_clips,
                                         counter=counter, rank=rank, world_size=world)
            return
        if trainer.datamodule is None:
            raise ValueError("no datamodule to take reference clips from: set reference_shards")
        loader: DataLoader = trainer.datamodule.val_dataloader()
        # iterable streams (webdataset) split by rank themselves; map-style loaders are split here by batch
        splits_itself = isinstance(loader.dataset, IterableDataset)
        quota, seen = math.ceil(self.reference_clips / world), 0
        for index, batch in enumerate(real_batches_with_media(loader, counter)):
            if seen >= quota:
                return
            if splits_itself or index % world == rank:
                batch = conform_batch(batch, spec)
                seen += len(batch)
                yield batch

    # ---------------------------------------------------------------- logging
    def _log_scalars(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        prefixed = {f"val/{key}": value for key, value in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(prefixed, step=trainer.global_step)
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in prefixed.items()})

    def _log_media(self, trainer: L.Trainer, clips: GeneratedClips) -> None:
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None or self.media_clips < 1:
            return
        try:
            log_generated_media(writer, "val_media", clips, self.media_clips, trainer.global_step)
        except Exception:  # noqa: BLE001 - evaluation must never stop training
            log.exception("evaluation: logging media failed")


def log_generated_media(writer: SummaryWriter, prefix: str, clips: GeneratedClips, count: int, step: int) -> None:
    """Log the first ``count`` clips (GIF, audio, mel) and the first clip's onset-vs-motion plot to TensorBoard.

    Args:
        writer: the TensorBoard writer.
        prefix: tag prefix (``<prefix>/<i>/video`` ...; the plot is ``<prefix>/0/sync``).
        clips: generated clips (video ``(B, T, H, W, 3)`` uint8, audio ``(B, S)``).
        count: clips to log.
        step: global step.
    """
    for i in range(min(count, len(clips.captions))):
        log_clip(writer, f"{prefix}/{i}", None if clips.video is None else clips.video[i],
                 None if clips.audio is None else clips.audio[i], clips.fps, clips.sample_rate, step)
    writer.add_text(f"{prefix}/prompts", "\n\n".join(f"{i}: {c}" for i, c in enumerate(clips.captions[:count])), step)
    video, audio = generated_media(clips)
    if video is not None and audio is not None and video.shape[1] >= 3:
        signals = SyncAnalyzer()(video[:1], audio[:1], clips.fps, clips.sample_rate)[0]
        writer.add_image(f"{prefix}/0/sync", sync_plot(signals), step)
