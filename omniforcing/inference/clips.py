"""Generated clips as media: latent noise of the right geometry, decoding, conversion to uint8."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from omniforcing.codecs.base import AVCodec
from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.types import AVLatents


@dataclass
class GeneratedClips:
    """Decoded media of a batch of generated clips.

    Args:
        video: ``(B, T, H, W, 3)`` uint8, or ``None`` for audio-only models.
        audio: ``(B, S)`` float32 in ``[-1, 1]``, or ``None`` for video-only models.
        fps: video frame rate.
        sample_rate: audio sample rate.
        captions: the prompts.
    """

    video: Tensor | None
    audio: Tensor | None
    fps: int
    sample_rate: int
    captions: list[str]


def latent_shapes(codec: AVCodec, seconds: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-clip latent shapes ``(Tv, C, h, w)`` and ``(Ta, C)`` for a clip of ``seconds`` after the lead."""
    video = (1 + codec.video.latent_rate * seconds, codec.video.latent_channels, *codec.video.latent_size)
    audio = (1 + codec.audio.latent_rate * seconds, codec.audio.latent_channels)
    return video, audio


def latent_noise(codec: AVCodec, seconds: int, batch_size: int, *, video: bool = True, audio: bool = True,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> AVLatents:
    """Standard normal latents for ``batch_size`` clips of ``seconds`` seconds (+ the lead latent)."""
    video_shape, audio_shape = latent_shapes(codec, seconds)

    def draw(shape: tuple[int, ...]) -> Tensor:
        return fresh_noise(torch.empty((batch_size, *shape), device=device, dtype=dtype), generator)

    return AVLatents(draw(video_shape) if video else None, draw(audio_shape) if audio else None)


def to_uint8_video(video: Tensor) -> Tensor:
    """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> ``(B, T, H, W, 3)`` uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()


@torch.no_grad()
def decode_latents(codec: AVCodec, latents: AVLatents, captions: list[str]) -> GeneratedClips:
    """Decode generated latents to uint8 video and float audio."""
    video = None if latents.video is None else to_uint8_video(codec.video.decode(latents.video.float()))
    audio = None if latents.audio is None else codec.audio.decode(latents.audio.float())[:, 0].clamp(-1, 1)
    return GeneratedClips(video, audio, codec.video.fps, codec.audio.sample_rate, list(captions))
