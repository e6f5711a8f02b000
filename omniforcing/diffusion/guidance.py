"""Classifier-free guidance, one convention for the whole package (ALGORITHMS.md §3.4).

``guided = cond + (w - 1) (cond - uncond)`` = ``uncond + w (cond - uncond)``: ``w = 1`` is the plain
conditional prediction, ``w = 0`` the unconditional one. This is the LTX-2 / OmniForcing convention; a
Self-Forcing or CausVid ``guidance_scale g`` corresponds to ``w = 1 + g`` here.
"""

from __future__ import annotations

from torch import Tensor


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Guided prediction ``cond + (scale - 1) (cond - uncond)`` (same for velocity or x0 outputs)."""
    if scale == 1.0:
        return cond
    return cond + (scale - 1.0) * (cond - uncond)
