"""Evaluation helpers for the learned codecs in plain torch (shared by tests and experiment scripts).

The training objectives themselves live in :mod:`omniforcing.codecs.objectives`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniforcing.codecs.audio_autoencoder import MelAutoencoder
from omniforcing.codecs.losses import boundary_step_errors, mean_frame_psnr, psnr, spectral_convergence
from omniforcing.codecs.objectives import mel_magnitudes
from omniforcing.codecs.video_autoencoder import CausalVideoAutoencoder


@torch.no_grad()
def evaluate_video(codec: CausalVideoAutoencoder, video: Tensor) -> dict[str, float]:
    """PSNR of ``decode(encode(video))`` vs the mean-frame baseline, and the error of frame-to-frame changes
    at latent boundaries vs inside latents (a flicker measure: equal values mean no boundary flicker)."""
    was_training = codec.training
    codec.eval()
    recon = codec.decode(codec.encode(video))
    codec.train(was_training)
    boundary, inner = boundary_step_errors(recon, video, codec.temporal_stride)
    return {"psnr": psnr(recon, video).mean().item(), "mean_frame_psnr": mean_frame_psnr(video).mean().item(),
            "boundary_step_error": boundary.item(), "inner_step_error": inner.item()}


@torch.no_grad()
def evaluate_audio(codec: MelAutoencoder, audio: Tensor) -> dict[str, float]:
    """Mel spectral convergence of the autoencoder's mel reconstruction vs the mel codec's own mel."""
    was_training = codec.training
    codec.eval()
    mel_latents, recon, _, _ = codec.autoencode(audio)
    codec.train(was_training)
    ref, est = mel_magnitudes(codec, mel_latents), mel_magnitudes(codec, recon)
    return {"mel_spectral_convergence": spectral_convergence(ref, est).mean().item(),
            "normalised_mse": (recon - mel_latents).square().mean().item()}
