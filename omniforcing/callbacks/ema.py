"""Exponential moving average of the trained network only (not the teacher, critic or codec).

Lightning's built-in weight averaging covers the whole LightningModule, which for distillation would average
the frozen teacher and the critic too (STYLE.md §3.4), so this callback tracks one named attribute.

The average advances once per optimiser step *of the tracked network*, not once per batch or per
``global_step``: the DMD stages (OmniForcing I and III) update the critic every batch and the generator once
per ``critic_steps_per_generator_step`` batches, so a per-batch EMA would decay by ``decay**5`` per generator
update, and ``global_step`` counts critic steps too. An optimiser step belongs to the network when its
parameter groups hold any of the network's parameters (seen in ``on_before_optimizer_step``, which Lightning
calls for automatic and manual optimisation alike); steps skipped by gradient accumulation are not counted.

Warm-up (on by default): the update after ``n`` earlier updates uses ``d_n = min(decay, (1 + n) / (10 + n))``,
the rule of diffusers' ``EMAModel.get_decay``. The first update copies the weights; the 2nd averages with
``d_1 = 2/11``, the 3rd ``3/12``, ..., and ``decay`` takes over from ``n = (10 decay - 1) / (1 - decay)`` (80 for
0.9, 890 for 0.99, 8990 for 0.999). Without it a short run exports mostly its starting weights: after ``N``
updates they weigh ``decay**(N-1)`` (0.99 over 50 generator steps: 61 %); with it ``d_1 ... d_{N-1}``, which is
``10! N! / (N + 9)!`` while ``decay`` has not taken over (50 updates: 8e-10).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from omniforcing.inference.checkpoints import EMA_STATE_KEY

log = logging.getLogger(__name__)


class EMA(L.Callback):
    """Keep ``shadow = d_n * shadow + (1 - d_n) * param`` for ``pl_module.<target>`` (``d_n``: :meth:`decay_at`).

    Args:
        decay: EMA decay per update (one update per optimiser step of the tracked network); with ``warmup``, the
            cap that the warm-up decay reaches.
        start_step: optimiser steps of the tracked network before the average starts (it copies the weights at
            that step).
        update_every: update every this many optimiser steps of the tracked network.
        target: attribute of the LightningModule to track.
        use_for_validation: swap the averaged weights in during validation and sampling.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` for the update after ``n`` earlier ones (module docstring);
            ``False``: ``decay`` from the first average on.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, update_every: int = 1, target: str = "network",
                 use_for_validation: bool = True, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.start_step, self.update_every = decay, start_step, update_every
        self.target, self.use_for_validation, self.warmup = target, use_for_validation, warmup
        self.shadow: dict[str, Tensor] = {}
        self.num_updates = 0
        self.network_steps = 0  # optimiser steps that updated the tracked network
        self._network_parameters: set[int] = set()
        self._stepped = False  # an optimiser of the tracked network stepped during this batch
        self._warned = False
        self._swap_context: AbstractContextManager | None = None  # open while validation runs on the EMA weights

    def decay_at(self, updates: int) -> float:
        """Decay of the update that follows ``updates`` earlier ones (the first, ``updates = 0``, copies)."""
        if updates == 0:
            return 0.0
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    def _module(self, pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, self.target)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        parameters = list(self._module(pl_module).parameters())
        self._network_parameters = {id(p) for p in parameters}
        self.shadow = {k: v.to(parameters[0].device) for k, v in self.shadow.items()}  # resumes restore on CPU

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if any(id(p) in self._network_parameters for group in optimizer.param_groups for p in group["params"]):
            self._stepped = True

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._stepped:  # a critic-only batch, or one accumulating gradients
            if trainer.global_step > 0 and self.network_steps == 0 and not self._warned:
                self._warned = True  # optimisers stepped, none of them the tracked network's
                log.warning("EMA: no optimiser step has updated pl_module.%s yet (no optimiser holds its "
                            "parameters?); the average is not updated", self.target)
            return
        self._stepped = False
        self.network_steps += 1
        if self.network_steps < self.start_step or self.network_steps % self.update_every:
            return
        params = {k: v.detach() for k, v in self._module(pl_module).state_dict().items()}
        if not self.shadow:
            self.shadow = {k: v.clone() for k, v in params.items()}
        else:
            weight = 1.0 - self.decay_at(self.num_updates)
            for key, value in params.items():
                if value.is_floating_point():
                    self.shadow[key].lerp_(value.to(self.shadow[key].device), weight)
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
        return {EMA_STATE_KEY: self.shadow, "num_updates": self.num_updates, "network_steps": self.network_steps,
                "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict.get(EMA_STATE_KEY, {}))
        self.num_updates = int(state_dict.get("num_updates", 0))
        # checkpoints written before network steps were counted: one update per step from step 1 (the defaults)
        self.network_steps = int(state_dict.get("network_steps", self.num_updates))
