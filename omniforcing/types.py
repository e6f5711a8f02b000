"""Typed containers shared by data, codecs, models and training.

Shape conventions used across the package:

* raw video: ``(B, T, 3, H, W)`` float in ``[-1, 1]``, ``T = 1 + fps * seconds`` frames;
* raw audio: ``(B, 1, S)`` float in ``[-1, 1]`` (mono), ``S = sample_rate * seconds + sample_rate // 25``;
* video latents: ``(B, Tv, C, h, w)`` with ``Tv = 1 + 3 * seconds`` (one latent for frame 0, then one per
  8 frames);
* audio latents: ``(B, Ta, C)`` with ``Ta = 1 + 25 * seconds`` (40 ms each).

The extra first video frame and first audio latent are the "lead" of a clip: with a causal codec they cover
the same first instant (frame 0 lasts 41.7 ms, audio latent 0 lasts 40 ms), and together they form the global
prefix of the block-causal layout (DESIGN.md, "Tokens and time").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

AUDIO_LATENT_RATE = 25
"""Audio latents per second of every codec in this package (40 ms each, as LTX-2)."""


def frame_label(frame_size: tuple[int, int]) -> str:
    """``(512, 768)`` -> ``"512x768"`` (height x width), as every message about frame sizes writes it."""
    return f"{frame_size[0]}x{frame_size[1]}"


@dataclass(frozen=True)
class ClipSpec:
    """Physical geometry of one training clip; the one value data and model must agree on.

    Args:
        seconds: whole seconds after the lead frame (the number of 1-s macro-blocks after the prefix).
        fps: video frame rate.
        sample_rate: audio sample rate in Hz.
        size: video frame height in pixels, and its width too unless ``width`` is given (square frames).
        width: video frame width in pixels for frames that are not square (LTX-2 is trained at 512x768:
            ``size=512, width=768``); ``None`` or ``size``: square.
    """

    seconds: int = 2
    fps: int = 24
    sample_rate: int = 16000
    size: int = 32
    width: int | None = None

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"ClipSpec.seconds must be >= 0, got {self.seconds}")
        if self.width is not None and self.width <= 0:
            raise ValueError(f"ClipSpec.width must be > 0 (or None for square frames), got {self.width}")
        if self.width == self.size:  # one spelling of a square frame, so equal geometries compare equal
            object.__setattr__(self, "width", None)
        if self.sample_rate % AUDIO_LATENT_RATE:
            raise ValueError(f"sample_rate must be a multiple of {AUDIO_LATENT_RATE}, got {self.sample_rate}")

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of a video frame in pixels."""
        return self.size, self.size if self.width is None else self.width

    def width_record(self) -> dict[str, int]:
        """``{"width": w}`` for frames that are not square, else ``{}``: what shard metadata and manifests
        record, so square shards stay as they were before ``width`` existed (and resume against them)."""
        return {} if self.width is None else {"width": self.width}

    @property
    def num_frames(self) -> int:
        """Video frames in a clip: the lead frame plus ``fps`` per second."""
        return 1 + self.fps * self.seconds

    @property
    def num_samples(self) -> int:
        """Audio samples in a clip: one 40 ms lead latent plus ``sample_rate`` per second."""
        return self.sample_rate * self.seconds + self.sample_rate // AUDIO_LATENT_RATE

    @property
    def duration(self) -> float:
        """Duration of the video part in seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps


@dataclass
class ClipInfo:
    """Metadata of one clip, as stored in the shard's ``json`` member.

    Args:
        key: the sample key in its shard.
        caption: text describing the clip.
        source: where the clip came from (``synthetic`` or the packed file's path).
        offset: start of the crop inside the stored clip, in seconds.
        event_times: ground-truth event times in seconds relative to the crop start (synthetic data only,
            otherwise empty), shape ``(E,)``.
    """

    key: str
    caption: str
    source: str = ""
    offset: float = 0.0
    event_times: Tensor = field(default_factory=lambda: torch.zeros(0))


@dataclass
class AVBatch:
    """A collated batch of paired clips; raw media, latents, or both.

    Args:
        captions: ``B`` captions.
        video: ``(B, T, 3, H, W)`` float32 in ``[-1, 1]``, or ``None`` for latent-only batches.
        audio: ``(B, 1, S)`` float32 in ``[-1, 1]``, or ``None``.
        video_latents: ``(B, Tv, C, h, w)`` normalised codec latents, or ``None``.
        audio_latents: ``(B, Ta, C)`` normalised codec latents, or ``None``.
        info: ``B`` metadata records.
    """

    captions: list[str]
    video: Tensor | None = None
    audio: Tensor | None = None
    video_latents: Tensor | None = None
    audio_latents: Tensor | None = None
    info: list[ClipInfo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class AVLatents:
    """A pair of per-modality tensors that travel together (either may be ``None`` for uni-modal runs).

    Used for latents, velocities, noise and per-token times alike: ``video`` is ``(B, Tv, ...)`` and ``audio``
    is ``(B, Ta, ...)``, the second axis being latent time in both.
    """

    video: Tensor | None = None
    audio: Tensor | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> AVLatents:
        """Apply ``fn`` to each present tensor."""
        return AVLatents(*(None if x is None else fn(x) for x in (self.video, self.audio)))

    def zip_map(self, other: AVLatents, fn: Callable[[Tensor, Tensor], Tensor]) -> AVLatents:
        """Apply ``fn(self_m, other_m)`` per present modality; both pairs must have the same modalities."""
        out = []
        for name, a, b in (("video", self.video, other.video), ("audio", self.audio, other.audio)):
            if (a is None) != (b is None):
                raise ValueError(f"modality '{name}' is present in one operand only")
            out.append(None if a is None else fn(a, b))
        return AVLatents(*out)

    def items(self) -> list[tuple[str, Tensor]]:
        """``[(name, tensor)]`` for the present modalities, video first."""
        return [(n, x) for n, x in (("video", self.video), ("audio", self.audio)) if x is not None]

    @property
    def batch_size(self) -> int:
        """Leading dimension of the present tensors."""
        return self.items()[0][1].shape[0]

    def detach(self) -> AVLatents:
        """Detached copy (no gradient history)."""
        return self.map(Tensor.detach)
