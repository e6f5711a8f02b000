"""Tiny codecs and network settings for the streaming tests (imported by name: ``from streaming_helpers import``;
a name of its own, so other folders' ``conftest`` modules never shadow it)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.codecs.base import AudioCodec

TINY_NETWORK = dict(video_width=32, audio_width=16, depth=2, video_heads=2, audio_heads=2, text_width=16,
                    text_depth=1, text_heads=2, text_max_length=24)


class LinearAudioCodec(AudioCodec):
    """An exactly causal audio codec for tests: each 40 ms latent decodes on its own by a fixed projection."""

    def __init__(self, channels: int = 4, sample_rate: int = 1000) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.latent_channels = channels
        self.register_buffer("basis", torch.randn(channels, self.samples_per_latent,
                                                  generator=torch.Generator().manual_seed(5)) * 0.1)

    def encode(self, audio: Tensor) -> Tensor:
        frames = audio[:, 0].unflatten(1, (-1, self.samples_per_latent))
        return frames @ torch.linalg.pinv(self.basis)

    def decode(self, latents: Tensor) -> Tensor:
        return (latents @ self.basis).flatten(1)[:, None].tanh()


def perturb_(model: nn.Module, scale: float = 0.2, seed: int = 1) -> nn.Module:
    """Noise on every parameter so zero-initialised gates and heads are active (a fresh model outputs zeros)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def patch_mel_codec() -> AVCodec:
    """8x8-pixel patch video (384 channels on a 2x2 grid) and a cheap mel codec (32 channels)."""
    return AVCodec(PatchVideoCodec(size=8, patch_size=4),
                   MelAudioCodec(n_mels=8, griffin_lim_iters=2, nnls_iters=2)).eval()


def patch_linear_codec() -> AVCodec:
    """Patch video and the exactly causal test audio codec (4 channels)."""
    return AVCodec(PatchVideoCodec(size=8, patch_size=4), LinearAudioCodec()).eval()
