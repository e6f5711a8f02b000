"""Exponential moving average of the trained network only (not the teacher, critic or codec).

Lightning's built-in weight averaging covers the whole LightningModule, which for distillation would average
the frozen teacher and the critic too (STYLE.md §3.4), so this callback tracks one named attribute.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from omniforcing.inference.checkpoints import EMA_STATE_KEY


class EMA(L.Callback):
    """Keep ``shadow = decay * shadow + (1 - decay) * param`` for ``pl_module.<target>``.

    Args:
        decay: EMA decay per update.
        start_step: optimiser steps before the average starts (it copies the weights at that step).
        update_every: update every this many optimiser steps.
        target: attribute of the LightningModule to track.
        use_for_validation: swap the averaged weights in during validation and sampling.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, update_every: int = 1, target: str = "network",
                 use_for_validation: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.start_step, self.update_every = decay, start_step, update_every
        self.target, self.use_for_validation = target, use_for_validation
        self.shadow: dict[str, Tensor] = {}
        self.num_updates = 0
        self._swap_context: AbstractContextManager | None = None  # open while validation runs on the EMA weights

    def _module(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, self.target)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = next(self._module(pl_module).parameters()).device
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}  # restored on CPU by a resume

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step < self.start_step or step % self.update_every:
            return
        params = {k: v.detach() for k, v in self._module(pl_module).state_dict().items()}
        if not self.shadow:
            self.shadow = {k: v.clone() for k, v in params.items()}
        else:
            for key, value in params.items():
                if value.is_floating_point():
                    self.shadow[key].lerp_(value.to(self.shadow[key].device), 1.0 - self.decay)
                else:
                    self.shadow[key].copy_(value)
        self.num_updates += 1

    @contextmanager
    def averaged_weights(self, pl_module: L.LightningModule):
        """Context manager: the tracked module holds the EMA weights inside, its own weights after."""
        if not self.shadow:
            yield
            return
        module = self._module(pl_module)
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield
        finally:
            module.load_state_dict(backup)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.use_for_validation and self.shadow:
            self._swap_context = self.averaged_weights(pl_module)
            self._swap_context.__enter__()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swap_context is not None:
            self._swap_context.__exit__(None, None, None)
            self._swap_context = None

    def state_dict(self) -> dict[str, Any]:
        return {EMA_STATE_KEY: self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict.get(EMA_STATE_KEY, {}))
        self.num_updates = int(state_dict.get("num_updates", 0))
