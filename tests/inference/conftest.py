"""Tiny causal students and codecs for the streaming tests (one CPU thread: the cores are shared)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from streaming_helpers import TINY_NETWORK, perturb_

from omniforcing.codecs import AVCodec
from omniforcing.models.transformer import DualStreamTransformer


@pytest.fixture
def make_student() -> Callable[..., DualStreamTransformer]:
    def build(codec: AVCodec, seed: int = 0, **overrides) -> DualStreamTransformer:
        torch.manual_seed(seed)
        network = DualStreamTransformer(video_channels=codec.video.latent_channels,
                                        video_grid=codec.video.latent_size,
                                        audio_channels=codec.audio.latent_channels,
                                        **{**TINY_NETWORK, "causal": True, **overrides})
        return perturb_(network, seed=seed + 1).eval()
    return build
