"""Timing that is right on every device: CUDA events on a GPU, ``perf_counter`` on CPU.

CUDA kernels run asynchronously, so a host clock read right after a launch measures the launch, not the work.
On CUDA the timer records an event on the current stream before and after the timed region and waits for the
second one, which gives the device time of everything queued in between. Benchmarks also run every measured
function once untimed first (:func:`warm_up`): the first call pays for cuBLAS/cuDNN handles, kernel selection
and allocator growth, which would otherwise land in the first row of a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import torch


class DeviceTimer:
    """Context manager measuring the wall time of a region in milliseconds (``timer.ms`` after the block).

    Args:
        device: where the timed work runs; CUDA devices are timed with events.

    Example::

        with DeviceTimer(device) as timer:
            model(x)
        print(timer.ms)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms = float("nan")
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
        self._start = 0.0

    def start(self) -> DeviceTimer:
        """Start timing (also what entering the ``with`` block does)."""
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._start = time.perf_counter()
        return self

    def stop(self) -> float:
        """Stop timing; returns and stores the elapsed milliseconds (waits for the GPU on CUDA)."""
        if self._events is not None:
            self._events[1].record()
            self._events[1].synchronize()
            self.ms = self._events[0].elapsed_time(self._events[1])
        else:
            self.ms = (time.perf_counter() - self._start) * 1e3
        return self.ms

    def __enter__(self) -> DeviceTimer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, runs: int = 1) -> None:
    """Run ``fn`` ``runs`` times untimed and wait for it (first-call costs stay out of the measurements)."""
    for _ in range(runs):
        fn()
    synchronize(device)
