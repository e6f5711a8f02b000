"""Token positions -> LTX-2 RoPE tables, through the transformer's own coordinate and RoPE modules.

A range of latents is placed at its *absolute* position in the clip, so a streamed block's queries and keys
are rotated exactly as in the whole-clip forward (keys are cached rotated; ``omniforcing.models.kv_cache``):

* video latents ``first .. first + count - 1``: ``rope.prepare_video_coords`` of the first ``first + count``
  latents (LTX-2's causal first frame, VAE scale factors and fps), keeping the tokens of the range;
* audio latents: ``audio_rope.prepare_audio_coords(..., shift=first)``, diffusers' own offset of the latent grid.

The tables are those of ``LTX2VideoTransformer3DModel.forward`` step 1 (``self.rope``, ``self.audio_rope``,
``self.cross_attn_rope`` on the time axis, ``self.cross_attn_audio_rope``). Audio sink tokens get the identity
rotation (cos 1, sin 0; ALGORITHMS.md §6.3) in audio self-attention and in audio<->video attention, prepended
along the token axis (axis -2 for both of diffusers' layouts: interleaved ``(B, N, D)``, split ``(B, H, N, D/2)``).

The "relative" prefix policy re-places pinned keys by a pure time shift (:meth:`TokenCoords.time_shift`): LTX-2's
angle ``(2 c / max - 1) * freq`` is affine in the coordinate ``c``, so a key rotated at ``c`` and then by the
difference of the tables at ``Δ`` and at 0 is the key rotated at ``c + Δ`` (up to float32 rounding of diffusers'
angles).

Tables are made with batch 1 (expand to the batch at use), memoised per (first, count, sinks, device), outside
inference mode (so tables first made while sampling can be saved for backward by a training forward).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

Rope = tuple[Tensor, Tensor]  # diffusers' (cos, sin)


class StreamRope(NamedTuple):
    """RoPE of one stream's tokens: ``self_rope`` for its self-attention, ``cross_rope`` (time only, at the
    audio<->video attention width) for cross-modal attention."""

    self_rope: Rope
    cross_rope: Rope


def with_identity(rope: Rope, count: int) -> Rope:
    """``rope`` with ``count`` identity rotations (cos 1, sin 0) prepended on the token axis (-2)."""
    if not count:
        return rope
    cos, sin = rope
    shape = (*cos.shape[:-2], count, cos.shape[-1])
    return (torch.cat([cos.new_ones(shape), cos], dim=-2), torch.cat([sin.new_zeros(shape), sin], dim=-2))


def batched(rope: Rope, batch: int) -> Rope:
    """A batch-1 table viewed at ``batch`` (diffusers' split rotation reads the batch from the table)."""
    return tuple(t.expand(batch, *t.shape[1:]) for t in rope)


class TokenCoords:
    """RoPE tables of latent ranges for one ``LTX2VideoTransformer3DModel``.

    Args:
        transformer: the diffusers model (its ``rope``, ``audio_rope``, ``cross_attn_rope``,
            ``cross_attn_audio_rope`` modules).
        video_grid: ``(h, w)`` tokens per video latent.
        fps: video frame rate (the time axis of video RoPE is in seconds).
    """

    def __init__(self, transformer: torch.nn.Module, video_grid: tuple[int, int], fps: float) -> None:
        self.transformer = transformer
        self.video_grid = video_grid
        self.fps = fps

    @functools.lru_cache(maxsize=64)  # noqa: B019 - lives as long as its backbone
    def video(self, first: int, count: int, device: torch.device) -> StreamRope:
        """Tables ``(1, count * h * w, ...)`` of video latents ``first .. first + count - 1``."""
        h, w = self.video_grid
        model = self.transformer
        with torch.inference_mode(False):
            coords = model.rope.prepare_video_coords(1, first + count, h, w, device, fps=self.fps)
            coords = coords[:, :, first * h * w:]  # (1, 3, count*h*w, 2): absolute positions of the range
            return StreamRope(model.rope(coords, device=device), model.cross_attn_rope(coords[:, 0:1], device=device))

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def audio(self, first: int, count: int, sinks: int, device: torch.device) -> StreamRope:
        """Tables ``(1, sinks + count, ...)``: ``sinks`` identity rotations, then audio latents ``first ..``."""
        model = self.transformer
        with torch.inference_mode(False):
            coords = model.audio_rope.prepare_audio_coords(1, count, device, shift=first)
            return StreamRope(with_identity(model.audio_rope(coords, device=device), sinks),
                              with_identity(model.cross_attn_audio_rope(coords, device=device), sinks))

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def time_shift(self, seconds: float, device: torch.device) -> dict[str, Rope]:
        """Per cached attention kind, the rotation moving its keys ``seconds`` forward in time (one token,
        broadcast over keys): video self-attention (``rope``), video keys of video->audio attention
        (``cross_attn_rope``), audio self-attention (``audio_rope``), audio keys of audio->video attention
        (``cross_attn_audio_rope``)."""
        model = self.transformer
        with torch.inference_mode(False):
            origin = torch.zeros(1, 3, 1, 2, device=device)  # [start, end) = [0, 0): midpoint 0 on every axis
            moved = origin.clone()
            moved[:, 0] = seconds
            return {"video_self": _difference(model.rope, origin, moved),
                    "video_to_audio": _difference(model.cross_attn_rope, origin[:, :1], moved[:, :1]),
                    "audio_self": _difference(model.audio_rope, origin[:, :1], moved[:, :1]),
                    "audio_to_video": _difference(model.cross_attn_audio_rope, origin[:, :1], moved[:, :1])}


def _difference(rope: torch.nn.Module, origin: Tensor, moved: Tensor) -> Rope:
    """Tables of the angle ``angle(moved) - angle(origin)`` (cos/sin of a difference, elementwise)."""
    (cos_a, sin_a), (cos_b, sin_b) = rope(origin, device=origin.device), rope(moved, device=origin.device)
    return cos_b * cos_a + sin_b * sin_a, sin_b * cos_a - cos_b * sin_a
