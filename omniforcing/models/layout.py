"""Macro-block layout of an audio-video latent stream and the attention masks built from it.

Time is physical (DESIGN.md, "Tokens and time"): a clip is a *lead* (video latent 0 = pixel frame 0, audio
latent 0 = the first 40 ms) followed by whole seconds of ``video_rate`` video latents (3 at 24 fps with a
causal temporal stride of 8) and ``audio_rate`` audio latents (25). Macro-blocks group these:

* ``"v1"`` (the OmniForcing paper, ALGORITHMS.md §6.2): block 0 = the lead alone (plus audio sink tokens,
  which the model prepends); block ``k >= 1`` = second ``k``;
* ``"v2"`` (the official code's simplified layout): block 0 = lead + second 1 (4 video + 26 audio latents);
  block ``k >= 1`` = second ``k + 1``.

Zero truncation: ``1 + 3n`` video latents pair with exactly ``1 + 25n`` audio latents, no audio dropped. A
partial last second with ``r`` video latents (``0 < r < video_rate``) pairs with
``round_half_up(audio_rate * r / video_rate)`` audio latents (8 for r = 1, 17 for r = 2): the ``r/3`` s of
audio the video latents cover, rounded to whole 40-ms latents.

Block-causal visibility (asymmetric block-causal alignment, ALGORITHMS.md §6.2): a token of block ``k`` sees
every token of blocks ``<= k`` of both modalities (bidirectional inside a block); block 0 is the global prefix
visible to all. An optional local window of ``W`` seconds hides keys of blocks older than the ``W`` most recent
blocks (the query's own block included); block 0 and the sinks stay visible. The window belongs to the *key's*
modality, because that is the cache that evicts them (video keys: video self and video->audio attention;
audio keys: audio self and audio->video attention).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor

from omniforcing.types import AUDIO_LATENT_RATE

PrefixLayout = Literal["v1", "v2"]


def block_start(block: int, prefix: PrefixLayout, rate: int) -> int:
    """Index of the first latent of macro-block ``block`` for a modality with ``rate`` latents per second.

    Works for any block index, so streaming code can place block ``k`` without building a layout.
    """
    if block < 0:
        raise ValueError(f"block index must be >= 0, got {block}")
    if block == 0:
        return 0
    second = block if prefix == "v1" else block + 1
    return 1 + rate * (second - 1)


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True)
class BlockLayout:
    """Which macro-block every latent belongs to, and where it sits in time.

    Build with :meth:`for_latents` or :meth:`for_seconds`. Hashable (used as the key of the mask cache).

    Args:
        num_video: video latents ``Tv`` (``1 + 3n`` for whole seconds).
        num_audio: audio latents ``Ta`` paired with them (``1 + 25n``).
        prefix: ``"v1"`` (lead alone in block 0) or ``"v2"`` (lead + first second in block 0).
        fps: video frame rate.
        temporal_stride: pixel frames per video latent after the first.
        audio_rate: audio latents per second.
    """

    num_video: int
    num_audio: int
    prefix: PrefixLayout = "v1"
    fps: int = 24
    temporal_stride: int = 8
    audio_rate: int = AUDIO_LATENT_RATE

    def __post_init__(self) -> None:
        if self.prefix not in ("v1", "v2"):
            raise ValueError(f"prefix must be 'v1' or 'v2', got {self.prefix!r}")
        if self.fps % self.temporal_stride:
            raise ValueError(f"fps {self.fps} is not a multiple of the temporal stride {self.temporal_stride}")
        if self.num_video < 1 or self.num_audio < 1:
            raise ValueError(f"a stream needs at least the lead latents, got {self.num_video} video, "
                             f"{self.num_audio} audio")
        expected = self.audio_count(self.num_video)
        if self.num_audio != expected:
            raise ValueError(f"{self.num_video} video latents pair with {expected} audio latents "
                             f"(zero truncation: 1 + {self.video_rate}n + r video <-> 1 + {self.audio_rate}n + "
                             f"round({self.audio_rate}r/{self.video_rate}) audio), got {self.num_audio}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def for_latents(cls, num_video: int | None = None, num_audio: int | None = None, prefix: PrefixLayout = "v1",
                    *, fps: int = 24, temporal_stride: int = 8,
                    audio_rate: int = AUDIO_LATENT_RATE) -> BlockLayout:
        """Layout of ``num_video`` video and ``num_audio`` audio latents; a missing count is derived from the other.

        Raises:
            ValueError: if both are missing, or the counts do not pair under zero truncation.
        """
        probe = cls(1, 1, prefix, fps, temporal_stride, audio_rate)
        if num_video is None and num_audio is None:
            raise ValueError("give num_video, num_audio or both")
        if num_video is None:
            num_video = probe.video_count(num_audio)
        if num_audio is None:
            num_audio = probe.audio_count(num_video)
        return cls(num_video, num_audio, prefix, fps, temporal_stride, audio_rate)

    @classmethod
    def for_seconds(cls, seconds: int, prefix: PrefixLayout = "v1", *, fps: int = 24, temporal_stride: int = 8,
                    audio_rate: int = AUDIO_LATENT_RATE) -> BlockLayout:
        """Layout of a clip of the lead plus ``seconds`` whole seconds (``1 + 3s`` video, ``1 + 25s`` audio)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        rate = fps // temporal_stride
        return cls(1 + rate * seconds, 1 + audio_rate * seconds, prefix, fps, temporal_stride, audio_rate)

    # ---------------------------------------------------------------- counts
    @property
    def video_rate(self) -> int:
        """Video latents per second after the lead (3)."""
        return self.fps // self.temporal_stride

    def audio_count(self, num_video: int) -> int:
        """Audio latents that pair with ``num_video`` video latents (zero truncation, partial tail rule)."""
        if num_video < 1:
            raise ValueError(f"num_video must be >= 1, got {num_video}")
        seconds, rest = divmod(num_video - 1, self.video_rate)
        return 1 + self.audio_rate * seconds + _round_half_up(self.audio_rate * rest, self.video_rate)

    def video_count(self, num_audio: int) -> int:
        """Inverse of :meth:`audio_count`; raises if no video count pairs with ``num_audio``."""
        if num_audio >= 1:
            seconds, rest = divmod(num_audio - 1, self.audio_rate)
            for r in range(self.video_rate):
                if _round_half_up(self.audio_rate * r, self.video_rate) == rest:
                    return 1 + self.video_rate * seconds + r
        tails = [_round_half_up(self.audio_rate * r, self.video_rate) for r in range(self.video_rate)]
        raise ValueError(f"{num_audio} audio latents is not 1 + {self.audio_rate}n + one of {tails} "
                         "(the counts that pair with whole video latents)")

    @cached_property
    def num_blocks(self) -> int:
        """Macro-blocks, the last possibly partial."""
        last = self.num_video - 1  # block of the last video latent, as _block_of (integer arithmetic, no tensor)
        second = 0 if last == 0 else (last - 1) // self.video_rate + 1
        return (second if self.prefix == "v1" else max(second - 1, 0)) + 1

    @property
    def is_complete(self) -> bool:
        """Whether the last block is whole (so a stream can continue after it)."""
        return self.num_video == block_start(self.num_blocks, self.prefix, self.video_rate)

    def video_start(self, block: int) -> int:
        """First video latent of ``block`` (any block index, also past the end)."""
        return block_start(block, self.prefix, self.video_rate)

    def audio_start(self, block: int) -> int:
        """First audio latent of ``block`` (any block index, also past the end)."""
        return block_start(block, self.prefix, self.audio_rate)

    def block_slices(self, block: int) -> tuple[slice, slice]:
        """``(video slice, audio slice)`` of latent indices of ``block``."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} out of range for a layout of {self.num_blocks} blocks")
        return (slice(self.video_start(block), min(self.video_start(block + 1), self.num_video)),
                slice(self.audio_start(block), min(self.audio_start(block + 1), self.num_audio)))

    # ---------------------------------------------------------------- per-latent maps (any index range)
    def _block_of(self, index: Tensor, rate: int) -> Tensor:
        second = torch.where(index == 0, torch.zeros_like(index), (index - 1).div(rate, rounding_mode="floor") + 1)
        return second if self.prefix == "v1" else (second - 1).clamp_min(0)

    def video_blocks_of(self, index: Tensor) -> Tensor:
        """Macro-block of each video latent index, ``(N,)`` long."""
        return self._block_of(index, self.video_rate)

    def audio_blocks_of(self, index: Tensor) -> Tensor:
        """Macro-block of each audio latent index, ``(N,)`` long."""
        return self._block_of(index, self.audio_rate)

    def video_spans_of(self, index: Tensor) -> Tensor:
        """``(N, 2)`` float64 ``[start, end)`` seconds of each video latent: latent 0 = pixel frame 0, latent
        ``i >= 1`` = frames ``stride (i-1) + 1 .. stride i`` (a causal video codec)."""
        index = index.to(torch.float64)
        first = torch.where(index == 0, torch.zeros_like(index), self.temporal_stride * (index - 1) + 1)
        last = torch.where(index == 0, torch.zeros_like(index), self.temporal_stride * index)
        return torch.stack([first / self.fps, (last + 1) / self.fps], dim=-1)

    def audio_spans_of(self, index: Tensor) -> Tensor:
        """``(N, 2)`` float64 ``[start, end)`` seconds of each audio latent (``[j/25, (j+1)/25)``)."""
        index = index.to(torch.float64)
        return torch.stack([index / self.audio_rate, (index + 1) / self.audio_rate], dim=-1)

    # ---------------------------------------------------------------- whole-layout tensors
    @cached_property
    def video_block_index(self) -> Tensor:
        """``(Tv,)`` long: macro-block of every video latent."""
        return self.video_blocks_of(torch.arange(self.num_video))

    @cached_property
    def audio_block_index(self) -> Tensor:
        """``(Ta,)`` long: macro-block of every audio latent (sink tokens are not latents; they join block 0)."""
        return self.audio_blocks_of(torch.arange(self.num_audio))

    @cached_property
    def video_spans(self) -> Tensor:
        """``(Tv, 2)`` float64 seconds; RoPE uses the midpoints."""
        return self.video_spans_of(torch.arange(self.num_video))

    @cached_property
    def audio_spans(self) -> Tensor:
        """``(Ta, 2)`` float64 seconds; RoPE uses the midpoints."""
        return self.audio_spans_of(torch.arange(self.num_audio))


# -------------------------------------------------------------------- masks
def window_blocks(seconds: float | None) -> int | None:
    """A window in seconds as a whole number of 1-s macro-blocks (``None`` = unbounded)."""
    if seconds is None:
        return None
    if seconds < 1 or not float(seconds).is_integer() or math.isinf(seconds):
        raise ValueError(f"a window must be a whole number >= 1 of 1-second macro-blocks, got {seconds}")
    return int(seconds)


def block_visibility(query_blocks: Tensor, key_blocks: Tensor, window: int | None = None) -> Tensor:
    """``(Q, K)`` bool, True where a query of block ``q`` may attend to a key of block ``k``.

    Rule: ``k <= q`` and (``k == 0`` or ``q - k < window``). Inside a block everything is visible.
    """
    q = query_blocks[:, None]
    k = key_blocks[None, :]
    visible = k <= q
    if window is not None:
        visible = visible & ((k == 0) | (q - k < window))
    return visible


@dataclass(frozen=True)
class AttentionMasks:
    """Boolean masks (True = attend) for the four block-level attention paths; ``None`` = attend to all.

    Args:
        video_self: ``(Nv, Nv)`` video queries x video keys.
        audio_self: ``(S + Na, S + Na)`` audio queries x audio keys (sinks first).
        audio_to_video: ``(Nv, S + Na)`` video queries x audio keys.
        video_to_audio: ``(S + Na, Nv)`` audio queries x video keys.
    """

    video_self: Tensor | None = None
    audio_self: Tensor | None = None
    audio_to_video: Tensor | None = None
    video_to_audio: Tensor | None = None


def token_blocks(video_blocks: Tensor | None, audio_blocks: Tensor | None, tokens_per_frame: int,
                 num_sinks: int) -> tuple[Tensor | None, Tensor | None]:
    """Per-token block ids: video latents repeated over their ``h*w`` tokens; sinks (block 0) before audio."""
    video = None if video_blocks is None else video_blocks.repeat_interleave(tokens_per_frame)
    audio = None
    if audio_blocks is not None:
        audio = torch.cat([audio_blocks.new_zeros(num_sinks), audio_blocks])
    return video, audio


def visibility_masks(video_queries: Tensor | None, audio_queries: Tensor | None, video_keys: Tensor | None,
                     audio_keys: Tensor | None, video_window: int | None,
                     audio_window: int | None) -> AttentionMasks:
    """Masks from per-token block ids; each path uses the window of its *key* modality."""
    def rule(queries: Tensor | None, keys: Tensor | None, window: int | None) -> Tensor | None:
        return None if queries is None or keys is None else block_visibility(queries, keys, window)

    return AttentionMasks(video_self=rule(video_queries, video_keys, video_window),
                          audio_self=rule(audio_queries, audio_keys, audio_window),
                          audio_to_video=rule(video_queries, audio_keys, audio_window),
                          video_to_audio=rule(audio_queries, video_keys, video_window))


@functools.lru_cache(maxsize=64)
def block_causal_masks(layout: BlockLayout, tokens_per_frame: int, num_sinks: int, video_window: int | None,
                       audio_window: int | None, device: str = "cpu") -> AttentionMasks:
    """The asymmetric block-causal masks of a whole layout, built once per arguments and cached.

    Args:
        layout: the clip's layout.
        tokens_per_frame: video tokens per latent frame (``h * w``).
        num_sinks: audio sink tokens prepended to the audio sequence (block 0).
        video_window: window of video keys in blocks (:func:`window_blocks`), ``None`` = unbounded.
        audio_window: window of audio keys in blocks.
        device: where the masks live.

    Built outside inference mode, so masks first made under ``torch.inference_mode`` still work in training.
    """
    with torch.inference_mode(False):
        video, audio = token_blocks(layout.video_block_index, layout.audio_block_index, tokens_per_frame, num_sinks)
        masks = visibility_masks(video, audio, video, audio, video_window, audio_window)
        return AttentionMasks(**{name: getattr(masks, name).to(device) for name in
                                 ("video_self", "audio_self", "audio_to_video", "video_to_audio")})


def to_additive(masks: AttentionMasks, dtype: torch.dtype) -> AttentionMasks:
    """``masks`` as additive float masks (0 = attend, -inf = hidden) in the compute dtype.

    ``scaled_dot_product_attention`` turns a boolean mask into this form on every call; handing it the additive
    form, made once, means no mask tensor is built per call (the fused memory-efficient / cuDNN kernels take it
    as an attention bias). Equal results: adding 0 or -inf to a score is what the boolean mask does. Made
    outside inference mode, so training forwards can use masks first made while sampling.
    """
    def convert(mask: Tensor | None) -> Tensor | None:
        if mask is None:
            return None
        with torch.inference_mode(False):
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))

    return AttentionMasks(*(convert(getattr(masks, name)) for name in
                            ("video_self", "audio_self", "audio_to_video", "video_to_audio")))


@functools.lru_cache(maxsize=64)
def additive_masks(masks: AttentionMasks, dtype: torch.dtype) -> AttentionMasks:
    """:func:`to_additive` of a mask set from :func:`block_causal_masks`, made once per mask set and dtype."""
    return to_additive(masks, dtype)
