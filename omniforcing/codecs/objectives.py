"""Training objectives of the learned codecs: the loss terms of :mod:`.losses` combined per codec.

Each returns a dict of named scalar terms plus their weighted sum under ``"loss"``, so a training loop (the
plain-torch experiment script now, a thin LightningModule later) only calls it, steps and logs.
"""

from __future__ import annotations

from torch import Tensor

from omniforcing.codecs.audio_autoencoder import MelAutoencoder
from omniforcing.codecs.losses import (
    gaussian_kl,
    motion_weights,
    spatial_gradient_loss,
    spectral_convergence,
    temporal_difference_loss,
    weighted_reconstruction_loss,
)
from omniforcing.codecs.patch import group_frames, ungroup_frames
from omniforcing.codecs.video_autoencoder import CausalVideoAutoencoder


def video_autoencoder_loss(codec: CausalVideoAutoencoder, video: Tensor, *, gradient_weight: float = 0.5,
                           temporal_weight: float = 0.5, motion_boost: float = 4.0,
                           kl_weight: float = 1e-4) -> dict[str, Tensor]:
    """Loss of :class:`CausalVideoAutoencoder` on a clip batch ``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]``.

    Terms: ``reconstruction`` (motion-weighted L1 + L2 over the frame groups, group 0 = frame 0 repeated),
    ``gradient`` (spatial-gradient L1, against blur), ``temporal`` (frame-difference L1 over all steps, also
    across latent boundaries, against flicker) and ``kl`` (the variational bottleneck, nats per value).
    """
    groups, mean, logvar = codec.autoencode(video)
    target = group_frames(video, codec.temporal_stride)
    weights = group_frames(motion_weights(video, boost=motion_boost), codec.temporal_stride)
    terms = {
        "reconstruction": weighted_reconstruction_loss(groups, target, weights),
        "gradient": spatial_gradient_loss(groups, target),
        "temporal": temporal_difference_loss(ungroup_frames(groups), video),
        "kl": gaussian_kl(mean, logvar),
    }
    terms["loss"] = (terms["reconstruction"] + gradient_weight * terms["gradient"]
                     + temporal_weight * terms["temporal"] + kl_weight * terms["kl"])
    return terms


def mel_magnitudes(codec: MelAutoencoder, mel_latents: Tensor) -> Tensor:
    """Mel magnitudes ``(B, Ta, 256)`` (square root of the mel power) of normalised mel latents."""
    return (0.5 * codec.mel.normalizer.denormalize(mel_latents)).exp()


def audio_autoencoder_loss(codec: MelAutoencoder, audio: Tensor, *, convergence_weight: float = 1.0,
                           kl_weight: float = 1e-4) -> dict[str, Tensor]:
    """Loss of :class:`MelAutoencoder` on audio ``(B, 1, S)``.

    Terms: ``reconstruction`` (L1 + L2 on normalised mel latents), ``convergence`` (spectral convergence of
    the mel magnitudes: the latent-space terms are dominated by the many quiet bins, this one weighs bins by
    their magnitude so the audible part of an impact comes first) and ``kl``.
    """
    mel_latents, recon, mean, logvar = codec.autoencode(audio)
    terms = {
        "reconstruction": weighted_reconstruction_loss(recon, mel_latents),
        "convergence": spectral_convergence(mel_magnitudes(codec, mel_latents), mel_magnitudes(codec, recon)).mean(),
        "kl": gaussian_kl(mean, logvar),
    }
    terms["loss"] = terms["reconstruction"] + convergence_weight * terms["convergence"] + kl_weight * terms["kl"]
    return terms
