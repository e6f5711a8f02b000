"""The streaming block step's hot path (issue 12.2), checked on the whole step (every denoising forward on both
CFG branches, then the commit), not just raw forwards:

- no host synchronisation: no tensor -> Python conversion anywhere inside it (the CPU stand-in of
  ``torch.cuda.set_sync_debug_mode("error")``, which the gpu-marked test applies on CUDA);
- no random draws inside it (the noise comes in drawn, so a replayed graph gives the seed's numbers);
- no tensors built from Python values per call: the only tensors a steady-state step constructs are its
  block's token geometry (RoPE tables and block ids; positions advance every block), made once per block and
  shared by every call of the block, so their count does not grow with the steps or the CFG branches.
"""

from __future__ import annotations

import collections
import contextlib
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omniforcing.sampling.blocks import BlockGenerator, block_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes
from sampling_networks import tiny_network

WINDOW = 2
CONSTRUCTORS = {"full", "arange", "scalar_tensor", "zeros", "ones", "empty", "zeros_like", "ones_like", "full_like",
                "empty_like", "new_full", "new_zeros", "new_ones", "new_empty", "lift_fresh", "lift_fresh_copy",
                "linspace", "logspace", "eye", "empty_strided"}
RANDOM = {"randn", "rand", "randint", "randn_like", "rand_like", "randint_like", "randperm", "normal", "normal_",
          "uniform_", "bernoulli", "bernoulli_", "multinomial", "exponential_"}


class OpCensus(TorchDispatchMode):
    """Counts tensor constructions by where they come from (the block's geometry or elsewhere) and random draws."""

    def __init__(self) -> None:
        super().__init__()
        self.constructed: collections.Counter[str] = collections.Counter()
        self.random = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in CONSTRUCTORS:
            files = [frame.filename for frame in traceback.extract_stack()]
            origin = "geometry" if any(f.endswith("omniforcing/models/geometry.py") for f in files) else "elsewhere"
            self.constructed[origin] += 1
        elif name in RANDOM:
            self.random += 1
        return func(*args, **(kwargs or {}))


def _blocks(times: list[float], guided: bool, prefix_position: str = "absolute", context_time: float = 0.0,
            device: str = "cpu", dtype: torch.dtype = torch.float32) -> BlockGenerator:
    network = tiny_network(causal=True, num_audio_sinks=2, depth=1, step_size_conditioning=True,
                           prefix_position=prefix_position).to(device, dtype)
    text = network.encode_text(["a"])
    null = network.encode_text(["a"], drop=torch.ones(1, dtype=torch.bool)) if guided else None
    denoiser = GuidedDenoiser(network, text, null, 2.0 if guided else 1.0, 3.0 if guided else 1.0,
                              cache=network.new_cache(1, window_seconds=WINDOW),
                              null_cache=network.new_cache(1, window_seconds=WINDOW) if guided else None)
    return BlockGenerator(denoiser, BlockTimes.of(times), (4, 2, 2), (3,),
                          step_size=torch.full((1,), 0.25, device=device), context_time=context_time, dtype=dtype)


def _census_of_steady_blocks(blocks: BlockGenerator, wrap=contextlib.nullcontext) -> list[OpCensus]:
    """Stream until the window is full, then take the census of two block steps (noise drawn before each)."""
    generator = torch.Generator().manual_seed(0)
    censuses = []
    with torch.inference_mode():
        for block in range(WINDOW + 2):
            blocks(block, generator)
        for block in (WINDOW + 2, WINDOW + 3):
            draws = blocks.draw(block, generator)
            census = OpCensus()
            with census, wrap():
                block_step(blocks.denoiser, block, draws, blocks.times, blocks.step_size, blocks.context_time)
            censuses.append(census)
    return censuses


@pytest.mark.parametrize("prefix_position", ["absolute", "relative"])
def test_a_block_step_constructs_only_its_blocks_geometry_once(prefix_position):
    few = _census_of_steady_blocks(_blocks([1.0], guided=False, prefix_position=prefix_position))
    many = _census_of_steady_blocks(_blocks([1.0, 0.75, 0.5, 0.25], guided=True, prefix_position=prefix_position,
                                            context_time=0.25))
    for census in few + many:
        assert census.constructed["elsewhere"] == 0, census.constructed
        assert census.random == 0
        assert census.constructed["geometry"] > 0  # the census sees constructions at all
    # 2 forwards (1 step + commit) against 9 (4 steps x 2 CFG branches + the commit): the geometry is built
    # once per block either way
    assert [c.constructed["geometry"] for c in few] == [c.constructed["geometry"] for c in many]


def test_the_census_sees_a_construction_outside_the_geometry():
    census = OpCensus()
    with census:
        torch.full((2,), 0.5)
        torch.randn(2)
    assert census.constructed["elsewhere"] == 1 and census.random == 1


def test_no_host_synchronisation_inside_a_guided_block_step(no_host_sync):
    for prefix_position in ("absolute", "relative"):
        blocks = _blocks([1.0, 0.75, 0.5, 0.25], guided=True, prefix_position=prefix_position, context_time=0.25)
        _census_of_steady_blocks(blocks, wrap=no_host_sync)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_synchronisation_inside_a_guided_block_step_on_cuda(cuda_sync_errors):
    blocks = _blocks([1.0, 0.75, 0.5, 0.25], guided=True, prefix_position="relative", context_time=0.25,
                     device="cuda", dtype=torch.bfloat16)
    _census_of_steady_blocks(blocks, wrap=cuda_sync_errors)
