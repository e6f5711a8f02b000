"""Few-step times: the students' default grid (the one place it is written) and their validation.

A few-step student is trained on one short list of flow times (ALGORITHMS.md §2.2) and must be sampled on
exactly those: predict ``x0`` at ``t_k``, re-noise with fresh noise to ``t_{k+1}``, return the last ``x0``.
Video and audio may run different lists (asymmetric steps, :class:`BlockTimes`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_FEW_STEP_TIMES: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
"""Default few-step times of every student (4 uniform steps, no shift warp; Self-Forcing / OmniForcing)."""


@functools.lru_cache(maxsize=256)
def time_tensor(value: float, batch: int, device: torch.device) -> Tensor:
    """Flow time ``value`` for a batch, made once and shared by every later call.

    The few-step loop and the commit ask for the same handful of times every block; memoising them keeps
    tensor construction from Python values out of the block step (issue 12.2). Made outside inference mode so
    training forwards may use it too; callers never write to it.

    Args:
        value: flow time in ``[0, 1]``.
        batch: batch size ``B``.
        device: where the tensor lives.

    Returns:
        ``(B,)`` float32 tensor filled with ``value``.
    """
    with torch.inference_mode(False):
        return torch.full((batch,), float(value), device=device, dtype=torch.float32)


def check_times(times: Sequence[float], name: str = "few-step times") -> tuple[float, ...]:
    """``times`` as floats; raises unless they are non-empty, strictly decreasing and inside ``(0, 1]``."""
    values = tuple(float(t) for t in times)
    if not values or any(not 0.0 < t <= 1.0 for t in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly decreasing values in (0, 1], got {list(values)}")
    return values


@dataclass(frozen=True)
class BlockTimes:
    """Few-step times per modality (``None`` for a modality that is not sampled).

    Args:
        video: decreasing video times in ``(0, 1]``.
        audio: decreasing audio times (may differ in length from video's: asymmetric steps).
    """

    video: tuple[float, ...] | None
    audio: tuple[float, ...] | None

    @classmethod
    def of(cls, times: Sequence[float], audio_times: Sequence[float] | None = None, *, video: bool = True,
           audio: bool = True) -> BlockTimes:
        """Validated times of the present modalities (``audio_times=None``: audio runs ``times`` too)."""
        return cls(check_times(times, "video few-step times") if video else None,
                   check_times(times if audio_times is None else audio_times, "audio few-step times")
                   if audio else None)

    def items(self) -> list[tuple[str, tuple[float, ...]]]:
        """``(name, times)`` of the present modalities, video first."""
        return [(name, t) for name, t in (("video", self.video), ("audio", self.audio)) if t is not None]

    @property
    def num_steps(self) -> int:
        """Joint forwards of the longer schedule."""
        return max(len(t) for _, t in self.items())

    def at(self, name: str, step: int) -> float:
        """Time of ``name`` at ``step``; 0 once its schedule has ended (it is then held at its clean estimate)."""
        times = getattr(self, name)
        return times[step] if step < len(times) else 0.0

    def renoised(self, name: str, step: int) -> bool:
        """Whether ``name`` is re-noised after ``step`` (a later step of its own schedule follows)."""
        return step < len(getattr(self, name)) - 1
