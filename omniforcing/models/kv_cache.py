"""Key/value cache for block-by-block decoding with per-modality rolling windows (ALGORITHMS.md §5.3-§6.5).

Per layer the cache keeps four kinds of keys/values: video self, audio self, audio->video (audio tokens as
keys of the video stream's cross-attention) and video->audio; the text keys/values of both streams are computed
once per text binding (:meth:`AVKVCache.set_text` switches the prompt and keeps the history). Storage is one
preallocated ring buffer per modality (:mod:`omniforcing.models.ring`): block 0 pinned first, then one slot
per window block, an entering block overwriting the evicted one in place.

Semantics (the contract the methods and the streaming engine rely on):

* A forward with ``commit=False`` reads the cache and never changes its history (so several denoising steps
  of one block see the same history). ``commit=True`` stores the call's keys/values **detached**, then evicts.
* Eviction drops whole macro-blocks per modality: with a window of ``W`` seconds, after committing blocks up
  to ``k`` only blocks ``> k + 1 - W`` stay, so block ``k + 1`` attends to exactly its ``W - 1`` predecessors
  and itself — the equivalent windowed mask of :func:`~omniforcing.models.layout.block_visibility`. Block 0
  (the prefix, with the sinks) is pinned. The audio window governs audio keys (audio self and
  audio->video), the video window video keys.
* Snapshots: :meth:`AVKVCache.snapshot` is O(1) (write pointers and per-slot stamps); :meth:`AVKVCache.restore`
  puts it back while the slots it needs still hold its blocks and raises a clear error once the ring has
  overwritten them. ``snapshot(copy=True)`` keeps a private copy that can be restored any time (copied back
  in place); :meth:`AVKVCache.fork` makes an independent cache from a snapshot. An activation-checkpointed
  cached forward recomputes in a fork of a copied snapshot, so it is exact however many blocks were committed
  (and evicted) in between (see :func:`omniforcing.models.parallelize.checkpoint_cached_forward`).
* Positions (the documented rule): keys are stored rotated at their absolute positions. With the
  ``"relative"`` prefix policy, once the window has moved past second ``W`` the pinned keys (prefix and sinks)
  are rotated forward by ``Δ = block - W`` seconds at read time. Attention scores are then those of a frame in
  which the window and the current block are moved back by ``Δ`` so the window starts right after the prefix
  (where block 1 sits), the prefix keeps its times and the sinks stay unrotated: the output for a block
  depends only on the window's content, not on how far into the stream it is. Before the window fills
  (``Δ = 0``) both policies equal the full forward.
* A block's reads and writes are planned once (:meth:`AVKVCache.plan`, host arithmetic only) and reused by all
  its denoising steps and the commit; the tensor work of a call then involves no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from omniforcing.models.layers import KV, CachedKV
from omniforcing.models.layout import window_blocks
from omniforcing.models.ring import AUDIO_KINDS, VIDEO_KINDS, HistoryPlan, RingBuffer, RingKV
from omniforcing.models.stream_layer import LayerKV, TextKV
from omniforcing.models.text import TextContext

PrefixPosition = Literal["absolute", "relative"]
BlockTokens = tuple[tuple[int, int], ...]  # (block id, tokens) of each block of a call, in order


@dataclass(frozen=True, eq=False)
class CacheState:
    """Committed state of an :class:`AVKVCache` (what ``snapshot`` returns).

    Args:
        num_layers: transformer depth.
        video: the video ring (``None`` before the first commit or without video).
        audio: the audio ring.
        stamps: per modality, the stamps of the regions of the valid blocks when the state was made.
        next_block: number of committed blocks (the block the next call must start at).
        closed: the last committed block was a partial tail; the stream cannot continue.
        tail: tokens (video, audio) of that partial block.
        private: the rings are a private copy (``snapshot(copy=True)``).
    """

    num_layers: int
    video: RingBuffer | None = None
    audio: RingBuffer | None = None
    stamps: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    next_block: int = 0
    closed: bool = False
    tail: tuple[int, int] = (0, 0)
    private: bool = False

    @property
    def layers(self) -> tuple[LayerKV, ...]:
        """Storage tensors per layer (:class:`~omniforcing.models.layers.KV`, whole rings)."""
        def kv(ring: RingBuffer | None, layer: int, kind: str) -> KV | None:
            return None if ring is None or not ring.allocated(layer, kind) else KV(ring.key[layer][kind],
                                                                                   ring.value[layer][kind])
        return tuple(LayerKV(**{kind: kv(ring, layer, kind) for ring, kinds in ((self.video, VIDEO_KINDS),
                                                                                (self.audio, AUDIO_KINDS))
                                for kind in kinds})
                     for layer in range(self.num_layers))


@dataclass(frozen=True, eq=False)
class CachePlan:
    """Reads and writes of one call geometry against one committed state (:meth:`AVKVCache.plan`).

    Args:
        state: the state planned against.
        block: first block of the call.
        next_block: one past the call's last block.
        complete: whether the call's last block is whole.
        video: plan of the video ring, ``None`` without video.
        audio: plan of the audio ring.
        tail: tokens of the call's last block per modality when it is partial.
        masks: memo of the call's attention masks (several blocks in one call), made by the model once per plan.
    """

    state: CacheState
    block: int
    next_block: int
    complete: bool
    video: HistoryPlan | None
    audio: HistoryPlan | None
    tail: tuple[int, int]
    masks: dict = field(default_factory=dict)

    def layer(self, index: int) -> dict[str, RingKV]:
        """Ring storage of layer ``index`` per attention kind (kinds without history are absent)."""
        out = {}
        for plan, kinds in ((self.video, VIDEO_KINDS), (self.audio, AUDIO_KINDS)):
            if plan is None or not plan.reads_history:
                continue
            ring = plan.ring
            for kind in kinds:
                if ring.allocated(index, kind):
                    out[kind] = RingKV(ring.key[index][kind], ring.value[index][kind],
                                       ring.pinned_keys(index, kind), plan)
        return out


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
        self._state = CacheState(num_layers)
        self._plans: dict[tuple, CachePlan] = {}
        self._text_source: TextContext | None = None
        self._text: list[TextKV] | None = None

    # ---------------------------------------------------------------- state
    def snapshot(self, copy: bool = False) -> CacheState:
        """The committed state: O(1) write pointers, or with ``copy`` a private copy of the storage."""
        state = self._state
        if not copy:
            return state
        return replace(state, video=state.video and state.video.clone(), audio=state.audio and state.audio.clone(),
                       private=True)

    def restore(self, state: CacheState) -> None:
        """Put back a state from :meth:`snapshot` (the text binding is kept).

        A private copy is copied back into the current storage in place. An O(1) snapshot is only valid while
        the ring still holds the blocks it needs; otherwise this raises (take it with ``snapshot(copy=True)``).
        """
        if state.num_layers != self._state.num_layers:
            raise ValueError("snapshot belongs to a cache of a different depth")
        if state.private:
            state = replace(state, video=_copied(self._state.video, state.video),
                            audio=_copied(self._state.audio, state.audio), private=False)
            state = replace(state, stamps=_stamps(state, self.video_window, self.audio_window))
        else:
            _check_intact(state, self.video_window, self.audio_window)
        self._set_state(state)

    def fork(self, state: CacheState | None = None) -> AVKVCache:
        """An independent cache with this one's settings and text binding, holding a copy of ``state``
        (default: the current state)."""
        state = self._state if state is None else state
        if not state.private:
            _check_intact(state, self.video_window, self.audio_window)
        twin = AVKVCache(state.num_layers, self.batch_size, prefix_position=self.prefix_position)
        twin.video_window, twin.audio_window = self.video_window, self.audio_window
        twin._text_source, twin._text = self._text_source, self._text
        copy = replace(state, video=state.video and state.video.clone(), audio=state.audio and state.audio.clone(),
                       private=False)
        twin._set_state(replace(copy, stamps=_stamps(copy, self.video_window, self.audio_window)))
        return twin

    def _set_state(self, state: CacheState) -> None:
        self._state = state
        self._plans.clear()

    @property
    def next_block(self) -> int:
        """Committed blocks; the next call must start at this block."""
        return self._state.next_block

    def history(self, layer: int) -> LayerKV:
        """Committed keys/values of ``layer`` in temporal order (:class:`CachedKV`; ``.valid()`` gives them)."""
        state = self._state
        out = {}
        for ring, kinds, index in ((state.video, VIDEO_KINDS, 0), (state.audio, AUDIO_KINDS, 1)):
            spans = _valid_spans(state, ring, self._window(index), state.tail[index])
            for kind in kinds if ring is not None else ():
                if ring.allocated(layer, kind):  # block 0's keys unrotated (the "relative" policy rotates a copy)
                    key = torch.cat([ring.pinned_keys(layer, kind) if block == 0 else ring.key[layer][kind][:, :, lo:hi]
                                     for (lo, hi), block in spans], dim=2)
                    value = torch.cat([ring.value[layer][kind][:, :, lo:hi] for (lo, hi), _ in spans], dim=2)
                    out[kind] = CachedKV(key, value, key.shape[2])
        return LayerKV(**out)

    @property
    def video_blocks(self) -> Tensor | None:
        """``(Nv,)`` block ids of cached video tokens, in temporal order."""
        return self._block_ids(0)

    @property
    def audio_blocks(self) -> Tensor | None:
        """``(Na,)`` block ids of cached audio tokens (sinks included, as block 0)."""
        return self._block_ids(1)

    def num_tokens(self) -> tuple[int, int]:
        """Cached (video, audio) tokens per layer and kind."""
        state = self._state
        return tuple(sum(hi - lo for (lo, hi), _ in _valid_spans(state, ring, self._window(i), state.tail[i]))
                     for i, ring in enumerate((state.video, state.audio)))

    def nbytes(self) -> int:
        """Bytes held by the key/value storage (preallocated: flat once the window is full)."""
        return sum(ring.nbytes() for ring in (self._state.video, self._state.audio) if ring is not None)

    def pinned_tokens(self) -> tuple[int, int]:
        """Cached (video, audio) tokens of block 0, which sit first and are never evicted."""
        return tuple(0 if ring is None else ring.pinned for ring in (self._state.video, self._state.audio))

    def _window(self, modality: int) -> int | None:
        return self.video_window if modality == 0 else self.audio_window

    def _block_ids(self, modality: int) -> Tensor | None:
        state = self._state
        ring = (state.video, state.audio)[modality]
        if ring is None:
            return None
        spans = _valid_spans(state, ring, self._window(modality), state.tail[modality])
        return torch.cat([torch.full((hi - lo,), block, dtype=torch.long) for (lo, hi), block in spans])

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
        if state.next_block and ((state.video is not None) != has_video or (state.audio is not None) != has_audio):
            raise ValueError("the modalities of this call differ from those already in the cache "
                             f"(video cached: {state.video is not None}, audio cached: {state.audio is not None})")

    def relative_shift(self, block: int) -> float:
        """Seconds by which pinned keys are moved forward for a call at ``block`` (0 unless ``"relative"``)."""
        state = self._state
        if self.prefix_position != "relative":
            return 0.0
        windows = [w for ring, w in ((state.video, self.video_window), (state.audio, self.audio_window))
                   if ring is not None]
        if not windows or any(w is None for w in windows):
            return 0.0
        return float(max(0, block - max(windows)))

    # ---------------------------------------------------------------- text
    def set_text(self, text: TextContext) -> None:
        """Bind a new prompt: later calls pass ``text`` and use its keys/values; the history stays."""
        self._text_source, self._text = text, None

    def text_kv(self, text: TextContext, compute: Callable[[], list[TextKV]]) -> list[TextKV]:
        """Text keys/values of every layer, computed once per binding from ``text`` (stored detached).

        With gradients enabled they are recomputed from ``text`` so gradients reach the text path (same
        values). A context other than the bound one is an error: bind it with :meth:`set_text` first.
        """
        if self._text_source is not None and text is not self._text_source:
            raise ValueError("this cache's text keys/values come from another TextContext; pass the same context "
                             "object to every call, or bind the new one with cache.set_text(text)")
        if torch.is_grad_enabled():
            kv = compute()
            if self._text is None:
                self._text_source, self._text = text, [_detached_text(t) for t in kv]
            return kv
        if self._text is None:
            self._text_source, self._text = text, compute()
        return self._text

    # ---------------------------------------------------------------- planning and commit
    def plan(self, block: int, video: BlockTokens | None, audio: BlockTokens | None,
             block_tokens: tuple[int, int], complete: bool, device: torch.device) -> CachePlan:
        """Plan a call starting at ``block`` whose blocks hold ``video`` / ``audio`` tokens (memoised per state).

        Args:
            block: the call's first block (``== next_block``).
            video: ``(block id, tokens)`` of each block of the call, video; ``None`` without video.
            audio: the same for audio (block 0 counts the sinks).
            block_tokens: (video, audio) tokens of one whole block ``>= 1``.
            complete: whether the call's last block is whole.
            device: where the model runs.
        """
        key = (block, video, audio, block_tokens, complete, str(device))
        if key not in self._plans:
            self._plans[key] = self._plan(block, video, audio, block_tokens, complete, device)
        return self._plans[key]

    def _plan(self, block: int, video: BlockTokens | None, audio: BlockTokens | None,
              block_tokens: tuple[int, int], complete: bool, device: torch.device) -> CachePlan:
        state = self._state
        shift_pinned = self.prefix_position == "relative"
        plans, tails = [], []
        for index, (ring, blocks, kinds) in enumerate(((state.video, video, VIDEO_KINDS),
                                                       (state.audio, audio, AUDIO_KINDS))):
            window = self._window(index)
            if blocks is None:
                plans.append(None)
                tails.append(0)
                continue
            if ring is None:
                slots = window or max(8, blocks[-1][0])
                ring = RingBuffer(state.num_layers, kinds, blocks[0][1], block_tokens[index], window, shift_pinned,
                                  slots)
            elif ring.block_tokens != block_tokens[index]:
                raise ValueError(f"block size changed from {ring.block_tokens} to {block_tokens[index]} tokens")
            elif window is None and ring.slot(blocks[-1][0]) >= ring.slots:  # unbounded: grow for this call
                ring = ring.clone(max(2 * ring.slots, ring.slot(blocks[-1][0]) + 1))
            plans.append(_history_plan(state, ring, window, blocks, shift_pinned, device))
            tails.append(0 if complete else blocks[-1][1])
        last = (video or audio)[-1][0]
        return CachePlan(state, block, last + 1, complete, plans[0], plans[1], (tails[0], tails[1]))

    @staticmethod
    def store(plan: CachePlan, current: list[LayerKV]) -> None:
        """Tensor half of a commit: copy the call's surviving keys/values (detached) into their slots.

        An in-place call (:meth:`HistoryPlan.in_place`) already wrote them while attending."""
        for history, kinds in ((plan.video, VIDEO_KINDS), (plan.audio, AUDIO_KINDS)):
            if history is None or history.in_place():
                continue
            for layer, kv in enumerate(current):
                for kind in kinds:
                    if getattr(kv, kind) is None:
                        continue
                    for source, target in history.stores:
                        history.ring.store(layer, kind, getattr(kv, kind), source, target)

    def advance(self, plan: CachePlan) -> None:
        """Host half of a commit: the cache now holds the planned call's blocks (evicting by the windows)."""
        if plan.state is not self._state:
            raise ValueError("this plan was made for another cache state; plan the call again")
        rings = []
        for history, index in ((plan.video, 0), (plan.audio, 1)):
            ring = None if history is None else history.ring
            if ring is not None:
                for _, target in history.stores:
                    ring.touch(_block_at(ring, target))
                if ring.window is None and plan.complete and ring.slot(plan.next_block) >= ring.slots:
                    ring = ring.clone(2 * ring.slots)  # unbounded history: double the storage
            rings.append(ring)
        state = CacheState(self._state.num_layers, rings[0], rings[1], ((), ()), plan.next_block,
                           not plan.complete, plan.tail)
        self._set_state(replace(state, stamps=_stamps(state, self.video_window, self.audio_window)))

    def commit(self, plan: CachePlan, current: list[LayerKV]) -> None:
        """Store the call's keys/values and advance (:meth:`store` then :meth:`advance`)."""
        AVKVCache.store(plan, current)
        self.advance(plan)


