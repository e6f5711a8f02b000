"""Per-token geometry of a forward: macro-block ids and RoPE tables of a range of latents.

Positions are physical (DESIGN.md "Tokens and time"): a latent's time is the midpoint of its span in
seconds (video latent 0 = pixel frame 0 = ``[0, 1/24)`` s; audio latent ``j`` = ``[0.04 j, 0.04 (j+1))`` s),
so co-occurring video and audio tokens share a time coordinate. Video self-attention rotates time, row and
column; audio self-attention and cross-modal attention rotate time only; audio sink tokens get the identity.

Results are memoised per (first latent, count, device, dtype): a streamed block is run several times (each
denoising step and the commit) with the same geometry, and a training clip with the same length every step.
They are computed on the model's device from Python integers (no host-to-device copy, so a new block's tables
never synchronise the host).
They are built outside inference mode, so tables first made by a sampler under ``torch.inference_mode`` can
later be saved for backward by a training forward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from omniforcing.models.layout import BlockLayout, PrefixLayout
from omniforcing.models.rope import RopeTables, RotaryEmbedding

SinkRope = Literal["identity", "position0"]


@dataclass(frozen=True)
class StreamTokens:
    """Geometry of one stream's tokens in a forward.

    Args:
        blocks: ``(N,)`` long macro-block id per token (video: per latent repeated ``h*w`` times; audio: sinks
            first, as block 0).
        self_rope: tables for the stream's self-attention, ``(N, head_dim // 2)``.
        cross_rope: time-only tables at the cross-modal head width.
    """

    blocks: Tensor
    self_rope: RopeTables
    cross_rope: RopeTables


class TokenGeometry:
    """Builds :class:`StreamTokens` for latent ranges of a stream.

    Args:
        prefix: the macro-block layout of block 0.
        video_grid: ``(h, w)`` tokens per video latent.
        video_rope: RoPE of video self-attention (axes: seconds, row, column).
        audio_rope: RoPE of audio self-attention, also used by cross-modal attention (same head width).
        sink_rope: ``"identity"`` (sinks are not rotated, the paper's constraint) or ``"position0"`` (sinks are
            rotated like a token at time 0: the ablation of identity RoPE).
    """

    def __init__(self, prefix: PrefixLayout, video_grid: tuple[int, int], video_rope: RotaryEmbedding,
                 audio_rope: RotaryEmbedding, sink_rope: SinkRope = "identity") -> None:
        if sink_rope not in ("identity", "position0"):
            raise ValueError(f"sink_rope must be 'identity' or 'position0', got {sink_rope!r}")
        self.grid = BlockLayout(1, 1, prefix)  # only its index arithmetic is used
        self.video_grid = video_grid
        self.video_rope = video_rope
        self.audio_rope = audio_rope
        self.sink_rope = sink_rope

    @functools.lru_cache(maxsize=64)  # noqa: B019 - lives as long as its model
    def video(self, first: int, count: int, device: torch.device, dtype: torch.dtype) -> StreamTokens:
        """Video latents ``first .. first + count - 1``."""
        with torch.inference_mode(False):
            return self._video(first, count, device, dtype)

    def _video(self, first: int, count: int, device: torch.device, dtype: torch.dtype) -> StreamTokens:
        h, w = self.video_grid
        index = torch.arange(first, first + count, device=device)
        time = self.grid.video_spans_of(index).mean(-1).repeat_interleave(h * w)
        rows = (torch.arange(h, dtype=torch.float64, device=device) + 0.5).repeat_interleave(w).repeat(count)
        cols = (torch.arange(w, dtype=torch.float64, device=device) + 0.5).repeat(h * count)
        positions = torch.stack([time, rows, cols], dim=-1)
        blocks = self.grid.video_blocks_of(index).repeat_interleave(h * w)
        return StreamTokens(blocks, self.video_rope.tables(positions, dtype=dtype),
                            self.audio_rope.tables(positions[:, :1], dtype=dtype))

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def audio(self, first: int, count: int, sinks: int, device: torch.device, dtype: torch.dtype) -> StreamTokens:
        """``sinks`` sink tokens followed by audio latents ``first .. first + count - 1``."""
        with torch.inference_mode(False):
            return self._audio(first, count, sinks, device, dtype)

    def _audio(self, first: int, count: int, sinks: int, device: torch.device, dtype: torch.dtype) -> StreamTokens:
        index = torch.arange(first, first + count, device=device)
        time = torch.cat([torch.zeros(sinks, dtype=torch.float64, device=device),
                          self.grid.audio_spans_of(index).mean(-1)])
        identity = torch.arange(sinks + count, device=device) < sinks  # identity rotation (ALGORITHMS.md §6.3)
        if self.sink_rope == "position0":
            identity = torch.zeros_like(identity)  # ablation: sinks rotated at time 0 like the first latent
        tables = self.audio_rope.tables(time[:, None], identity, dtype=dtype)
        blocks = torch.cat([torch.zeros(sinks, dtype=torch.long, device=device), self.grid.audio_blocks_of(index)])
        return StreamTokens(blocks, tables, tables)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def time_shift(self, seconds: float, device: torch.device,
                   dtype: torch.dtype) -> tuple[RopeTables, RopeTables]:
        """Rotations moving keys ``seconds`` forward: (video self-attention, audio and cross-modal attention)."""
        with torch.inference_mode(False):
            return (self.video_rope.time_shift(seconds, device, dtype),
                    self.audio_rope.time_shift(seconds, device, dtype))
