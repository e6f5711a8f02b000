"""Codec training: one learned codec fitted with its objective from :mod:`omniforcing.codecs.objectives`.

Not a generative method, so not an :class:`~omniforcing.training.base.AVLitModule`: there is no backbone, no
frozen codec, no sampling. The module trains ``codec`` itself on raw clips and logs

* ``train/<term>`` and ``val/<term>``: every loss term of the objective and their weighted sum ``loss``;
* the codec's own validation measures (:meth:`TrainableCodec.reconstruction`): for the video autoencoder
  ``val/psnr`` (dB on ``[-1, 1]``), the mean-frame baseline ``val/mean_frame_psnr`` and the flicker measure
  ``val/boundary_step_error`` / ``val/inner_step_error``; for the mel autoencoder ``val/spectral_convergence``
  of the waveform after the mel inverse (Griffin-Lim), the measure of ``omniforcing bench --suite codec``;
* TensorBoard media at every validation: input beside reconstruction (video GIF; audio as sound and mel images)
  and a line plot of the quality over time (video PSNR per frame; audio normalised error per latent).

Normalisation statistics: at every validation the codec's latent mean/std are fitted on the posterior means of
the validation clips (:meth:`LatentNormalizer.fit`). The recipes save checkpoints right after validation, so
every checkpoint holds statistics measured with its own encoder weights (statistics gathered over training
batches would mix many different encoders) and the codec in it is usable as saved. A checkpoint written at a
step without validation keeps the statistics of the previous validation; a warning says so.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from omniforcing.codecs.base import AudioCodec, VideoCodec
from omniforcing.codecs.checkpoint import CHECKPOINT_CONFIG_KEY, codec_config
from omniforcing.codecs.protocol import CodecLossWeights, TrainableCodec
from omniforcing.training.base import keep_plain_hyperparameters
from omniforcing.training.codec_media import line_plot, log_audio_reconstruction, log_video_reconstruction
from omniforcing.types import AVBatch, ClipSpec, frame_label

log = logging.getLogger(__name__)


def default_codec_optimizer(params) -> torch.optim.Optimizer:
    """AdamW at 1e-3 without weight decay (the settings of the reference codec runs)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class CodecLitModule(L.LightningModule):
    """Train one learned codec (issue 3, item 3) on the raw clips of any datamodule yielding :class:`AVBatch`.

    Any codec with the members of :class:`~omniforcing.codecs.protocol.TrainableCodec` trains here; a video
    codec on ``batch.video``, an audio codec on ``batch.audio``. The learned codecs shipped are
    :class:`~omniforcing.codecs.CausalVideoAutoencoder` and :class:`~omniforcing.codecs.MelAutoencoder` (its
    mel codec's statistics must be fitted first).

    Args:
        codec: the codec to train.
        clip: clip geometry (linked from the datamodule); must match the codec's frame size and rates.
        optimizer: optimiser factory (LightningCLI ``OptimizerCallable``).
        scheduler: optional LR scheduler factory, stepped every optimiser step.
        gradient_weight: video: weight of the spatial-gradient term (against blur).
        temporal_weight: video: weight of the frame-difference term (against 8-frame flicker).
        motion_boost: video: extra loss weight of pixels that differ from the clip's static background.
        convergence_weight: audio: weight of the mel spectral-convergence term.
        kl_weight: weight of the KL term of the variational bottleneck.
        media_clips: clips of the first validation batch shown in TensorBoard at every validation.
    """

    def __init__(self, codec: VideoCodec | AudioCodec, clip: ClipSpec = ClipSpec(),
                 optimizer: OptimizerCallable = default_codec_optimizer, scheduler: LRSchedulerCallable | None = None,
                 gradient_weight: float = 0.5, temporal_weight: float = 0.5, motion_boost: float = 4.0,
                 convergence_weight: float = 1.0, kl_weight: float = 1e-4, media_clips: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        keep_plain_hyperparameters(self._hparams)
        if not isinstance(codec, TrainableCodec):
            raise ValueError(f"{type(codec).__name__} has no training objective (a trainable codec has the members "
                             "of omniforcing.codecs.protocol.TrainableCodec); a codec without weights only needs its "
                             "statistics: `omniforcing data codec-stats`")
        codec.check_trainable()
        check_clip_matches_codec(clip, codec)
        self.codec = codec
        self.clip = clip
        self.is_video = isinstance(codec, VideoCodec)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss_weights = CodecLossWeights(gradient_weight, temporal_weight, motion_boost, convergence_weight,
                                             kl_weight)
        self.media_clips = media_clips
        self.statistics_step = -1
        self._raw_latents: list[Tensor] = []
        self._error_over_time: list[Tensor] = []
        self._media: tuple[Tensor, Tensor] | None = None
        self._validation_clips = 0

    # ---------------------------------------------------------------- objective
    def media(self, batch: AVBatch) -> Tensor:
        """The batch's raw input for this codec: video ``(B, T, 3, H, W)`` or audio ``(B, 1, S)``."""
        media = batch.video if self.is_video else batch.audio
        if media is None:
            raise ValueError("codec training needs raw media batches, got latents only (set the datamodule's "
                             "latents: false)")
        return media

    def objective(self, media: Tensor) -> dict[str, Tensor]:
        """The codec's loss terms and their weighted sum ``loss`` on a raw batch."""
        return self.codec.training_losses(media, self.loss_weights)

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        media = self.media(batch)
        losses = self.objective(media)
        self.log_terms(losses, "train", media.shape[0])
        return losses["loss"]

    def log_terms(self, terms: dict[str, Tensor], split: str, batch_size: int) -> None:
        """Log every term as ``<split>/<name>`` (validation values averaged over batches and ranks)."""
        for key, value in terms.items():
            self.log(f"{split}/{key}", value.detach(), prog_bar=key in ("loss", "psnr"), batch_size=batch_size,
                     sync_dist=split != "train")

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._raw_latents, self._error_over_time, self._media, self._validation_clips = [], [], None, 0

    @torch.no_grad()
    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        media = self.media(batch)
        terms = self.objective(media)
        raw = self.codec.encode_raw(media)
        reconstruction = self.codec.reconstruction(media, raw)
        self.log_terms({**terms, **reconstruction.measures}, "val", media.shape[0])
        self._validation_clips += media.shape[0]
        self._error_over_time.append(reconstruction.error_over_time)
        if self._media is None and self.media_clips > 0:
            self._media = (media[: self.media_clips].cpu(), reconstruction.output[: self.media_clips].cpu())
        # latent vectors (N, C) for the statistics: channels are axis 2 of both layouts
        self._raw_latents.append(raw.movedim(2, -1).reshape(-1, raw.shape[2]).float())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._raw_latents:
            return
        self.fit_statistics(torch.cat(self._raw_latents))
        self.log_media()

    def fit_statistics(self, vectors: Tensor) -> None:
        """Fit the codec's latent normalisation on raw latent vectors ``(N, C)`` of all ranks."""
        if self.trainer.world_size > 1:
            vectors = self.all_gather(vectors).reshape(-1, vectors.shape[-1])
        self.codec.normalizer.fit([vectors[None]])  # (1, N, C): channels on axis 2, as fit expects
        self.statistics_step = self.global_step

    def log_media(self) -> None:
        """Input vs reconstruction and the error-over-time plot to TensorBoard (rank zero)."""
        writer = next((lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None or self.global_rank != 0:
            return
        step = self.global_step
        mean_error = torch.stack(self._error_over_time).sum(0).cpu() / max(1, self._validation_clips)
        if self.is_video:
            frame_psnr = 10 * torch.log10(4.0 / mean_error.clamp_min(1e-12))  # peak-to-peak 2 on [-1, 1]
            figure = line_plot(frame_psnr, "PSNR per frame (dB); lines: first frame of each latent", "frames",
                               marks_every=self.codec.temporal_stride, mark_offset=1)
        else:
            figure = line_plot(mean_error, "reconstruction error per 40 ms latent (the codec's own measure)",
                               "latents")
        writer.add_image("reconstruction/error_over_time", figure, step)
        for i, (media, recon) in enumerate(zip(*self._media, strict=True) if self._media else []):
            if self.is_video:
                log_video_reconstruction(writer, f"reconstruction/{i}/input_vs_output", media, recon,
                                         self.clip.fps, step)
            else:
                log_audio_reconstruction(writer, f"reconstruction/{i}", media[0], recon[0], self.clip.sample_rate,
                                         step)

    # ---------------------------------------------------------------- optimisation and checkpoints
    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.codec.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the codec's own config record, so the file loads as a codec anywhere (load_codec, `checkpoint:` args)
        checkpoint[CHECKPOINT_CONFIG_KEY] = codec_config(self.codec)
        if self.statistics_step != self.global_step:
            log.warning("checkpoint at step %d holds latent statistics fitted at step %s (they are fitted at "
                        "validation; save checkpoints on validation, or refit with `omniforcing data codec-stats`)",
                        self.global_step, self.statistics_step if self.statistics_step >= 0 else "never")


def check_clip_matches_codec(clip: ClipSpec, codec: VideoCodec | AudioCodec) -> None:
    """The datamodule's clips must have the codec's frame size and frame rate (video) or sample rate (audio)."""
    if isinstance(codec, VideoCodec):
        expected = f"{frame_label(codec.size)} at {codec.fps} fps"  # type: ignore[attr-defined]
        actual = f"{frame_label(clip.frame_size)} at {clip.fps} fps"
    else:
        expected, actual = f"{codec.sample_rate} Hz", f"{clip.sample_rate} Hz"
    if expected != actual:
        raise ValueError(f"clip {actual} does not match the codec's {expected}; set data.init_args.clip")
