"""A user's codec (defined here, chosen by class path from a config dict) streams and saves with no change to the
package: stream decoding reads the codec's declared ``decode_context``, saving reads its recorded init args."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor

from omniforcing.codecs import AVCodec, build_codec, load_codec, save_codec
from omniforcing.codecs.base import AudioCodec, VideoCodec
from omniforcing.errors import InvalidInputError
from omniforcing.inference.clips import to_uint8_video
from omniforcing.inference.export import instantiate
from omniforcing.inference.stream_decoding import UNKNOWN_CODEC_CONTEXT, IncrementalDecoder
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.types import AVLatents


class MovingAverageVideoCodec(VideoCodec):
    """Test-only video codec: latent ``i`` decodes from the mean of latents ``i - context .. i + lookahead``
    (causal with ``lookahead=0``).

    Frames are ``(B, T, 3, size, size)``; a latent is the mean colour of its frame group ``(B, Tv, 3, 1, 1)``.
    """

    def __init__(self, size: int = 4, context: int = 2, declare_context: bool = True, lookahead: int = 0) -> None:
        super().__init__()
        self.size = (size, size)
        self.latent_channels, self.latent_size = 3, (1, 1)
        self.context = context
        self.decode_lookahead = lookahead
        if declare_context:
            self.decode_context = context

    def encode(self, video: Tensor) -> Tensor:
        lead = video[:, :1].mean(dim=(1, 3, 4))[:, None]  # (B, 1, 3)
        rest = video[:, 1:].unflatten(1, (-1, self.temporal_stride)).mean(dim=(2, 4, 5))  # (B, Tv - 1, 3)
        return torch.cat([lead, rest], 1)[..., None, None]

    def decode(self, latents: Tensor) -> Tensor:
        steps = torch.arange(latents.shape[1])
        mixed = torch.stack([latents[:, (steps - lag).clamp(0, latents.shape[1] - 1)]
                             for lag in range(-self.decode_lookahead, self.context + 1)]).mean(0)
        ramp = torch.linspace(0.25, 1.0, self.temporal_stride)[None, None, :, None, None, None]
        groups = torch.tanh(mixed[:, :, None] * ramp).expand(-1, -1, -1, -1, *self.size)  # (B, N, S, 3, H, W)
        return torch.cat([groups[:, 0, -1:], groups[:, 1:].flatten(1, 2)], 1)


class CausalLinearAudioCodec(AudioCodec):
    """Test-only audio codec: each 40 ms latent decodes by a fixed projection of itself and the one before."""

    decode_context = 1

    def __init__(self, channels: int = 4, sample_rate: int = 1000) -> None:
        super().__init__()
        self.sample_rate, self.latent_channels = sample_rate, channels
        basis = torch.randn(2, channels, self.samples_per_latent, generator=torch.Generator().manual_seed(5))
        self.register_buffer("basis", basis * 0.1)

    def encode(self, audio: Tensor) -> Tensor:
        return audio[:, 0].unflatten(1, (-1, self.samples_per_latent))[..., : self.latent_channels]

    def decode(self, latents: Tensor) -> Tensor:
        previous = torch.cat([latents[:, :1], latents[:, :-1]], 1)
        return (latents @ self.basis[0] + previous @ self.basis[1]).flatten(1)[:, None].tanh()


class CentredLinearAudioCodec(CausalLinearAudioCodec):
    """Test-only audio codec that is not causal: each latent decodes with the one before and the one after."""

    decode_lookahead = 1

    def decode(self, latents: Tensor) -> Tensor:
        following = torch.cat([latents[:, 1:], latents[:, -1:]], 1)
        return (super().decode(latents)[:, 0].unflatten(1, (-1, self.samples_per_latent))
                + following @ self.basis[1]).flatten(1)[:, None].tanh()


def codec_spec(**video_args) -> dict:
    return {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
        "video": {"class_path": f"{__name__}.MovingAverageVideoCodec", "init_args": video_args},
        "audio": {"class_path": f"{__name__}.CausalLinearAudioCodec", "init_args": {"channels": 4}}}}


def stream(codec: AVCodec, latents: AVLatents, bounds: list[tuple[int, int]], audio_bounds: list[tuple[int, int]],
           **contexts) -> tuple[Tensor, Tensor, IncrementalDecoder]:
    decoder = IncrementalDecoder(codec, **contexts)
    parts = [decoder.decode(AVLatents(latents.video[:, a:b], latents.audio[:, c:d]))
             for (a, b), (c, d) in zip(bounds, audio_bounds, strict=True)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), decoder


def test_a_codec_built_from_a_spec_streams_exactly_with_its_declared_context():
    codec = build_codec(codec_spec(context=2)).eval()
    assert isinstance(codec.video, MovingAverageVideoCodec)
    latents = AVLatents(torch.randn(1, 10, 3, 1, 1), torch.randn(1, 76, 4))
    bounds, audio_bounds = [(0, 1), (1, 4), (4, 7), (7, 10)], [(0, 1), (1, 26), (26, 51), (51, 76)]
    video, audio, decoder = stream(codec, latents, bounds, audio_bounds)
    assert (decoder.video_context, decoder.audio_context) == (2, 1)
    assert decoder.history_latents() == (2, 1)
    with torch.no_grad():
        assert torch.equal(video, to_uint8_video(codec.video.decode(latents.video)))
        torch.testing.assert_close(audio, codec.audio.decode(latents.audio)[:, 0].clamp(-1, 1))
    # the declared context is what makes it exact: one latent less of history changes the frames
    short, _, _ = stream(codec, latents, bounds, audio_bounds, video_context=1)
    assert not torch.equal(short, video)


def test_a_codec_that_declares_no_context_keeps_a_generous_history(caplog):
    codec = build_codec(codec_spec(context=2, declare_context=False)).eval()
    with caplog.at_level(logging.WARNING):
        decoder = IncrementalDecoder(codec)
    assert decoder.video_context == UNKNOWN_CODEC_CONTEXT
    assert "decoder context of MovingAverageVideoCodec is unknown" in caplog.text


def test_the_recorded_init_args_save_and_rebuild_the_users_codec(tmp_path):
    video = MovingAverageVideoCodec(size=2, context=3)
    assert video.init_args == {"size": 2, "context": 3, "declare_context": True, "lookahead": 0}
    path = save_codec(AVCodec(video, CausalLinearAudioCodec(channels=2)), tmp_path / "codec.safetensors")
    rebuilt = load_codec(path)
    assert rebuilt.video.context == 3 and rebuilt.audio.latent_channels == 2
    torch.testing.assert_close(rebuilt.audio.basis, CausalLinearAudioCodec(channels=2).basis)


def test_exports_refuse_codec_classes_outside_trusted_packages_in_one_line(monkeypatch):
    monkeypatch.delenv("OMNIFORCING_TRUSTED_PACKAGES", raising=False)
    with pytest.raises(InvalidInputError, match="refusing to instantiate") as error:
        instantiate(codec_spec(), AVCodec)
    assert "\n" not in str(error.value)
    monkeypatch.setenv("OMNIFORCING_TRUSTED_PACKAGES", __name__.split(".")[0])
    assert isinstance(instantiate(codec_spec(), AVCodec).video, MovingAverageVideoCodec)


def test_an_exact_stream_holds_blocks_back_by_the_lookahead_and_equals_whole_clip_decoding():
    """Decoders that read ahead (video: 2 latents, audio: 1) change a block's end once later latents exist; an
    exact decoder holds each block until they do, and its blocks then equal decoding the whole clip."""
    codec = AVCodec(MovingAverageVideoCodec(context=1, lookahead=2), CentredLinearAudioCodec()).eval()
    latents = AVLatents(torch.randn(1, 10, 3, 1, 1), torch.randn(1, 76, 4))
    bounds, audio_bounds = [(0, 1), (1, 4), (4, 7), (7, 10)], [(0, 1), (1, 26), (26, 51), (51, 76)]
    decoder = IncrementalDecoder(codec, exact=True)
    assert (decoder.video_lookahead, decoder.audio_lookahead) == (2, 1)
    ready = [decoder.push(AVLatents(latents.video[:, a:b], latents.audio[:, c:d]))
             for (a, b), (c, d) in zip(bounds, audio_bounds, strict=True)]
    assert [len(media) for media in ready] == [0, 1, 1, 1]  # each block waits for the next one
    media = [pair for pairs in ready for pair in pairs] + decoder.finish()
    assert len(media) == 4 and decoder.finish() == []
    video, audio = torch.cat([m[0] for m in media], 1), torch.cat([m[1] for m in media], 1)
    with torch.no_grad():
        assert torch.equal(video, to_uint8_video(codec.video.decode(latents.video)))
        torch.testing.assert_close(audio, codec.audio.decode(latents.audio)[:, 0].clamp(-1, 1))
    # decoding on arrival is what an exact decoder avoids: the blocks' ends differ from the whole clip
    eager_video, eager_audio, _ = stream(codec, latents, bounds, audio_bounds)
    assert not torch.equal(eager_video, video)
    assert not torch.allclose(eager_audio, audio)
    with pytest.raises(ValueError, match="push"):
        decoder.decode(AVLatents(latents.video[:, :3], latents.audio[:, :25]))


def test_exact_decoding_changes_nothing_for_causal_codecs():
    codec = build_codec(codec_spec(context=2)).eval()
    latents = AVLatents(torch.randn(1, 7, 3, 1, 1), torch.randn(1, 51, 4))
    decoder = IncrementalDecoder(codec, exact=True)
    pushed = [decoder.push(AVLatents(latents.video[:, a:b], latents.audio[:, c:d]))
              for (a, b), (c, d) in (((0, 1), (0, 1)), ((1, 4), (1, 26)), ((4, 7), (26, 51)))]
    assert [len(media) for media in pushed] == [1, 1, 1] and decoder.finish() == []
    video, _, _ = stream(codec, latents, [(0, 1), (1, 4), (4, 7)], [(0, 1), (1, 26), (26, 51)])
    assert torch.equal(torch.cat([m[0][0] for m in pushed], 1), video)


def test_the_streaming_engine_delivers_every_block_exactly_with_exact_decode(make_student):
    """With ``exact_decode`` the engine yields the same blocks, in order, each once its lookahead exists, and
    the streamed media equal decoding the stream's latents at once."""
    codec = AVCodec(MovingAverageVideoCodec(context=1, lookahead=2), CentredLinearAudioCodec()).eval()
    network = make_student(codec)
    settings = StreamingSettings(video_times=(1.0, 0.5), exact_decode=True)
    blocks = list(StreamingGenerator(network, codec, settings).stream("a red circle", 3, seed=2))
    assert [b.index for b in blocks] == [0, 1, 2, 3]
    latents = AVLatents(torch.cat([b.latents.video for b in blocks], 1),
                        torch.cat([b.latents.audio for b in blocks], 1))
    with torch.no_grad():
        assert torch.equal(torch.cat([b.video for b in blocks]), to_uint8_video(codec.video.decode(latents.video))[0])
        torch.testing.assert_close(torch.cat([b.audio for b in blocks]),
                                   codec.audio.decode(latents.audio)[0, 0].clamp(-1, 1))
    eager = list(StreamingGenerator(network, codec, StreamingSettings(video_times=(1.0, 0.5))).stream(
        "a red circle", 3, seed=2))
    assert all(torch.equal(a.latents.video, b.latents.video) for a, b in zip(eager, blocks, strict=True))
    assert not torch.equal(torch.cat([b.video for b in eager]), torch.cat([b.video for b in blocks]))
