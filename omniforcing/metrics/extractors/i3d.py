"""I3D (Kinetics-400) features for FVD from the StyleGAN-V TorchScript file ``i3d_torchscript.pt``.

The file is the TorchScript port of the TF-Hub ``i3d-kinetics-400/1`` module used by the original FVD code
(Unterthiner et al. 2018), published with StyleGAN-V (Skorokhodov et al., CVPR 2022) and checked against TF
by ``universome/fvd-comparison``. Its interface (METRICS.md §1.2)::

    forward(Tensor x, bool rescale=False, bool resize=False, bool return_features=False) -> Tensor

with ``x`` a float video ``(B, 3, T, H, W)``; ``rescale=True`` maps ``[0, 255]`` to ``[-1, 1]``,
``resize=True`` resizes every frame to 224x224 inside the module, ``return_features=True`` returns the
400-d pre-softmax logits averaged over time.

Presets (both reference protocols, same weights):

* ``"stylegan_v"`` — StyleGAN-V's ``fvd2048_16f``: the first ``num_frames`` (16) consecutive frames at the
  clip's own frame rate, uint8-range floats, ``rescale=True, resize=True, return_features=True``;
* ``"google"`` — the original FVD preprocessing: every frame resized straight to 224x224 with TF1's
  ``resize_bilinear`` (``align_corners=False``, no half-pixel centres), then ``2 x / 255 - 1``, and
  ``rescale=False, resize=False``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from omniforcing.metrics.extractors.base import (
    FeatureExtractor,
    InvalidWeightsError,
    PreprocessingSpec,
    file_digests,
    resolve_weight_path,
)
from omniforcing.metrics.inputs import video_to_unit_range

logger = logging.getLogger(__name__)

I3D_PATH_ENV = "OMNIFORCING_I3D_PATH"
"""Environment variable naming the local ``i3d_torchscript.pt`` when no path is passed."""

I3D_GIT_BLOB = "93daef59c7ae0e9e8f76225521407e60cbafa6aa"
"""``git hash-object`` of ``fvd/styleganv/i3d_torchscript.pt`` in JunyaoHu/common_metrics_on_video_quality,
a public copy of the StyleGAN-V file (METRICS.md §1.7)."""

I3D_FEATURE_DIM = 400
_EXPECTED_ARGUMENTS = ("x", "rescale", "resize", "return_features")
_DESCRIPTION = "the FVD I3D network (StyleGAN-V 'i3d_torchscript.pt')"


def load_i3d_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a TorchScript module from ``path`` on the CPU and check it has the I3D call interface.

    Raises:
        InvalidWeightsError: the file is not TorchScript, or ``forward`` lacks the arguments
            ``x, rescale, resize, return_features``.
    """
    try:
        with warnings.catch_warnings():
            # torch 2.11 deprecates TorchScript, but the reference FVD network exists only in this format
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise InvalidWeightsError(f"{path} is not a TorchScript module, so it cannot be {_DESCRIPTION} (a state "
                                  f"dict or a pickled nn.Module will not do); loader said: {error}") from error
    schema = getattr(getattr(module, "forward", None), "schema", None)
    names = tuple(argument.name for argument in schema.arguments[1:]) if schema is not None else ()
    if names[:len(_EXPECTED_ARGUMENTS)] != _EXPECTED_ARGUMENTS:
        raise InvalidWeightsError(f"{path} is TorchScript but its forward{names} does not match {_DESCRIPTION}, "
                                  f"which takes forward(x, rescale, resize, return_features)")
    return module.eval()


