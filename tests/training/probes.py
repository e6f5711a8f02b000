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
    """Write to ``<out_dir>/rank<r>.json`` the keys of every training batch this rank sees, the validation losses
    it computed itself (before any reduction) and the ``val/loss`` Lightning reports after syncing the ranks."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.keys: list[str] = []
        self.local_val_losses: list[float] = []
        self.reported_val_loss: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.keys += [info.key for info in batch.info]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_losses = type(pl_module).log_losses

        def recording(module, losses, split, batch_size):  # the rank's own value, then the normal logging
            if split == "val":
                self.local_val_losses.append(float(losses["loss"]))
            log_losses(module, losses, split, batch_size)

        pl_module.log_losses = recording.__get__(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reported_val_loss = float(trainer.callback_metrics["val/loss"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"keys": self.keys, "world_size": trainer.world_size, "pid": os.getpid(),
                                    "local_val_losses": self.local_val_losses,
                                    "reported_val_loss": self.reported_val_loss}))
