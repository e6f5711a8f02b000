"""The one interface every feature extractor implements, and helpers for user-supplied weight files."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

PreprocessingSpec = dict[str, str | int | float | bool]
"""Exact preprocessing of an extractor (sample rate, window, frames, resize policy, value range, ...)."""


class MissingWeightsError(FileNotFoundError):
    """A reference extractor was requested but its weight file was not given or does not exist."""


class InvalidWeightsError(ValueError):
    """A weight file exists but is not what the extractor expects (wrong format, keys, shapes or interface)."""


class FeatureExtractor(nn.Module, ABC):
    """A frozen network or fixed computation mapping a batch of clips to feature vectors.

    Attributes:
        name: short identifier used in metric names (``"i3d"``, ``"vggish"``, ``"video_stats"``, ...).
        modality: ``"video"`` or ``"audio"``.
        dim: feature dimension ``d``.
        is_reference: True only for the exact network + preprocessing of a published metric (FVD's I3D,
            FAD's VGGish) whose weight file was recognised; only such extractors may produce values named
            ``fvd`` / ``fad``.
        weight_sha256: sha256 of the weight file, ``None`` for weight-free extractors.
    """

    name: str
    modality: Literal["video", "audio"]
    dim: int
    is_reference: bool
    weight_sha256: str | None

    @property
    @abstractmethod
    def preprocessing(self) -> PreprocessingSpec:
        """The exact preprocessing, recorded next to every value and in cached statistics."""

    @property
    def fingerprint(self) -> str:
        """sha256 over name, dimension, weight-file sha256 and preprocessing.

        Equal fingerprints give comparable features; used as the key of cached reference statistics.
        """
        payload = {"name": self.name, "dim": self.dim, "weights": self.weight_sha256,
                   "preprocessing": self.preprocessing}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @abstractmethod
    def forward(self, media: Tensor, rate: float) -> Tensor:
        """Features of a batch.

        Args:
            media: video ``(B, T, 3, H, W)`` uint8 or float in ``[-1, 1]``; or audio ``(B, 1, S)`` float in
                ``[-1, 1]``.
            rate: frames per second (video) or samples per second (audio).

        Returns:
            ``(N, dim)`` float32 features; ``N = B`` for per-clip extractors, ``N >= B`` for extractors that
            embed several windows per clip (VGGish: one per 0.96 s).
        """


def resolve_weight_path(path: str | Path | None, env_var: str, description: str) -> Path:
    """The weight file from ``path`` or, if None, the environment variable ``env_var``.

    Raises:
        MissingWeightsError: neither is set, or the file does not exist; the message says what file is
            expected (``description``) and how to supply it.
    """
    chosen = path if path is not None else os.environ.get(env_var)
    if not chosen:
        raise MissingWeightsError(f"no weight file given for {description}: pass its local path or set "
                                  f"${env_var} (nothing is downloaded at run time; see docs/metrics.md)")
    resolved = Path(chosen).expanduser()
    if not resolved.is_file():
        raise MissingWeightsError(f"{description}: file {resolved} does not exist (from "
                                  f"{'the path argument' if path is not None else '$' + env_var})")
    return resolved


def file_digests(path: Path) -> tuple[str, str]:
    """``(sha256, git blob sha1)`` hex digests of a file, read once in 1 MiB chunks.

    The git blob id (``git hash-object FILE``) lets a copy be checked against a file committed to a public
    repository when only its blob id is known.
    """
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()