def resize_bilinear_tf1(frames: Tensor, size: int) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size x size`` as TF1's ``resize_bilinear``.

    Source coordinate ``dst * in / out``, no half-pixel offset, edge clamped: what the original FVD code uses.
    """
    height, width = frames.shape[-2:]
    ys = torch.arange(size, dtype=torch.float32, device=frames.device) * (height / size)
    xs = torch.arange(size, dtype=torch.float32, device=frames.device) * (width / size)
    grid_y, grid_x = torch.meshgrid(2 * ys / max(height - 1, 1) - 1, 2 * xs / max(width - 1, 1) - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).expand(frames.shape[0], size, size, 2)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)


class I3DFeatures(FeatureExtractor):
    """400-d I3D logits for FVD, from a user-supplied ``i3d_torchscript.pt``.

    Args:
        path: local path of ``i3d_torchscript.pt``; None reads ``$OMNIFORCING_I3D_PATH``.
        preset: ``"stylegan_v"`` or ``"google"`` preprocessing (module docstring).
        num_frames: consecutive frames taken from the start of every clip (16 in both presets' papers).
        batch_size: clips per network call.
        check_known_hash: when True, a file whose git blob id differs from the known public copy
            (:data:`I3D_GIT_BLOB`) still loads but is not treated as the reference network (values are logged
            as ``fd_i3d``, not ``fvd``), with a warning.

    Raises:
        MissingWeightsError: no file given or it does not exist.
        InvalidWeightsError: the file is not a TorchScript module with the I3D interface.
    """

    name = "i3d"
    modality = "video"
    dim = I3D_FEATURE_DIM

    def __init__(self, path: str | Path | None = None, *, preset: Literal["stylegan_v", "google"] = "stylegan_v",
                 num_frames: int = 16, batch_size: int = 16, check_known_hash: bool = True) -> None:
        super().__init__()
        resolved = resolve_weight_path(path, I3D_PATH_ENV, _DESCRIPTION)
        self.network = load_i3d_torchscript(resolved)
        self.weight_sha256, blob = file_digests(resolved)
        known = blob == I3D_GIT_BLOB
        if check_known_hash and not known:
            logger.warning("%s has git blob id %s, not the known StyleGAN-V file %s: its features are logged as "
                           "fd_i3d, not fvd (pass check_known_hash=False if you trust this file)", resolved, blob,
                           I3D_GIT_BLOB)
        self.is_reference = known or not check_known_hash
        self.preset = preset
        self.num_frames = num_frames
        self.batch_size = batch_size

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """Frames, spatial policy and value range of the chosen preset."""
        spec: PreprocessingSpec = {"preset": self.preset, "num_frames": self.num_frames, "frames": "first, native fps",
                                   "features": "400 pre-softmax logits, time-averaged"}
        if self.preset == "stylegan_v":
            spec.update(input="float [0,255] BCTHW", rescale=True, resize=True)
        else:
            spec.update(input="TF1 resize_bilinear to 224x224, 2x/255-1", rescale=False, resize=False)
        return spec

    @torch.no_grad()
    def forward(self, media: Tensor, rate: float) -> Tensor:
        """I3D features ``(B, 400)`` of videos ``(B, T, 3, H, W)`` (uint8 or float in ``[-1, 1]``).

        Needs ``T >= num_frames``; ``rate`` (fps) is not used: frames are taken at the clip's own rate, as in
        StyleGAN-V.
        """
        if media.ndim != 5 or media.shape[1] < self.num_frames:
            raise ValueError(f"I3D ({self.preset}) needs videos (B, T, 3, H, W) with T >= {self.num_frames}, "
                             f"got {tuple(media.shape)}")
        video = video_to_unit_range(media[:, :self.num_frames]) * 255
        features = [self._embed(video[i:i + self.batch_size]) for i in range(0, video.shape[0], self.batch_size)]
        return torch.cat(features)

    def _embed(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        if self.preset == "google":
            resized = resize_bilinear_tf1(video.flatten(0, 1), 224).view(batch, frames, 3, 224, 224)
            clips = (2 * resized / 255 - 1).transpose(1, 2).contiguous()
            output = self.network(clips, rescale=False, resize=False, return_features=True)
        else:
            output = self.network(video.transpose(1, 2).contiguous(), rescale=True, resize=True, return_features=True)
        if output.shape != (batch, I3D_FEATURE_DIM):
            raise InvalidWeightsError(f"{_DESCRIPTION} returned shape {tuple(output.shape)} for {batch} clips, "
                                      f"expected ({batch}, {I3D_FEATURE_DIM})")
        return output.float()
