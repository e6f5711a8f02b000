"""The rules of one backbone call that every :class:`~omniforcing.models.protocol.AVBackbone` shares.

Input checks, the full-sequence attention masks and the cache's plan of a cached call depend only on the
protocol's attributes (``video_channels``, ``video_grid``, ``audio_channels``, ``num_audio_sinks``, ``causal``,
``step_size_conditioning``, ``device``, ``dtype``), so :class:`~omniforcing.models.DualStreamTransformer` and
the LTX-2 adapter apply exactly the same mask semantics and cache policy (docs/architecture.md) from here.
"""

from __future__ import annotations

from torch import Tensor

from omniforcing.models.kv_cache import AVKVCache, CachePlan
from omniforcing.models.layout import AttentionMasks, BlockLayout, additive_masks, block_causal_masks, window_blocks
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.text import TextContext


def check_inputs(backbone: AVBackbone, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None,
                 t_audio: Tensor | None, text: TextContext, step_size: Tensor | None) -> tuple[int, int, int]:
    """Validate a forward's inputs (video ``(B, Tv, Cv, h, w)``, audio ``(B, Ta, Ca)``, times ``(B, Tv)`` /
    ``(B, Ta)``, step size ``(B,)``); returns ``(B, Tv, Ta)``. Raises ``ValueError`` naming the wrong input."""
    if video is None and audio is None:
        raise ValueError("give video, audio or both")
    batch = (video if video is not None else audio).shape[0]
    num_video = num_audio = 0
    if video is not None:
        if video.dim() != 5 or tuple(video.shape[2:]) != (backbone.video_channels, *backbone.video_grid):
            raise ValueError(f"video must be (B, Tv, {backbone.video_channels}, {backbone.video_grid[0]}, "
                             f"{backbone.video_grid[1]}), got {tuple(video.shape)}")
        num_video = video.shape[1]
        check_time("t_video", t_video, (batch, num_video))
    if audio is not None:
        if audio.dim() != 3 or audio.shape[2] != backbone.audio_channels or audio.shape[0] != batch:
            raise ValueError(f"audio must be (B={batch}, Ta, {backbone.audio_channels}), got {tuple(audio.shape)}")
        num_audio = audio.shape[1]
        check_time("t_audio", t_audio, (batch, num_audio))
    if text.batch_size != batch:
        raise ValueError(f"text context has batch {text.batch_size}, the latents have {batch}")
    if backbone.step_size_conditioning != (step_size is not None):
        raise ValueError("pass step_size (B,) exactly when the model has step_size_conditioning "
                         f"(it {'has' if backbone.step_size_conditioning else 'does not have'} it)")
    if step_size is not None and tuple(step_size.shape) != (batch,):
        raise ValueError(f"step_size must be ({batch},), got {tuple(step_size.shape)}")
    return batch, num_video, num_audio


def check_time(name: str, t: Tensor | None, shape: tuple[int, int]) -> None:
    """One flow time per latent: ``t`` must have ``shape``."""
    if t is None or tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {shape} (one flow time per latent), got "
                         f"{None if t is None else tuple(t.shape)}")


def full_masks(backbone: AVBackbone, layout: BlockLayout, causal: bool | None, window_seconds: float | None,
               audio_window_seconds: float | None) -> AttentionMasks:
    """Additive masks of a full-sequence forward: none when bidirectional, else the block-causal masks of
    ``layout`` (prefix, sinks visible to every query, optional local windows per modality)."""
    causal = backbone.causal if causal is None else causal
    video_window = window_blocks(window_seconds)
    audio_window = window_blocks(window_seconds if audio_window_seconds is None else audio_window_seconds)
    if not causal:
        if video_window or audio_window:
            raise ValueError("a local attention window needs the block-causal mask (causal=True)")
        return AttentionMasks()
    masks = block_causal_masks(layout, backbone.video_grid[0] * backbone.video_grid[1], backbone.num_audio_sinks,
                               video_window, audio_window, str(backbone.device))
    return additive_masks(masks, backbone.dtype)


def cache_plan(backbone: AVBackbone, cache: AVKVCache, layout: BlockLayout, block: int, has_video: bool,
               has_audio: bool) -> CachePlan:
    """The cache's plan for a call of blocks ``block .. layout.num_blocks - 1`` (memoised by the cache, so
    every denoising step and the commit of a block share one; host arithmetic only)."""
    tokens_per_frame = backbone.video_grid[0] * backbone.video_grid[1]
    blocks = range(block, layout.num_blocks)

    def counts(start, total: int, per: int, extra: int) -> tuple[tuple[int, int], ...]:
        return tuple((b, (min(start(b + 1), total) - start(b)) * per + (extra if b == 0 else 0)) for b in blocks)

    video = counts(layout.video_start, layout.num_video, tokens_per_frame, 0) if has_video else None
    audio = counts(layout.audio_start, layout.num_audio, 1, backbone.num_audio_sinks) if has_audio else None
    return cache.plan(block, video, audio, (layout.video_rate * tokens_per_frame, layout.audio_rate),
                      layout.is_complete, backbone.device)
