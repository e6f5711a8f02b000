"""The exact video patch codec: causal space-time patches, the lossless baseline latent space.

Latent 0 is frame 0 alone, repeated ``temporal_stride`` times so that it has the same channel count as every
later latent (a static group, as a causal VAE sees a clip's first frame); latent ``i >= 1`` is frames
``8 (i - 1) + 1 .. 8 i``. Each latent is cut into ``patch_size x patch_size`` spatial patches, giving
``(B, 1 + k, stride * 3 * p * p, H / p, W / p)`` — 1536 channels on a 4x4 grid at the defaults. Decoding
inverts this exactly (frame 0 is the mean of its copies, exact for an encoded clip).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from omniforcing.codecs.checkpoint import load_codec_weights
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedVideoCodec


class PatchVideoCodec(NormalizedVideoCodec):
    """Exact causal patch codec for video (issue 2, item 7).

    Channel order within a latent is ``(frame, rgb, patch_row, patch_col)``.

    Args:
        size: side of the square input frames in pixels.
        patch_size: spatial patch side; must divide ``size``.
        temporal_stride: frames per latent after the first.
        fps: video frame rate (3 latents per second at 24 fps, stride 8).
        checkpoint: optional ``.safetensors`` written by :func:`~omniforcing.codecs.save_codec` holding the
            normalisation statistics.
    """

    decode_context = 0  # every latent decodes on its own

    def __init__(self, size: int = 32, patch_size: int = 8, temporal_stride: int = 8, fps: int = 24,
                 checkpoint: str | None = None) -> None:
        super().__init__()
        if size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the frame size {size}")
        self.size = (size, size)
        self.patch_size = patch_size
        self.temporal_stride = temporal_stride
        self.fps = fps
        self.latent_channels = temporal_stride * 3 * patch_size * patch_size
        self.latent_size = (size // patch_size, size // patch_size)
        self.normalizer = LatentNormalizer(self.latent_channels)
        if checkpoint is not None:
            load_codec_weights(self, checkpoint)

    def encode_raw(self, video: Tensor) -> Tensor:
        """``(B, 1 + 8k, 3, H, W)`` -> ``(B, 1 + k, 8 * 3 * p * p, H / p, W / p)`` (pixel values, unscaled)."""
        self.check_video(video)
        groups = group_frames(video, self.temporal_stride)
        return rearrange(groups, "b n s c (h p) (w q) -> b n (s c p q) h w", p=self.patch_size, q=self.patch_size)

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Exact inverse of :meth:`encode_raw`: ``(B, 1 + k, C, h, w)`` -> ``(B, 1 + 8k, 3, H, W)``."""
        self.check_latents(raw)
        groups = rearrange(raw, "b n (s c p q) h w -> b n s c (h p) (w q)", s=self.temporal_stride, c=3,
                           p=self.patch_size, q=self.patch_size)
        return ungroup_frames(groups)


def group_frames(video: Tensor, stride: int) -> Tensor:
    """``(B, 1 + stride k, ...)`` -> ``(B, 1 + k, stride, ...)``: frame 0 repeated, then consecutive groups."""
    first = video[:, :1].expand(-1, stride, *video.shape[2:])
    rest = video[:, 1:].reshape(video.shape[0], -1, stride, *video.shape[2:])
    return torch.cat([first[:, None], rest], 1)


def ungroup_frames(groups: Tensor) -> Tensor:
    """Inverse of :func:`group_frames`; frame 0 is the mean of group 0 (exact when the copies are equal)."""
    first = groups[:, 0].mean(1, keepdim=True)
    return torch.cat([first, groups[:, 1:].flatten(1, 2)], 1)
