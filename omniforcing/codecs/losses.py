"""Codec training losses and reconstruction measures, as pure functions of tensors.

The codec training loop (``tests/experiments`` now, a thin LightningModule later) only combines these.
Video tensors are ``(B, T, 3, H, W)`` in ``[-1, 1]`` unless stated; spectrogram magnitudes are ``(B, F, K)``
(frames x bins), non-negative.
"""

from __future__ import annotations

import torch
from torch import Tensor


def motion_weights(video: Tensor, boost: float = 4.0, threshold: float = 0.1) -> Tensor:
    """Per-pixel loss weights ``(B, T, 1, H, W)`` that up-weight what is not static background.

    A pixel's deviation from the clip's per-pixel temporal median (the static background when objects move)
    is mapped to ``[0, 1]`` by ``threshold`` and scaled: weight ``1 + boost * clamp(dev / threshold, 0, 1)``.
    Small moving objects cover a few percent of the pixels, so without this the background dominates the
    loss and objects blur or vanish (the weakness reported in issue 3).

    Args:
        video: target clip ``(B, T, 3, H, W)`` in ``[-1, 1]``.
        boost: extra weight of a fully deviating pixel.
        threshold: deviation (max over RGB, in ``[-1, 1]`` units) that counts as fully deviating.
    """
    background = video.median(dim=1, keepdim=True).values
    deviation = (video - background).abs().amax(dim=2, keepdim=True)
    return 1.0 + boost * (deviation / threshold).clamp(0, 1)


def weighted_reconstruction_loss(recon: Tensor, target: Tensor, weight: Tensor | None = None,
                                 l2_weight: float = 1.0) -> Tensor:
    """Mean of ``weight * (|recon - target| + l2_weight * (recon - target)^2)``, normalised by the weights.

    Args:
        recon: reconstruction, any shape.
        target: same shape as ``recon``.
        weight: broadcastable non-negative weights, or ``None`` for uniform.
        l2_weight: weight of the squared term (L1 keeps edges sharp, L2 drives PSNR).
    """
    err = recon - target
    per_elem = err.abs() + l2_weight * err.square()
    if weight is None:
        return per_elem.mean()
    weight = weight.expand_as(per_elem)
    return (weight * per_elem).sum() / weight.sum()


def spatial_gradient_loss(recon: Tensor, target: Tensor) -> Tensor:
    """L1 between horizontal and vertical finite differences of ``(..., H, W)`` images (penalises blur)."""
    dx = (recon.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
    dy = (recon.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    return dx + dy


def temporal_difference_loss(recon: Tensor, target: Tensor) -> Tensor:
    """L1 between consecutive-frame differences of ``(B, T, ...)`` clips.

    Includes the steps across latent boundaries, where independent decoding of neighbouring latents would
    otherwise show as an 8-frame flicker.
    """
    return (recon.diff(dim=1) - target.diff(dim=1)).abs().mean()


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, 1))`` in nats per latent value (mean over all elements).

    The per-value mean keeps the weight of this term independent of clip length and latent size.
    """
    return (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)).mean()


def psnr(recon: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per item of the batch, ``(B,)``; ``data_range`` 2 for ``[-1, 1]``."""
    mse = (recon.float() - target.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def mean_frame_psnr(video: Tensor, data_range: float = 2.0) -> Tensor:
    """PSNR ``(B,)`` of predicting every frame of ``(B, T, 3, H, W)`` by the clip's mean frame (a baseline)."""
    return psnr(video.mean(dim=1, keepdim=True).expand_as(video), video, data_range)


def boundary_step_errors(recon: Tensor, target: Tensor, stride: int = 8) -> tuple[Tensor, Tensor]:
    """Mean error of frame-to-frame changes across latent boundaries and inside latents (a flicker measure).

    For clips ``(B, 1 + stride k, ...)`` the step from frame ``stride i`` to ``stride i + 1`` crosses from
    latent ``i`` to latent ``i + 1``; all other steps stay inside a latent. Returns
    ``(boundary, inner)``: the mean ``|(recon_{t+1} - recon_t) - (target_{t+1} - target_t)|`` over each kind
    of step. A codec that decodes latents inconsistently shows ``boundary > inner`` (8-frame flicker).
    """
    step_err = (recon.diff(dim=1) - target.diff(dim=1)).abs().flatten(2).mean(dim=(0, 2))  # (T - 1,)
    boundary = torch.zeros_like(step_err, dtype=torch.bool)
    boundary[stride::stride] = True
    return step_err[boundary].mean(), step_err[~boundary].mean()


def spectral_convergence(reference: Tensor, estimate: Tensor) -> Tensor:
    """``||S_ref - S_est||_F / ||S_ref||_F`` per item ``(B,)`` for magnitudes ``(B, F, K)`` (0 is perfect)."""
    num = (reference - estimate).flatten(1).norm(dim=1)
    return num / reference.flatten(1).norm(dim=1).clamp_min(1e-12)


def log_spectral_distance(reference: Tensor, estimate: Tensor, floor: float = 1e-5) -> Tensor:
    """Root-mean-square difference of ``10 log10`` power in dB per item ``(B,)`` for magnitudes ``(B, F, K)``."""
    ref_db = 20 * reference.clamp_min(floor).log10()
    est_db = 20 * estimate.clamp_min(floor).log10()
    return (ref_db - est_db).square().flatten(1).mean(1).sqrt()


def log_magnitude_loss(reference: Tensor, estimate: Tensor, floor: float = 1e-5) -> Tensor:
    """Mean L1 between log magnitudes (the log-STFT term of multi-resolution STFT losses)."""
    return (reference.clamp_min(floor).log() - estimate.clamp_min(floor).log()).abs().mean()
