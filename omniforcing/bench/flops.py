"""Counted model FLOPs and the device's measured matmul peak (for utilisation figures).

FLOPs are counted, not estimated: :class:`torch.utils.flop_counter.FlopCounterMode` records every matmul,
linear layer and convolution that runs. It does not count attention on CPU (``scaled_dot_product_attention``
dispatches to ``_scaled_dot_product_flash_attention_for_cpu``, which has no formula there), so
:func:`count_flops` registers the standard dense formula for that kernel: ``4 B H Lq Lk D`` (two matmuls,
the boolean mask does not skip work in that kernel). One multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` (matmuls, convolutions and attention, see the module docstring)."""
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_seconds(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Best time of one ``size x size`` matmul over ``repeats`` runs (after a warm-up run)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_tflops(dtype: torch.dtype, device: torch.device | str = "cpu", target_seconds: float = 0.05,
                       max_size: int = 4096) -> tuple[float, int]:
    """Measured dense matmul throughput in TFLOP/s with the current thread setting, and the size used.

    The size grows from 256 until one matmul takes ``target_seconds`` (or ``max_size``), so slow dtypes (bf16
    without hardware support) are measured on small problems and fast ones on problems big enough to reach
    their peak.
    """
    device = torch.device(device)
    size = 256
    while True:
        seconds = matmul_seconds(size, dtype, device)
        if seconds >= target_seconds or size >= max_size:
            return 2 * size**3 / seconds / 1e12, size
        size *= 2
