"""Preallocated ring-buffer storage of a streaming KV cache and how one call reads and writes it (issue 12).

One :class:`RingBuffer` per modality holds, for every layer, the keys/values of both attention kinds whose
keys are that modality's tokens (video: video self-attention and video->audio; audio: audio self-attention and
audio->video). Token layout of every storage tensor ``(B, heads, pinned + slots * block_tokens, head_dim)``:

* ``[0, pinned)``: macro-block 0 (the prefix, with the audio sinks), written once and never evicted;
* slot ``s`` = ``[pinned + s * block_tokens, pinned + (s + 1) * block_tokens)``: block ``b >= 1`` lives in slot
  ``(b - 1) % W`` with a window of ``W`` blocks, so the block that enters overwrites, in place, the block the
  window just evicted (without a window, slot ``b - 1``; the storage then doubles when full).

A call of one whole block ``b`` (the streaming hot path, :class:`HistoryPlan` ``.write_index``) writes its own
keys/values into its slot and attends over ``storage[:, :, :end]``: every slot there is visible to it (the
window holds exactly the ``W - 1`` previous blocks plus the call's own), and attention is order independent
when no mask is needed, so slot order need not be temporal. Before the window fills ``end`` grows by one
block per block (``W`` shapes); after, every call has the same shapes and the storage never moves.

Every other call (autograd, several blocks at once, a partial tail) gathers the valid history in temporal
order and concatenates its own keys/values (no tensor read by autograd is ever written in place); a
committing one then copies its surviving tokens into their slots.

Stamps: each slot carries a host-side counter bumped whenever it is (re)written, so a cheap snapshot can tell
whether the slots it needs still hold its blocks (:meth:`omniforcing.models.kv_cache.AVKVCache.restore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from omniforcing.models.layers import KV
from omniforcing.models.rope import RopeTables, apply_rope

VIDEO_KINDS = ("video_self", "video_to_audio")
AUDIO_KINDS = ("audio_self", "audio_to_video")


class RingBuffer:
    """Storage of one modality's cached keys/values (module docstring for the layout).

    Args:
        num_layers: transformer depth.
        kinds: attention kinds stored (``VIDEO_KINDS`` or ``AUDIO_KINDS``).
        pinned: tokens of block 0 (prefix and sinks).
        block_tokens: tokens of one whole block ``b >= 1``.
        window: window in blocks (``None`` = keep everything, growing storage).
        separate_pinned: keep the pinned keys also in a separate tensor (the ``"relative"`` prefix policy
            rewrites the pinned region with rotated keys on every call).
        slots: block slots to allocate (default: the window, or 8 without one).
    """

    def __init__(self, num_layers: int, kinds: tuple[str, ...], pinned: int, block_tokens: int,
                 window: int | None, separate_pinned: bool, slots: int | None = None) -> None:
        self.num_layers, self.kinds = num_layers, kinds
        self.pinned, self.block_tokens, self.window = pinned, block_tokens, window
        self.separate_pinned = separate_pinned
        self.slots = slots or window or 8
        self.key: list[dict[str, Tensor]] = [{} for _ in range(num_layers)]
        self.value: list[dict[str, Tensor]] = [{} for _ in range(num_layers)]
        self.pinned_key: list[dict[str, Tensor]] = [{} for _ in range(num_layers)]
        self.stamps = [0] * (1 + self.slots)  # [pinned region, slot 0, slot 1, ...]
        self._clock = 0
        self._write_index: dict[tuple[int, int, str], Tensor] = {}

    @property
    def capacity(self) -> int:
        """Tokens per storage tensor."""
        return self.pinned + self.slots * self.block_tokens

    def slot(self, block: int) -> int:
        """Slot of block ``block >= 1``."""
        return (block - 1) % self.window if self.window is not None else block - 1

    def span(self, block: int, tokens: int | None = None) -> tuple[int, int]:
        """``[lo, hi)`` token range of ``block`` (block 0: the pinned region) in the storage."""
        if block == 0:
            return 0, self.pinned
        lo = self.pinned + self.slot(block) * self.block_tokens
        return lo, lo + (self.block_tokens if tokens is None else tokens)

    def stamp_of(self, block: int) -> int:
        return self.stamps[0 if block == 0 else 1 + self.slot(block)]

    def touch(self, block: int) -> None:
        """Record that ``block``'s region is being rewritten (invalidates snapshots that need its old content)."""
        self._clock += 1
        self.stamps[0 if block == 0 else 1 + self.slot(block)] = self._clock

    def write_index(self, block: int, device: torch.device) -> Tensor:
        """``(block_tokens,)`` long storage positions of block ``block``'s slot, made once per slot and device."""
        key = (self.slot(block), device.index or 0, device.type)
        if key not in self._write_index:
            lo, hi = self.span(block)
            with torch.inference_mode(False):
                self._write_index[key] = torch.arange(lo, hi, device=device)
        return self._write_index[key]

    def allocated(self, layer: int, kind: str) -> bool:
        return kind in self.key[layer]

    def allocate(self, layer: int, kind: str, like: KV) -> None:
        """Zero storage shaped after ``like`` ``(B, heads, N, head_dim)``, outside inference mode (so sampling and
        training can both write it)."""
        batch, heads, _, dim = like.key.shape
        with torch.inference_mode(False):
            for store, source in ((self.key, like.key), (self.value, like.value)):
                store[layer][kind] = source.new_zeros(batch, heads, self.capacity, dim)
            if self.separate_pinned:
                self.pinned_key[layer][kind] = like.key.new_zeros(batch, heads, self.pinned, dim)
        for store in (self.key, self.value, self.pinned_key):
            if kind in store[layer]:
                _mark_static(store[layer][kind])

    def pinned_keys(self, layer: int, kind: str) -> Tensor:
        """Unrotated keys of block 0 ``(B, heads, pinned, head_dim)``."""
        if self.separate_pinned:
            return self.pinned_key[layer][kind]
        return self.key[layer][kind][:, :, : self.pinned]

    def store(self, layer: int, kind: str, current: KV, source: tuple[int, int], target: int) -> None:
        """Copy tokens ``source = [lo, hi)`` of a call's keys/values (detached) to storage position ``target``."""
        if not self.allocated(layer, kind):
            self.allocate(layer, kind, current)
        lo, hi = source
        key, value = current.key[:, :, lo:hi].detach(), current.value[:, :, lo:hi].detach()
        self.key[layer][kind][:, :, target:target + hi - lo] = key
        self.value[layer][kind][:, :, target:target + hi - lo] = value
        if self.separate_pinned and target < self.pinned:
            self.pinned_key[layer][kind][:, :, target:target + hi - lo] = key

    def clone(self, slots: int | None = None) -> RingBuffer:
        """A private copy (with ``slots`` block slots, to grow an unbounded ring)."""
        twin = RingBuffer(self.num_layers, self.kinds, self.pinned, self.block_tokens, self.window,
                          self.separate_pinned, slots or self.slots)
        keep = min(self.capacity, twin.capacity)
        with torch.inference_mode(False):
            for layer in range(self.num_layers):
                for kind in self.key[layer]:
                    for mine, theirs in ((self.key, twin.key), (self.value, twin.value)):
                        old = mine[layer][kind]
                        theirs[layer][kind] = old.new_zeros(*old.shape[:2], twin.capacity, old.shape[3])
                        theirs[layer][kind][:, :, :keep] = old[:, :, :keep]
                        _mark_static(theirs[layer][kind])
                    if self.separate_pinned:
                        twin.pinned_key[layer][kind] = _mark_static(self.pinned_key[layer][kind].clone())
        twin.stamps[: len(self.stamps)] = self.stamps[: len(twin.stamps)]
        twin._clock = self._clock
        return twin

    def copy_from(self, other: RingBuffer) -> bool:
        """Copy ``other``'s content into this storage in place (same layout); False if the layouts differ."""
        same = (other.capacity, other.pinned, other.block_tokens) == (self.capacity, self.pinned, self.block_tokens)
        if not same or any(self.key[i].keys() != other.key[i].keys() for i in range(self.num_layers)):
            return False
        for layer in range(self.num_layers):
            for kind in self.key[layer]:
                self.key[layer][kind].copy_(other.key[layer][kind])
                self.value[layer][kind].copy_(other.value[layer][kind])
                if self.separate_pinned:
                    self.pinned_key[layer][kind].copy_(other.pinned_key[layer][kind])
        self._clock = max(self._clock, other._clock) + 1
        self.stamps = [self._clock] * len(self.stamps)
        return True

    def nbytes(self) -> int:
        """Bytes of storage."""
        tensors = [t for store in (self.key, self.value, self.pinned_key) for layer in store for t in layer.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _mark_static(tensor: Tensor) -> Tensor:
    """On CUDA, tell ``torch.compile`` the storage keeps its address, so CUDA graphs may write it in place
    (cudagraph trees accept mutations of static-address inputs only; omniforcing.sampling.capture)."""
    if tensor.is_cuda:
        torch._dynamo.mark_static_address(tensor)
    return tensor


@dataclass(frozen=True, eq=False)
class HistoryPlan:
    """How every layer's calls for one block (or chunk of blocks) read and write one modality's ring.

    Made once per call geometry by :meth:`~omniforcing.models.kv_cache.AVKVCache.plan` (host work only), then
    reused by every denoising step and the commit of the block.

    Args:
        ring: the storage read (and written).
        history: ``((lo, hi), block)`` valid history token ranges in temporal order, with their block ids.
        write_index: one-whole-block call: ``(block_tokens,)`` storage positions of its slot; ``None`` otherwise.
        end: with ``write_index``, the storage prefix ``[0, end)`` a call attends over.
        stores: a committing call copies its tokens ``(lo, hi)`` to storage position ``target``:
            ``((lo, hi), target)`` for every surviving block of the call.
        shift_pinned: rotate pinned keys at read time (``"relative"`` prefix policy).
        reads_history: the call has history (``bool(history)``; kept apart so compiled code does not guard on
            the ranges, which rotate from block to block).
    """

    ring: RingBuffer
    history: tuple[tuple[tuple[int, int], int], ...]
    write_index: Tensor | None
    end: int
    stores: tuple[tuple[tuple[int, int], int], ...]
    shift_pinned: bool
    reads_history: bool

    def in_place(self) -> bool:
        """Whether this call writes its keys/values into the ring and attends over it (no autograd)."""
        return self.write_index is not None and not torch.is_grad_enabled()

    def history_tokens(self) -> int:
        return sum(hi - lo for (lo, hi), _ in self.history)


@dataclass(frozen=True, eq=False)
class RingKV:
    """One layer's storage of one attention kind and the plan of the current call."""

    key: Tensor
    value: Tensor
    pinned_key: Tensor
    plan: HistoryPlan


class GatheredKV(NamedTuple):
    """A copy of the valid history in temporal order, ``(B, heads, K, head_dim)``; the first ``pinned`` keys are
    block 0's, unrotated. What a call with autograd attends over (nothing saved for backward aliases the ring)."""

    key: Tensor
    value: Tensor
    pinned: int


def gather(history: RingKV) -> GatheredKV:
    """The valid history of ``history``'s plan, copied out of the ring in temporal order."""
    plan = history.plan
    keys, values, pinned = [], [], 0
    for (lo, hi), block in plan.history:
        keys.append(history.pinned_key if block == 0 and plan.shift_pinned else history.key[:, :, lo:hi])
        values.append(history.value[:, :, lo:hi])
        pinned += (hi - lo) if block == 0 else 0
    return GatheredKV(torch.cat(keys, dim=2), torch.cat(values, dim=2), pinned)


def with_history(history: RingKV | GatheredKV | None, current: KV, shift: RopeTables | None = None) -> KV:
    """Keys/values ``[history | current]`` ``(B, heads, K, head_dim)`` of one attention.

    In place (no autograd, one whole block): the current keys/values go into their ring slot and the call
    attends over the ring prefix; pinned keys rotated by ``shift`` are rewritten first ("relative" policy).
    Otherwise the valid history is gathered in temporal order (pinned keys rotated by ``shift``) and
    concatenated with the current keys/values.
    """
    if history is None:
        return current
    if isinstance(history, RingKV):
        plan = history.plan
        if plan.in_place():
            if plan.shift_pinned:
                rotated = history.pinned_key if shift is None else apply_rope(history.pinned_key, shift)
                history.key[:, :, : plan.ring.pinned] = rotated
            history.key.index_copy_(2, plan.write_index, current.key.to(history.key.dtype))
            history.value.index_copy_(2, plan.write_index, current.value.to(history.value.dtype))
            return KV(history.key[:, :, : plan.end], history.value[:, :, : plan.end])
        history = gather(history)
    keys = [history.key]
    if shift is not None and history.pinned:
        keys = [apply_rope(history.key[:, :, : history.pinned], shift), history.key[:, :, history.pinned:]]
    dtype = current.key.dtype
    return KV(torch.cat([*(k.to(dtype) for k in keys), current.key], dim=2),
              torch.cat([history.value.to(dtype), current.value], dim=2))
