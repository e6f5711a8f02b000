"""Codec losses and measures: known values and the properties they exist for."""

from __future__ import annotations

import math

import torch

from omniforcing.codecs.losses import (
    boundary_step_errors,
    gaussian_kl,
    log_spectral_distance,
    mean_frame_psnr,
    motion_weights,
    psnr,
    spatial_gradient_loss,
    spectral_convergence,
    temporal_difference_loss,
    weighted_reconstruction_loss,
)


def test_psnr_known_values():
    target = torch.zeros(2, 3, 3, 4, 4)
    recon = target + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1, 1)
    expected = torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)])
    torch.testing.assert_close(psnr(recon, target), expected)


def test_mean_frame_baseline_is_exact_for_static_clips_and_finite_for_moving_ones():
    static = torch.rand(1, 5, 3, 8, 8).expand(1, 5, 3, 8, 8).clone()
    static[:] = static[:, :1]
    assert mean_frame_psnr(static) > 100
    moving = torch.rand(1, 5, 3, 8, 8)
    assert 0 < mean_frame_psnr(moving) < 20


def test_motion_weights_single_out_the_moving_object():
    video = -torch.ones(1, 9, 3, 16, 16)
    for t in range(9):
        video[0, t, :, 4:6, t:t + 2] = 1.0
    weights = motion_weights(video, boost=4.0)
    assert weights.shape == (1, 9, 1, 16, 16)
    assert weights[0, 3, 0, 4, 3] == 5.0 and weights[0, 3, 0, 12, 12] == 1.0


def test_weighted_loss_normalises_by_weights():
    recon, target = torch.ones(2, 4), torch.zeros(2, 4)
    assert weighted_reconstruction_loss(recon, target) == 2.0
    weight = torch.tensor([[1.0], [3.0]])
    assert weighted_reconstruction_loss(recon, target, weight) == 2.0
    recon[1] = 0
    assert weighted_reconstruction_loss(recon, target, weight) == 0.5


def test_gradient_and_temporal_losses_vanish_only_for_matching_structure():
    target = torch.rand(1, 4, 3, 8, 8)
    assert spatial_gradient_loss(target + 0.25, target) < 1e-6  # an offset keeps every edge
    assert temporal_difference_loss(target + 0.25, target) < 1e-6
    blurred = target.mean(dim=(-1, -2), keepdim=True).expand_as(target)
    assert spatial_gradient_loss(blurred, target) > 0.1
    frozen = target[:, :1].expand_as(target)
    assert temporal_difference_loss(frozen, target) > 0.1


def test_gaussian_kl_zero_at_prior_and_positive_elsewhere():
    zeros = torch.zeros(2, 3, 4)
    assert gaussian_kl(zeros, zeros) == 0
    assert gaussian_kl(zeros + 1, zeros) == 0.5
    assert gaussian_kl(zeros, zeros - 2) > 0


def test_spectral_measures():
    ref = torch.rand(2, 10, 5) + 0.1
    torch.testing.assert_close(spectral_convergence(ref, ref), torch.zeros(2))
    torch.testing.assert_close(spectral_convergence(ref, torch.zeros_like(ref)), torch.ones(2))
    torch.testing.assert_close(log_spectral_distance(ref, 10 * ref), torch.full((2,), 20.0))


def test_boundary_step_errors_single_out_latent_boundaries():
    target = torch.zeros(1, 17, 3, 4, 4)
    recon = target.clone()
    recon[:, 9:] += 0.5  # latent 2 decoded with an offset: a jump between frame 8 and frame 9 only
    boundary, inner = boundary_step_errors(recon, target, stride=8)
    assert boundary == 0.5 and inner == 0  # the step from frame 8 to 9 is the only boundary
