"""Captured execution of the streaming block step (issue 12.3): ``torch.compile`` + CUDA graphs on CUDA.

:func:`capture_block_step` wraps :func:`omniforcing.sampling.blocks.block_step` (the whole block: every
denoising forward and the commit forward, on every CFG branch, both modalities) so that every backbone forward
it makes runs captured. The unit of capture is one dual-stream layer, not the whole step: each forward's
layers run one compiled layer function shared by every layer of the stack ("regional compilation"), with
``mode="reduce-overhead"`` on CUDA (inductor kernels replayed as CUDA graphs by cudagraph trees, one graph per
layer call). Between the graphs runs host bookkeeping that must run every time and never synchronises: the
embeddings and heads (a few ops), the cache's plan of the block (memoised, so all steps of a block share it),
the block's RoPE tables (computed once per block on the device from Python integers, shared by all its calls),
and the commit's write pointers (:meth:`AVKVCache.advance <omniforcing.models.kv_cache.AVKVCache.advance>`).
The few-step updates between forwards stay eager; their flow-time tensors are made once and reused
(:func:`omniforcing.sampling.schedule.time_tensor`). ``tests/sampling/test_hot_path.py`` takes the census of
a whole steady-state step: no host synchronisation, no random draws, no tensors built per call.

Why graphs per layer and not one per forward or per step: compilation time. A whole base-preset forward traced
in ~15 s a graph on a CPU host and a stream needs several graphs before the window is full (on an H200 machine
the first captured stream of the base student, compiled per forward, did not finish in 130 s); one layer is a
twelfth of that and is compiled once for all layers (4 graphs for a 14-block stream of the base preset,
measured with ``aot_eager``). Why not one graph for the whole block step: the cache's commit is host state
(which slot a block takes, which blocks are visible) that a replayed graph would not update; keeping it outside
the graphs is what lets one set of graphs serve every block once the window is full. The price is one graph
launch per layer and forward (12 x 5 for a 4-step base block with its commit) instead of one per step, against
~19k eager operations per block. Static buffers: the ring storage of the KV cache is preallocated and marked as
a static address (:class:`~omniforcing.models.ring.RingBuffer`), so graphs write the cache in place; per-block
inputs (noise, RoPE tables, slot indices) are copied into the graphs' input buffers by cudagraph trees on each
replay. Once the window is full every forward of a block has the same shapes, so nothing recompiles
(``tests/sampling/test_capture.py`` checks this with ``error_on_recompile``).

On CPU the step runs eager unless capture is asked for explicitly (then ``torch.compile`` without CUDA graphs,
which the tests use to check it against eager). On CUDA hardware: two device checks on an H200 (docs/benchmarks.md)
found ``mark_static_address`` traced inside the compiled region (fixed: storage is allocated on the host side)
and then whole-forward compilation too slow to finish (hence the per-layer unit above); the per-layer capture
has not yet run on a GPU. Its device check is
``tests/sampling/test_capture.py::test_captured_stream_equals_eager_on_cuda``.
"""

from __future__ import annotations

from typing import Any

import torch

from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.blocks import BlockStep, block_step
from omniforcing.sampling.guidance import GuidedDenoiser


def compile_mode(device: torch.device) -> str | None:
    """The ``torch.compile`` mode of captured and compiled forwards: ``"reduce-overhead"`` (inductor kernels
    replayed as CUDA graphs) on CUDA, the default mode elsewhere (no CUDA graphs off a GPU). One rule for the
    streaming student, the teacher's whole-clip forwards in ``generate`` and the bench, so ratios stay fair."""
    return "reduce-overhead" if device.type == "cuda" else None


def capture_block_step(step: BlockStep = block_step, *, mode: str | None = None,
                       backend: str = "inductor") -> BlockStep:
    """``step`` with every backbone forward it makes compiled (and replayed as CUDA graphs on CUDA).

    Args:
        step: the block step (:func:`~omniforcing.sampling.blocks.block_step`'s signature).
        mode: ``torch.compile`` mode; default ``"reduce-overhead"`` (CUDA graphs) on CUDA, ``None`` elsewhere.
        backend: ``torch.compile`` backend: ``"inductor"`` (fused kernels; with ``reduce-overhead`` replayed as
            CUDA graphs), ``"cudagraphs"`` (CUDA graphs over the unfused ATen ops: no kernel generation, so it
            compiles in seconds where inductor takes minutes at large presets; removes the launch overhead but
            fuses nothing), ``"aot_eager"`` (traces without generating code; tests).

    Returns:
        A callable with ``step``'s signature.
    """
    return CapturedBlockStep(step, mode, backend)


class CapturedBlockStep:
    """A block step whose backbone forwards run compiled (see :func:`capture_block_step`).

    The first call compiles the networks of the denoiser's branches (their :meth:`compile_core` stays on for
    every later forward of those networks); a block's first forwards before the window is full compile one
    graph per shape (a bounded set), later blocks replay.
    """

    def __init__(self, step: BlockStep, mode: str | None, backend: str) -> None:
        self.step, self.mode, self.backend = step, mode, backend
        self._compiled: set[int] = set()

    def __call__(self, denoiser: GuidedDenoiser, block: int, *args: Any, **kwargs: Any) -> Any:
        for branch in denoiser.branches:
            self._compile(branch.network)
        return self.step(denoiser, block, *args, **kwargs)

    def _compile(self, network: AVBackbone) -> None:
        if id(network) in self._compiled:
            return
        mode = self.mode
        if mode is None and self.backend == "inductor":
            mode = compile_mode(network.device)
        network.compile_core(True, mode=mode, backend=self.backend)
        self._compiled.add(id(network))
