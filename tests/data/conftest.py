"""Fixtures for the data tests: tiny synthetic shards written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniforcing.data.synthetic import SceneSettings, write_synthetic_shards
from omniforcing.types import ClipSpec

TINY_SPEC = ClipSpec(seconds=2, fps=24, sample_rate=16000, size=32)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 2-s clips in 4 shards of 2 (written once per test session)."""
    out = tmp_path_factory.mktemp("tiny_shards")
    write_synthetic_shards(out, 8, TINY_SPEC, seed=3, shard_size=2, settings=SceneSettings(), workers=0,
                           progress=False)
    return out


