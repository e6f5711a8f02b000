"""Counted model FLOPs and the device's measured matmul peak (for utilisation figures).

FLOPs are counted, not estimated: :class:`torch.utils.flop_counter.FlopCounterMode` records every matmul,
linear layer and convolution that runs. It does not count attention on CPU (``scaled_dot_product_attention``
dispatches to ``_scaled_dot_product_flash_attention_for_cpu``, which has no formula there), so
:func:`count_flops` registers the standard dense formula for that kernel: ``4 B H Lq Lk D`` (two matmuls,
the boolean mask does not skip work in that kernel). One multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from omniforcing.bench.timing import DeviceTimer, warm_up

PEAK_DTYPES = (torch.float32, torch.bfloat16)

ModelDtype = Literal["auto", "float32", "bfloat16"]
"""A benchmark option: one of :data:`PEAK_DTYPES` by name, or ``auto`` for :func:`fastest_dtype`."""


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` (matmuls, convolutions and attention, see the module docstring)."""
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


def matmul_seconds(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Best time of one ``size x size`` matmul over ``repeats`` runs (after a warm-up run; CUDA events on GPU)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    warm_up(lambda: torch.mm(a, b), device)
    best = float("inf")
    for _ in range(repeats):
        with DeviceTimer(device) as timer:
            torch.mm(a, b)
        best = min(best, timer.ms / 1e3)
    return best


def matmul_peak_tflops(dtype: torch.dtype, device: torch.device | str = "cpu", target_seconds: float = 0.05,
                       max_size: int = 4096, repeats: int = 5) -> tuple[float, int]:
    """Measured dense matmul throughput in TFLOP/s with the current thread setting, and the size that gave it.

    The size doubles from 256 until one matmul takes ``target_seconds`` (or reaches ``max_size``), so slow
    dtypes (bf16 without hardware support) are measured on small problems and fast ones on problems big enough
    to reach their peak. The best rate over all sizes tried (each the best of ``repeats`` runs) is returned: on
    a CPU shared with other processes the shorter runs are the likelier to land on an uncontended slice.
    """
    device = torch.device(device)
    size, best = 256, (0.0, 256)
    while True:
        seconds = matmul_seconds(size, dtype, device, repeats)
        best = max(best, (2 * size**3 / seconds / 1e12, size))
        if seconds >= target_seconds or size >= max_size:
            return best
        size *= 2


def measure_peaks(device: torch.device, max_size: int) -> dict[torch.dtype, tuple[float, int]]:
    """Measured matmul peak ``(TFLOP/s, size)`` of every dtype in :data:`PEAK_DTYPES` on ``device``."""
    return {dtype: matmul_peak_tflops(dtype, device, max_size=max_size) for dtype in PEAK_DTYPES}


def fastest_dtype(peaks: dict[torch.dtype, tuple[float, int]]) -> torch.dtype:
    """The dtype with the highest measured matmul peak: the one to run a model in on this device.

    bf16 wins on GPUs and on CPUs with bf16 matrix units (AMX); on AVX2-only CPUs PyTorch emulates bf16 matmuls
    and fp32 is far faster, so the choice is measured, not assumed.
    """
    return max(peaks, key=lambda dtype: peaks[dtype][0])
