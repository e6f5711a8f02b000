"""The codec interface: raw clips <-> latents with fixed physical token rates.

Every codec (the exact patch codec, the learned causal autoencoder, a user's own VAE) implements
:class:`VideoCodec` or :class:`AudioCodec`; :class:`AVCodec` pairs one of each. Methods only ever see
normalised latents, so swapping the codec is a recipe change.

Geometry (DESIGN.md, "Tokens and time"): at 24 fps with a causal temporal stride of 8, a clip of
``1 + 24 n`` frames has ``1 + 3 n`` video latents (latent 0 = frame 0 alone); audio has ``1 + 25 n`` latents
of 40 ms. Latent ``i`` never depends on frames or samples after its own span (causality).

Streaming (``omniforcing.inference.stream_decoding``) asks a codec only for what it declares here: how many
latents before a block its decoder reads (``decode_context``) and the frames of a window's last latents
(``decode_tail``). Constructor arguments are recorded automatically (:class:`~omniforcing.class_paths.
RecordsInitArgs`) for ``save_codec`` and exports; adding a codec is docs/extending.md, "A codec".
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from omniforcing.class_paths import RecordsInitArgs
from omniforcing.types import AUDIO_LATENT_RATE


class VideoCodec(RecordsInitArgs, nn.Module, ABC):
    """Causal video codec: ``(B, T, 3, H, W)`` in ``[-1, 1]`` <-> ``(B, Tv, C, h, w)`` latents.

    Subclasses set ``fps``, ``temporal_stride``, ``latent_channels``, ``latent_size`` (h, w), ``size``, and
    ``decode_context`` when they know it.

    Attributes:
        size: ``(H, W)`` of the frames it encodes and decodes, in pixels (pre-encoding, generation and streaming
            read it to size clips).
        decode_context: latents before the decoded ones that the decoder reads (0: every latent decodes on its
            own); ``None`` = not known, and a stream then keeps a generous history and says so.
        decode_lookahead: latents after a block that still change its frames (0: a causal decoder); an exact
            stream holds each block back until they exist (``StreamingSettings.exact_decode``).
    """

    fps: int = 24
    temporal_stride: int = 8
    latent_channels: int
    latent_size: tuple[int, int]
    size: tuple[int, int]
    decode_context: int | None = None
    decode_lookahead: int = 0

    @property
    def latent_rate(self) -> int:
        """Video latents per second after the first (3 at 24 fps, stride 8)."""
        return self.fps // self.temporal_stride

    def num_latents(self, num_frames: int) -> int:
        """Latents for ``num_frames`` frames: ``1 + (T - 1) / stride``; ``T - 1`` must divide by the stride."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_stride:
            raise ValueError(
                f"a causal video codec needs 1 + {self.temporal_stride}k frames, got {num_frames}"
            )
        return 1 + (num_frames - 1) // self.temporal_stride

    def num_frames(self, num_latents: int) -> int:
        """Frames decoded from ``num_latents`` latents."""
        return 1 + (num_latents - 1) * self.temporal_stride

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """Encode ``(B, T, 3, H, W)`` in ``[-1, 1]`` to normalised latents ``(B, Tv, C, h, w)``."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised latents ``(B, Tv, C, h, w)`` to ``(B, T, 3, H, W)`` in ``[-1, 1]``."""

    def decode_tail(self, latents: Tensor, count: int, from_clip_start: bool = True) -> Tensor:
        """Frames of the last ``count`` of normalised ``(B, N, C, h, w)`` latents (streaming: decode new blocks).

        Returns ``(B, 8 count, 3, H, W)``, or ``(B, 1 + 8 (N - 1), 3, H, W)`` when ``count == N`` and
        ``latents[:, 0]`` is the clip's first latent (``from_clip_start``); equal to the same frames of
        ``decode`` on the whole clip when the window holds ``decode_context`` latents before the tail. This
        decodes the whole window; causal codecs override it to decode only what is needed.
        """
        n = latents.shape[1]
        if not 1 <= count <= n:
            raise ValueError(f"count must be in 1..{n}, got {count}")
        if not from_clip_start:
            # a copy of the window's first latent stands in for the clip start (frame 0 alone), so every given
            # latent decodes as a full group of frames
            latents = torch.cat([latents[:, :1], latents], 1)
        frames = self.decode(latents)
        return frames if count == n and from_clip_start else frames[:, -self.temporal_stride * count:]


class AudioCodec(RecordsInitArgs, nn.Module, ABC):
    """Audio codec: ``(B, 1, S)`` mono in ``[-1, 1]`` <-> ``(B, Ta, C)`` latents at 25 per second.

    Attributes:
        decode_context: latents before a block that the causal part of the decoder reads (0: none, or a
            decoder that is not causal, whose streamed output then differs at block boundaries).
        decode_lookahead: latents after a block that still change its samples (0: a causal decoder).
    """

    sample_rate: int = 16000
    latent_channels: int
    decode_context: int = 0
    decode_lookahead: int = 0

    @property
    def latent_rate(self) -> int:
        """Audio latents per second (25: 40 ms each)."""
        return AUDIO_LATENT_RATE

    @property
    def samples_per_latent(self) -> int:
        """Waveform samples covered by one latent (640 at 16 kHz)."""
        return self.sample_rate // AUDIO_LATENT_RATE

    def num_latents(self, num_samples: int) -> int:
        """Latents for ``num_samples`` samples; the count must be a whole number of latents."""
        if num_samples < 1 or num_samples % self.samples_per_latent:
            raise ValueError(f"audio length must be a multiple of {self.samples_per_latent}, got {num_samples}")
        return num_samples // self.samples_per_latent

    @abstractmethod
    def encode(self, audio: Tensor) -> Tensor:
        """Encode ``(B, 1, S)`` to normalised latents ``(B, Ta, C)``."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Decode ``(B, Ta, C)`` to a waveform ``(B, 1, Ta * samples_per_latent)``."""


class AVCodec(nn.Module):
    """A video codec and an audio codec used together.

    Args:
        video: the video codec.
        audio: the audio codec.
    """

    def __init__(self, video: VideoCodec, audio: AudioCodec) -> None:
        super().__init__()
        self.video = video
        self.audio = audio
