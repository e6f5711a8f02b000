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
from collections import deque

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

    A decoder that is not causal (``decode_lookahead`` > 0, e.g. LTX-2's video VAE and vocoder) changes a
    block's last frames once later latents exist. With ``exact`` the decoder holds each block back until that
    many later latents have arrived and decodes ``[context | block | lookahead]``, so every block equals the same
    span of decoding the whole clip, at the cost of the lookahead's latency; :meth:`finish` decodes what is
    held back when the stream ends. Without ``exact`` (or with causal codecs) each block decodes on arrival.

    Args:
        codec: the model's codec (eval mode).
        video_context: video latents of history to keep (``None``: :func:`video_decode_context`).
        audio_context: audio latents of history to keep (``None``: :func:`audio_decode_context`).
        exact: hold blocks back by the codecs' ``decode_lookahead`` (see above).
    """

    def __init__(self, codec: AVCodec, video_context: int | None = None, audio_context: int | None = None,
                 exact: bool = False) -> None:
        self.codec = codec
        self.video_context = video_decode_context(codec.video) if video_context is None else video_context
        self.audio_context = audio_decode_context(codec.audio) if audio_context is None else audio_context
        if self.video_context < 1 or self.audio_context < 0:
            raise ValueError(f"video_context must be >= 1 and audio_context >= 0, got {self.video_context}, "
                             f"{self.audio_context}")
        self.video_lookahead = codec.video.decode_lookahead if exact else 0
        self.audio_lookahead = codec.audio.decode_lookahead if exact else 0
        self._video: Tensor | None = None
        self._audio: Tensor | None = None
        self._held: deque[AVLatents] = deque()

    @torch.inference_mode()
    def push(self, latents: AVLatents) -> list[tuple[Tensor | None, Tensor | None]]:
        """Take the next block; return the media of every held block that can now be decoded exactly, in order.

        Each media pair is video ``(B, T_k, H, W, 3)`` uint8 and audio ``(B, S_k)`` float32 in [-1, 1]: the first
        block includes the lead frame (``T_0 = 1 + 8 (n - 1)`` frames for ``n`` latents), later blocks give
        ``8 n`` frames and ``samples_per_latent * n`` samples. Without a lookahead: exactly this block's media.
        """
        self._held.append(latents)
        ready = []
        while self._held and self._settled():
            ready.append(self._decode_first_held())
        return ready

    @torch.inference_mode()
    def finish(self) -> list[tuple[Tensor | None, Tensor | None]]:
        """The media of the blocks still held back, once the stream has ended (nothing follows them)."""
        return [self._decode_first_held() for _ in range(len(self._held))]

    def decode(self, latents: AVLatents) -> tuple[Tensor | None, Tensor | None]:
        """The media of this block, decoded on arrival (a decoder without ``exact``; see :meth:`push`)."""
        if self.video_lookahead or self.audio_lookahead:
            raise ValueError("an exact decoder holds blocks back: use push() and finish()")
        return self.push(latents)[0]

    def _settled(self) -> bool:
        """Whether the held blocks after the first hold the lookahead of every modality."""
        later = list(self._held)[1:]
        first = self._held[0]
        video = first.video is None or sum(b.video.shape[1] for b in later) >= self.video_lookahead
        audio = first.audio is None or sum(b.audio.shape[1] for b in later) >= self.audio_lookahead
        return video and audio

    def _decode_first_held(self) -> tuple[Tensor | None, Tensor | None]:
        block, later = self._held.popleft(), list(self._held)

        def following(parts: list[Tensor | None], count: int) -> Tensor | None:
            return torch.cat(parts, 1)[:, :count].float() if count and parts and parts[0] is not None else None

        video = audio = None
        if block.video is not None:
            frames = self._decode_video(block.video.float(),
                                        following([b.video for b in later], self.video_lookahead))
            video = to_uint8_video(frames)
        if block.audio is not None:
            audio = self._decode_audio(block.audio.float(), following([b.audio for b in later], self.audio_lookahead))
        return video, audio

    def _decode_video(self, block: Tensor, after: Tensor | None) -> Tensor:
        count = block.shape[1]
        extra = 0 if after is None else after.shape[1]
        parts = [block] if after is None else [block, after]
        if self._video is None:  # the clip's first latents: the lead frame plus 8 per later latent
            lead_frames = 1 + self.codec.video.temporal_stride * (count - 1)
            frames = self.codec.video.decode(torch.cat(parts, 1))[:, :lead_frames]
            window = block
        else:
            window = torch.cat([self._video, block], dim=1)
            frames = self.codec.video.decode_tail(torch.cat([window, *parts[1:]], 1), count + extra)
            frames = frames[:, :self.codec.video.temporal_stride * count]
        self._video = window[:, -self.video_context:]
        return frames

    def _decode_audio(self, block: Tensor, after: Tensor | None) -> Tensor:
        count = block.shape[1]
        extra = 0 if after is None else after.shape[1]
        window = block if self._audio is None else torch.cat([self._audio, block], dim=1)
        per = self.codec.audio.samples_per_latent
        decoded = self.codec.audio.decode(window if after is None else torch.cat([window, after], 1))[:, 0]
        samples = decoded[:, decoded.shape[1] - per * (count + extra):][:, :per * count]
        self._audio = window[:, -self.audio_context:] if self.audio_context else None
        return samples.clamp(-1, 1)

    def history_latents(self) -> tuple[int, int]:
        """Latents of history held for (video, audio): constant once the stream is longer than the contexts."""
        return (0 if self._video is None else self._video.shape[1],
                0 if self._audio is None else self._audio.shape[1])
