"""A small causal video autoencoder with the patch codec's geometry (the default video latent space).

Causal rule (DESIGN.md, "Tokens and time"): frames are grouped as the patch codec groups them — group 0 is
frame 0 repeated ``temporal_stride`` times, group ``i >= 1`` is frames ``8 (i - 1) + 1 .. 8 i``. The encoder
maps each group *on its own* to one latent ``(C, H / f, W / f)``, so latent ``i`` depends on no frame after
its span. The decoder maps latent ``i`` — optionally together with the ``context_latents`` latents before
it, never after — to the frames of group ``i``, so blocks decode as they are generated. Before the clip
the context repeats latent 0 (the scene was static before frame 0), so no learned padding is needed.
Measured (docs/codecs.md): one latent of context lowered the boundary flicker ratio slightly but cost
0.3-1.3 dB PSNR at equal steps, so the default decodes every latent on its own (``context_latents=0``).

Architecture — space and time factorised, so spatial weights are shared by all frames:

* a per-frame 2-D encoder (:class:`FrameEncoder`: 2x2 pixel-unshuffle, then residual blocks and strided
  convolutions) maps every frame to features at the latent resolution ``H / f``;
* a temporal encoder mixes the 8 frame feature maps of a group (stacked as channels) with a 1x1
  convolution and a residual block into the mean and log-variance of ``latent_channels`` values;
* the temporal decoder maps latent ``i`` and its context back to 8 per-frame feature maps, which a shared
  per-frame 2-D decoder (:class:`FrameDecoder`, sub-pixel upsampling, which keeps edges sharp where
  interpolation blurs) renders one frame at a time.

A design that stacks a group's 8 frames as 24 input channels of one 2-D encoder/decoder (the measurement
in issue 3) learned far slower here: after 500 steps it still drew the whole 8-frame trajectory of an
object into every frame. Rendering each frame from its own feature map removes that failure by
construction. The residual blocks use GroupNorm: measured on CPU it costs almost nothing at these sizes,
and without it the same net overfitted one batch to at most 19.5 dB in 150 steps instead of 25 dB (and
diverged at higher learning rates). Its statistics are per frame (or per group in the temporal mixers), so it does not
mix time and causality is kept.

Regulariser: a variational bottleneck as in the VAEs of latent diffusion / LTX-2 — training decodes a
sample ``mean + exp(logvar / 2) * noise`` and the training loss adds a small KL term
(:func:`~omniforcing.codecs.losses.gaussian_kl`), so the decoder tolerates small latent errors, which is
what a diffusion model sampling in this space needs; ``encode`` returns the mean. (A ``tanh``-bounded
latent with fixed training noise was tried first: the encoder saturated the ``tanh`` into a binary code
within 50 steps, its gradients vanished and training stalled.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniforcing.codecs.checkpoint import load_codec_weights
from omniforcing.codecs.losses import boundary_step_errors, mean_frame_psnr, psnr
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedVideoCodec
from omniforcing.codecs.protocol import CodecLossWeights, CodecReconstruction
from omniforcing.codecs.patch import group_frames, ungroup_frames


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels (statistics over one image: no temporal mixing)."""
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels)


