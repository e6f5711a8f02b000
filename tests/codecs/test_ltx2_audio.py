"""LTX-2's audio VAE + vocoder behind the codec interface, on tiny random models written with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio
from diffusers.pipelines.ltx2.pipeline_ltx2 import LTX2Pipeline
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
import yaml
from test_ltx2 import SIZE, write_tiny_vae
from torchaudio.functional import resample

from omniforcing.codecs import AVCodec, LTX2AudioCodec, LTX2VideoCodec, codec_config
from omniforcing.errors import MissingInputError
from omniforcing.inference.export import instantiate

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "latents" / "ltx2.yaml"

# 2 latent channels x (16 mel bins / 4) = 8 packed channels, as A's tiny LTX-2 geometry; base_channels sizes the
# VAE's statistics buffers, which the pipeline applies to the packed latents, so it must be 8 too
TINY_AUDIO_VAE = {"base_channels": 8, "ch_mult": (1, 2, 4), "num_res_blocks": 1, "latent_channels": 2, "mel_bins": 16}
TINY_VOCODER = {"in_channels": 32, "hidden_channels": 64, "resnet_kernel_sizes": [3], "resnet_dilations": [[1]]}
N_FFT = 256  # LTX-2 uses 1024; the tiny clips are shorter than its reflect padding needs


def write_tiny_audio(root: Path, bwe: bool = False) -> tuple[AutoencoderKLLTX2Audio, torch.nn.Module]:
    """Random tiny audio VAE (non-trivial statistics) and vocoder (24 kHz, or 48 kHz with bandwidth extension)."""
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Audio(**TINY_AUDIO_VAE).eval()
    vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, 8))
    vae.latents_std.copy_(torch.linspace(0.5, 1.5, 8))
    vae.save_pretrained(root / "audio_vae")
    if bwe:
        vocoder = LTX2VocoderWithBWE(
            in_channels=32, hidden_channels=64, upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
            upsample_factors=[5, 2, 2, 2, 2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1]],
            bwe_in_channels=32, bwe_hidden_channels=64, bwe_resnet_kernel_sizes=[3], bwe_resnet_dilations=[[1]],
            num_mel_channels=16).eval()
    else:
        vocoder = LTX2Vocoder(**TINY_VOCODER).eval()
    vocoder.save_pretrained(root / "vocoder")
    return vae, vocoder


@pytest.fixture(scope="module")
def ltx2_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ltx2_audio")
    write_tiny_audio(root)
    return root


@pytest.fixture(scope="module")
def codec(ltx2_root) -> LTX2AudioCodec:
    return LTX2AudioCodec(ltx2_root, n_fft=N_FFT)


def test_geometry_rates_and_the_30_ms_lead(codec):
    assert codec.latent_rate == 25 and codec.samples_per_latent == 640 and codec.latent_channels == 8
    assert codec.lead_samples == 480  # (temporal compression 4 - 1) hops of 160 samples
    audio = torch.rand(2, 1, 640 * 6) * 2 - 1
    latents = codec.encode(audio)
    assert latents.shape == (2, 6, 8) and latents.dtype == torch.float32
    torch.testing.assert_close(codec.encode(audio), latents, rtol=0, atol=0)  # deterministic (posterior mode)
    wave = codec.decode(latents)
    assert wave.shape == (2, 1, 640 * 6) and wave.abs().max() <= 1
    assert wave[..., :480].abs().max() == 0 and wave[..., 480:].abs().max() > 0
    assert codec.encode(wave).shape == latents.shape


def test_encoding_reads_the_clip_from_ltx2s_time_zero_at_the_lead(codec):
    audio = torch.rand(1, 1, 640 * 4) * 2 - 1
    before_lead, after_lead = audio.clone(), audio.clone()
    before_lead[..., :480] = 0
    after_lead[..., 480:560] = 0
    latents = codec.encode_raw(audio)
    torch.testing.assert_close(codec.encode_raw(before_lead), latents, rtol=0, atol=0)
    assert (codec.encode_raw(after_lead)[:, 0] - latents[:, 0]).abs().max() > 1e-4


def test_latent_j_reads_up_to_half_a_mel_window_past_ltx2s_time_40j(codec):
    audio = torch.rand(1, 1, 640 * 8) * 2 - 1
    latents = codec.encode_raw(audio)
    end_of_latent_3 = 480 + 640 * 3  # our sample of LTX-2's 120 ms, the centre of latent 3's last mel frame
    unread, read = audio.clone(), audio.clone()
    unread[..., end_of_latent_3 + N_FFT // 2:] = 0
    read[..., end_of_latent_3:] = 0
    torch.testing.assert_close(codec.encode_raw(unread)[:, :4], latents[:, :4], rtol=0, atol=0)
    assert (codec.encode_raw(read)[:, 3] - latents[:, 3]).abs().max() > 1e-3


def test_packing_and_normalisation_are_the_pipelines(codec):
    audio = torch.rand(1, 1, 640 * 5) * 2 - 1
    with torch.no_grad():
        unpacked = codec.audio_vae.encode(codec.log_mel(audio[:, 0, 480:])).latent_dist.mode()  # (B, 2, 5, 4)
    raw = codec.encode_raw(audio)
    torch.testing.assert_close(raw[:, 3, 1 * 4 + 2], unpacked[:, 1, 3, 2])  # channel c * M + m of latent j
    vae = codec.audio_vae
    expected = LTX2Pipeline._normalize_audio_latents(raw, vae.latents_mean, vae.latents_std)
    torch.testing.assert_close(codec.normalizer.normalize(raw), expected)
    z = torch.randn(2, 5, 8)
    torch.testing.assert_close(codec.normalizer.normalize(codec.normalizer.denormalize(z)), z, rtol=0, atol=1e-6)


def test_loaded_codec_decodes_as_the_saved_diffusers_models(tmp_path):
    vae, vocoder = write_tiny_audio(tmp_path)
    codec = LTX2AudioCodec(tmp_path, n_fft=N_FFT)
    raw = torch.randn(1, 5, 8)
    with torch.no_grad():
        mel = vae.decode(LTX2Pipeline._unpack_audio_latents(raw, 5, num_mel_bins=4)).sample
        assert mel.shape == (1, 2, 4 * 5 - 3, 16)
        wave = resample(vocoder(mel).mean(1), 24000, 16000).clamp(-1, 1)
    torch.testing.assert_close(codec.decode_raw(raw)[:, 0, 480:], wave, rtol=0, atol=0)


def test_blockwise_decode_with_the_measured_context_and_lookahead(codec):
    c, r = codec.decode_context, codec.decode_lookahead
    assert r >= 1  # the vocoder's convolutions are centred
    latents = torch.randn(1, c + 3 + r, 8, generator=torch.Generator().manual_seed(1))
    k = c + 2  # the block is latent k; decoding stops after it, as when streaming
    upto = codec.decode(latents[:, :k + 1])[..., -640:]
    exact = codec.decode(latents[:, k - c:k + 1])[..., -640:]
    # the causal VAE decoder's dependence fades over its reach (28 latents here; float32 rounding from ~20 on)
    half = codec.decode(latents[:, k - c // 2:k + 1])[..., -640:]
    error = (exact - upto).abs().max()
    assert error <= 1e-5 and (half - upto).abs().max() > 10 * error
    final = codec.decode(latents)[..., 640 * k:640 * (k + 1)]
    torch.testing.assert_close(codec.decode(latents[:, :k + 1 + r])[..., 640 * k:640 * (k + 1)], final,
                               rtol=0, atol=1e-5)
    one_short = codec.decode(latents[:, :k + r])[..., 640 * k:640 * (k + 1)]
    assert (one_short - final).abs().max() > 10 * error  # the block changes until r more latents exist


def test_other_sample_rate_and_bfloat16(ltx2_root):
    codec = LTX2AudioCodec(ltx2_root, n_fft=N_FFT, sample_rate=24000, dtype="bfloat16")
    assert codec.audio_vae.dtype == torch.bfloat16 and codec.lead_samples == 720
    latents = codec.encode(torch.rand(1, 1, 960 * 4) * 2 - 1)
    assert latents.shape == (1, 4, 8) and latents.dtype == torch.float32
    assert codec.decode(latents).shape == (1, 1, 960 * 4)


def test_bandwidth_extension_vocoder(tmp_path):
    write_tiny_audio(tmp_path, bwe=True)
    codec = LTX2AudioCodec(tmp_path, n_fft=N_FFT)
    assert type(codec.vocoder) is LTX2VocoderWithBWE
    assert codec.decode(torch.randn(1, 4, 8)).shape == (1, 1, 640 * 4)
    reach = codec.decode_reach  # measurable although the saved STFT bases are untrained zeros
    assert reach.context >= 1 and reach.lookahead >= 1


def test_missing_vocoder_is_one_line_naming_what_to_download(tmp_path):
    AutoencoderKLLTX2Audio(**TINY_AUDIO_VAE).save_pretrained(tmp_path / "audio_vae")
    with pytest.raises(MissingInputError) as error:
        LTX2AudioCodec(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "Lightricks/LTX-2" in message and "vocoder" in message


def test_too_short_for_the_mel_window_says_so(ltx2_root):
    codec = LTX2AudioCodec(ltx2_root)  # LTX-2's 1024-sample window: reflect padding needs > 512 samples
    with pytest.raises(ValueError, match="at least 2 latents"):
        codec.encode(torch.zeros(1, 1, 640))
    assert codec.encode(torch.zeros(1, 1, 1280)).shape == (1, 2, 8)


def test_the_latents_recipe_builds_both_codecs_from_one_folder(tmp_path):
    write_tiny_vae(tmp_path, decoder_causal=False)
    write_tiny_audio(tmp_path)
    tree = yaml.safe_load(RECIPE.read_text())["model"]["init_args"]["codec"]
    for part in ("video", "audio"):
        tree["init_args"][part]["init_args"]["pretrained"] = str(tmp_path)
    tree["init_args"]["video"]["init_args"]["size"] = list(SIZE)
    codec = instantiate(tree, AVCodec)
    assert isinstance(codec.video, LTX2VideoCodec) and isinstance(codec.audio, LTX2AudioCodec)
    assert codec.video.vae.dtype == torch.bfloat16 and codec.audio.vocoder.dtype == torch.bfloat16
    assert (codec.video.latent_rate, codec.audio.latent_rate, codec.video.latent_size) == (3, 25, (2, 3))
    rebuilt = instantiate(codec_config(codec), AVCodec)  # the record exports keep (pretrained path included)
    latents = torch.randn(1, 3, 8)
    torch.testing.assert_close(rebuilt.audio.decode(latents), codec.audio.decode(latents), rtol=0, atol=0)


def test_the_stream_decoder_gives_each_block_as_decoding_everything_up_to_it(tmp_path):
    """IncrementalDecoder keeps each codec's decode_context: every streamed block equals the same span of
    decoding all latents up to the block's end (the most a stream can know; the decoders are not causal)."""
    from omniforcing.inference.clips import to_uint8_video
    from omniforcing.inference.stream_decoding import IncrementalDecoder
    from omniforcing.types import AVLatents

    write_tiny_vae(tmp_path, decoder_causal=False)
    write_tiny_audio(tmp_path)
    codec = AVCodec(LTX2VideoCodec(tmp_path, size=SIZE), LTX2AudioCodec(tmp_path, n_fft=N_FFT))
    generator = torch.Generator().manual_seed(2)
    video, audio = torch.randn(1, 13, 8, 2, 3, generator=generator), torch.randn(1, 101, 8, generator=generator)
    stream = IncrementalDecoder(codec)
    assert stream.video_context == codec.video.decode_context and stream.audio_context == codec.audio.decode_context
    for v_end, a_end in ((4, 26), (7, 51), (10, 76), (13, 101)):  # the lead + 1 s, then 1 s blocks
        v_count, a_count = (4, 26) if v_end == 4 else (3, 25)
        frames, samples = stream.decode(AVLatents(video[:, v_end - v_count:v_end], audio[:, a_end - a_count:a_end]))
        expected = to_uint8_video(codec.video.decode(video[:, :v_end]))[:, -frames.shape[1]:]
        assert (frames.int() - expected.int()).abs().max() <= 1  # float rounding may flip one uint8 step
        expected_audio = codec.audio.decode(audio[:, :a_end])[:, 0, -640 * a_count:]
        torch.testing.assert_close(samples, expected_audio, rtol=0, atol=1e-5)
