"""VGGish (Hershey et al. 2017) embeddings for FAD (Kilgour et al. 2019), with Google's input protocol.

Architecture as ``harritaylor/torchvggish`` (same parameter names, so its converted checkpoint
``vggish-10086976.pth`` loads unchanged): four conv blocks (64, 128, 2x256, 2x512 channels, 3x3, ReLU,
2x2 max-pool) on a ``96 x 64`` log-mel patch, then 12288 -> 4096 -> 4096 -> 128 fully connected layers.
Following Google's current ``vggish_slim.py`` (``fc2`` without activation) and the FAD tools (gudgud96,
fadtk, av-benchmark), the final ReLU is **not** applied, and the PCA/quantisation post-processor is not used.

Input protocol (``vggish_input.py`` / ``mel_features.py``, implemented in :mod:`omniforcing.metrics.spectral`):
mono by channel mean, resampled to 16 kHz (Kaiser sinc; torchvggish uses resampy ``kaiser_best``), log-mel
with 25 ms windows, 10 ms hop, 64 bands 125-7500 Hz, ``log(mel + 0.01)``, framed into non-overlapping
0.96 s examples (96 frames); one 128-d embedding per example. Presets:

* ``"vggish"`` — the whole clip is framed into consecutive 0.96 s examples (torchvggish, gudgud96 and
  av-benchmark FAD); 3 s give 3 examples;
* ``"google_fad"`` — Google's FAD code: loudness-normalise each clip by ``max(0.1, max(x))`` (the maximum,
  not the absolute maximum, as the reference does), split it into non-overlapping 1 s chunks and embed the
  first 0.96 s of each.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from omniforcing.metrics.extractors.base import (
    FeatureExtractor,
    InvalidWeightsError,
    PreprocessingSpec,
    file_digests,
    resolve_weight_path,
)
from omniforcing.metrics.inputs import audio_to_mono, check_rate
from omniforcing.metrics.spectral import frame_signal, resample_audio, vggish_log_mel

logger = logging.getLogger(__name__)

VGGISH_PATH_ENV = "OMNIFORCING_VGGISH_PATH"
"""Environment variable naming the local ``vggish-10086976.pth`` when no path is passed."""

VGGISH_SHA256_PREFIX = "10086976"
"""torch.hub file names carry the first hex digits of the file's sha256: ``vggish-10086976.pth``."""

VGGISH_SAMPLE_RATE = 16000
EXAMPLE_FRAMES = 96
MEL_BANDS = 64
_DESCRIPTION = "the FAD VGGish network (torchvggish 'vggish-10086976.pth' state dict)"


class VGGishNetwork(nn.Module):
    """VGGish with torchvggish parameter names and no final ReLU.

    ``forward`` maps log-mel examples ``(N, 96, 64)`` to embeddings ``(N, 128)``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

    def forward(self, examples: Tensor) -> Tensor:
        """Embeddings ``(N, 128)`` of log-mel examples ``(N, 96, 64)``."""
        x = self.features(examples[:, None])
        # (N, 512, 6, 4) -> channels-last before flattening, the order of the TF weights the checkpoint came from
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


def load_vggish_state_dict(path: Path) -> dict[str, Tensor]:
    """Load and check a VGGish state dict (``torch.load(weights_only=True)``, never unpickles code).

    Raises:
        InvalidWeightsError: unreadable file, not a dict of tensors, the PCA file instead of the network,
            or keys/shapes that differ from :class:`VGGishNetwork` (the message lists them).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InvalidWeightsError(f"{path} cannot be read as {_DESCRIPTION}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise InvalidWeightsError(f"{path} does not hold a state dict of tensors, so it is not {_DESCRIPTION}")
    if "pca_eigen_vectors" in state:
        raise InvalidWeightsError(f"{path} is the VGGish PCA parameter file (vggish_pca_params-970ea276.pth), "
                                  f"not {_DESCRIPTION}")
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in VGGishNetwork().state_dict().items()}
    problems = [f"missing keys {sorted(set(expected) - set(state))}" if set(expected) - set(state) else "",
                f"unexpected keys {sorted(set(state) - set(expected))}" if set(state) - set(expected) else ""]
    problems += [f"{name} has shape {tuple(state[name].shape)}, expected {shape}"
                 for name, shape in expected.items() if name in state and tuple(state[name].shape) != shape]
    problems = [problem for problem in problems if problem]
    if problems:
        raise InvalidWeightsError(f"{path} is not {_DESCRIPTION}: " + "; ".join(problems))
    return state


