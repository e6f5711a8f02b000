"""The LTX-2 adapter under the sampling layer: a streamed, guided 2-block generation runs; unguided one-step
streaming equals the same sampler written with block-causal full-sequence forwards."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omniforcing.sampling.blocks import BlockGenerator, block_step
from omniforcing.sampling.capture import capture_block_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes


@torch.no_grad()
def test_guided_block_generator_streams_two_blocks(make_backbone):
    model = make_backbone(num_audio_sinks=2, causal=True, step_size_conditioning=True)
    text = model.encode_text(["a"])
    null = model.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    denoiser = GuidedDenoiser(model, text, null, 2.0, 3.0, cache=model.new_cache(1, window_seconds=2),
                              null_cache=model.new_cache(1, window_seconds=2))
    blocks = BlockGenerator(denoiser, BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5]), (8, 2, 3), (8,),
                            step_size=torch.full((1,), 0.25), context_time=0.1)
    generator = torch.Generator().manual_seed(0)
    out = [blocks(k, generator) for k in range(2)]
    assert [tuple(o.video.shape) for o in out] == [(1, 1, 8, 2, 3), (1, 3, 8, 2, 3)]
    assert [tuple(o.audio.shape) for o in out] == [(1, 1, 8), (1, 25, 8)]
    assert all(torch.isfinite(o.video).all() and torch.isfinite(o.audio).all() for o in out)
    assert denoiser.cond.cache.next_block == 2 and denoiser.uncond.cache.next_block == 2


@torch.no_grad()
def test_streamed_one_step_sampling_equals_block_causal_full_forwards(make_backbone):
    model = make_backbone(num_audio_sinks=2, causal=True)
    text = model.encode_text(["a", "b"])
    blocks = BlockGenerator(GuidedDenoiser(model, text, cache=model.new_cache(2)), BlockTimes.of([1.0]),
                            (8, 2, 3), (8,))
    generator = torch.Generator().manual_seed(0)
    draws = [blocks.draw(k, torch.Generator().manual_seed(k)) for k in range(3)]
    streamed = []
    for k, draw in enumerate(draws):
        blocks.draw = lambda block, gen, draw=draw: draw  # the same noise for both samplers
        streamed.append(blocks(k, generator))
    # the same sampler with full forwards: block k denoised at t = 1 after the clean blocks < k at t = 0
    video, audio = torch.empty(2, 0, 8, 2, 3), torch.empty(2, 0, 8)
    for k, draw in enumerate(draws):
        video, audio = torch.cat([video, draw.noise.video], 1), torch.cat([audio, draw.noise.audio], 1)
        nv, na = draw.noise.video.shape[1], draw.noise.audio.shape[1]
        t_video = torch.cat([torch.zeros(2, video.shape[1] - nv), torch.ones(2, nv)], 1)
        t_audio = torch.cat([torch.zeros(2, audio.shape[1] - na), torch.ones(2, na)], 1)
        v_video, v_audio = model(video, audio, t_video, t_audio, text)
        video = torch.cat([video[:, :-nv], video[:, -nv:] - v_video[:, -nv:]], 1)
        audio = torch.cat([audio[:, :-na], audio[:, -na:] - v_audio[:, -na:]], 1)
        assert (video[:, -nv:] - streamed[k].video).abs().max() <= 1e-5
        assert (audio[:, -na:] - streamed[k].audio).abs().max() <= 1e-5


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
def test_streamed_block_steps_read_nothing_back_to_the_host(make_backbone):
    """A guided block step with a rolling window makes no host synchronisation (before and after the window
    fills): on CUDA each read would stall the stream."""
    model = make_backbone(num_audio_sinks=2, causal=True)
    text, null = model.encode_text(["a"]), model.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    denoiser = GuidedDenoiser(model, text, null, 2.0, 3.0, cache=model.new_cache(1, window_seconds=2),
                              null_cache=model.new_cache(1, window_seconds=2))
    times = BlockTimes.of([1.0, 0.5])
    blocks = BlockGenerator(denoiser, times, (8, 2, 3), (8,))
    generator = torch.Generator().manual_seed(0)
    for block in range(4):
        draws = blocks.draw(block, generator)
        with HostReads() as reads:
            block_step(denoiser, block, draws, times)
        assert reads.reads == [], (block, reads.reads)


@pytest.mark.slow
def test_captured_stream_equals_eager_and_stops_compiling_once_the_window_is_full(make_backbone):
    """omniforcing.sampling.capture on the adapter (``aot_eager``: dynamo traces every block of every forward,
    guards included): the guided stream equals eager, and after the 2-s window fills nothing recompiles."""
    from omniforcing.models.ltx2 import LTX2Architecture

    def stream(step, recompile_after: int | None = None):
        network = make_backbone(num_audio_sinks=2, causal=True, architecture=LTX2Architecture(num_layers=1))
        text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
        denoiser = GuidedDenoiser(network, text, null, 2.0, 3.0, cache=network.new_cache(1, window_seconds=2),
                                  null_cache=network.new_cache(1, window_seconds=2))
        blocks = BlockGenerator(denoiser, BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5]), (8, 2, 3), (8,), step=step)
        generator, outputs = torch.Generator().manual_seed(0), []
        with torch.inference_mode():
            for block in range(6):
                torch._dynamo.config.error_on_recompile = recompile_after is not None and block >= recompile_after
                try:
                    outputs.append(blocks(block, generator))
                finally:
                    torch._dynamo.config.error_on_recompile = False
        return outputs

    torch._dynamo.reset()
    eager = stream(block_step)
    captured = stream(capture_block_step(block_step, backend="aot_eager"), recompile_after=3)
    for got, want in zip(captured, eager, strict=True):
        torch.testing.assert_close(got.video, want.video, rtol=0, atol=1e-4)
        torch.testing.assert_close(got.audio, want.audio, rtol=0, atol=1e-4)
