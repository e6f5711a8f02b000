"""Tiny random LTX-2 backbones and inputs for the adapter tests (CPU, fp32)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from omniforcing.models.layout import BlockLayout
from omniforcing.models.ltx2 import BytePromptEncoder, LTX2Architecture, LTX2Backbone
from omniforcing.models.text import TextContext

ARCH = LTX2Architecture()
GRID = (2, 3)


@dataclass
class Clip:
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
def make_backbone() -> Callable[..., LTX2Backbone]:
    def build(seed: int = 0, **overrides) -> LTX2Backbone:
        torch.manual_seed(seed)
        kwargs = dict(text_encoder=BytePromptEncoder(ARCH.caption_channels, text_width=16, depth=1, heads=2,
                                                     max_length=24),
                      video_grid=GRID, architecture=ARCH)
        return LTX2Backbone(**{**kwargs, **overrides}).eval()
    return build


@pytest.fixture
def make_clip() -> Callable[..., Clip]:
    def build(model: LTX2Backbone, seconds: int = 2, batch: int = 2, seed: int = 0, extra_video: int = 0) -> Clip:
        """A clip of ``seconds`` (plus ``extra_video`` latents of a partial tail), one flow time per block."""
        gen = torch.Generator().manual_seed(seed)
        layout = model.layout(1 + 3 * seconds + extra_video)
        block_t = torch.rand(batch, layout.num_blocks, generator=gen)
        h, w = model.video_grid
        video = torch.randn(batch, layout.num_video, model.video_channels, h, w, generator=gen)
        audio = torch.randn(batch, layout.num_audio, model.audio_channels, generator=gen)
        with torch.no_grad():
            text = model.encode_text(["a red ball bounces", "two cubes collide", "ping"][:batch])
        return Clip(video, audio, block_t[:, layout.video_block_index], block_t[:, layout.audio_block_index], text,
                    layout)
    return build
