"""Peak pickers for 1-D envelopes (audio onset strength, visual motion).

:func:`pick_peaks` follows the rule of librosa's ``util.peak_pick`` (which ``onset_detect`` uses), written
here in torch: a sample ``n`` is a peak when

1. ``x[n] == max(x[n - pre_max : n + post_max])`` (note: with ``post_max = 1`` the window ends at ``n``),
2. ``x[n] >= mean(x[n - pre_avg : n + post_avg]) + delta`` (windows clipped at the edges),
3. ``x[n] > 0`` and ``n`` is more than ``wait`` samples after the previous peak.

:func:`strict_local_maxima` is the peak rule of AV-Align (``a[i-1] < a[i] > a[i+1]`` and ``a[i] >= threshold``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _moving_max(x: Tensor, before: int, after: int) -> Tensor:
    """``max(x[n - before : n + after])`` for every ``n`` (window clipped at the edges)."""
    padded = F.pad(x[None, None], (before, max(after - 1, 0)), value=float("-inf"))[0, 0]
    return padded.unfold(0, before + max(after, 1), 1).amax(dim=1)


def _moving_mean(x: Tensor, before: int, after: int) -> Tensor:
    """``mean(x[n - before : n + after])`` for every ``n`` (window clipped at the edges)."""
    index = torch.arange(x.shape[0], device=x.device)
    start = (index - before).clamp(min=0)
    stop = (index + after).clamp(max=x.shape[0])
    cumulative = torch.cat([x.new_zeros(1), x.cumsum(0)])
    return (cumulative[stop] - cumulative[start]) / (stop - start).clamp(min=1)


def pick_peaks(x: Tensor, *, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
               wait: int) -> Tensor:
    """Indices ``(K,)`` (int64, ascending) of the peaks of a 1-D envelope ``x`` ``(F,)`` (librosa rule above)."""
    if x.ndim != 1:
        raise ValueError(f"envelope must be 1-D, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    x = x.double()
    is_max = x == _moving_max(x, pre_max, post_max)
    above = x >= _moving_mean(x, pre_avg, post_avg) + delta
    candidates = torch.nonzero(is_max & above & (x > 0)).flatten().tolist()
    peaks: list[int] = []
    for index in candidates:
        if not peaks or index > peaks[-1] + wait:
            peaks.append(index)
    return torch.tensor(peaks, dtype=torch.long)


def normalize_envelope(x: Tensor) -> Tensor:
    """Min-max normalise ``(F,)`` to ``[0, 1]``; a constant envelope becomes all zeros (no peaks)."""
    x = x.double()
    span = x.max() - x.min() if x.numel() else x.new_zeros(())
    if x.numel() == 0 or span <= 1e-12:
        return torch.zeros_like(x)
    return (x - x.min()) / span


def strict_local_maxima(x: Tensor, threshold: float) -> Tensor:
    """Indices ``i`` in ``1..F-2`` with ``x[i-1] < x[i] > x[i+1]`` and ``x[i] >= threshold`` (AV-Align rule)."""
    if x.ndim != 1:
        raise ValueError(f"trajectory must be 1-D, got shape {tuple(x.shape)}")
    if x.numel() < 3:
        return torch.zeros(0, dtype=torch.long)
    middle = x[1:-1]
    keep = (x[:-2] < middle) & (middle > x[2:]) & (middle >= threshold)
    return torch.nonzero(keep).flatten().cpu() + 1