# -------------------------------------------------------------------- helpers
def _valid_blocks(next_block: int, window: int | None) -> list[int]:
    """Blocks a state at ``next_block`` holds: block 0 and those not yet evicted."""
    if next_block == 0:
        return []
    first = 1 if window is None else max(1, next_block - window + 1)
    return [0, *range(first, next_block)]


def _valid_spans(state: CacheState, ring: RingBuffer | None, window: int | None,
                 tail: int) -> list[tuple[tuple[int, int], int]]:
    """``((lo, hi), block)`` storage ranges of the valid blocks of ``state``, in temporal order."""
    if ring is None:
        return []
    blocks = _valid_blocks(state.next_block, window)
    last = state.next_block - 1
    return [(ring.span(b, tail if state.closed and b == last and b > 0 else None), b) for b in blocks]


def _history_plan(state: CacheState, ring: RingBuffer, window: int | None, blocks: BlockTokens,
                  shift_pinned: bool, device: torch.device) -> HistoryPlan:
    index = 0 if ring.kinds == VIDEO_KINDS else 1
    history = tuple(_valid_spans(state, ring, window, state.tail[index])) if state.next_block else ()
    first, tokens = blocks[0]
    write_index, end = None, 0
    if len(blocks) == 1 and first >= 1 and tokens == ring.block_tokens:
        write_index = ring.write_index(first, device)
        end = ring.pinned + min(first, window or first) * ring.block_tokens
        ring.touch(first)  # the call writes its slot (the evicted block's) before the commit
    stores, offset = [], 0
    last = blocks[-1][0]
    for block, count in blocks:
        if block == 0 or window is None or block > last + 1 - window:  # survives the commit's eviction
            stores.append(((offset, offset + count), ring.span(block, count)[0]))
        offset += count
    return HistoryPlan(ring, history, write_index, end, tuple(stores), shift_pinned, bool(history))


