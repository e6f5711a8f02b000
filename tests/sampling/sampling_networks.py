"""Tiny perturbed backbones for the sampling-layer tests (a plain module: a second ``conftest`` here would
shadow tests/inference's, which its tests import by name)."""

from __future__ import annotations

import torch

from omniforcing.models.transformer import DualStreamTransformer

TINY = dict(video_channels=4, video_grid=(2, 2), audio_channels=3, video_width=16, audio_width=16, depth=2,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=16)


def tiny_network(seed: int = 0, **overrides) -> DualStreamTransformer:
    """A tiny backbone with every parameter perturbed (zero-initialised heads and gates would output 0)."""
    torch.manual_seed(seed)
    model = DualStreamTransformer(**{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    return model.eval()
