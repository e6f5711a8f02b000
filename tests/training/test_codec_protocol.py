"""CodecLitModule trains any codec with the TrainableCodec members: a user's codec (defined here, built from a
class-path spec) trains, logs its own measures and fits its statistics, with no change to the module."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from omniforcing.codecs import build_codec
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec
from omniforcing.codecs.protocol import CodecLossWeights, CodecReconstruction, TrainableCodec
from omniforcing.data.datamodule import SyntheticDataModule
from omniforcing.data.synthetic import SceneSettings
from omniforcing.training.codec import CodecLitModule
from omniforcing.types import ClipSpec


class FrameProjectionCodec(NormalizedAudioCodec):
    """Test-only learned audio codec: each 40 ms frame of samples is projected to ``channels`` and back."""

    def __init__(self, channels: int = 8, ready: bool = True) -> None:
        super().__init__()
        self.latent_channels, self.ready = channels, ready
        self.encoder = nn.Linear(self.samples_per_latent, channels)
        self.decoder = nn.Linear(channels, self.samples_per_latent)
        self.normalizer = LatentNormalizer(channels)

    def encode_raw(self, audio: Tensor) -> Tensor:
        return self.encoder(audio[:, 0].unflatten(1, (-1, self.samples_per_latent)))

    def decode_raw(self, raw: Tensor) -> Tensor:
        return self.decoder(raw).flatten(1)[:, None]

    def check_trainable(self) -> None:
        if not self.ready:
            raise ValueError("FrameProjectionCodec is not ready: set ready")

    def training_losses(self, media: Tensor, weights: CodecLossWeights) -> dict[str, Tensor]:
        reconstruction = (self.decode_raw(self.encode_raw(media)) - media).square().mean()
        size = self.encoder.weight.square().mean()
        return {"reconstruction": reconstruction, "size": size, "loss": reconstruction + weights.kl_weight * size}

    def reconstruction(self, media: Tensor, raw: Tensor) -> CodecReconstruction:
        output = self.decode_raw(raw)
        error = (output - media)[:, 0].unflatten(1, (-1, self.samples_per_latent)).square().mean(2)  # (B, Ta)
        return CodecReconstruction({"frame_error": error.mean()}, output, error.sum(0))


def test_a_users_codec_from_a_spec_trains_and_logs_its_own_measures(tmp_path):
    codec = build_codec({"class_path": f"{__name__}.FrameProjectionCodec", "init_args": {"channels": 8}})
    assert isinstance(codec, TrainableCodec)
    module = CodecLitModule(codec, clip=ClipSpec(seconds=1), kl_weight=0.5, media_clips=0)
    data = SyntheticDataModule(ClipSpec(seconds=1), train_clips=4, val_clips=2, batch_size=2,
                               scene=SceneSettings(max_objects=1))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, val_check_interval=2, limit_val_batches=1,
                        log_every_n_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/reconstruction", "train/size", "val/frame_error"} <= set(metrics)
    assert torch.isfinite(metrics["val/frame_error"]) and codec.normalizer.is_fitted


def test_a_codec_that_is_not_ready_is_refused_with_its_own_message():
    with pytest.raises(ValueError, match="FrameProjectionCodec is not ready"):
        CodecLitModule(FrameProjectionCodec(ready=False), clip=ClipSpec(seconds=1))
