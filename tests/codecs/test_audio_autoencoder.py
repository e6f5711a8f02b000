"""The learned causal audio autoencoder on mel latents."""

from __future__ import annotations

import pytest
import torch
from codec_training import evaluate_audio

from omniforcing.codecs import MelAudioCodec, MelAutoencoder
from omniforcing.codecs.objectives import audio_autoencoder_loss


def tiny_codec(**overrides) -> MelAutoencoder:
    args = {"mel": MelAudioCodec(griffin_lim_iters=4), "latent_channels": 8, "hidden_channels": 32} | overrides
    return MelAutoencoder(**args).eval()


@pytest.mark.parametrize("seconds", [0, 1])
def test_latent_count_and_shapes(seconds):
    codec = tiny_codec()
    latents = codec.encode(torch.randn(2, 1, 16000 * seconds + 640) * 0.1)
    assert latents.shape == (2, 1 + 25 * seconds, 8)
    assert codec.decode(latents).shape == (2, 1, 16000 * seconds + 640)


@pytest.mark.parametrize("context_latents", [0, 2])
def test_encoder_and_latent_decoder_are_causal(context_latents):
    codec = tiny_codec(context_latents=context_latents)
    audio = torch.randn(1, 1, 16640) * 0.1
    reference = codec.encode(audio)
    decoded_mel = codec.decoder(reference)
    for j in (0, 7, 20):
        changed = audio.clone()
        changed[..., 640 * (j + 1):] = torch.randn_like(changed[..., 640 * (j + 1):]) * 0.1
        latents = codec.encode(changed)
        torch.testing.assert_close(latents[:, : j + 1], reference[:, : j + 1], atol=1e-6, rtol=0)
        assert (latents[:, j + 1:] - reference[:, j + 1:]).abs().max() > 1e-5
        other = reference.clone()
        other[:, j + 1:] = torch.randn_like(other[:, j + 1:])
        torch.testing.assert_close(codec.decoder(other)[:, : j + 1], decoded_mel[:, : j + 1], atol=1e-6, rtol=0)


def test_a_hundred_steps_reconstruct_mel_latents(clips):
    from bouncing_clips import render_bouncing_clips

    torch.manual_seed(0)
    train = render_bouncing_clips(16, 1, generator=torch.Generator().manual_seed(3)).audio
    mel = MelAudioCodec(griffin_lim_iters=4)
    mel.fit_normalization(train.split(8))
    codec = MelAutoencoder(mel=mel, latent_channels=32, hidden_channels=128).train()
    trainable = [p for name, p in codec.named_parameters() if not name.startswith("mel.")]
    assert not any(name.startswith("mel.") for name, _ in codec.named_parameters())  # mel has buffers only
    optimizer = torch.optim.Adam(trainable, lr=2e-3)
    before = evaluate_audio(codec, clips.audio)
    for _ in range(120):
        loss = audio_autoencoder_loss(codec, train[torch.randint(0, 16, (8,))])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate_audio(codec, clips.audio)
    # predicting the mean mel latent scores normalised MSE ~1 and spectral convergence ~1
    assert after["normalised_mse"] < 0.25 * before["normalised_mse"]
    assert after["mel_spectral_convergence"] < 0.9 * before["mel_spectral_convergence"]
