"""Key/value cache for block-by-block decoding with per-modality rolling windows (ALGORITHMS.md §5.3-§6.5).

Per layer the cache keeps four kinds of keys/values (:class:`~omniforcing.models.stream_layer.LayerKV`):
video self, audio self, audio->video (audio tokens as keys of the video stream's cross-attention) and
video->audio; the text keys/values of both streams are computed once per cache. Every token of a kind carries
its macro-block id, so masks and eviction work on whole blocks.

Semantics (the contract the methods and the streaming engine rely on):

* A forward with ``commit=False`` reads the cache and never changes its history (so several denoising steps
  of one block see the same history). ``commit=True`` appends the call's keys/values **detached**, then evicts.
* Eviction drops whole macro-blocks per modality: with a window of ``W`` seconds, after committing blocks up
  to ``k`` only blocks ``> k + 1 - W`` stay, so block ``k + 1`` attends to exactly its ``W - 1`` predecessors
  and itself — the equivalent windowed mask of :func:`~omniforcing.models.layout.block_visibility`. Block 0
  (the prefix, with the sinks) is pinned. The audio window governs audio keys (audio self and
  audio->video), the video window video keys.
* The history is immutable: a commit builds new storage instead of writing into the old one, so
  :meth:`AVKVCache.snapshot` is a reference to the current state and :meth:`AVKVCache.restore` puts it back.
  The storage has spare room after the history; calls without autograd write their own keys/values there to
  attend over one contiguous view (no history copy per denoising step). Calls with autograd concatenate.
  An activation-checkpointed cached forward that restores its snapshot recomputes exactly, however many
  blocks were committed (and evicted) in between (see :func:`omniforcing.models.parallelize.checkpoint_cached_forward`).
* Keys are stored rotated at their absolute positions. With the ``"relative"`` prefix policy, once the window
  has moved past second ``W`` the pinned keys (prefix and sinks) are rotated forward by ``Δ = block - W``
  seconds at read time. Attention scores are then those of a frame in which the window and the current block
  are moved back by ``Δ`` so the window starts right after the prefix (where block 1 sits), the prefix keeps
  its times and the sinks stay unrotated: the output for a block depends only on the window's content, not
  on how far into the stream it is. Before the window fills (``Δ = 0``) both policies equal the full forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from omniforcing.models.layers import KV, CachedKV
from omniforcing.models.layout import window_blocks
from omniforcing.models.stream_layer import LayerKV, TextKV
from omniforcing.models.text import TextContext

PrefixPosition = Literal["absolute", "relative"]


@dataclass(frozen=True)
class CacheState:
    """Immutable committed history of an :class:`AVKVCache` (what ``snapshot`` returns).

    Args:
        layers: keys/values per layer.
        video_blocks: ``(Nv,)`` block id of every cached video token, ``None`` before the first commit or
            when the stream has no video.
        audio_blocks: ``(Na,)`` the same for audio tokens (sinks are block 0).
        next_block: number of committed blocks (the block the next call must start at).
        closed: the last committed block was a partial tail; the stream cannot continue.
        pinned: cached (video, audio) tokens of block 0, which sit first and are never evicted.
    """

    layers: tuple[LayerKV, ...]
    video_blocks: Tensor | None = None
    audio_blocks: Tensor | None = None
    next_block: int = 0
    closed: bool = False
    pinned: tuple[int, int] = (0, 0)


def _store(old: CachedKV | None, new: KV | None, keep: tuple[int, int] | None) -> CachedKV | None:
    """New storage holding ``[old history | new]`` minus evicted tokens, with room for one more such call.

    ``keep = (pinned, start)`` keeps tokens ``[0, pinned)`` and ``[start, total)`` of the combined sequence.
    """
    if new is None:
        return old
    past = None if old is None else old.valid()
    old_len = 0 if past is None else past.key.shape[2]
    total = old_len + new.key.shape[2]
    ranges = [(0, total)] if keep is None else [(0, keep[0]), (keep[1], total)]
    length = sum(b - a for a, b in ranges)
    batch, heads, _, dim = new.key.shape
    key = new.key.new_empty(batch, heads, length + new.key.shape[2], dim)
    value = new.value.new_empty(batch, heads, length + new.key.shape[2], dim)
    at = 0
    for a, b in ranges:
        for source, lo, hi in ((past, a, min(b, old_len)), (new, max(a, old_len) - old_len, b - old_len)):
            if hi > lo:
                key[:, :, at:at + hi - lo] = source.key[:, :, lo:hi].detach()
                value[:, :, at:at + hi - lo] = source.value[:, :, lo:hi].detach()
                at += hi - lo
    return CachedKV(key, value, length)


def _kept(blocks: Tensor, next_block: int, window: int | None) -> tuple[int, int] | None:
    """``(pinned, start)`` of the tokens to keep after committing up to ``next_block - 1``; ``None`` = all.

    Tokens are ordered by block with block 0 first, so the kept ones are the pinned block 0 and a suffix.
    """
    if window is None:
        return None
    threshold = next_block - window + 1
    pinned = int((blocks == 0).sum())
    start = int(torch.searchsorted(blocks, torch.tensor(max(threshold, 1), device=blocks.device)))
    return None if start <= pinned else (pinned, start)


class AVKVCache:
    """Rolling audio-video key/value cache of one :class:`~omniforcing.models.transformer.DualStreamTransformer`.

    Make it with ``model.new_cache(...)``; one cache per sampled stream (and per guidance branch).

    Args:
        num_layers: transformer depth.
        batch_size: streams decoded together.
        window_seconds: video window in whole seconds (``None`` = never evict).
        audio_window_seconds: audio window; ``None`` = the same as ``window_seconds``.
        prefix_position: ``"absolute"`` or ``"relative"`` (module docstring).
    """

    def __init__(self, num_layers: int, batch_size: int, *, window_seconds: float | None = None,
                 audio_window_seconds: float | None = None, prefix_position: PrefixPosition = "absolute") -> None:
        if prefix_position not in ("absolute", "relative"):
            raise ValueError(f"prefix_position must be 'absolute' or 'relative', got {prefix_position!r}")
        self.batch_size = batch_size
        self.video_window = window_blocks(window_seconds)
        self.audio_window = window_blocks(window_seconds if audio_window_seconds is None else audio_window_seconds)
        self.prefix_position = prefix_position
        self._state = CacheState(layers=tuple(LayerKV() for _ in range(num_layers)))
        self._text_source: TextContext | None = None
        self._text: list[TextKV] | None = None

    # ---------------------------------------------------------------- state
    def snapshot(self) -> CacheState:
        """The committed state (immutable; O(1))."""
        return self._state

    def restore(self, state: CacheState) -> None:
        """Put back a state from :meth:`snapshot` (the text binding is kept)."""
        if len(state.layers) != len(self._state.layers):
            raise ValueError("snapshot belongs to a cache of a different depth")
        self._state = state

    @property
    def next_block(self) -> int:
        """Committed blocks; the next call must start at this block."""
        return self._state.next_block

    def history(self, layer: int) -> LayerKV:
        """Committed keys/values of ``layer`` (:class:`CachedKV`; ``.valid()`` gives the history)."""
        return self._state.layers[layer]

    @property
    def video_blocks(self) -> Tensor | None:
        """``(Nv,)`` block ids of cached video tokens."""
        return self._state.video_blocks

    @property
    def audio_blocks(self) -> Tensor | None:
        """``(Na,)`` block ids of cached audio tokens (sinks included, as block 0)."""
        return self._state.audio_blocks

    def num_tokens(self) -> tuple[int, int]:
        """Cached (video, audio) tokens per layer and kind."""
        return _count(self._state.video_blocks), _count(self._state.audio_blocks)

    def nbytes(self) -> int:
        """Bytes held by committed keys/values."""
        total = 0
        for layer in self._state.layers:
            for kv in (layer.video_self, layer.audio_self, layer.audio_to_video, layer.video_to_audio):
                if kv is not None:
                    total += kv.key.numel() * kv.key.element_size() + kv.value.numel() * kv.value.element_size()
        return total

    def pinned_tokens(self) -> tuple[int, int]:
        """Cached (video, audio) tokens of block 0, which sit first and are never evicted."""
        return self._state.pinned

    # ---------------------------------------------------------------- checks used by the model
    def check_call(self, block: int, has_video: bool, has_audio: bool, batch_size: int) -> None:
        """Raise a clear error if a forward starting at ``block`` with these modalities cannot use this cache."""
        state = self._state
        if batch_size != self.batch_size:
            raise ValueError(f"cache was made for batch size {self.batch_size}, the inputs have {batch_size}")
        if state.closed:
            raise ValueError("the cache ends with a partial block; a stream cannot continue after it")
        if block != state.next_block:
            raise ValueError(f"the cache holds blocks 0..{state.next_block - 1}; the next call must start at block "
                             f"{state.next_block}, got block={block}")
        if state.next_block and ((state.video_blocks is not None) != has_video
                                 or (state.audio_blocks is not None) != has_audio):
            raise ValueError("the modalities of this call differ from those already in the cache "
                             f"(video cached: {state.video_blocks is not None}, audio cached: "
                             f"{state.audio_blocks is not None})")

    def relative_shift(self, block: int) -> float:
        """Seconds by which pinned keys are moved forward for a call at ``block`` (0 unless ``"relative"``)."""
        state = self._state
        if self.prefix_position != "relative":
            return 0.0
        windows = []
        if state.video_blocks is not None:
            windows.append(self.video_window)
        if state.audio_blocks is not None:
            windows.append(self.audio_window)
        if not windows or any(w is None for w in windows):
            return 0.0
        return float(max(0, block - max(windows)))

    def text_kv(self, text: TextContext, compute: Callable[[], list[TextKV]]) -> list[TextKV]:
        """Text keys/values of every layer, computed once per cache from ``text`` (stored detached).

        With gradients enabled they are recomputed from ``text`` so gradients reach the text path (same
        values). A different context object than the first one is an error: make a new cache.
        """
        if self._text_source is not None and text is not self._text_source:
            raise ValueError("this cache's text keys/values come from another TextContext; pass the same context "
                             "object to every call, or make a new cache")
        if torch.is_grad_enabled():
            kv = compute()
            if self._text is None:
                self._text_source, self._text = text, [_detached_text(t) for t in kv]
            return kv
        if self._text is None:
            self._text_source, self._text = text, compute()
        return self._text

    # ---------------------------------------------------------------- commit
    def commit(self, current: list[LayerKV], video_blocks: Tensor | None, audio_blocks: Tensor | None,
               next_block: int, complete: bool) -> None:
        """Append one call's keys/values (detached) with their per-token block ids, then evict.

        Args:
            current: keys/values of the call, per layer.
            video_blocks: ``(n_v,)`` block ids of the call's video tokens, or ``None``.
            audio_blocks: ``(n_a,)`` block ids of the call's audio tokens (sinks included).
            next_block: one past the call's last block.
            complete: whether the call's last block is whole.
        """
        state = self._state
        video = _cat(state.video_blocks, video_blocks)
        audio = _cat(state.audio_blocks, audio_blocks)
        keep_v = None if video is None else _kept(video, next_block, self.video_window)
        keep_a = None if audio is None else _kept(audio, next_block, self.audio_window)
        layers = tuple(
            LayerKV(video_self=_store(old.video_self, new.video_self, keep_v),
                    audio_self=_store(old.audio_self, new.audio_self, keep_a),
                    audio_to_video=_store(old.audio_to_video, new.audio_to_video, keep_a),
                    video_to_audio=_store(old.video_to_audio, new.video_to_audio, keep_v))
            for old, new in zip(state.layers, current, strict=True))
        video, audio = _select(video, keep_v), _select(audio, keep_a)
        pinned = state.pinned if state.next_block else (_count(video, pinned=True), _count(audio, pinned=True))
        self._state = replace(state, layers=layers, next_block=next_block, closed=not complete,
                              video_blocks=video, audio_blocks=audio, pinned=pinned)


def _count(blocks: Tensor | None, pinned: bool = False) -> int:
    if blocks is None:
        return 0
    return int((blocks == 0).sum()) if pinned else int(blocks.numel())


def _cat(old: Tensor | None, new: Tensor | None) -> Tensor | None:
    if new is None:
        return old
    return new if old is None else torch.cat([old, new])


def _select(blocks: Tensor | None, keep: tuple[int, int] | None) -> Tensor | None:
    return blocks if blocks is None or keep is None else torch.cat([blocks[: keep[0]], blocks[keep[1]:]])


def _detached_text(text: TextKV) -> TextKV:
    return TextKV(KV(text.video.key.detach(), text.video.value.detach()),
                  KV(text.audio.key.detach(), text.audio.value.detach()), text.video_mask, text.audio_mask)
