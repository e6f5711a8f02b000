"""Fixtures for codec tests: small in-memory bouncing-shape clips with impact sounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# the clip renderer and the plain-torch training helpers live with the codec experiment scripts
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from bouncing_clips import BouncingClips, render_bouncing_clips  # noqa: E402


@pytest.fixture(scope="session")
def clips() -> BouncingClips:
    """Four 1-s clips (25 frames, 16640 samples) at 32x32, 24 fps, 16 kHz."""
    return render_bouncing_clips(4, 1, generator=torch.Generator().manual_seed(7))


