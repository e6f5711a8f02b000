"""Block-by-block decoding equals whole-clip decoding for causal codecs, with bounded history."""

from __future__ import annotations

import pytest
import torch

from omniforcing.codecs import AVCodec, CausalVideoAutoencoder, MelAudioCodec, MelAutoencoder, PatchVideoCodec
from omniforcing.inference.clips import to_uint8_video
from omniforcing.inference.stream_decoding import IncrementalDecoder
from omniforcing.types import AVLatents


def _perturbed(codec: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in codec.parameters():  # zero-initialised residual branches would hide the context
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return codec.eval()


@pytest.mark.parametrize("context", [1, 2])
@pytest.mark.parametrize("sizes", [(1, 3, 3, 3), (4, 3, 3)])  # v1 and v2 block layouts
def test_learned_video_decoder_streams_exactly(context, sizes):
    video = _perturbed(CausalVideoAutoencoder(size=16, spatial_factor=4, widths=(8, 8), group_width=16,
                                              context_latents=context))
    codec = AVCodec(video, MelAudioCodec(n_mels=8, griffin_lim_iters=1, nnls_iters=1))
    latents = torch.randn(1, sum(sizes), video.latent_channels, 4, 4)
    decoder = IncrementalDecoder(codec)
    blocks, start = [], 0
    for size in sizes:
        blocks.append(decoder.decode(AVLatents(latents[:, start:start + size], None))[0])
        start += size
        assert decoder.history_latents()[0] <= context
    with torch.no_grad():
        whole = to_uint8_video(video.decode(latents))
    assert torch.equal(torch.cat(blocks, 1), whole)


def test_patch_video_decoder_streams_exactly():
    video = PatchVideoCodec(size=8, patch_size=4)
    decoder = IncrementalDecoder(AVCodec(video, MelAudioCodec(n_mels=8)))
    latents = torch.randn(1, 7, 384, 2, 2)
    parts = [decoder.decode(AVLatents(latents[:, a:b], None))[0] for a, b in ((0, 1), (1, 4), (4, 7))]
    assert decoder.history_latents() == (1, 0)
    assert torch.equal(torch.cat(parts, 1), to_uint8_video(video.decode(latents)))


def test_learned_audio_decoder_keeps_its_causal_context():
    audio = _perturbed(MelAutoencoder(mel=MelAudioCodec(n_mels=8, griffin_lim_iters=2, nnls_iters=2),
                                      latent_channels=4, hidden_channels=16, context_latents=2))
    decoder = IncrementalDecoder(AVCodec(PatchVideoCodec(size=8, patch_size=4), audio))
    latents = torch.randn(1, 51, 4)
    with torch.no_grad():
        mel_whole = audio.decoder(latents)
        mel_tail = audio.decoder(latents[:, 24:])[:, 2:]
    torch.testing.assert_close(mel_tail, mel_whole[:, 26:])  # two latents of context reproduce the tail exactly
    parts = [decoder.decode(AVLatents(None, latents[:, a:b]))[1] for a, b in ((0, 1), (1, 26), (26, 51))]
    assert decoder.audio_context == 2 and decoder.history_latents() == (0, 2)
    assert [p.shape[1] for p in parts] == [640, 16000, 16000]
    assert all(p.abs().max() <= 1 for p in parts)


def test_invalid_context_is_rejected():
    with pytest.raises(ValueError, match="video_context"):
        IncrementalDecoder(AVCodec(PatchVideoCodec(size=8, patch_size=4), MelAudioCodec()), video_context=0)
