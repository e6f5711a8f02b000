"""Training throughput: samples/s and latent tokens/s, measured between consecutive training batches."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from omniforcing.training.base import AVLitModule


class Throughput(L.Callback):
    """Log ``train/samples_per_s`` and ``train/tokens_per_s`` (tokens = latent tokens the backbone processed).

    Args:
        window: batches averaged per logged value.
    """

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._start: float | None = None
        self._samples = 0
        self._tokens = 0
        self._batches = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += len(batch)
        if isinstance(pl_module, AVLitModule):  # other modules (codec training) report samples only
            self._tokens += pl_module.tokens_in_last_batch
        self._batches += 1
        if self._batches < self.window or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        pl_module.log("train/samples_per_s", self._samples / elapsed, on_step=True)
        if self._tokens:
            pl_module.log("train/tokens_per_s", self._tokens / elapsed, on_step=True)
        self._start, self._samples, self._tokens, self._batches = time.perf_counter(), 0, 0, 0
