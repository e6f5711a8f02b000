"""Attention processors of the LTX-2 adapter: block-causal masks, cached history and the commit's keys/values.

One :class:`CachedAttnProcessor` is installed (``set_processor``) on each of the four block-level attentions of
every ``LTX2VideoTransformerBlock``: ``attn1`` (video self), ``audio_attn1`` (audio self), ``audio_to_video_attn``
(video queries, audio keys: kind ``"audio_to_video"``) and ``video_to_audio_attn`` (audio queries, video keys:
``"video_to_audio"``) — the kinds of :mod:`omniforcing.models.ring` — and on the two text cross-attentions
(``attn2``, ``audio_attn2``).

The processor computes what diffusers' ``LTX2AudioVideoAttnProcessor`` computes (projections, QK RMS-norm across
heads, RoPE on queries and keys, optional per-head gates, output projection), with these differences driven by
the :class:`AttentionCall` the adapter binds around a block for one forward:

* keys/values are ``[history | current]`` (:func:`omniforcing.models.ring.with_history`: in place into the ring
  on the streaming hot path, gathered otherwise); keys are cached already rotated at their absolute positions;
* the mask is the call's additive ``(Q, K)`` block-causal mask over those keys (``None`` = attend to all);
* the current keys/values are recorded for the commit (:meth:`omniforcing.models.kv_cache.AVKVCache.store`);
* text cross-attention of a cached call reads the cache's text keys/values (made once per prompt binding,
  :meth:`omniforcing.models.kv_cache.AVKVCache.text_kv`) instead of projecting the prompt again.

Unbound (no call state), the processor is exactly diffusers' processor, so the wrapped model still runs
``LTX2VideoTransformer3DModel.forward`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb
from torch import Tensor, nn

from omniforcing.models.layers import KV
from omniforcing.models.ring import GatheredKV, RingKV, with_history

KIND_MODULES = {"video_self": "attn1", "audio_self": "audio_attn1", "audio_to_video": "audio_to_video_attn",
                "video_to_audio": "video_to_audio_attn", "video_text": "attn2", "audio_text": "audio_attn2"}
BLOCK_KINDS = ("video_self", "audio_self", "audio_to_video", "video_to_audio")  # the kinds a KV cache holds


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """One attention module's part of a forward.

    Args:
        history: cached keys/values of earlier blocks (ring storage or a gathered copy), ``None`` = none.
        mask: additive mask broadcastable to ``(B, heads, Q, K)`` over ``[history | current]`` keys (block kinds:
            ``(Q, K)``; text: ``(B, 1, 1, L)``), ``None`` = attend to all.
        record: where the current keys/values ``(B, heads, N, head_dim)`` go, keyed by kind (``None`` = dropped:
            a placeholder stream of a single-modality call).
        keys: keys/values to attend to instead of projecting the source (a cache's text keys/values).
        shift: diffusers RoPE tables rotating the history's pinned keys forward in time ("relative" prefix policy).
    """

    history: RingKV | GatheredKV | None = None
    mask: Tensor | None = None
    record: dict[str, KV] | None = None
    keys: KV | None = None
    shift: tuple[Tensor, Tensor] | None = None


def rotate(x: Tensor, rope: tuple[Tensor, Tensor], rope_type: str) -> Tensor:
    """Diffusers' RoPE of ``x`` ``(B, N, heads * head_dim)`` (``LTX2AudioVideoAttnProcessor``)."""
    if rope_type == "interleaved":
        return apply_interleaved_rotary_emb(x, rope)
    return apply_split_rotary_emb(x, rope)


class CachedAttnProcessor:
    """Attention processor of one attention kind (module docstring).

    Args:
        kind: a key of :data:`KIND_MODULES`.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KIND_MODULES:
            raise ValueError(f"unknown attention kind {kind!r}; one of {sorted(KIND_MODULES)}")
        self.kind = kind
        self.call: AttentionCall | None = None

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, query_rotary_emb: tuple[Tensor, Tensor] | None = None,
                 key_rotary_emb: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(B, Q, query_dim)`` -> ``(B, Q, query_dim)``; the signature of ``LTX2AudioVideoAttnProcessor``."""
        call = self.call
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        query = attn.norm_q(attn.to_q(hidden_states))
        if query_rotary_emb is not None:
            query = rotate(query, query_rotary_emb, attn.rope_type)
        q = _heads(query, attn.heads)
        if call is not None and call.keys is not None:  # a cache's text keys/values
            kv, mask = call.keys, call.mask
        else:
            source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            current = keys_values(attn, source, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)
            if call is None:
                kv, mask = current, _diffusers_mask(attn, attention_mask, q.shape[0], source.shape[1])
            else:
                if call.record is not None:
                    call.record[self.kind] = current
                history = call.history if call.shift is None else shifted(call.history, call.shift, attn)
                kv, mask = with_history(history, current), call.mask
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, kv.key, kv.value, attn_mask=mask).transpose(1, 2)
        if gate_logits is not None:  # LTX-2.3 per-head gates, 2 sigmoid (1 at zero logits), as diffusers
            out = out * (2.0 * torch.sigmoid(gate_logits))[..., None]
        hidden = out.flatten(2).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](hidden))