def vggish_examples(audio: Tensor, sample_rate: int, preset: Literal["vggish", "google_fad"] = "vggish") -> Tensor:
    """Log-mel examples ``(B, E, 96, 64)`` of mono audio ``(B, S)`` at ``sample_rate`` (module docstring).

    Raises:
        ValueError: the clips are too short for one example (0.975 s for ``"vggish"``, 1 s for ``"google_fad"``).
    """
    waveform = resample_audio(audio.float(), sample_rate, VGGISH_SAMPLE_RATE)
    if preset == "google_fad":
        peak = waveform.amax(dim=1, keepdim=True).clamp(min=0.1)
        chunks = frame_signal(waveform / peak, VGGISH_SAMPLE_RATE, VGGISH_SAMPLE_RATE)
        batch, num_chunks = chunks.shape[:2]
        log_mel = vggish_log_mel(chunks.flatten(0, 1), VGGISH_SAMPLE_RATE)[:, :EXAMPLE_FRAMES]
        examples = log_mel.reshape(batch, num_chunks, EXAMPLE_FRAMES, MEL_BANDS)
    else:
        log_mel = vggish_log_mel(waveform, VGGISH_SAMPLE_RATE)
        examples = frame_signal(log_mel.transpose(1, 2), EXAMPLE_FRAMES, EXAMPLE_FRAMES).permute(0, 2, 3, 1)
    if examples.shape[1] == 0:
        seconds = audio.shape[-1] / sample_rate
        raise ValueError(f"audio of {seconds:.3f} s is shorter than one VGGish example ({preset} preset)")
    return examples


class VGGishFeatures(FeatureExtractor):
    """128-d VGGish embeddings (one per 0.96 s example) for FAD, from a user-supplied state dict.

    Args:
        path: local path of ``vggish-10086976.pth``; None reads ``$OMNIFORCING_VGGISH_PATH``.
        preset: ``"vggish"`` or ``"google_fad"`` example framing (module docstring).
        batch_size: examples per network call.
        check_known_hash: when True, a file whose sha256 does not start with ``10086976`` still loads but is
            not treated as the reference network (logged as ``fd_vggish``, not ``fad``), with a warning.

    Raises:
        MissingWeightsError: no file given or it does not exist.
        InvalidWeightsError: the file is not a state dict with the torchvggish keys and shapes.
    """

    name = "vggish"
    modality = "audio"
    dim = 128

    def __init__(self, path: str | Path | None = None, *, preset: Literal["vggish", "google_fad"] = "vggish",
                 batch_size: int = 64, check_known_hash: bool = True) -> None:
        super().__init__()
        resolved = resolve_weight_path(path, VGGISH_PATH_ENV, _DESCRIPTION)
        state = load_vggish_state_dict(resolved)
        with torch.device("meta"):
            network = VGGishNetwork()
        # assign=True adopts the loaded tensors, so no random 72M-parameter initialisation is wasted
        network.load_state_dict(state, assign=True)
        self.network = network.eval()
        self.weight_sha256, _ = file_digests(resolved)
        known = self.weight_sha256.startswith(VGGISH_SHA256_PREFIX)
        if check_known_hash and not known:
            logger.warning("%s has sha256 %s..., not the torchvggish file vggish-%s.pth: its features are logged "
                           "as fd_vggish, not fad (pass check_known_hash=False if you trust this file)", resolved,
                           self.weight_sha256[:16], VGGISH_SHA256_PREFIX)
        self.is_reference = known or not check_known_hash
        self.preset = preset
        self.batch_size = batch_size

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """Google's VGGish input protocol plus the chosen framing preset."""
        return {"preset": self.preset, "sample_rate": VGGISH_SAMPLE_RATE, "resampler": "torchaudio sinc kaiser_best",
                "window_ms": 25, "hop_ms": 10, "mel_bands": MEL_BANDS, "mel_range_hz": "125-7500",
                "log_offset": 0.01, "example_s": 0.96, "final_relu": False, "pca": False}

    @torch.no_grad()
    def forward(self, media: Tensor, rate: float) -> Tensor:
        """Embeddings ``(B * E, 128)`` of audio ``(B, 1, S)`` float in ``[-1, 1]`` at ``rate`` Hz.

        Rows are in clip-major order, ``E`` examples per clip.
        """
        sample_rate = check_rate(rate, "sample_rate")
        examples = vggish_examples(audio_to_mono(media), int(sample_rate), self.preset).flatten(0, 1)
        embeddings = [self.network(examples[i:i + self.batch_size]) for i in range(0, examples.shape[0],
                                                                                    self.batch_size)]
        return torch.cat(embeddings).float()
