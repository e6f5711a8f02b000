"""The cached block generator: per-modality schedules, guidance over two caches, drawn-before-step noise."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.sampling.blocks import (
    BlockGenerator,
    block_noise,
    block_shape,
    block_step,
    commit_block,
    denoise_block,
)
from omniforcing.sampling.few_step import draw_renoise
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes
from sampling_networks import tiny_network


class RecordingNetwork(torch.nn.Module):
    """Wraps a backbone and records the flow times of every call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls: list[tuple[float | None, float | None, bool]] = []

    def forward(self, video, audio, t_video, t_audio, text, **kwargs):
        self.calls.append((None if t_video is None else round(float(t_video[0, 0]), 4),
                           None if t_audio is None else round(float(t_audio[0, 0]), 4), kwargs.get("commit", False)))
        return self.network(video, audio, t_video, t_audio, text, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.network, name)


def _noise(network, block: int, seed: int):
    return block_noise(block_shape(network, block, (4, 2, 2), (3,)), 1, torch.Generator().manual_seed(seed),
                       torch.device("cpu"))


@torch.no_grad()
def test_finished_modality_is_held_clean_at_time_zero():
    network = RecordingNetwork(tiny_network(causal=True))
    denoiser = GuidedDenoiser(network, network.encode_text(["a"]), cache=network.new_cache(1))
    commit_block(denoiser.branches, 0, _noise(network, 0, 0))
    noise = _noise(network, 1, 1)
    times = BlockTimes.of([1.0, 0.75, 0.25], [1.0])
    network.calls.clear()
    x0 = denoise_block(denoiser, 1, noise, draw_renoise(noise, times, torch.Generator().manual_seed(2)), times)
    assert network.calls == [(1.0, 1.0, False), (0.75, 0.0, False), (0.25, 0.0, False)]
    # audio finished after its single step: the same as a one-step schedule for both modalities
    one_step = denoise_block(denoiser, 1, noise, (), BlockTimes.of([1.0]))
    assert torch.equal(x0.audio, one_step.audio) and not torch.equal(x0.video, one_step.video)


@torch.no_grad()
def test_guidance_combines_two_cached_branches_and_commits_to_both():
    network = tiny_network(causal=True)
    text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    caches = [network.new_cache(1) for _ in range(4)]
    prefix = _noise(network, 0, 0)
    guided = GuidedDenoiser(network, text, null, 2.0, 4.0, cache=caches[0], null_cache=caches[1])
    commit_block(guided.branches, 0, prefix)
    commit_block(GuidedDenoiser(network, text, cache=caches[2]).branches, 0, prefix)
    commit_block(GuidedDenoiser(network, null, cache=caches[3]).branches, 0, prefix)
    assert [c.next_block for c in caches] == [1, 1, 1, 1]
    noise = _noise(network, 1, 1)
    out = denoise_block(guided, 1, noise, (), BlockTimes.of([1.0]))
    ones = torch.ones(1, noise.video.shape[1]), torch.ones(1, noise.audio.shape[1])
    cond = network(noise.video, noise.audio, *ones, text, cache=caches[2], block=1)
    uncond = network(noise.video, noise.audio, *ones, null, cache=caches[3], block=1)
    torch.testing.assert_close(out.video, noise.video - classifier_free_guidance(cond[0], uncond[0], 2.0))
    torch.testing.assert_close(out.audio, noise.audio - classifier_free_guidance(cond[1], uncond[1], 4.0))


@torch.no_grad()
def test_block_generator_draws_everything_before_the_step_in_the_loops_order():
    """The step itself draws nothing: replaying one block from its draws on a restored cache is exact."""
    network = tiny_network(causal=True, step_size_conditioning=True)
    denoiser = GuidedDenoiser(network, network.encode_text(["a"]), cache=network.new_cache(1))
    times = BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5])
    blocks = BlockGenerator(denoiser, times, (4, 2, 2), (3,), step_size=torch.full((1,), 0.25), context_time=0.1)
    generator = torch.Generator().manual_seed(0)
    blocks(0, generator)
    state = denoiser.cond.cache.snapshot()
    draws = blocks.draw(1, generator)
    assert [(r.video is not None, r.audio is not None) for r in draws.renoise] == [(True, True), (True, False)]
    assert draws.context is not None and draws.context.video.shape == draws.noise.video.shape
    first = block_step(denoiser, 1, draws, times, blocks.step_size, blocks.context_time)
    denoiser.cond.cache.restore(state)
    again = block_step(denoiser, 1, draws, times, blocks.step_size, blocks.context_time)
    assert torch.equal(first.video, again.video) and torch.equal(first.audio, again.audio)
    assert denoiser.cond.cache.next_block == 2


class HostReads(TorchDispatchMode):
    """Records every operation that reads a tensor value back to the host (``.item()``, ``int(t)``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def test_block_step_reads_nothing_back_to_the_host(monkeypatch):
    """No ``.item()``/``.tolist()`` inside a block step (guided, context noise, rolling window, step size), before
    and after the window fills: on CUDA each would be a host synchronisation."""
    network = tiny_network(causal=True, num_audio_sinks=2, step_size_conditioning=True)
    text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    denoiser = GuidedDenoiser(network, text, null, 2.0, 3.0, cache=network.new_cache(1, window_seconds=2),
                              null_cache=network.new_cache(1, window_seconds=2))
    times = BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5])
    blocks = BlockGenerator(denoiser, times, (4, 2, 2), (3,), step_size=torch.full((1,), 0.25), context_time=0.1)
    generator = torch.Generator().manual_seed(0)
    tolist = torch.Tensor.tolist

    def refuse(*args):
        raise AssertionError("tolist() inside a block step")

    for block in range(4):
        draws = blocks.draw(block, generator)
        monkeypatch.setattr(torch.Tensor, "tolist", refuse)
        with HostReads() as reads:
            block_step(denoiser, block, draws, times, blocks.step_size, blocks.context_time)
        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        assert reads.reads == [], (block, reads.reads)
    with HostReads() as reads:  # the check itself sees a read
        torch.ones(1).item()
    assert reads.reads


def test_block_checks():
    network = tiny_network(causal=True)
    text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    noise = _noise(network, 0, 0)
    guided = GuidedDenoiser(network, text, null, 2.0, 1.0, cache=network.new_cache(1), null_cache=network.new_cache(1))
    with pytest.raises(ValueError, match="guidance"):
        denoise_block(guided, 0, noise, (), BlockTimes.of([1.0]), exit_step=0)
    with pytest.raises(ValueError, match="second cache"):
        GuidedDenoiser(network, text, null, 2.0, 1.0, cache=network.new_cache(1))
    with pytest.raises(ValueError, match="context noise"):
        commit_block(guided.branches, 0, noise, context_time=0.5)
