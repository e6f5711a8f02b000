"""The one sampling layer below ``methods/`` and ``inference/`` (issue 12, docs/architecture.md).

* :mod:`~omniforcing.sampling.schedule`: the default few-step times (the one place) and their checks;
* :mod:`~omniforcing.sampling.guidance`: the one CFG branch, with or without KV caches (:class:`GuidedDenoiser`);
* :mod:`~omniforcing.sampling.few_step`: the one few-step loop (whole clips, backward simulation, blocks);
* :mod:`~omniforcing.sampling.blocks`: the cached block generator and its block step (what CUDA graphs capture);
* :mod:`~omniforcing.sampling.dual_mode`: Mutual Forcing's two modes on shared caches.

Stage III's Self-Forcing rollout, Mutual Forcing's history, dual-mode generation and the streaming engine all
run :class:`~omniforcing.sampling.blocks.BlockGenerator`. Pure PyTorch: no Lightning, no imports from
``methods/`` or ``inference/``.
"""

from omniforcing.sampling.blocks import (
    BlockDraws,
    BlockGenerator,
    EulerSteps,
    block_noise,
    block_shape,
    block_step,
    commit_block,
    denoise_block,
    multi_step_block,
)
from omniforcing.sampling.few_step import few_step, sample_few_step
from omniforcing.sampling.guidance import Branch, GuidedDenoiser
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, BlockTimes, check_times

__all__ = [
    "DEFAULT_FEW_STEP_TIMES",
    "BlockDraws",
    "BlockGenerator",
    "BlockTimes",
    "Branch",
    "EulerSteps",
    "GuidedDenoiser",
    "block_noise",
    "block_shape",
    "block_step",
    "check_times",
    "commit_block",
    "denoise_block",
    "few_step",
    "multi_step_block",
    "sample_few_step",
]