class ResidualBlock(nn.Module):
    """Pre-norm ``x + conv(silu(norm(conv(silu(norm(x))))))``; the last conv starts at zero (identity block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class FrameEncoder(nn.Module):
    """One frame ``(F, 3, H, W)`` -> features ``(F, widths[-1], H / 2^L, W / 2^L)``, ``L = len(widths)``.

    Args:
        widths: channels per resolution level, the finest (after the 2x pixel-unshuffle) first.
        blocks_per_level: residual blocks at each level.
    """

    def __init__(self, widths: tuple[int, ...], blocks_per_level: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            if level > 0:
                layers.append(nn.Conv2d(widths[level - 1], width, 3, stride=2, padding=1))
            layers += [ResidualBlock(width) for _ in range(blocks_per_level)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(frames)


class FrameDecoder(nn.Module):
    """Mirror of :class:`FrameEncoder`: ``(F, widths[-1], h, w)`` -> one frame ``(F, 3, h 2^L, w 2^L)``."""

    def __init__(self, widths: tuple[int, ...], blocks_per_level: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            layers += [ResidualBlock(widths[level]) for _ in range(blocks_per_level)]
            if level > 0:
                layers += [nn.SiLU(), nn.Conv2d(widths[level], 4 * widths[level - 1], 3, padding=1),
                           nn.PixelShuffle(2)]
        layers += [nn.SiLU(), nn.Conv2d(widths[0], 12, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def temporal_mixer(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Group-level mixing at the latent resolution: 1x1 conv in, one 3x3 residual block, 1x1 conv out."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 1), ResidualBlock(hidden), nn.SiLU(),
                         nn.Conv2d(hidden, out_channels, 1))


def start_posterior_narrow(head: nn.Conv2d | nn.Linear, latent_channels: int, logvar: float = -7.0) -> None:
    """Start the posterior with std ``exp(logvar / 2)`` (0.03): a unit-variance start buries the means in
    sampling noise, and the encoder first spends hundreds of steps shrinking it before anything is learnt."""
    with torch.no_grad():
        head.weight[latent_channels:].mul_(0.01)
        head.bias[latent_channels:].fill_(logvar)


class CausalVideoAutoencoder(NormalizedVideoCodec):
    """Causal video autoencoder (issue 3, item 1): ``(B, 1 + 8k, 3, H, W)`` <-> ``(B, 1 + k, C, H/f, W/f)``.

    Args:
        size: side of square input frames in pixels, or ``(height, width)``.
        spatial_factor: spatial downsampling ``f`` (a power of two >= 2; 8 gives a 4x4 grid at 32x32).
        latent_channels: channels ``C`` per latent position.
        widths: per-frame channels per level, finest first; ``len(widths) == log2(spatial_factor)``.
        group_width: channels of the temporal encoder/decoder at the latent resolution.
        blocks_per_level: residual blocks per level in the per-frame encoder and decoder.
        context_latents: previous latents the decoder sees besides the current one (0: each latent on its own).
        temporal_stride: frames per latent after the first.
        fps: video frame rate.
        checkpoint: optional ``.safetensors`` from :func:`~omniforcing.codecs.save_codec` (weights + stats).
    """

    def __init__(self, size: int | tuple[int, int] = 32, spatial_factor: int = 8, latent_channels: int = 16,
                 widths: tuple[int, ...] = (16, 32, 64), group_width: int = 192, blocks_per_level: int = 1,
                 context_latents: int = 0, temporal_stride: int = 8, fps: int = 24,
                 checkpoint: str | None = None) -> None:
        super().__init__()
        levels = round(math.log2(spatial_factor))
        height, width = (size, size) if isinstance(size, int) else size
        if spatial_factor < 2 or 2**levels != spatial_factor or height % spatial_factor or width % spatial_factor:
            raise ValueError(f"spatial_factor must be a power of two >= 2 dividing size {size}, got {spatial_factor}")
        if len(widths) != levels:
            raise ValueError(f"widths needs log2(spatial_factor) = {levels} entries, got {list(widths)}")
        self.size = (height, width)
        self.temporal_stride = temporal_stride
        self.fps = fps
        self.latent_channels = latent_channels
        self.latent_size = (height // spatial_factor, width // spatial_factor)
        self.context_latents = context_latents
        group_features = temporal_stride * widths[-1]
        self.frame_encoder = FrameEncoder(tuple(widths), blocks_per_level)
        self.temporal_encoder = temporal_mixer(group_features, group_width, 2 * latent_channels)
        self.temporal_decoder = temporal_mixer(latent_channels * (1 + context_latents), group_width, group_features)
        self.frame_decoder = FrameDecoder(tuple(widths), blocks_per_level)
        self.normalizer = LatentNormalizer(latent_channels)
        self._init_weights()
        if checkpoint is not None:
            load_codec_weights(self, checkpoint)

    def _init_weights(self) -> None:
        # The convolutions between residual blocks are not normalised: unit-gain He init keeps the signal's
        # scale through that chain; residual branches' last conv stays at zero (identity blocks at start).
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.zeros_(module.bias)
        start_posterior_narrow(self.temporal_encoder[-1], self.latent_channels)

    def encode_distribution(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]`` -> posterior ``(mean, logvar)``, each ``(B, 1 + k, C, h, w)``."""
        self.check_video(video)
        b = video.shape[0]
        features = self.frame_encoder(video.flatten(0, 1)).unflatten(0, (b, -1))  # (B, T, F, h, w)
        groups = group_frames(features, self.temporal_stride)  # (B, N, S, F, h, w); group 0 = frame 0 repeated
        moments = self.temporal_encoder(groups.flatten(0, 1).flatten(1, 2)).unflatten(0, (b, -1))
        mean, logvar = moments.chunk(2, dim=2)
        return mean, logvar.clamp(-20.0, 5.0)

    def encode_raw(self, video: Tensor) -> Tensor:
        """``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]`` -> raw latents (posterior means) ``(B, 1 + k, C, h, w)``."""
        return self.encode_distribution(video)[0]

    @property
    def decode_context(self) -> int:
        """Latents before a block that the decoder reads: ``context_latents``."""
        return self.context_latents

    def decode_groups(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, N, C, h, w)`` -> unclamped frame groups ``(B, N, S, 3, H, W)`` (training output)."""
        b, n = raw.shape[:2]
        steps = torch.arange(n, device=raw.device)
        # latent i sees latents i - 1 .. i - context; before latent 0 the scene is static (index clamps to 0)
        context = torch.cat([raw[:, (steps - lag).clamp_min(0)] for lag in range(self.context_latents + 1)], 2)
        features = self.temporal_decoder(context.flatten(0, 1))  # (B N, S F, h, w)
        frames = self.frame_decoder(features.unflatten(1, (self.temporal_stride, -1)).flatten(0, 1))
        return frames.unflatten(0, (b, n, self.temporal_stride))

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, 1 + k, C, h, w)`` -> frames ``(B, 1 + 8k, 3, H, W)`` clamped to ``[-1, 1]``."""
        self.check_latents(raw)
        return ungroup_frames(self.decode_groups(raw)).clamp(-1, 1)

    def decode_tail(self, latents: Tensor, count: int, from_clip_start: bool = True) -> Tensor:
        """Frames of the last ``count`` normalised latents, decoding only those groups.

        Only the ``context_latents`` latents before the tail are read, so a stream can keep a short history;
        the result equals the same frames of :meth:`decode` on the whole clip.

        Args:
            latents: ``(B, N, C, h, w)`` normalised latents, ending with the ones to decode.
            count: how many of the last latents to decode.
            from_clip_start: whether ``latents[:, 0]`` is the clip's first latent (frame 0 alone); ``False``
                for a window cut from the middle of a stream, which must then hold the context latents.
        """
        n = latents.shape[1]
        if not 1 <= count <= n:
            raise ValueError(f"count must be in 1..{n}, got {count}")
        if not from_clip_start and n - count < self.context_latents:
            raise ValueError(f"a mid-stream window needs {self.context_latents} context latent(s) before the "
                             f"{count} to decode, got {n - count}")
        self.check_latents(latents)
        start = max(0, n - count - self.context_latents)
        groups = self.decode_groups(self.normalizer.denormalize(latents[:, start:]))[:, -count:]
        if count == n and from_clip_start:
            return ungroup_frames(groups).clamp(-1, 1)
        return groups.flatten(1, 2).clamp(-1, 1)

    # ---------------------------------------------------------------- training (codecs.protocol.TrainableCodec)
    def check_trainable(self) -> None:
        """Always trainable (statistics are fitted during training)."""

    def training_losses(self, media: Tensor, weights: CodecLossWeights) -> dict[str, Tensor]:
        """:func:`~omniforcing.codecs.objectives.video_autoencoder_loss` on ``(B, 1 + 8k, 3, H, W)``."""
        from omniforcing.codecs.objectives import video_autoencoder_loss  # objectives imports this module

        return video_autoencoder_loss(self, media, gradient_weight=weights.gradient_weight,
                                      temporal_weight=weights.temporal_weight, motion_boost=weights.motion_boost,
                                      kl_weight=weights.kl_weight)

    def reconstruction(self, media: Tensor, raw: Tensor) -> CodecReconstruction:
        """PSNR (dB on ``[-1, 1]``), the mean-frame baseline and boundary/inner step errors; error per frame."""
        recon = self.decode_raw(raw)
        boundary, inner = boundary_step_errors(recon, media, self.temporal_stride)
        measures = {"psnr": psnr(recon, media).mean(), "mean_frame_psnr": mean_frame_psnr(media).mean(),
                    "boundary_step_error": boundary, "inner_step_error": inner}
        return CodecReconstruction(measures, recon, (recon - media).square().flatten(2).mean(2).sum(0))

    def autoencode(self, video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: encode, sample the posterior (its mean in eval mode), decode.

        Args:
            video: ``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]``.

        Returns:
            ``(groups, mean, logvar)``: reconstructed frame groups ``(B, 1 + k, 8, 3, H, W)`` (unclamped; group 0
            should equal frame 0 repeated, see :func:`~omniforcing.codecs.patch.group_frames`) and the posterior
            moments ``(B, 1 + k, C, h, w)`` for the KL term.
        """
        mean, logvar = self.encode_distribution(video)
        latents = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
        return self.decode_groups(latents), mean, logvar
