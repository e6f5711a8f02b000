"""Test-only callbacks, importable by ``class_path`` from CLI runs in tests (``probes.<Name>``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch

from omniforcing.callbacks import EMA


class ResumeProbe(L.Callback):
    """At train start, save the optimiser state, EMA shadow and global step the run actually starts from."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
        torch.save({"global_step": trainer.global_step,
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "ema": {k: v.cpu() for k, v in ema.shadow.items()}}, self.out)


class BatchKeyRecorder(L.Callback):
    """Append the keys of every training batch this rank sees to ``<out_dir>/rank<r>.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.keys += [info.key for info in batch.info]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"keys": self.keys, "world_size": trainer.world_size, "pid": os.getpid()}))
