"""``omniforcing export``: a Lightning checkpoint -> safetensors weights + config.json (no Lightning needed to load)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from omniforcing.errors import MissingInputError
from omniforcing.inference.export import export_checkpoint


def export(*, checkpoint: Path, out: Path, ema: bool = True, dtype: Literal["float32", "bfloat16"] = "float32") -> None:
    """Export a checkpoint written by ``omniforcing fit`` to a folder usable by ``generate`` and the streamer.

    Args:
        checkpoint: the Lightning ``.ckpt`` file.
        out: output folder (``network.safetensors``, ``codec.safetensors``, ``config.json``).
        ema: use the EMA weights when the run kept them.
        dtype: storage dtype of the network weights (loaded back as float32).
    """
    if not Path(checkpoint).is_file():
        raise MissingInputError(f"--checkpoint {checkpoint}: no such file")
    folder = export_checkpoint(checkpoint, out, use_ema=ema, dtype=getattr(torch, dtype))
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    print(f"exported {checkpoint} to {folder} ({size:.2f} MB)")
