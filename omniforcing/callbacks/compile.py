"""Compiled training forwards (issue 12.3): every backbone a method runs goes through ``torch.compile``.

The streaming engine captures the student's block steps and the bench compiles the teacher's whole-clip
sampler; this callback gives training the same path, so a method's forwards (the teacher's flow-matching step,
Stage I/III's generator, teacher and critic, Stage II's regression, Mutual Forcing's two modes) run the same
compiled layers as generation, with autograd. What is compiled is each backbone's
:meth:`~omniforcing.models.protocol.AVBackbone.compile_core`: for the built-in transformer one dual-stream layer
function shared by every layer (regional compilation: seconds of compile per distinct call geometry instead of
a whole unrolled stack), embeddings and heads eager. Cached training forwards (Stage III rollouts, Mutual
Forcing's history) compile once per history layout of a rollout, a bounded set for a fixed clip length.

Default ``mode=None``: inductor's fused kernels without CUDA graphs. ``"reduce-overhead"`` (CUDA graphs) also
runs under autograd, but every distinct shape records its own graph and memory pool; use it only for
fixed-shape runs. Compilation is paid in the first steps of each kind: 20 s to 3.5 min per method at the
``small`` preset on one CPU thread, after which steps took 18-35 % less time (docs/training.md "Compiled
training"); tests use ``backend="aot_eager"`` (traced, no code generated).

Add it to a run with ``-c recipes/strategy/compile.yaml`` (appends to ``trainer.callbacks``).
"""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class CompileBackbones(L.Callback):
    """Switch on :meth:`compile_core` of the method's backbones (``pl_module.backbones()``) at setup.

    Args:
        mode: ``torch.compile`` mode (``None``: default; ``"max-autotune-no-cudagraphs"``; ``"reduce-overhead"``
            records CUDA graphs, for fixed shapes only).
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without generating code).
        only: names of the backbones to compile (keys of ``backbones()``: ``network``, ``teacher``, ``critic``);
            ``None`` compiles every one.
    """

    def __init__(self, mode: str | None = None, backend: str = "inductor", only: list[str] | None = None) -> None:
        self.mode, self.backend, self.only = mode, backend, only
        self.compiled: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "backbones"):  # e.g. the codec module: nothing this callback can compile
            raise TypeError(f"CompileBackbones compiles the backbones of a method module; "
                            f"{type(pl_module).__name__} has no backbones()")
        backbones = pl_module.backbones()
        unknown = sorted(set(self.only or ()) - set(backbones))
        if unknown:
            raise ValueError(f"CompileBackbones: no backbone named {', '.join(unknown)} in "
                             f"{type(pl_module).__name__} (it has {', '.join(backbones)})")
        chosen = [name for name in backbones if self.only is None or name in self.only]
        for name in chosen:
            backbones[name].compile_core(True, mode=self.mode, backend=self.backend)
        self.compiled = chosen
        log.info("compiled %s (backend %s, mode %s)", ", ".join(chosen), self.backend, self.mode)
