"""The block-loop primitives' per-modality schedules and guidance (used by the streaming engine)."""

from __future__ import annotations

import pytest
import torch
from conftest import patch_linear_codec

from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.inference.rollout import BlockGuidance, block_noise, block_shape, commit_block, denoise_block


class RecordingNetwork(torch.nn.Module):
    """Wraps a backbone and records the flow times of every call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls: list[tuple[float | None, float | None, bool]] = []

    def forward(self, video, audio, t_video, t_audio, text, **kwargs):
        self.calls.append((None if t_video is None else float(t_video[0, 0]),
                           None if t_audio is None else float(t_audio[0, 0]), kwargs["commit"]))
        return self.network(video, audio, t_video, t_audio, text, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.network, name)


def _block(network, codec, generator):
    shape = block_shape(network, 1, (codec.video.latent_channels, *codec.video.latent_size),
                        (codec.audio.latent_channels,))
    return block_noise(shape, 1, generator, torch.device("cpu"))


@torch.no_grad()
def test_finished_modality_is_held_clean_at_time_zero(make_student):
    codec = patch_linear_codec()
    network = RecordingNetwork(make_student(codec))
    text = network.encode_text(["a"])
    cache = network.new_cache(1)
    commit_block(network, text, cache, 0, _block(network, codec, torch.Generator().manual_seed(0)).map(
        lambda m: m[:, :1]))
    noise = _block(network, codec, torch.Generator().manual_seed(1))
    network.calls.clear()
    x0 = denoise_block(network, text, cache, 1, noise, [1.0, 0.75, 0.25], audio_times=[1.0],
                       generator=torch.Generator().manual_seed(2))
    assert network.calls == [(1.0, 1.0, False), (0.75, 0.0, False), (0.25, 0.0, False)]
    # audio finished after its single step: the same as a one-step schedule for both modalities
    one_step = denoise_block(network, text, cache, 1, noise, [1.0], generator=torch.Generator().manual_seed(2))
    assert torch.equal(x0.audio, one_step.audio) and not torch.equal(x0.video, one_step.video)


@torch.no_grad()
def test_guidance_combines_two_cached_branches(make_student):
    codec = patch_linear_codec()
    network = make_student(codec)
    text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    caches = [network.new_cache(1) for _ in range(4)]
    prefix = _block(network, codec, torch.Generator().manual_seed(0)).map(lambda m: m[:, :1])
    guidance = BlockGuidance(null, caches[1], video_scale=2.0, audio_scale=4.0)
    commit_block(network, text, caches[0], 0, prefix, guidance=guidance)
    commit_block(network, text, caches[2], 0, prefix)
    commit_block(network, null, caches[3], 0, prefix)
    noise = _block(network, codec, torch.Generator().manual_seed(1))
    guided = denoise_block(network, text, caches[0], 1, noise, [1.0], guidance=guidance)
    ones = torch.ones(1, noise.video.shape[1]), torch.ones(1, noise.audio.shape[1])
    cond = network(noise.video, noise.audio, *ones, text, cache=caches[2], block=1)
    uncond = network(noise.video, noise.audio, *ones, null, cache=caches[3], block=1)
    torch.testing.assert_close(guided.video, noise.video - classifier_free_guidance(cond[0], uncond[0], 2.0))
    torch.testing.assert_close(guided.audio, noise.audio - classifier_free_guidance(cond[1], uncond[1], 4.0))


def test_schedules_are_checked(make_student):
    codec = patch_linear_codec()
    network = make_student(codec)
    text = network.encode_text(["a"])
    noise = block_noise(block_shape(network, 0, (384, 2, 2), (4,)), 1, None, torch.device("cpu"))
    with pytest.raises(ValueError, match="decreasing"):
        denoise_block(network, text, network.new_cache(1), 0, noise, [1.0, 0.5], audio_times=[0.5, 0.5])
    with pytest.raises(ValueError, match="grad_step"):
        denoise_block(network, text, network.new_cache(1), 0, noise, [1.0, 0.5], audio_times=[1.0], grad_step=0)
