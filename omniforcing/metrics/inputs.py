"""Validation and conversion of the media that metrics receive.

Accepted inputs (the project's conventions, ``omniforcing/types.py``):

* video ``(B, T, 3, H, W)``: ``torch.uint8`` in ``[0, 255]``, or floating point in ``[-1, 1]``;
* audio ``(B, 1, S)`` or ``(B, C, S)`` (channels are averaged) or ``(B, S)``: floating point in ``[-1, 1]``.

A float video outside ``[-1, 1]`` (for example one still in ``[0, 255]``) is rejected rather than silently
clipped; a float video in ``[0, 1]`` cannot be told apart from ``[-1, 1]`` data and must be converted by the
caller.
"""

from __future__ import annotations

import torch
from torch import Tensor

_RANGE_SLACK = 1e-3
"""Tolerance on the [-1, 1] range check (codec decoders overshoot by rounding)."""


def video_to_unit_range(video: Tensor) -> Tensor:
    """Convert a video batch to float32 in ``[0, 1]``.

    Args:
        video: ``(B, T, 3, H, W)`` uint8 in ``[0, 255]`` or float in ``[-1, 1]``.

    Returns:
        ``(B, T, 3, H, W)`` float32 in ``[0, 1]``.
    """
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must have shape (B, T, 3, H, W), got {tuple(video.shape)}")
    if video.dtype == torch.uint8:
        return video.float() / 255
    if not video.is_floating_point():
        raise ValueError(f"video must be uint8 or floating point, got {video.dtype}")
    low, high = video.min().item(), video.max().item()
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(f"float video must lie in [-1, 1], got values in [{low:.3g}, {high:.3g}]; "
                         "pass uint8 for [0, 255] data")
    return ((video.float() + 1) / 2).clamp(0, 1)


def audio_to_mono(audio: Tensor) -> Tensor:
    """Convert an audio batch to mono float32.

    Args:
        audio: ``(B, S)``, ``(B, 1, S)`` or ``(B, C, S)`` float in ``[-1, 1]``.

    Returns:
        ``(B, S)`` float32 (the channel mean).
    """
    if audio.ndim == 3:
        audio = audio.float().mean(dim=1)
    if audio.ndim != 2 or not audio.is_floating_point():
        raise ValueError(f"audio must be float with shape (B, S) or (B, C, S), got {audio.dtype} "
                         f"{tuple(audio.shape)}")
    return audio.float()


def check_rate(rate: float, what: str) -> float:
    """Return ``rate`` as a float after checking it is positive (``what`` names it in the error)."""
    if not rate > 0:
        raise ValueError(f"{what} must be positive, got {rate}")
    return float(rate)
