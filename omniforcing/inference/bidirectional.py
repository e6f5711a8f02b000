"""Whole-clip generation with a bidirectional model (the teacher): multi-step Euler with per-modality CFG."""

from __future__ import annotations

import torch

from omniforcing.diffusion.samplers import sample_euler
from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.types import AVLatents


@torch.no_grad()
def generate_bidirectional(network: AVBackbone, captions: list[str], noise: AVLatents, *, steps: int = 32,
                           shift: float = 1.0, video_scale: float = 1.0, audio_scale: float = 1.0) -> AVLatents:
    """Sample the whole clip at once: ``steps`` Euler steps on :func:`euler_schedule` from ``noise``.

    Args:
        network: bidirectional backbone (called with ``causal=False``).
        captions: one prompt per clip.
        noise: pure-noise latents of the clip's geometry (``omniforcing.inference.clips.latent_noise``).
        steps: Euler steps.
        shift: schedule shift (``> 1`` spends more steps at high noise).
        video_scale: CFG scale for video (1 = no guidance).
        audio_scale: CFG scale for audio.

    Returns:
        Clean latents of the same shapes as ``noise``.
    """
    guided = video_scale != 1.0 or audio_scale != 1.0
    text = network.encode_text(captions)
    null_text = None
    if guided:
        null_text = network.encode_text(captions, drop=torch.ones(len(captions), dtype=torch.bool))
    denoiser = GuidedDenoiser(network, text, null_text, video_scale, audio_scale, causal=False)
    return sample_euler(denoiser, noise, euler_schedule(steps, shift))
