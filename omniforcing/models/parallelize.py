"""Activation checkpointing applied from outside the model (torchtitan style, STYLE.md §3.3).

* :func:`apply_activation_checkpointing` recomputes every ``every``-th layer in backward. It is safe with a
  KV cache because a layer receives its cached history as arguments (immutable tensors) and returns its new
  keys/values instead of writing them.
* :func:`checkpoint_cached_forward` checkpoints a whole cached forward (Self-Forcing's exit step,
  ALGORITHMS.md §5.3): it keeps a private copy of the cache before the call (the ring buffer overwrites evicted
  blocks in place) and recomputes in backward against a fork of that copy, so the recompute sees exactly the
  history the original forward saw even after more blocks were committed and evicted, and the live cache is
  not touched.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils.checkpoint import checkpoint

from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.transformer import DualStreamTransformer


def apply_activation_checkpointing(model: DualStreamTransformer, every: int = 1) -> None:
    """Recompute layers ``0, every, 2 * every, ...`` in backward instead of storing their activations."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    for index, layer in enumerate(model.layers):
        layer.activation_checkpointing = index % every == 0


def checkpoint_cached_forward(model: AVBackbone, *args: Any, cache: AVKVCache,
                              **kwargs: Any) -> tuple[Tensor | None, Tensor | None]:
    """``model(*args, cache=cache, **kwargs)`` under ``torch.utils.checkpoint`` with the cache snapshotted.

    Positional ``args`` are the model's positional inputs (video, audio, t_video, t_audio, text); ``kwargs``
    its keyword arguments (``block``, ``commit``, ``step_size``...). A committing call commits once in the
    forward; the recompute in backward runs (and commits) in a throw-away fork of the copied snapshot.
    """
    snapshot = cache.snapshot(copy=True)
    runs = []

    def run(*inputs: Any) -> tuple[Tensor | None, Tensor | None]:
        target = cache if not runs else cache.fork(snapshot)
        runs.append(target)
        return model(*inputs, cache=target, **kwargs)

    return checkpoint(run, *args, use_reentrant=False)
