"""Prompt features for LTX-2: the :class:`PromptEncoder` interface and a trainable byte-level encoder.

LTX-2 conditions each stream on text features of width ``caption_channels`` (3840: what the LTX-2 text
connectors output from Gemma-3), which the transformer's own caption projections map to the stream widths.
A :class:`PromptEncoder` produces those features, per stream, for a list of captions; the backbone's
``encode_text`` delegates to it. Two implementations: :class:`~omniforcing.models.ltx2.prompt_bank.PromptBank`
(precomputed Gemma-3 + connector features, no encoder weights) and :class:`BytePromptEncoder` (trainable, no
files; for tiny CPU models and from-scratch experiments).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from omniforcing.models.text import ByteTextEncoder, StreamText, TextContext


@runtime_checkable
class PromptEncoder(Protocol):
    """Captions -> per-stream text features for LTX-2's caption projections (what the connectors output).

    Attributes:
        width: feature size ``Dc`` (LTX-2: ``caption_channels`` = 3840).
    """

    width: int

    def __call__(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """``TextContext(video=TextEmbedding((B, L, Dc), (B, L) bool), audio=...)``; rows where ``drop`` ``(B,)``
        bool is True get the unconditional prompt's features."""
        ...


class BytePromptEncoder(nn.Module):
    """A :class:`~omniforcing.models.text.ByteTextEncoder` shared by both streams, then per stream a projection
    to ``width`` and a learned null (unconditional) feature (:class:`~omniforcing.models.text.StreamText`).

    Args:
        width: output feature size (the transformer's ``caption_channels``).
        text_width: width of the byte encoder.
        depth: layers of the byte encoder.
        heads: heads of the byte encoder.
        max_length: caption tokens, the begin token included.
    """

    def __init__(self, width: int, text_width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 64) -> None:
        super().__init__()
        self.width = width
        self.encoder = ByteTextEncoder(text_width, depth, heads, max_length)
        self.video = StreamText(width, text_width)
        self.audio = StreamText(width, text_width)

    def forward(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """Features ``(B, L, width)`` and masks ``(B, L)`` of ``B`` captions for both streams."""
        shared = self.encoder(captions)
        return TextContext(self.video(captions, shared, drop), self.audio(captions, shared, drop))
