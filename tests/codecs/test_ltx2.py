"""LTX-2's video VAE behind the codec interface, on tiny random VAEs written with ``save_pretrained``.

A random VAE does not reconstruct, so these tests assert what is true of any weights: geometry and rates from
the config, the pipeline's normalisation, determinism, weights round trips, and block-wise decoding equal to
whole-clip decoding given the measured context (and different without it, or across the lookahead of a
non-causal decoder).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from diffusers.pipelines.ltx2.pipeline_ltx2 import LTX2Pipeline

from omniforcing.codecs import LTX2VideoCodec
from omniforcing.codecs.ltx2 import DecodeReach, video_decode_reach
from omniforcing.errors import InvalidInputError, MissingInputError

SIZE = (64, 96)  # two 32-pixel latents high, three wide
TINY_VAE = {"latent_channels": 8, "block_out_channels": (8, 16, 32, 64), "decoder_block_out_channels": (8, 16, 32),
            "layers_per_block": (1, 1, 1, 1, 1), "decoder_layers_per_block": (1, 1, 1, 1),
            "spatial_compression_ratio": 32, "temporal_compression_ratio": 8, "scaling_factor": 0.5}


def write_tiny_vae(root: Path, decoder_causal: bool, **overrides) -> AutoencoderKLLTX2Video:
    """A random tiny LTX-2 video VAE with non-trivial latent statistics, saved to ``root/vae``."""
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(**{**TINY_VAE, "decoder_causal": decoder_causal, **overrides}).eval()
    vae.latents_mean.copy_(torch.linspace(-1, 1, 8))
    vae.latents_std.copy_(torch.linspace(0.5, 2, 8))
    vae.save_pretrained(root / "vae")
    return vae


@pytest.fixture(scope="module")
def ltx2_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ltx2")
    write_tiny_vae(root, decoder_causal=False)
    write_tiny_vae(root / "causal", decoder_causal=True)
    return root


@pytest.fixture(scope="module")
def codec(ltx2_root) -> LTX2VideoCodec:
    return LTX2VideoCodec(ltx2_root, size=SIZE)


def test_geometry_and_rates_come_from_the_config(codec):
    assert (codec.temporal_stride, codec.spatial_stride, codec.fps, codec.latent_rate) == (8, 32, 24, 3)
    assert codec.latent_channels == 8 and codec.latent_size == (2, 3)
    assert codec.num_latents(1 + 24 * 2) == 7 and codec.num_frames(7) == 49
    video = torch.rand(2, 17, 3, *SIZE) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 3, 8, 2, 3) and latents.dtype == torch.float32
    frames = codec.decode(latents)
    assert frames.shape == (2, 17, 3, *SIZE) and frames.abs().max() <= 1
    assert codec.encode(frames).shape == latents.shape
    torch.testing.assert_close(codec.encode(video), latents, rtol=0, atol=0)  # deterministic (posterior mode)


def test_the_encoder_is_causal(codec):
    video = torch.rand(1, 25, 3, *SIZE) * 2 - 1
    latents = codec.encode_raw(video)
    for first_changed in (9, 17):  # the first frame of latent 2, of latent 3
        changed = video.clone()
        changed[:, first_changed:] = 0
        after = codec.encode_raw(changed)
        kept = (first_changed - 1) // 8 + 1
        torch.testing.assert_close(after[:, :kept], latents[:, :kept], rtol=0, atol=0)
        assert (after[:, kept] - latents[:, kept]).abs().max() > 1e-2


def test_normalisation_is_the_pipelines_and_exactly_invertible(codec):
    vae = codec.vae
    raw = torch.randn(2, 3, 8, 2, 3)
    expected = LTX2Pipeline._normalize_latents(raw.transpose(1, 2), vae.latents_mean, vae.latents_std,
                                               vae.config.scaling_factor).transpose(1, 2)
    torch.testing.assert_close(codec.normalizer.normalize(raw), expected)
    z = torch.randn(2, 3, 8, 2, 3)
    torch.testing.assert_close(codec.normalizer.normalize(codec.normalizer.denormalize(z)), z, rtol=0, atol=1e-6)


def test_loaded_codec_equals_the_saved_diffusers_model(tmp_path):
    vae = write_tiny_vae(tmp_path, decoder_causal=False)
    codec = LTX2VideoCodec(tmp_path, size=SIZE)
    video = torch.rand(1, 9, 3, *SIZE) * 2 - 1
    with torch.no_grad():
        raw = vae.encode(video.transpose(1, 2)).latent_dist.mode().transpose(1, 2)
        frames = vae.decode(raw.transpose(1, 2)).sample.transpose(1, 2).clamp(-1, 1)
    torch.testing.assert_close(codec.encode_raw(video), raw, rtol=0, atol=0)
    torch.testing.assert_close(codec.decode_raw(raw), frames, rtol=0, atol=0)


def test_measured_reach_of_the_tiny_decoders(ltx2_root, codec):
    # 1 conv_in + 2 mid + (2 + 1 + ...) up-block convolutions: 7 latents each side when the decoder pads both sides
    assert codec.decode_reach == DecodeReach(context=7, lookahead=7)
    causal = LTX2VideoCodec(ltx2_root / "causal", size=SIZE)
    assert causal.decode_reach == DecodeReach(context=14, lookahead=0)  # causal padding: twice the left reach
    assert causal.decode_context == 14 and LTX2VideoCodec(ltx2_root, size=SIZE, context_latents=2).decode_context == 2


def test_blockwise_decode_equals_decoding_up_to_the_block_with_exactly_the_measured_context(codec):
    c, count = codec.decode_context, 2
    latents = torch.randn(1, c + count + 2, 8, 2, 3, generator=torch.Generator().manual_seed(3))
    whole = codec.decode(latents)[:, -8 * count:]
    exact = codec.decode_tail(latents[:, -(c + count):], count, from_clip_start=False)
    short = codec.decode(latents[:, -(c - 1 + count):])[:, -8 * count:]
    error = (exact - whole).abs().max()
    assert error <= 1e-5  # float32 rounding (the measured context is 7; with 6 latents the error is 1e-4..1e-3)
    assert (short - whole).abs().max() > 10 * error  # one latent less of context is not enough
    torch.testing.assert_close(codec.decode_tail(latents, count), whole, rtol=0, atol=1e-5)  # reads only c


def test_a_non_causal_decoder_changes_a_blocks_frames_until_lookahead_more_latents_exist(codec):
    r = codec.decode_lookahead
    latents = torch.randn(1, 4 + r + 2, 8, 2, 3, generator=torch.Generator().manual_seed(4))
    block = slice(1 + 8 * 2, 1 + 8 * 4)  # frames of latents 3 and 4
    final = codec.decode(latents)[:, block]
    torch.testing.assert_close(codec.decode(latents[:, :5 + r])[:, block], final, rtol=0, atol=1e-5)
    error = (codec.decode(latents[:, :5 + r])[:, block] - final).abs().max()
    assert (codec.decode(latents[:, :4 + r])[:, block] - final).abs().max() > 10 * error  # one latent short
    assert (codec.decode(latents[:, :5])[:, block] - final).abs().max() > 1e-2  # streamed without lookahead


def test_causal_decoder_streams_exactly(ltx2_root):
    codec = LTX2VideoCodec(ltx2_root / "causal", size=SIZE)
    latents = torch.randn(1, codec.decode_context + 3, 8, 2, 3, generator=torch.Generator().manual_seed(5))
    whole = codec.decode(latents)
    tail = codec.decode_tail(latents[:, -codec.decode_context - 1:], 1, from_clip_start=False)
    torch.testing.assert_close(tail, whole[:, -8:], rtol=0, atol=1e-5)
    torch.testing.assert_close(codec.decode(latents[:, :-1]), whole[:, :-8], rtol=0, atol=1e-5)  # no lookahead


def test_bfloat16_weights(ltx2_root, codec):
    bf16 = LTX2VideoCodec(ltx2_root, size=SIZE, dtype="bfloat16")
    assert bf16.vae.dtype == torch.bfloat16
    video = torch.rand(1, 9, 3, *SIZE) * 2 - 1
    latents = bf16.encode(video)
    assert latents.dtype == torch.float32 and latents.shape == (1, 2, 8, 2, 3)
    torch.testing.assert_close(latents, codec.encode(video), rtol=0.1, atol=0.1)
    assert bf16.decode(latents).dtype == torch.float32


def test_missing_folder_is_one_line_naming_what_to_download(tmp_path):
    with pytest.raises(MissingInputError) as error:
        LTX2VideoCodec(tmp_path / "nowhere")
    message = str(error.value)
    assert "\n" not in message and "Lightricks/LTX-2" in message and "nowhere/vae" in message


def test_wrong_compression_ratios_in_the_config_are_reported(tmp_path):
    write_tiny_vae(tmp_path, decoder_causal=False, spatial_compression_ratio=None, temporal_compression_ratio=None)
    with pytest.raises(InvalidInputError, match="disagree with its down-sampling blocks"):
        LTX2VideoCodec(tmp_path, size=SIZE)


def test_frame_size_must_fit_the_latent_grid(ltx2_root):
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        LTX2VideoCodec(ltx2_root, size=(48, 96))


@pytest.mark.slow
def test_reach_of_ltx2_layer_structure():
    """LTX-2.0's decoder layers (its config as diffusers converts it: the defaults, ratios 32 / 8)."""
    config = {"block_out_channels": (8, 16, 32, 64), "decoder_block_out_channels": (8, 16, 32),
              "spatial_compression_ratio": 32, "temporal_compression_ratio": 8}
    assert video_decode_reach(AutoencoderKLLTX2Video(**config, decoder_causal=False)) == DecodeReach(22, 22)
    assert video_decode_reach(AutoencoderKLLTX2Video(**config, decoder_causal=True)) == DecodeReach(44, 0)
