"""Codec training objectives: named terms, weighted sums, gradients only where they belong."""

from __future__ import annotations

import torch

from omniforcing.codecs import CausalVideoAutoencoder, MelAudioCodec, MelAutoencoder
from omniforcing.codecs.objectives import audio_autoencoder_loss, video_autoencoder_loss


def test_video_objective_terms_and_weighted_sum(clips):
    codec = CausalVideoAutoencoder(widths=(8, 8, 8), group_width=16, latent_channels=4).train()
    torch.manual_seed(0)
    terms = video_autoencoder_loss(codec, clips.video[:2, :17], gradient_weight=0.3, temporal_weight=0.2,
                                   kl_weight=0.1)
    assert set(terms) == {"reconstruction", "gradient", "temporal", "kl", "loss"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    expected = terms["reconstruction"] + 0.3 * terms["gradient"] + 0.2 * terms["temporal"] + 0.1 * terms["kl"]
    torch.testing.assert_close(terms["loss"], expected)


def test_audio_objective_trains_the_autoencoder_not_the_mel_statistics(clips):
    mel = MelAudioCodec(griffin_lim_iters=2)
    mel.fit_normalization([clips.audio])
    codec = MelAutoencoder(mel=mel, latent_channels=8, hidden_channels=16).train()
    stats_before = mel.normalizer.mean.clone()
    terms = audio_autoencoder_loss(codec, clips.audio, convergence_weight=0.5, kl_weight=0.0)
    expected = terms["reconstruction"] + 0.5 * terms["convergence"]
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert all(p.grad is not None for p in codec.parameters())
    assert not mel.normalizer.mean.requires_grad and torch.equal(mel.normalizer.mean, stats_before)