def _block_at(ring: RingBuffer, position: int) -> int:
    """A block whose region starts at storage ``position`` (for stamping)."""
    return 0 if position < ring.pinned else 1 + (position - ring.pinned) // ring.block_tokens


def _stamps(state: CacheState, video_window: int | None, audio_window: int | None) -> tuple:
    return tuple(() if ring is None else tuple(ring.stamp_of(b) for b in _valid_blocks(state.next_block, window))
                 for ring, window in ((state.video, video_window), (state.audio, audio_window)))


def _check_intact(state: CacheState, video_window: int | None, audio_window: int | None) -> None:
    if _stamps(state, video_window, audio_window) != state.stamps:
        raise ValueError(f"cannot restore the snapshot at block {state.next_block}: the ring buffer has since "
                         "overwritten blocks it needs; take it with cache.snapshot(copy=True) to restore later")


def _copied(live: RingBuffer | None, saved: RingBuffer | None) -> RingBuffer | None:
    """``saved``'s content in ``live``'s storage (in place, same addresses) when the layouts match."""
    if saved is None:
        return None
    if live is not None and live.copy_from(saved):
        return live
    return saved.clone()


def _detached_text(text: TextKV) -> TextKV:
    return TextKV(KV(text.video.key.detach(), text.video.value.detach()),
                  KV(text.audio.key.detach(), text.audio.value.detach()), text.video_mask, text.audio_mask)