def keys_values(attn: nn.Module, source: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> KV:
    """Keys (RMS-normed across heads, rotated by ``rope``) and values of ``source`` ``(B, N, D)``, as diffusers'
    processor computes them, split into heads: ``(B, heads, N, head_dim)``."""
    key = attn.norm_k(attn.to_k(source))
    if rope is not None:
        key = rotate(key, rope, attn.rope_type)
    return KV(_heads(key, attn.heads), _heads(attn.to_v(source), attn.heads))


def shifted(history: RingKV | GatheredKV | None, shift: tuple[Tensor, Tensor],
            attn: nn.Module) -> RingKV | GatheredKV | None:
    """``history`` whose pinned keys (block 0, unrotated copies) are rotated by ``shift``; the ring's in-place
    path then writes them into the pinned region, the gathered path reads them (omniforcing.models.ring)."""
    if isinstance(history, RingKV):
        return replace(history, pinned_key=_rotate_heads(history.pinned_key, shift, attn))
    if isinstance(history, GatheredKV) and history.pinned:
        pinned = _rotate_heads(history.key[:, :, : history.pinned], shift, attn)
        return history._replace(key=torch.cat([pinned, history.key[:, :, history.pinned:]], dim=2))
    return history


def _rotate_heads(keys: Tensor, rope: tuple[Tensor, Tensor], attn: nn.Module) -> Tensor:
    """:func:`rotate` of keys split into heads ``(B, heads, N, head_dim)``."""
    if attn.rope_type == "split":  # the split rotation takes (B, heads, N, head_dim) with (1, heads, 1, r) tables
        return rotate(keys, rope, "split")
    flat = keys.transpose(1, 2).flatten(2)
    return _heads(rotate(flat, rope, "interleaved"), attn.heads)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(2, (heads, -1)).transpose(1, 2)


def _diffusers_mask(attn: nn.Module, mask: Tensor | None, batch: int, keys: int) -> Tensor | None:
    """The mask as diffusers' processor prepares it (``prepare_attention_mask``, one row per head)."""
    if mask is None:
        return None
    mask = attn.prepare_attention_mask(mask, keys, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


def install(blocks: nn.ModuleList) -> list[dict[str, CachedAttnProcessor]]:
    """Install a :class:`CachedAttnProcessor` on every attention of every block; per block, the processors by
    kind."""
    installed = []
    for block in blocks:
        processors = {}
        for kind, name in KIND_MODULES.items():
            processors[kind] = CachedAttnProcessor(kind)
            getattr(block, name).set_processor(processors[kind])
        installed.append(processors)
    return installed


@contextmanager
def bound(processors: dict[str, CachedAttnProcessor], calls: dict[str, AttentionCall]) -> Iterator[None]:
    """Bind ``calls`` (by kind; a missing kind runs as diffusers' processor) to one block's processors for the
    duration of the block's forward."""
    for kind, processor in processors.items():
        processor.call = calls.get(kind)
    try:
        yield
    finally:
        for processor in processors.values():
            processor.call = None
