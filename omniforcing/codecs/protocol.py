"""What a learned codec provides to be trained by ``omniforcing fit`` (:class:`TrainableCodec`).

:class:`~omniforcing.training.CodecLitModule` trains any codec that has these members; it never tests for a
concrete codec class. The learned codecs here (:class:`~omniforcing.codecs.CausalVideoAutoencoder`,
:class:`~omniforcing.codecs.MelAutoencoder`) implement them with the objectives of
:mod:`omniforcing.codecs.objectives`; a new codec implements the same four members (docs/extending.md, "A codec").
A codec is a video codec or an audio codec by its base class (:class:`~omniforcing.codecs.base.VideoCodec` /
:class:`~omniforcing.codecs.base.AudioCodec`), which decides the raw input it trains on: ``batch.video``
``(B, T, 3, H, W)`` or ``batch.audio`` ``(B, 1, S)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from omniforcing.codecs.normalization import LatentNormalizer


@dataclass(frozen=True)
class CodecLossWeights:
    """Weights of the codec objectives' terms; each codec uses the ones of its objective.

    Args:
        gradient_weight: video: spatial-gradient term (against blur).
        temporal_weight: video: frame-difference term (against 8-frame flicker).
        motion_boost: video: extra weight of pixels that differ from the clip's static background.
        convergence_weight: audio: mel spectral-convergence term.
        kl_weight: KL term of the variational bottleneck.
    """

    gradient_weight: float = 0.5
    temporal_weight: float = 0.5
    motion_boost: float = 4.0
    convergence_weight: float = 1.0
    kl_weight: float = 1e-4


@dataclass
class CodecReconstruction:
    """What validation logs for one batch of raw media.

    Args:
        measures: scalar measures logged as ``val/<name>`` (e.g. ``psnr``, ``spectral_convergence``).
        output: the reconstructed media, shaped like the input (shown beside it in TensorBoard).
        error_over_time: ``(T,)`` mean squared error per frame (video) or per latent (audio), summed over the
            batch's clips (plotted over time).
    """

    measures: dict[str, Tensor]
    output: Tensor
    error_over_time: Tensor


@runtime_checkable
class TrainableCodec(Protocol):
    """A codec with an objective: what :class:`~omniforcing.training.CodecLitModule` calls.

    Attributes:
        normalizer: the latent statistics, refitted on the validation clips' raw latents at every validation.
    """

    normalizer: LatentNormalizer

    def encode_raw(self, media: Tensor) -> Tensor:
        """Raw (unnormalised) latents of raw media; channels on axis 2 (``(B, Tv, C, h, w)`` or ``(B, Ta, C)``)."""
        ...

    def check_trainable(self) -> None:
        """Raise ``ValueError`` (one line, saying what to set) if the codec cannot be trained as configured."""
        ...

    def training_losses(self, media: Tensor, weights: CodecLossWeights) -> dict[str, Tensor]:
        """Named scalar loss terms on a raw batch, with their weighted sum under ``"loss"``."""
        ...

    def reconstruction(self, media: Tensor, raw: Tensor) -> CodecReconstruction:
        """Validation measures of a raw batch ``media`` whose raw latents are ``raw``."""
        ...
