"""Data: media I/O, synthetic paired clips, WebDataset shards, and the datamodules.

The datamodules are exported lazily (``omniforcing.data.AVDataModule`` imports Lightning on first use), so
the shard builders and media code can be imported, and started in worker processes, without Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AVDataModule": "omniforcing.data.datamodule",
    "SyntheticDataModule": "omniforcing.data.datamodule",
    "SceneSettings": "omniforcing.data.synthetic",
    "synthesize_clip": "omniforcing.data.synthetic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'omniforcing.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
