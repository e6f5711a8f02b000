"""One entry point to generate clips from any trained model (teacher or streaming student)."""

from __future__ import annotations

from typing import Any

import torch

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import GeneratedClips, decode_latents, latent_noise
from omniforcing.models.protocol import AVBackbone


def method_arg(config: dict[str, Any], name: str, default: Any) -> Any:
    """A generation setting recorded with the model (``config["method_args"]``), or ``default``."""
    return config.get("method_args", {}).get(name, default)


def modalities(config: dict[str, Any]) -> tuple[bool, bool]:
    """``(has_video, has_audio)`` of the model's training modality."""
    modality = method_arg(config, "modality", "joint")
    return modality != "audio", modality != "video"


@torch.no_grad()
def generate_teacher_clips(network: AVBackbone, codec: AVCodec, config: dict[str, Any], captions: list[str],
                           seconds: int, seed: int = 0, steps: int | None = None, video_cfg: float | None = None,
                           audio_cfg: float | None = None) -> GeneratedClips:
    """Whole-clip generation with a bidirectional model, using its recorded sampler settings unless overridden."""
    device = network.device
    has_video, has_audio = modalities(config)
    noise = latent_noise(codec, seconds, len(captions), video=has_video, audio=has_audio,
                         generator=torch.Generator().manual_seed(seed), device=device)
    latents = generate_bidirectional(
        network, captions, noise,
        steps=steps or method_arg(config, "sample_steps", 32),
        shift=method_arg(config, "sample_shift", 1.0),
        video_scale=method_arg(config, "video_cfg", 1.0) if video_cfg is None else video_cfg,
        audio_scale=method_arg(config, "audio_cfg", 1.0) if audio_cfg is None else audio_cfg,
    )
    return decode_latents(codec, latents, captions)
