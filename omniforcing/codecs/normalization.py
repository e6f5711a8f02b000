"""Per-channel latent normalisation with statistics measured on data, and codec bases that apply it.

Diffusion methods assume latents of roughly zero mean and unit variance per channel (as LTX-2's VAE
per-channel statistics provide). Every codec here therefore produces *raw* latents (``encode_raw``) and
exposes *normalised* ones (``encode``): ``(raw - mean) / std`` per channel, with ``mean``/``std`` buffers
that are saved with the codec's weights and computed from an iterable of clips by ``fit_normalization``.
Until fitted the statistics are the identity (mean 0, std 1) and ``is_fitted`` is false.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable
from itertools import islice

import torch
from torch import Tensor, nn

from omniforcing.codecs.base import AudioCodec, VideoCodec

log = logging.getLogger(__name__)

CHANNEL_DIM = 2
"""The channel axis of both latent layouts: video ``(B, Tv, C, h, w)`` and audio ``(B, Ta, C)``."""


class LatentNormalizer(nn.Module):
    """Per-channel affine normalisation of latents whose channel axis is dim 2.

    Args:
        channels: number of latent channels ``C``.
        min_std: floor on the fitted standard deviation, so a constant channel does not divide by zero.
    """

    def __init__(self, channels: int, min_std: float = 1e-5) -> None:
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("num_vectors", torch.zeros((), dtype=torch.float64))

    @property
    def is_fitted(self) -> bool:
        """Whether the statistics were measured on data (otherwise they are the identity)."""
        return bool(self.num_vectors > 0)

    def _view(self, stat: Tensor, x: Tensor) -> Tensor:
        return stat.view(1, 1, -1, *([1] * (x.ndim - 3))).to(x.dtype)

    def normalize(self, raw: Tensor) -> Tensor:
        """``(raw - mean) / std`` per channel; ``raw`` is ``(B, T, C, ...)``."""
        return (raw - self._view(self.mean, raw)) / self._view(self.std, raw)

    def denormalize(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return latents * self._view(self.std, latents) + self._view(self.mean, latents)

    @torch.no_grad()
    def fit(self, raw_batches: Iterable[Tensor]) -> None:
        """Set mean/std from raw latents ``(B, T, C, ...)``, accumulated in float64 over all other axes.

        Raises:
            ValueError: if no batch was given or a batch has the wrong channel count.
        """
        channels = self.mean.numel()
        total = torch.zeros(channels, dtype=torch.float64)
        total_sq = torch.zeros(channels, dtype=torch.float64)
        count = 0
        for raw in raw_batches:
            if raw.ndim < 3 or raw.shape[CHANNEL_DIM] != channels:
                raise ValueError(f"expected raw latents (B, T, {channels}, ...), got shape {tuple(raw.shape)}")
            flat = raw.detach().double().movedim(CHANNEL_DIM, -1).reshape(-1, channels).cpu()
            total += flat.sum(0)
            total_sq += flat.square().sum(0)
            count += flat.shape[0]
        if count == 0:
            raise ValueError("fit_normalization got no clips: the iterable was empty")
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp_min(self.min_std).float())
        self.num_vectors.fill_(count)
        log.info("latent statistics fitted on %d vectors: mean |m| %.3g, mean std %.3g",
                 count, mean.abs().mean().item(), self.std.mean().item())


class NormalizedVideoCodec(VideoCodec):
    """A video codec whose public latents are its raw latents normalised by :class:`LatentNormalizer`.

    Subclasses implement :meth:`encode_raw` / :meth:`decode_raw` and create ``self.normalizer``.
    """

    normalizer: LatentNormalizer

    @abstractmethod
    def encode_raw(self, video: Tensor) -> Tensor:
        """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> raw latents ``(B, Tv, C, h, w)``."""

    @abstractmethod
    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, Tv, C, h, w)`` -> ``(B, T, 3, H, W)``."""

    def encode(self, video: Tensor) -> Tensor:
        """Encode ``(B, T, 3, H, W)`` in ``[-1, 1]`` (``T = 1 + 8k``) to normalised ``(B, 1 + k, C, h, w)``."""
        return self.normalizer.normalize(self.encode_raw(video))

    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised ``(B, Tv, C, h, w)`` to ``(B, 1 + 8 (Tv - 1), 3, H, W)``."""
        self.check_latents(latents)
        return self.decode_raw(self.normalizer.denormalize(latents))

    @torch.no_grad()
    def fit_normalization(self, clips: Iterable[Tensor], max_batches: int | None = None) -> None:
        """Measure the latent mean/std on video batches ``(B, T, 3, H, W)`` (at most ``max_batches``)."""
        self.normalizer.fit(self.encode_raw(v) for v in islice(clips, max_batches))

    def check_video(self, video: Tensor) -> int:
        """Validate a ``(B, T, 3, H, W)`` input and return its number of latents."""
        if video.ndim != 5 or video.shape[2] != 3 or tuple(video.shape[3:]) != self.size:
            raise ValueError(f"expected video (B, T, 3, {self.size[0]}, {self.size[1]}), got {tuple(video.shape)}")
        return self.num_latents(video.shape[1])

    def check_latents(self, latents: Tensor) -> None:
        """Validate a ``(B, Tv, C, h, w)`` latent input."""
        expected = (self.latent_channels, *self.latent_size)
        if latents.ndim != 5 or tuple(latents.shape[2:]) != expected or latents.shape[1] < 1:
            raise ValueError(f"expected video latents (B, Tv, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(latents.shape)}")


class NormalizedAudioCodec(AudioCodec):
    """An audio codec whose public latents are its raw latents normalised by :class:`LatentNormalizer`."""

    normalizer: LatentNormalizer

    @abstractmethod
    def encode_raw(self, audio: Tensor) -> Tensor:
        """``(B, 1, S)`` -> raw latents ``(B, Ta, C)``."""

    @abstractmethod
    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, Ta, C)`` -> waveform ``(B, 1, Ta * samples_per_latent)``."""

    def encode(self, audio: Tensor) -> Tensor:
        """Encode ``(B, 1, S)`` (``S`` a multiple of 640 at 16 kHz) to normalised ``(B, S / 640, C)``."""
        return self.normalizer.normalize(self.encode_raw(audio))

    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised ``(B, Ta, C)`` to a waveform ``(B, 1, Ta * samples_per_latent)``."""
        self.check_latents(latents)
        return self.decode_raw(self.normalizer.denormalize(latents))

    @torch.no_grad()
    def fit_normalization(self, clips: Iterable[Tensor], max_batches: int | None = None) -> None:
        """Measure the latent mean/std on audio batches ``(B, 1, S)`` (at most ``max_batches``)."""
        self.normalizer.fit(self.encode_raw(a) for a in islice(clips, max_batches))

    def check_audio(self, audio: Tensor) -> int:
        """Validate a ``(B, 1, S)`` input and return its number of latents."""
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(f"expected mono audio (B, 1, S), got {tuple(audio.shape)}")
        return self.num_latents(audio.shape[2])

    def check_latents(self, latents: Tensor) -> None:
        """Validate a ``(B, Ta, C)`` latent input."""
        if latents.ndim != 3 or latents.shape[2] != self.latent_channels or latents.shape[1] < 1:
            raise ValueError(f"expected audio latents (B, Ta, {self.latent_channels}), got {tuple(latents.shape)}")
