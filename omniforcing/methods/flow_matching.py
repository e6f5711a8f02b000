"""Flow-matching objective of the bidirectional teacher (ALGORITHMS.md §2.1).

``L = w_v ||v_theta(x_t, t | c) - (eps - x0)||^2_video + w_a ||...||^2_audio`` with one ``t`` per clip shared by
both modalities (LTX-2), the caption dropped to the null embedding with probability ``condition_dropout``
(classifier-free guidance training). With ``modality="video"`` or ``"audio"`` the other stream is absent
(uni-modal pretraining on the same backbone).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise, velocity_target
from omniforcing.diffusion.time_samplers import LogitNormalTimeSampler, TimeSampler
from omniforcing.models.protocol import AVBackbone
from omniforcing.types import AVLatents

Modality = Literal["joint", "video", "audio"]


def select_modality(x: AVLatents, modality: Modality) -> AVLatents:
    """Keep the streams a run trains: both for ``joint``, one for uni-modal runs."""
    if modality == "video":
        return AVLatents(x.video, None)
    if modality == "audio":
        return AVLatents(None, x.audio)
    return x


def condition_drop_mask(batch_size: int, probability: float, generator: torch.Generator | None,
                        device: torch.device) -> Tensor:
    """``(B,)`` bool: which captions are replaced by the null embedding (CFG condition dropout)."""
    if probability <= 0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return (torch.rand(batch_size, generator=generator) < probability).to(device)


def weighted_mse(pred: AVLatents, target: AVLatents, video_weight: float, audio_weight: float) -> dict[str, Tensor]:
    """Per-modality mean squared errors and their weighted sum (``loss``); absent modalities contribute 0."""
    losses: dict[str, Tensor] = {}
    total: Tensor | None = None
    for (name, p), (_, y) in zip(pred.items(), target.items()):
        losses[f"loss_{name}"] = (p.float() - y.float()).pow(2).mean()
        term = (video_weight if name == "video" else audio_weight) * losses[f"loss_{name}"]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no modality to compute a loss on")
    losses["loss"] = total
    return losses


class FlowMatching:
    """Bidirectional joint audio-video flow matching with CFG condition dropout.

    Args:
        time_sampler: draws one flow time per clip.
        video_weight: weight of the video velocity MSE.
        audio_weight: weight of the audio velocity MSE.
        condition_dropout: probability of training a clip with the null caption.
    """

    def __init__(
        self,
        time_sampler: TimeSampler | None = None,
        video_weight: float = 1.0,
        audio_weight: float = 1.0,
        condition_dropout: float = 0.1,
    ) -> None:
        self.time_sampler = time_sampler or LogitNormalTimeSampler()
        self.video_weight = video_weight
        self.audio_weight = audio_weight
        self.condition_dropout = condition_dropout

    def loss(
        self,
        network: AVBackbone,
        x0: AVLatents,
        captions: list[str],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Flow-matching losses for clean latents ``x0`` (video ``(B, Tv, C, h, w)``, audio ``(B, Ta, C)``).

        Returns:
            ``{"loss", "loss_video"?, "loss_audio"?}`` scalars; ``loss`` is the weighted sum to optimise.
        """
        ref = x0.items()[0][1]
        batch, device = x0.batch_size, ref.device
        t = self.time_sampler((batch,), generator=generator).to(device)
        eps = x0.map(lambda m: torch.randn(m.shape, generator=generator).to(m))
        xt = x0.zip_map(eps, lambda m, e: add_noise(m, e, t))
        drop = condition_drop_mask(batch, self.condition_dropout, generator, device)
        text = network.encode_text(captions, drop=drop)
        t_per_frame = xt.map(lambda m: t[:, None].expand(batch, m.shape[1]))
        v_video, v_audio = network(xt.video, xt.audio, t_per_frame.video, t_per_frame.audio, text)
        target = x0.zip_map(eps, velocity_target)
        return weighted_mse(AVLatents(v_video, v_audio), target, self.video_weight, self.audio_weight)
