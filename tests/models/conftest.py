"""Tiny models and inputs for the model tests (one CPU thread: the cores are shared)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from omniforcing.models.layout import BlockLayout
from omniforcing.models.text import TextContext
from omniforcing.models.transformer import DualStreamTransformer

TINY = dict(video_channels=4, video_grid=(2, 2), audio_channels=3, video_width=32, audio_width=16, depth=2,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=24)


def perturb_(model: torch.nn.Module, scale: float = 0.2, seed: int = 1) -> torch.nn.Module:
    """Add noise to every parameter, so zero-initialised gates and heads are active (every path matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


@dataclass
class Inputs:
    video: Tensor
    audio: Tensor
    t_video: Tensor
    t_audio: Tensor
    text: TextContext
    layout: BlockLayout

    def block(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        vs, as_ = self.layout.block_slices(k)
        return self.video[:, vs], self.audio[:, as_], self.t_video[:, vs], self.t_audio[:, as_]


@pytest.fixture
def make_model() -> Callable[..., DualStreamTransformer]:
    def build(perturb: bool = True, seed: int = 0, **overrides) -> DualStreamTransformer:
        torch.manual_seed(seed)
        model = DualStreamTransformer(**{**TINY, **overrides})
        return perturb_(model, seed=seed + 1) if perturb else model
    return build


@pytest.fixture
def make_inputs() -> Callable[..., Inputs]:
    def build(model: DualStreamTransformer, seconds: int = 3, batch: int = 2, seed: int = 0,
              extra_video: int = 0) -> Inputs:
        """A clip of ``seconds`` (plus ``extra_video`` latents of a partial tail) with one flow time per block."""
        gen = torch.Generator().manual_seed(seed)
        layout = model.layout(1 + 3 * seconds + extra_video)
        block_t = torch.rand(batch, layout.num_blocks, generator=gen)
        h, w = model.video_grid
        video = torch.randn(batch, layout.num_video, model.video_channels, h, w, generator=gen)
        audio = torch.randn(batch, layout.num_audio, model.audio_channels, generator=gen)
        captions = ["a red ball bounces", "two cubes collide"][:batch] + ["ping"] * max(0, batch - 2)
        with torch.no_grad():  # a detached context can be reused by several backward passes
            text = model.encode_text(captions)
        return Inputs(video, audio, block_t[:, layout.video_block_index], block_t[:, layout.audio_block_index],
                      text, layout)
    return build
