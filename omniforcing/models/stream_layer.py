"""One layer of the dual-stream transformer (LTX-2 block order, ALGORITHMS.md §1.2).

For each stream ``m`` in {video, audio}, with AdaLN values from the stream's own per-token timestep:

1. ``x_m += gate * SelfAttn(modulate(norm(x_m)))`` with the stream's RoPE (video: time + 2-D space; audio: time);
2. ``x_m += TextAttn(norm(x_m), text_m)``;
3. cross-modal attention, both directions reading the states *before* this step:
   ``x_v += g_v * Attn(q = modulate_q(norm(x_v)), kv = modulate_kv(norm(x_a)))`` (audio -> video) and the mirror
   image (video -> audio), time-only RoPE on both sides. The gate ``g`` comes from the *query's* own timestep
   (OmniForcing's choice, §1.3) and starts at exactly zero, so uni-modal models couple without disturbance;
4. ``x_m += gate * MLP(modulate(norm(x_m)))``.

The AdaLN values are ``global(t) + table``: one timestep-dependent projection per stream (computed once per
forward, "adaLN-single" as PixArt/LTX-2) plus a learned per-layer table, all zero-initialised (adaLN-Zero).
Keys/values of every attention may be prefixed by cached history (:func:`with_history`); the layer returns its
current keys/values so the caller can commit them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omniforcing.models.layers import KV, Attention, CachedKV, FeedForward, RMSNorm, gated, modulate
from omniforcing.models.layout import AttentionMasks
from omniforcing.models.ring import GatheredKV, RingKV, with_history
from omniforcing.models.rope import RopeTables

# rows of the per-stream modulation: self-attn (shift, scale, gate), MLP (shift, scale, gate),
# cross-modal query (shift, scale), cross-modal key/value source (shift, scale), cross-modal gate
(SA_SHIFT, SA_SCALE, SA_GATE, MLP_SHIFT, MLP_SCALE, MLP_GATE,
 Q_SHIFT, Q_SCALE, KV_SHIFT, KV_SCALE, CROSS_GATE) = range(11)
NUM_MODULATIONS = 11


@dataclass(frozen=True)
class LayerKV:
    """Keys/values of one layer for the four block-level attention paths, ``(B, heads, N, head_dim)``
    (:class:`KV` for a call's own tokens, :class:`CachedKV` for a cache's history).

    Args:
        video_self: video tokens in video self-attention.
        audio_self: audio tokens (sinks first) in audio self-attention.
        audio_to_video: audio tokens projected by the video stream's cross-attention (keys of A2V).
        video_to_audio: video tokens projected by the audio stream's cross-attention (keys of V2A).
    """

    video_self: KV | CachedKV | None = None
    audio_self: KV | CachedKV | None = None
    audio_to_video: KV | CachedKV | None = None
    video_to_audio: KV | CachedKV | None = None


@dataclass(frozen=True)
class TextKV:
    """Text keys/values of one layer for both streams and the text padding mask ``(B, 1, 1, L)``."""

    video: KV
    audio: KV
    video_mask: Tensor
    audio_mask: Tensor


@dataclass(frozen=True)
class StreamCall:
    """Geometry of one stream's tokens in one forward.

    Args:
        self_rope: tables for the stream's self-attention, ``(N, head_dim // 2)``.
        cross_rope: time-only tables for cross-modal attention, ``(N, cross_head_dim // 2)``.
        self_shift: rotation applied to pinned history keys of self-attention ("relative" prefix policy).
        cross_shift: the same for the cross-modal keys.
    """

    self_rope: RopeTables
    cross_rope: RopeTables
    self_shift: RopeTables | None = None
    cross_shift: RopeTables | None = None


@dataclass(frozen=True)
class LayerCall:
    """Everything a layer needs about one forward besides the tokens: geometry of both streams and the masks
    over ``[history | current]`` keys."""

    video: StreamCall | None
    audio: StreamCall | None
    masks: AttentionMasks


class StreamLayer(nn.Module):
    """One stream's half of a layer.

    Args:
        width: the stream's width.
        heads: the stream's attention heads.
        other_width: width of the other stream (source of the cross-modal keys/values).
        cross_width: inner width of cross-modal attention (the audio width, as LTX-2).
        cross_heads: heads of cross-modal attention (the audio heads).
        mlp_ratio: MLP hidden width over ``width``.
    """

    def __init__(self, width: int, heads: int, other_width: int, cross_width: int, cross_heads: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.norm = RMSNorm(width, affine=False)
        self.self_attn = Attention(width, width, width, heads)
        self.text_attn = Attention(width, width, width, heads)
        self.cross_attn = Attention(width, other_width, cross_width, cross_heads)
        self.mlp = FeedForward(width, mlp_ratio)
        self.modulation = nn.Parameter(torch.zeros(NUM_MODULATIONS, width))

    def values(self, global_mod: Tensor) -> Tensor:
        """Per-frame AdaLN values ``(B, T, 11, D)`` from the stream's global modulation ``(B, T, 11, D)``."""
        return global_mod + self.modulation

    def self_attention(self, x: Tensor, mod: Tensor, call: StreamCall, history: RingKV | GatheredKV | None,
                       mask: Tensor | None) -> tuple[Tensor, KV]:
        """Gated, modulated self-attention over ``[history | x]``; returns the new ``x`` and the current K/V."""
        h = modulate(self.norm(x), mod[:, :, SA_SHIFT], mod[:, :, SA_SCALE])
        q = self.self_attn.queries(h, call.self_rope)
        current = self.self_attn.keys_values(h, call.self_rope)
        kv = with_history(history, current, call.self_shift)
        return x + gated(self.self_attn.attend(q, kv, mask), mod[:, :, SA_GATE]), current

    def text_attention(self, x: Tensor, text: KV, mask: Tensor) -> Tensor:
        """Unmodulated text cross-attention (LTX-2 default)."""
        return x + self.text_attn.attend(self.text_attn.queries(self.norm(x)), text, mask)

    def cross_inputs(self, x: Tensor, mod: Tensor) -> tuple[Tensor, Tensor]:
        """The stream's normalised states modulated for its two cross-modal roles: query and key/value source."""
        h = self.norm(x)
        return (modulate(h, mod[:, :, Q_SHIFT], mod[:, :, Q_SCALE]),
                modulate(h, mod[:, :, KV_SHIFT], mod[:, :, KV_SCALE]))

    def cross_attention(self, x: Tensor, mod: Tensor, query_input: Tensor, source: KV, rope: RopeTables,
                        mask: Tensor | None) -> Tensor:
        """``x + gate(t_query) * Attn(query_input, source)``."""
        q = self.cross_attn.queries(query_input, rope)
        return x + gated(self.cross_attn.attend(q, source, mask), mod[:, :, CROSS_GATE])

    def feed_forward(self, x: Tensor, mod: Tensor) -> Tensor:
        """Gated, modulated MLP."""
        h = modulate(self.norm(x), mod[:, :, MLP_SHIFT], mod[:, :, MLP_SCALE])
        return x + gated(self.mlp(h), mod[:, :, MLP_GATE])


class DualStreamLayer(nn.Module):
    """A video :class:`StreamLayer` and an audio one, joined by cross-modal attention.

    Args:
        video_width: video stream width.
        audio_width: audio stream width.
        video_heads: video attention heads.
        audio_heads: audio attention heads (also the cross-modal heads).
        mlp_ratio: MLP hidden width over the stream width.
    """

    def __init__(self, video_width: int, audio_width: int, video_heads: int, audio_heads: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.video = StreamLayer(video_width, video_heads, audio_width, audio_width, audio_heads, mlp_ratio)
        self.audio = StreamLayer(audio_width, audio_heads, video_width, audio_width, audio_heads, mlp_ratio)
        self.activation_checkpointing = False

    def forward(self, video: Tensor | None, audio: Tensor | None, video_mod: Tensor | None,
                audio_mod: Tensor | None, text: TextKV, call: LayerCall,
                history: dict[str, RingKV | GatheredKV] | None) -> tuple[Tensor | None, Tensor | None, LayerKV]:
        """Run the layer on ``(B, Nv, Dv)`` video and/or ``(B, Na, Da)`` audio tokens.

        Args:
            video_mod: the video stream's global AdaLN values ``(B, Tv, 11, Dv)`` (per latent frame).
            audio_mod: the audio stream's ``(B, S + Ta, 11, Da)``.
            text: this layer's text keys/values.
            call: geometry and masks of this forward.
            history: ring storage of cached earlier blocks per attention kind (absent kinds: no history).

        Returns:
            New video and audio tokens, and this call's keys/values (to commit into a cache).
        """
        history = history or {}
        masks = call.masks
        current: dict[str, KV] = {}
        mv = self.video.values(video_mod) if video is not None else None
        ma = self.audio.values(audio_mod) if audio is not None else None
        if video is not None:
            video, current["video_self"] = self.video.self_attention(video, mv, call.video, history.get("video_self"),
                                                                     masks.video_self)
            video = self.video.text_attention(video, text.video, text.video_mask)
        if audio is not None:
            audio, current["audio_self"] = self.audio.self_attention(audio, ma, call.audio, history.get("audio_self"),
                                                                     masks.audio_self)
            audio = self.audio.text_attention(audio, text.audio, text.audio_mask)
        if video is not None and audio is not None:
            video, audio = self._cross_modal(video, audio, mv, ma, call, history, current)
        if video is not None:
            video = self.video.feed_forward(video, mv)
        if audio is not None:
            audio = self.audio.feed_forward(audio, ma)
        return video, audio, LayerKV(**current)

    def _cross_modal(self, video: Tensor, audio: Tensor, mv: Tensor, ma: Tensor, call: LayerCall,
                     history: dict[str, RingKV | GatheredKV], current: dict[str, KV]) -> tuple[Tensor, Tensor]:
        """Both directions read the pre-update states (the inputs are not modified before both are done)."""
        query_v, source_v = self.video.cross_inputs(video, mv)
        query_a, source_a = self.audio.cross_inputs(audio, ma)
        current["audio_to_video"] = self.video.cross_attn.keys_values(source_a, call.audio.cross_rope)
        current["video_to_audio"] = self.audio.cross_attn.keys_values(source_v, call.video.cross_rope)
        a2v = with_history(history.get("audio_to_video"), current["audio_to_video"], call.audio.cross_shift)
        v2a = with_history(history.get("video_to_audio"), current["video_to_audio"], call.video.cross_shift)
        new_video = self.video.cross_attention(video, mv, query_v, a2v, call.video.cross_rope,
                                               call.masks.audio_to_video)
        new_audio = self.audio.cross_attention(audio, ma, query_a, v2a, call.audio.cross_rope,
                                               call.masks.video_to_audio)
        return new_video, new_audio
