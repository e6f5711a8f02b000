"""Text conditioning: the encoder interface, a built-in byte-level encoder, and per-stream projections.

:class:`TextEncoder` is the interface: ``forward(captions) -> TextEmbedding``. The built-in
:class:`ByteTextEncoder` needs no files (UTF-8 bytes are the vocabulary). A user's pretrained encoder (e.g. a
T5 loaded from a local path) implements the same interface and is passed to the transformer as
``text_encoder``; it is then shared by both streams.

Each stream owns a :class:`StreamText`: its own projection to the stream's width and its own learned null
embedding (the unconditional input for classifier-free guidance), and — with the built-in encoder — its own
encoder, so a joint model coupled from a video-only and an audio-only checkpoint reproduces both exactly.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass
class TextEmbedding:
    """Encoded captions.

    Args:
        tokens: ``(B, L, D)`` features.
        mask: ``(B, L)`` bool, True for real tokens (every row has at least one).
    """

    tokens: Tensor
    mask: Tensor


@dataclass
class TextContext:
    """Per-stream text features, ready for the transformer's text cross-attention (from ``encode_text``).

    Args:
        video: ``(B, L, Dv)`` tokens (and mask) for the video stream.
        audio: ``(B, L, Da)`` tokens (and mask) for the audio stream.
    """

    video: TextEmbedding
    audio: TextEmbedding

    @property
    def batch_size(self) -> int:
        """Number of captions."""
        return self.video.tokens.shape[0]


class TextEncoder(nn.Module, ABC):
    """Interface of a caption encoder. Subclasses set ``width`` (feature size ``D``) and implement ``forward``."""

    width: int

    @abstractmethod
    def forward(self, captions: list[str]) -> TextEmbedding:
        """Encode ``B`` captions to tokens ``(B, L, width)`` and a mask ``(B, L)`` on the encoder's device."""


class ByteTextEncoder(TextEncoder):
    """A small transformer over UTF-8 bytes: no tokenizer files, any language, deterministic.

    Token ids: 0..255 bytes, 256 = begin (always first, so an empty caption still has one token), 257 = padding.
    Captions longer than ``max_length - 1`` bytes are cut (logged once).

    Args:
        width: feature size.
        depth: transformer layers.
        heads: attention heads.
        max_length: tokens per caption including the begin token.
    """

    BEGIN = 256
    PAD = 257

    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4, max_length: int = 64) -> None:
        super().__init__()
        self.width = width
        self.max_length = max_length
        self.embed = nn.Embedding(258, width)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self._warned = False

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``(B, L)`` long ids and ``(B, L)`` bool mask, ``L`` = longest caption (at most ``max_length``)."""
        rows = []
        for caption in captions:
            data = list(caption.encode("utf-8"))
            if len(data) > self.max_length - 1:
                if not self._warned:
                    log.warning("caption of %d bytes cut to %d (ByteTextEncoder.max_length)", len(data),
                                self.max_length - 1)
                    self._warned = True
                data = data[: self.max_length - 1]
            rows.append([self.BEGIN, *data])
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.PAD

    def forward(self, captions: list[str]) -> TextEmbedding:
        if not captions:
            raise ValueError("encode at least one caption")
        ids, mask = self.tokenize(captions)
        ids, mask = ids.to(self.position.device), mask.to(self.position.device)
        x = self.embed(ids) + self.position[: ids.shape[1]]
        x = self.layers(x, src_key_padding_mask=~mask)
        return TextEmbedding(self.norm(x), mask)


class StreamText(nn.Module):
    """One stream's text path: (own encoder), projection to the stream width, learned null embedding.

    Args:
        width: the stream's width.
        encoder_width: feature size of the encoder feeding it.
        encoder: this stream's own encoder, or ``None`` when the transformer shares one between streams.
    """

    def __init__(self, width: int, encoder_width: int, encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder_width, width)
        self.null = nn.Parameter(torch.randn(1, width) * 0.02)

    def forward(self, captions: list[str], shared: TextEmbedding | None, drop: Tensor | None) -> TextEmbedding:
        """Project the captions' features; rows where ``drop`` ``(B,)`` is True become the null embedding."""
        features = self.encoder(captions) if self.encoder is not None else shared
        if features is None:
            raise ValueError("StreamText has no encoder and no shared features were given")
        tokens = self.proj(features.tokens.to(self.proj.weight.dtype))
        mask = features.mask
        if drop is not None:
            if drop.shape != (len(captions),) or drop.dtype != torch.bool:
                raise ValueError(f"drop must be a ({len(captions)},) bool tensor, got {tuple(drop.shape)} {drop.dtype}")
            drop = drop.to(tokens.device)
            null = torch.zeros_like(tokens)
            null[:, 0] = self.null[0]
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            tokens = torch.where(drop[:, None, None], null, tokens)
            mask = torch.where(drop[:, None], null_mask, mask)
        return TextEmbedding(tokens, mask)
