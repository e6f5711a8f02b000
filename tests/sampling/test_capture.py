"""Captured block steps (omniforcing.sampling.capture) equal eager ones, and stop compiling once the window is full.

Tolerances: float32 on CPU, compiled vs eager: 1e-4 absolute (kernel fusion reorders sums; measured ~4e-6).
bf16 on CUDA (device check): 5e-2 absolute on latents of unit scale (bf16 has 8 bits of mantissa; fused
attention kernels and CUDA graphs change the summation order).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from omniforcing.sampling.blocks import BlockGenerator, block_step
from omniforcing.sampling.capture import capture_block_step, compile_mode
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes
from sampling_networks import tiny_network

WINDOW = 2
BLOCKS = WINDOW + 4


def _stream(network, step, device: str = "cpu", dtype: torch.dtype = torch.float32, recompile_after: int | None = None,
            context_time: float = 0.0):
    """Guided streaming of ``BLOCKS`` blocks with a rolling window; returns every block's x0.

    With ``recompile_after``, a recompilation after that many blocks is an error. A step-size-conditioned
    network streams with a step size (Mutual Forcing's few-step mode)."""
    text, null = network.encode_text(["a"]), network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool))
    denoiser = GuidedDenoiser(network, text, null, 2.0, 3.0, cache=network.new_cache(1, window_seconds=WINDOW),
                              null_cache=network.new_cache(1, window_seconds=WINDOW))
    step_size = torch.full((1,), 0.25, device=device) if network.step_size_conditioning else None
    blocks = BlockGenerator(denoiser, BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5]), (4, 2, 2), (3,), step=step,
                            dtype=dtype, step_size=step_size, context_time=context_time)
    generator = torch.Generator().manual_seed(0)
    outputs = []
    with torch.inference_mode():
        for block in range(BLOCKS):
            if recompile_after is not None and block == recompile_after:
                torch._dynamo.config.error_on_recompile = True
            try:
                outputs.append(blocks(block, generator))
            finally:
                torch._dynamo.config.error_on_recompile = False
    return outputs


def _assert_close(got, want, atol: float) -> None:
    for g, w in zip(got, want, strict=True):
        for a, b in ((g.video, w.video), (g.audio, w.audio)):
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=atol)


def _captured_equals_eager(backend: str, context_time: float = 0.0, steady_from: int = WINDOW + 1,
                           **network_options) -> None:
    torch._dynamo.reset()
    options = dict(causal=True, num_audio_sinks=2, depth=1, **network_options)
    eager = _stream(tiny_network(**options), block_step, context_time=context_time)
    network = tiny_network(**options)
    captured = _stream(network, capture_block_step(block_step, backend=backend), recompile_after=steady_from,
                       context_time=context_time)
    network.compile_core(False)
    _assert_close(captured, eager, atol=1e-4)


def test_captured_stream_equals_eager_and_stops_compiling_once_the_window_is_full():
    """Dynamo traces every forward of the block step (graph capture, guards) without generating code; after
    the window fills no forward compiles again, also when the pinned prefix moves every block ("relative"
    policy: from block ``WINDOW + 1`` on, one more graph with the prefix's rotation), the network is step-size
    conditioned and blocks are committed at a context time > 0."""
    _captured_equals_eager("aot_eager", context_time=0.25, steady_from=WINDOW + 2, prefix_position="relative",
                           step_size_conditioning=True)


@pytest.mark.slow
def test_captured_plain_stream_equals_eager():
    _captured_equals_eager("aot_eager")


@pytest.mark.slow
def test_inductor_compiled_stream_equals_eager_on_cpu():
    _captured_equals_eager("inductor")


def test_capture_leaves_networks_eager_until_called():
    network = tiny_network(causal=True)
    step = capture_block_step(block_step)
    assert not network.compiled and callable(step)


class RecordingNetwork:
    """Stands in for a backbone on any device: records how capture compiles it."""

    def __init__(self, device: str) -> None:
        self.device, self.calls = torch.device(device), []

    def compile_core(self, enabled=True, mode=None, backend="inductor"):
        self.calls.append((enabled, mode, backend))


@pytest.mark.parametrize(("device", "backend", "want_mode"), [
    ("cuda", "inductor", "reduce-overhead"),  # CUDA graphs over inductor kernels
    ("cpu", "inductor", None),  # no CUDA graphs off a GPU
    ("cuda", "cudagraphs", None),  # the cudagraphs backend takes no mode
    ("cuda", "aot_eager", None),
])
def test_capture_uses_cuda_graphs_exactly_on_cuda(device, backend, want_mode):
    network = RecordingNetwork(device)
    step = capture_block_step(lambda denoiser, block: block, backend=backend)
    denoiser = SimpleNamespace(branches=[SimpleNamespace(network=network)] * 2)
    assert step(denoiser, 7) == 7 and step(denoiser, 8) == 8
    assert network.calls == [(True, want_mode, backend)]  # compiled once, for every later block
    assert compile_mode(torch.device(device)) == ("reduce-overhead" if device == "cuda" else None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_stream_equals_eager_on_cuda():
    """CUDA graphs (``reduce-overhead``) over the ring buffers in bf16, against eager bf16 on the same device."""
    torch._dynamo.reset()
    eager = _stream(tiny_network(causal=True, num_audio_sinks=2).cuda().bfloat16(), block_step, "cuda",
                    torch.bfloat16)
    network = tiny_network(causal=True, num_audio_sinks=2).cuda().bfloat16()
    captured = _stream(network, capture_block_step(block_step), "cuda", torch.bfloat16, recompile_after=WINDOW + 1)
    network.compile_core(False)
    _assert_close(captured, eager, atol=5e-2)
