"""Decode a stream block by block with the causal codec, keeping only the latents the decoders look back on.

A causal codec decodes latent ``i`` from latents ``i - c .. i`` (``c`` = its context). Keeping the last ``c``
latents of the stream and decoding ``[context | new block]`` therefore gives exactly the frames that decoding
the whole clip gives, in bounded memory and constant time per block (tested for the patch codec and the
learned causal video autoencoder). ``c`` is what the codec declares as ``decode_context``
(:class:`~omniforcing.codecs.base.VideoCodec`); nothing here knows a concrete codec class.

Audio: the mel latents of :class:`~omniforcing.codecs.MelAudioCodec` (and the mel output of the causal
:class:`~omniforcing.codecs.MelAutoencoder` decoder, given its context) are exact block by block, but the
waveform comes from Griffin-Lim, which iterates over the stretch it is given: decoding per block restarts its
phase estimate at every block boundary, so streamed audio is not bit-equal to decoding the whole clip at once
(an exactly causal audio decoder is; tested with one). ``audio_context`` extra latents of left context give
Griffin-Lim more signal before the block at proportional cost.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from omniforcing.codecs.base import AudioCodec, AVCodec, VideoCodec
from omniforcing.inference.clips import to_uint8_video
from omniforcing.types import AVLatents

log = logging.getLogger(__name__)

UNKNOWN_CODEC_CONTEXT = 8
"""Latents of history kept for a video codec whose decoder context is not known (logged)."""


def video_decode_context(codec: VideoCodec) -> int:
    """Latents before a block that the video decoder needs: the codec's ``decode_context``, at least 1.

    At least one latent is kept because the clip's first latent decodes to a single frame: a block decoded
    with one latent before it decodes as a full group. A codec that declares no context (``None``) gets
    :data:`UNKNOWN_CODEC_CONTEXT` latents and a warning (pass ``video_context`` to choose).
    """
    if codec.decode_context is None:
        log.warning("the decoder context of %s is unknown; streaming keeps %d latents of history (block-wise "
                    "decoding equals whole-clip decoding only if its decoder looks back no further)",
                    type(codec).__name__, UNKNOWN_CODEC_CONTEXT)
        return UNKNOWN_CODEC_CONTEXT
    return max(1, codec.decode_context)


def audio_decode_context(codec: AudioCodec) -> int:
    """Latents before a block that the audio decoder's causal part needs (the codec's ``decode_context``)."""
    return codec.decode_context


class IncrementalDecoder:
    """Decodes consecutive blocks of one stream's latents to uint8 frames and float samples.

    Args:
        codec: the model's codec (eval mode).
        video_context: video latents of history to keep (``None``: :func:`video_decode_context`).
        audio_context: audio latents of history to keep (``None``: :func:`audio_decode_context`).
    """

    def __init__(self, codec: AVCodec, video_context: int | None = None, audio_context: int | None = None) -> None:
        self.codec = codec
        self.video_context = video_decode_context(codec.video) if video_context is None else video_context
        self.audio_context = audio_decode_context(codec.audio) if audio_context is None else audio_context
        if self.video_context < 1 or self.audio_context < 0:
            raise ValueError(f"video_context must be >= 1 and audio_context >= 0, got {self.video_context}, "
                             f"{self.audio_context}")
        self._video: Tensor | None = None
        self._audio: Tensor | None = None

    @torch.inference_mode()
    def decode(self, latents: AVLatents) -> tuple[Tensor | None, Tensor | None]:
        """Media of the next block: video ``(B, T_k, H, W, 3)`` uint8 and audio ``(B, S_k)`` float32 in [-1, 1].

        The first block includes the lead frame (``T_0 = 1 + 8 (n - 1)`` frames for ``n`` latents); later blocks
        give ``8 n`` frames. Audio gives ``640 n`` samples at 16 kHz.
        """
        video = None if latents.video is None else to_uint8_video(self._decode_video(latents.video.float()))
        audio = None if latents.audio is None else self._decode_audio(latents.audio.float())
        return video, audio

    def _decode_video(self, block: Tensor) -> Tensor:
        count = block.shape[1]
        if self._video is None:
            frames = self.codec.video.decode(block)
            window = block
        else:
            window = torch.cat([self._video, block], dim=1)
            frames = self.codec.video.decode_tail(window, count)
        self._video = window[:, -self.video_context:]
        return frames

    def _decode_audio(self, block: Tensor) -> Tensor:
        count = block.shape[1]
        window = block if self._audio is None else torch.cat([self._audio, block], dim=1)
        samples = self.codec.audio.decode(window)[:, 0, -self.codec.audio.samples_per_latent * count:]
        self._audio = window[:, -self.audio_context:] if self.audio_context else None
        return samples.clamp(-1, 1)

    def history_latents(self) -> tuple[int, int]:
        """Latents of history held for (video, audio): constant once the stream is longer than the contexts."""
        return (0 if self._video is None else self._video.shape[1],
                0 if self._audio is None else self._audio.shape[1])
