"""Bind the backbone, text and guidance into the sampler contract ``denoiser(x, t) -> velocity``.

Layering: ``inference`` depends on ``models`` and ``diffusion``; ``methods`` may use these primitives (the
Self-Forcing and Mutual Forcing rollouts are the same block loop as streaming inference).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.types import AVLatents


def per_frame_time(t: Tensor, x: AVLatents) -> AVLatents:
    """Expand a per-clip time ``(B,)`` to per-latent-frame times ``(B, T_m)`` for each present modality."""
    return x.map(lambda m: t[:, None].to(m.device).expand(m.shape[0], m.shape[1]))


class GuidedDenoiser:
    """``denoiser(x, t)`` for the samplers: one backbone call, or two with classifier-free guidance.

    Args:
        network: the backbone (velocity model).
        text: text context of the prompts (``network.encode_text``).
        null_text: context of the null prompt; required when a guidance scale differs from 1.
        video_scale: CFG scale of the video stream (``omniforcing.diffusion.guidance`` convention).
        audio_scale: CFG scale of the audio stream.
        cache: KV cache of the conditional branch (causal students), or ``None``.
        null_cache: KV cache of the unconditional branch (its history was computed with the null prompt).
        **forward_kwargs: passed to every backbone call (``causal``, ``block``, ``step_size``, ...).
    """

    def __init__(self, network: nn.Module, text: Any, null_text: Any = None, video_scale: float = 1.0,
                 audio_scale: float = 1.0, cache: Any = None, null_cache: Any = None, **forward_kwargs: Any) -> None:
        self.uses_guidance = video_scale != 1.0 or audio_scale != 1.0
        if self.uses_guidance and null_text is None:
            raise ValueError("classifier-free guidance needs the null text context")
        if self.uses_guidance and (cache is None) != (null_cache is None):
            raise ValueError("with a KV cache, guidance needs a second cache for the unconditional branch")
        self.network, self.text, self.null_text = network, text, null_text
        self.video_scale, self.audio_scale = video_scale, audio_scale
        self.cache, self.null_cache, self.forward_kwargs = cache, null_cache, forward_kwargs

    def _velocity(self, x: AVLatents, t: Tensor, text: Any, cache: Any) -> AVLatents:
        tt = per_frame_time(t, x)
        kwargs = dict(self.forward_kwargs)
        if cache is not None:
            kwargs["cache"] = cache
        video, audio = self.network(x.video, x.audio, tt.video, tt.audio, text, **kwargs)
        return AVLatents(video, audio)

    def __call__(self, x: AVLatents, t: Tensor) -> AVLatents:
        cond = self._velocity(x, t, self.text, self.cache)
        if not self.uses_guidance:
            return cond
        uncond = self._velocity(x, t, self.null_text, self.null_cache)
        return AVLatents(
            None if cond.video is None else classifier_free_guidance(cond.video, uncond.video, self.video_scale),
            None if cond.audio is None else classifier_free_guidance(cond.audio, uncond.audio, self.audio_scale),
        )
