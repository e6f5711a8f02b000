"""The exact patch codec: geometry, exact inverse, normalisation statistics."""

from __future__ import annotations

import pytest
import torch

from omniforcing.codecs import PatchVideoCodec


@pytest.mark.parametrize("seconds", [0, 1, 2])
def test_latent_count_and_shape(seconds):
    codec = PatchVideoCodec()
    video = torch.rand(2, 1 + 24 * seconds, 3, 32, 32) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 1 + 3 * seconds, 1536, 4, 4)
    assert codec.latent_channels == 1536 and codec.latent_size == (4, 4) and codec.latent_rate == 3


def test_exact_inverse_raw_and_normalised(clips):
    codec = PatchVideoCodec()
    raw = codec.encode_raw(clips.video)
    torch.testing.assert_close(codec.decode_raw(raw), clips.video, atol=1e-6, rtol=0)
    codec.fit_normalization(clips.video.split(2))
    assert codec.normalizer.is_fitted
    torch.testing.assert_close(codec.decode(codec.encode(clips.video)), clips.video, atol=1e-5, rtol=0)


def test_first_latent_is_frame_zero_alone_and_later_latents_their_eight_frames():
    codec = PatchVideoCodec()
    video = torch.zeros(1, 17, 3, 32, 32)
    video[:, 9:] = 1.0  # frames of latent 2 only
    raw = codec.encode_raw(video)
    assert raw[:, :2].abs().max() == 0 and (raw[:, 2] == 1).all()


def test_normalised_latents_have_unit_statistics(clips):
    codec = PatchVideoCodec()
    codec.fit_normalization(clips.video.split(2))
    latents = codec.encode(clips.video)
    per_channel = latents.transpose(0, 2).flatten(1)
    live = codec.normalizer.std > 1e-3
    assert per_channel.mean(1)[live].abs().max() < 1e-3
    assert (per_channel.std(1, unbiased=False)[live] - 1).abs().max() < 1e-3


def test_bad_inputs_give_clear_errors():
    codec = PatchVideoCodec()
    with pytest.raises(ValueError, match="1 \\+ 8k frames"):
        codec.encode(torch.zeros(1, 10, 3, 32, 32))
    with pytest.raises(ValueError, match="expected video"):
        codec.encode(torch.zeros(1, 9, 3, 16, 16))
    with pytest.raises(ValueError, match="expected video latents"):
        codec.decode(torch.zeros(1, 2, 16, 4, 4))
    with pytest.raises(ValueError, match="patch_size"):
        PatchVideoCodec(size=30)
    with pytest.raises(ValueError, match="no clips"):
        codec.fit_normalization([])


def test_tail_decode_returns_the_newest_frames(clips):
    codec = PatchVideoCodec()
    latents = codec.encode(clips.video)
    torch.testing.assert_close(codec.decode_tail(latents, 2), clips.video[:, -16:], atol=1e-6, rtol=0)
    torch.testing.assert_close(codec.decode_tail(latents, 4), clips.video, atol=1e-6, rtol=0)
    window = latents[:, 2:]  # a mid-stream window: both latents decode as 8-frame groups
    torch.testing.assert_close(codec.decode_tail(window, 2, from_clip_start=False), clips.video[:, -16:],
                               atol=1e-6, rtol=0)
