"""The one classifier-free-guidance branch, with or without KV caches (ALGORITHMS.md §3.4, §5.4).

A :class:`Branch` is one backbone call site: the network, the text context and (causal students) the KV cache
whose history was computed with that text. :class:`GuidedDenoiser` combines the conditional branch with the
unconditional one (the null prompt and its own cache) under per-modality CFG scales; it is the teacher's
whole-clip denoiser, DMD's real and fake scores, the few-step student's block denoiser and Mutual Forcing's
multi-step mode alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.parallelize import checkpoint_cached_forward
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.text import TextContext
from omniforcing.types import AVLatents


def clip_time(t: Tensor, x: AVLatents) -> AVLatents:
    """The same per-clip time ``(B,)`` for each present modality of ``x``."""
    return x.map(lambda _: t)


@dataclass(frozen=True)
class Branch:
    """One backbone call site: a network, its text context and (causal calls) the cache built with that text.

    Args:
        network: the backbone.
        text: text context (``network.encode_text``); the same object for every call on ``cache``.
        cache: KV cache of committed blocks, or ``None`` (whole-clip calls).
    """

    network: AVBackbone
    text: TextContext
    cache: AVKVCache | None = None

    def velocity(self, x: AVLatents, t: AVLatents, *, checkpointed: bool = False, **forward: Any) -> AVLatents:
        """Velocity of ``x`` with one ``(B,)`` time per present modality.

        Args:
            x: latents, video ``(B, Tv, C, h, w)`` / audio ``(B, Ta, C)``.
            t: ``(B,)`` flow time of each present modality (shared by its frames).
            checkpointed: activation-checkpoint the call with the cache snapshotted (Self-Forcing's exit step).
            **forward: backbone keywords (``block``, ``commit``, ``step_size``, ``causal``).
        """
        tt = x.zip_map(t, lambda m, tm: tm[:, None].to(m.device).expand(m.shape[0], m.shape[1]))
        args = (x.video, x.audio, tt.video, tt.audio, self.text)
        if self.cache is not None and checkpointed:
            video, audio = checkpoint_cached_forward(self.network, *args, cache=self.cache, **forward)
        elif self.cache is not None:
            video, audio = self.network(*args, cache=self.cache, **forward)
        else:
            video, audio = self.network(*args, **forward)
        return AVLatents(video, audio)


class GuidedDenoiser:
    """``denoiser(x, t)`` for the samplers: one backbone call, or two with classifier-free guidance.

    Args:
        network: the backbone (velocity model).
        text: text context of the prompts (``network.encode_text``).
        null_text: context of the null prompt; required when a guidance scale differs from 1.
        video_scale: CFG scale of the video stream (``omniforcing.diffusion.guidance`` convention, 1 = none).
        audio_scale: CFG scale of the audio stream.
        cache: KV cache of the conditional branch (causal students), or ``None``.
        null_cache: KV cache of the unconditional branch (its history was computed with the null prompt).
        **forward_kwargs: passed to every backbone call (``causal``, ``block``, ``step_size``, ...).
    """

    def __init__(self, network: AVBackbone, text: TextContext, null_text: TextContext | None = None,
                 video_scale: float = 1.0, audio_scale: float = 1.0, cache: AVKVCache | None = None,
                 null_cache: AVKVCache | None = None, **forward_kwargs: Any) -> None:
        self.uses_guidance = video_scale != 1.0 or audio_scale != 1.0
        if self.uses_guidance and null_text is None:
            raise ValueError("classifier-free guidance needs the null text context")
        if self.uses_guidance and (cache is None) != (null_cache is None):
            raise ValueError("with a KV cache, guidance needs a second cache for the unconditional branch")
        self.cond = Branch(network, text, cache)
        self.uncond = Branch(network, null_text, null_cache) if self.uses_guidance else None
        self.video_scale, self.audio_scale = video_scale, audio_scale
        self.forward_kwargs = forward_kwargs

    @property
    def network(self) -> AVBackbone:
        """The backbone."""
        return self.cond.network

    @property
    def branches(self) -> tuple[Branch, ...]:
        """Conditional branch, then the unconditional one when guided (every cache a commit writes)."""
        return (self.cond,) if self.uncond is None else (self.cond, self.uncond)

    def velocity(self, x: AVLatents, t: AVLatents, *, checkpointed: bool = False, **forward: Any) -> AVLatents:
        """Guided velocity with one ``(B,)`` time per present modality (``checkpointed``: conditional call only)."""
        forward = {**self.forward_kwargs, **forward}
        cond = self.cond.velocity(x, t, checkpointed=checkpointed, **forward)
        if self.uncond is None:
            return cond
        uncond = self.uncond.velocity(x, t, **forward)
        return AVLatents(
            None if cond.video is None else classifier_free_guidance(cond.video, uncond.video, self.video_scale),
            None if cond.audio is None else classifier_free_guidance(cond.audio, uncond.audio, self.audio_scale),
        )

    def __call__(self, x: AVLatents, t: Tensor) -> AVLatents:
        """The samplers' contract (:mod:`omniforcing.diffusion.samplers`): ``t`` ``(B,)`` shared by the clip."""
        return self.velocity(x, clip_time(t, x))
