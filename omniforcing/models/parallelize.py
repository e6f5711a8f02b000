"""Activation checkpointing applied from outside the model (torchtitan style, STYLE.md §3.3).

* :func:`apply_activation_checkpointing` recomputes every ``every``-th layer in backward, on any backbone that
  exposes ``activation_checkpointing`` flags (per layer, or one for the whole model). It is safe with a KV cache
  because a layer receives its cached history as arguments (immutable tensors, copies of the ring slots when
  checkpointed) and returns its new keys/values instead of writing them.
* :func:`checkpoint_cached_forward` checkpoints a whole cached forward (Self-Forcing's exit step,
  ALGORITHMS.md §5.3): it keeps a private copy of the cache before the call (the ring buffer overwrites evicted
  blocks in place) and recomputes in backward against a fork of that copy, so the recompute sees exactly the
  history the original forward saw even after more blocks were committed and evicted, and the live cache is
  not touched.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.protocol import AVBackbone

FLAG = "activation_checkpointing"
"""The attribute a backbone (or each of its layers) reads to decide whether a block is recomputed in backward."""


def checkpoint_flag_holders(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` holding a boolean :data:`FLAG`, in module order (``model`` first if it has one)."""
    return [module for module in model.modules() if isinstance(vars(module).get(FLAG), bool)]


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> None:
    """Recompute layers ``0, every, 2 * every, ...`` in backward instead of storing their activations.

    A backbone with one flag per layer (:class:`~omniforcing.models.transformer.DualStreamTransformer`'s stream
    layers) gets every ``every``-th layer's flag set; a backbone with one flag of its own
    (:class:`~omniforcing.models.ltx2.LTX2Backbone`, which checkpoints each of its blocks) is switched on, and then
    ``every`` must be 1.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    holders = checkpoint_flag_holders(model)
    if not holders:
        raise TypeError(f"{type(model).__name__} has no '{FLAG}' flag to switch (on the model or its layers)")
    if holders[0] is model:
        if every != 1:
            raise ValueError(f"{type(model).__name__} checkpoints all of its blocks or none: every must be 1, "
                             f"got {every}")
        setattr(model, FLAG, True)
        return
    for index, layer in enumerate(holders):
        setattr(layer, FLAG, index % every == 0)


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
