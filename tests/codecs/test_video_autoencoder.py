"""The causal video autoencoder: geometry, causality of encoder and decoder, learning."""

from __future__ import annotations

import pytest
import torch
from codec_training import evaluate_video

from omniforcing.codecs import CausalVideoAutoencoder
from omniforcing.codecs.objectives import video_autoencoder_loss


def tiny_codec(**overrides) -> CausalVideoAutoencoder:
    args = {"widths": (8, 8, 8), "group_width": 16, "latent_channels": 4} | overrides
    return CausalVideoAutoencoder(**args).eval()


@pytest.mark.parametrize("seconds", [0, 1, 2])
def test_latent_count_and_shape(seconds):
    codec = tiny_codec()
    latents = codec.encode(torch.rand(2, 1 + 24 * seconds, 3, 32, 32) * 2 - 1)
    assert latents.shape == (2, 1 + 3 * seconds, 4, 4, 4)
    decoded = codec.decode(latents)
    assert decoded.shape == (2, 1 + 24 * seconds, 3, 32, 32) and decoded.abs().max() <= 1


def test_spatial_factor_and_size_are_configurable():
    codec = tiny_codec(size=64, spatial_factor=4, widths=(8, 8))
    assert codec.encode(torch.zeros(1, 9, 3, 64, 64)).shape == (1, 2, 4, 16, 16)
    with pytest.raises(ValueError, match="log2"):
        CausalVideoAutoencoder(spatial_factor=8, widths=(8, 8))
    with pytest.raises(ValueError, match="power of two"):
        CausalVideoAutoencoder(spatial_factor=6)


@pytest.mark.parametrize("context_latents", [0, 1, 2])
def test_encoder_latent_ignores_frames_after_its_span(context_latents):
    codec = tiny_codec(context_latents=context_latents)
    video = torch.rand(1, 25, 3, 32, 32) * 2 - 1
    reference = codec.encode(video)
    for i in range(4):  # latent i spans frame 0 (i = 0) or frames 8i-7 .. 8i
        changed = video.clone()
        changed[:, 8 * i + 1:] = torch.rand_like(changed[:, 8 * i + 1:])
        latents = codec.encode(changed)
        torch.testing.assert_close(latents[:, : i + 1], reference[:, : i + 1], atol=1e-6, rtol=0)
        if i < 3:
            assert (latents[:, i + 1:] - reference[:, i + 1:]).abs().max() > 1e-4


@pytest.mark.parametrize("context_latents", [0, 1, 2])
def test_decoded_frames_ignore_later_latents(context_latents):
    codec = tiny_codec(context_latents=context_latents)
    latents = torch.randn(1, 4, 4, 4, 4)
    reference = codec.decode(latents)
    for i in range(3):
        changed = latents.clone()
        changed[:, i + 1:] = torch.randn_like(changed[:, i + 1:])
        frames = codec.decode(changed)
        torch.testing.assert_close(frames[:, : 8 * i + 1], reference[:, : 8 * i + 1], atol=1e-6, rtol=0)
        assert (frames[:, 8 * i + 1:] - reference[:, 8 * i + 1:]).abs().max() > 1e-4


def test_decoder_uses_previous_latent_only_when_configured():
    latents = torch.randn(1, 3, 4, 4, 4)
    changed = latents.clone()
    changed[:, 1] += 1.0
    for context, should_change in ((0, False), (1, True)):
        codec = tiny_codec(context_latents=context)
        diff = (codec.decode(changed)[:, 9:] - codec.decode(latents)[:, 9:]).abs().max()  # latent 2
        assert (diff > 1e-4) == should_change


def test_posterior_is_sampled_only_in_training(clips):
    codec = tiny_codec()
    groups_eval, mean, logvar = codec.autoencode(clips.video)
    torch.testing.assert_close(mean, codec.encode_raw(clips.video))
    assert logvar.max() < -5  # starts narrow (std ~0.03), so early training sees the means
    torch.testing.assert_close(codec.autoencode(clips.video)[0], groups_eval)
    codec.train()
    assert not torch.allclose(codec.autoencode(clips.video)[0], groups_eval)


def test_gradients_reach_encoder_and_decoder(clips):
    codec = tiny_codec().train()
    video_autoencoder_loss(codec, clips.video[:2, :9])["loss"].backward()
    for name in ("frame_encoder", "temporal_encoder", "temporal_decoder", "frame_decoder"):
        grads = [p.grad for p in getattr(codec, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.slow
def test_a_few_hundred_steps_beat_the_mean_frame_baseline():
    from bouncing_clips import render_bouncing_clips

    torch.manual_seed(0)
    train = render_bouncing_clips(64, 1, dark_background=True, generator=torch.Generator().manual_seed(1)).video
    held_out = render_bouncing_clips(16, 1, dark_background=True, generator=torch.Generator().manual_seed(2)).video
    codec = CausalVideoAutoencoder().train()
    optimizer = torch.optim.Adam(codec.parameters(), lr=1e-3)
    for _ in range(400):
        loss = video_autoencoder_loss(codec, train[torch.randint(0, 64, (8,)), :17])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = evaluate_video(codec, held_out)
    assert scores["psnr"] > scores["mean_frame_psnr"] + 2.5


@pytest.mark.parametrize("context_latents", [0, 1, 2])
def test_streaming_tail_decode_equals_full_decode(context_latents):
    codec = tiny_codec(context_latents=context_latents)
    latents = torch.randn(2, 7, 4, 4, 4)
    full = codec.decode(latents)
    for count in (1, 3, 6):
        torch.testing.assert_close(codec.decode_tail(latents, count), full[:, -8 * count:], atol=1e-6, rtol=0)
    torch.testing.assert_close(codec.decode_tail(latents, 7), full, atol=1e-6, rtol=0)
    # a stream that kept only the context history decodes the same new frames
    history = latents[:, 7 - 3 - context_latents:]
    torch.testing.assert_close(codec.decode_tail(history, 3, from_clip_start=False), full[:, -24:], atol=1e-6,
                               rtol=0)
    with pytest.raises(ValueError, match="count"):
        codec.decode_tail(latents, 0)
    if context_latents:
        with pytest.raises(ValueError, match="context latent"):
            codec.decode_tail(latents[:, -3:], 3, from_clip_start=False)
