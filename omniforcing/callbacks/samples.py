"""Log generated samples (video GIF, audio, mel spectrogram) to TensorBoard at validation time."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from omniforcing.callbacks.tensorboard_media import log_clip

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = [
    "a red circle bounces and rings high",
    "a blue square bounces with a low thud",
]


class SampleLogger(L.Callback):
    """Every ``every_n_epochs`` validations, generate clips with the module's own sampler and log them.

    The module must implement ``generate_clips(captions, seconds, seed) -> GeneratedClips`` (every method
    module does: the teacher samples the whole clip, students stream). Uses the EMA weights when an
    :class:`~omniforcing.callbacks.ema.EMA` callback swapped them in for validation.

    Args:
        prompts: captions to generate from (fixed, so samples are comparable across steps).
        seconds: clip length after the lead frame.
        seed: noise seed (fixed).
        every_n_epochs: validation epochs between two logs.
    """

    def __init__(self, prompts: list[str] | None = None, seconds: int = 2, seed: int = 0,
                 every_n_epochs: int = 1) -> None:
        self.prompts = prompts or list(DEFAULT_PROMPTS)
        self.seconds, self.seed, self.every_n_epochs = seconds, seed, every_n_epochs
        self._validations = 0

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validations += 1
        if trainer.sanity_checking or (self._validations - 1) % self.every_n_epochs:
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None:
            return
        clips = pl_module.generate_clips(self.prompts, self.seconds, self.seed)
        for i in range(len(self.prompts)):
            log_clip(writer, f"samples/{i}", None if clips.video is None else clips.video[i],
                     None if clips.audio is None else clips.audio[i], clips.fps, clips.sample_rate,
                     trainer.global_step)
        writer.add_text("samples/prompts", "\n\n".join(f"{i}: {p}" for i, p in enumerate(self.prompts)),
                        trainer.global_step)
