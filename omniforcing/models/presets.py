"""Named model sizes as plain constructor arguments (recipes/model/*.yaml are written from these).

``tiny`` is for tests, ``small`` for CPU demos, ``base`` and ``large`` for GPUs. Every preset uses the default
latent geometry (16 x 4 x 4 video latents, 32-channel audio latents); pass overrides for other codecs.
Parameter counts: :func:`parameter_counts`; the table is printed by ``python -m omniforcing.bench.model``.
"""

from __future__ import annotations

from typing import Any

import torch

from omniforcing.models.transformer import DualStreamTransformer

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(video_width=32, audio_width=32, depth=2, video_heads=2, audio_heads=2,
                 text_width=32, text_depth=1, text_heads=2, text_max_length=32),
    "small": dict(video_width=128, audio_width=64, depth=6, video_heads=4, audio_heads=2,
                  text_width=64, text_depth=2, text_heads=4, text_max_length=192),
    "base": dict(video_width=512, audio_width=256, depth=12, video_heads=8, audio_heads=4,
                 text_width=256, text_depth=4, text_heads=4, text_max_length=256),
    "large": dict(video_width=1024, audio_width=512, depth=24, video_heads=16, audio_heads=8,
                  text_width=512, text_depth=6, text_heads=8, text_max_length=256),
}


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}


def build_preset(name: str, **overrides: Any) -> DualStreamTransformer:
    """A freshly initialised model of preset ``name``."""
    return DualStreamTransformer(**preset_kwargs(name, **overrides))


def parameter_counts(name: str, **overrides: Any) -> dict[str, int]:
    """Parameters of preset ``name`` by group: video stream, audio stream, cross-modal attention, text, total.

    The model is built on the meta device, so even ``large`` costs no memory.
    """
    with torch.device("meta"):
        model = build_preset(name, **overrides)
    groups = {"video": 0, "audio": 0, "cross-modal": 0, "text": 0}
    for key, param in model.named_parameters():
        if ".cross_attn." in key:
            groups["cross-modal"] += param.numel()
        elif ".text." in f".{key}" or key.startswith("text_encoder."):
            groups["text"] += param.numel()
        else:
            groups["video" if ".video." in f".{key}" else "audio"] += param.numel()
    groups["total"] = sum(groups.values())
    return groups
