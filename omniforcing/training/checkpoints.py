"""Atomic checkpoint writing for Lightning runs.

:class:`AtomicCheckpointIO` writes ``<path>.tmp`` in the same directory, fsyncs it and renames it over the
target, so a run killed mid-save never leaves a truncated ``last.ckpt`` (Lightning's default goes through an
fsspec transaction whose temporary file lives in ``/tmp``, which is not atomic across filesystems). Loading is
weights-only. Reading network weights lives in :mod:`omniforcing.inference.checkpoints`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, then ``os.replace`` (atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
