"""Audio-visual offsets with Synchformer, and the DeSync protocol of MMAudio's ``av-benchmark``.

Preprocessing as ``hkchengrex/av-benchmark`` (``data/video_dataset.py``, ``extract.py``, ``extract_video.py``,
``evaluate.py``), which is how MMAudio, OmniForcing and Ovi report DeSync:

* video: 25 fps, the shorter side resized to 224 (bicubic, antialiased, on uint8 RGB as torchvision's
  ``v2.Resize``), centre crop 224, ``[0, 1]`` then ``(x - 0.5) / 0.5``; segments of 16 frames every 8 frames;
* audio: mono, 16 kHz (torchaudio's default sinc resampler, as ``torchaudio.transforms.Resample``), segments of
  10240 samples (0.64 s = 16 frames) every 5120; per segment ``MelSpectrogram(n_fft=1024, win_length=400,
  hop_length=160, n_mels=128)``, ``log(x + 1e-6)``, zero-padded to 66 frames, ``(x + 4.2677393) / (2 *
  4.5689974)``;
* a comparison window is 14 consecutive segments (4.8 s); the network predicts one of 21 offsets
  ``linspace(-2, 2, 21)`` s (argmax). A clip is compared on its first and its last window (the same one for
  a 4.8-s clip); DeSync is the mean absolute predicted offset over all windows of all clips, in seconds.

Sign (Synchformer's ``TemporalCropAndOffset``): offset ``o > 0`` means the audio track is ``o`` seconds ahead
of the picture (a sound heard at ``t`` belongs to the frame shown at ``t + o``).

Frame-rate conversion to 25 fps takes the nearest earlier-or-equal source frame of each output time
(ffmpeg's ``fps`` filter, used by the reference's decoder, rounds to the nearest frame instead; identical for
25-fps input, which is what generated clips at other rates should be re-encoded to for published numbers).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import torch
import torchaudio
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from omniforcing.metrics.extractors.base import InvalidWeightsError, file_digests, resolve_weight_path
from omniforcing.metrics.extractors.synchformer_network import SynchformerNetwork
from omniforcing.metrics.inputs import audio_to_mono, check_rate, video_to_unit_range

logger = logging.getLogger(__name__)

SYNCHFORMER_PATH_ENV = "OMNIFORCING_SYNCHFORMER_PATH"
"""Environment variable naming the local ``synchformer_state_dict.pth`` when no path is passed."""

SYNCHFORMER_MD5 = "5b2f5594b0730f70e41e549b7c94390c"
"""MD5 of MMAudio's release file ``v0.1/synchformer_state_dict.pth`` (``mmaudio/utils/download_utils.py``): the
AudioSet model ``24-01-04T16-39-21`` that av-benchmark's DeSync uses."""

VIDEO_FPS = 25
SAMPLE_RATE = 16000
SEGMENT_FRAMES, SEGMENT_STEP_FRAMES = 16, 8
SEGMENT_SAMPLES, SEGMENT_STEP_SAMPLES = 10240, 5120
LOG_MEL_MEAN, LOG_MEL_STD = -4.2677393, 4.5689974
MAX_OFFSET_S, OFFSET_CLASSES = 2.0, 21
_DESCRIPTION = "Synchformer (av-benchmark / MMAudio 'synchformer_state_dict.pth' state dict)"


def offset_grid() -> Tensor:
    """The 21 offset classes in seconds: ``-2.0, -1.8, ..., 2.0``."""
    return torch.linspace(-MAX_OFFSET_S, MAX_OFFSET_S, OFFSET_CLASSES, dtype=torch.float64).float()


def video_segments(video: Tensor, fps: float, image_size: int) -> Tensor:
    """``(B, T, 3, H, W)`` uint8 or ``[-1, 1]`` at ``fps`` -> ``(B, S, 16, 3, size, size)`` in ``[-1, 1]``."""
    frames = (video_to_unit_range(video) * 255).round().to(torch.uint8)  # the reference reads rgb24
    count = int(frames.shape[1] * VIDEO_FPS / fps + 1e-6)
    index = (torch.arange(count, dtype=torch.float64) * fps / VIDEO_FPS + 1e-6).floor().long()
    frames = frames[:, index.clamp(max=frames.shape[1] - 1)]
    batch = frames.shape[0]
    flat = TF.resize(frames.flatten(0, 1), [image_size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    flat = TF.center_crop(flat, [image_size, image_size]).float() / 255
    frames = ((flat - 0.5) / 0.5).unflatten(0, (batch, -1))
    if frames.shape[1] < SEGMENT_FRAMES:
        return frames.new_zeros(batch, 0, SEGMENT_FRAMES, 3, image_size, image_size)
    return frames.unfold(1, SEGMENT_FRAMES, SEGMENT_STEP_FRAMES).permute(0, 1, 5, 2, 3, 4)


def audio_segments(audio: Tensor, sample_rate: int, mel_bins: int, spec_frames: int) -> Tensor:
    """``(B, C, S)`` in ``[-1, 1]`` at ``sample_rate`` -> normalised log-mel ``(B, segments, mel_bins, frames)``."""
    waveform = audio_to_mono(audio).float()
    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE)
    batch = waveform.shape[0]
    if waveform.shape[1] < SEGMENT_SAMPLES:
        return waveform.new_zeros(batch, 0, mel_bins, spec_frames)
    pieces = waveform.unfold(1, SEGMENT_SAMPLES, SEGMENT_STEP_SAMPLES)  # (B, S, 10240)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=1024, win_length=400, hop_length=160,
                                               n_mels=mel_bins).to(waveform.device)
    log_mel = torch.log(mel(pieces) + 1e-6)[..., :spec_frames]
    log_mel = torch.nn.functional.pad(log_mel, (0, spec_frames - log_mel.shape[-1]))
    return (log_mel - LOG_MEL_MEAN) / (2 * LOG_MEL_STD)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (the digest MMAudio publishes for its weight files)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_synchformer_state_dict(path: Path, network: SynchformerNetwork) -> dict[str, Tensor]:
    """Read a Synchformer state dict (``torch.load(weights_only=True)``) and check its keys and shapes.

    Accepts the bare state dict (av-benchmark / MMAudio) or a training checkpoint whose ``"model"`` entry is one.

    Raises:
        InvalidWeightsError: unreadable, not tensors, or keys/shapes that differ from ``network``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InvalidWeightsError(f"{path} cannot be read as {_DESCRIPTION}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise InvalidWeightsError(f"{path} does not hold a state dict of tensors, so it is not {_DESCRIPTION}")
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    problems = [f"missing keys {missing[:6]}" if missing else "", f"unexpected keys {unexpected[:6]}" if unexpected else ""]
    problems += [f"{name} has shape {tuple(state[name].shape)}, expected {shape}"
                 for name, shape in expected.items() if name in state and tuple(state[name].shape) != shape]
    problems = [problem for problem in problems if problem]
    if problems:
        raise InvalidWeightsError(f"{path} is not {_DESCRIPTION}: " + "; ".join(problems[:6]))
    return state


class SynchformerOffsets(torch.nn.Module):
    """Predicted audio-visual offsets (seconds) of clips, from a user-supplied Synchformer state dict.

    Args:
        path: local ``synchformer_state_dict.pth`` (MMAudio's ``ext_weights``); None reads
            ``$OMNIFORCING_SYNCHFORMER_PATH``. Nothing is downloaded.
        network: the architecture; the default is the published model (tests pass a tiny one together with a
            matching state-dict file).
        check_known_hash: when True, a file whose MD5 is not :data:`SYNCHFORMER_MD5` still loads, with a
            warning, but :attr:`is_reference` is False and the metric suite reports no DeSync from it.

    Raises:
        MissingWeightsError: no file given or it does not exist.
        InvalidWeightsError: the file is not a Synchformer state dict of ``network``'s keys and shapes.
    """

    name = "synchformer"

    def __init__(self, path: str | Path | None = None, network: SynchformerNetwork | None = None, *,
                 check_known_hash: bool = True) -> None:
        super().__init__()
        resolved = resolve_weight_path(path, SYNCHFORMER_PATH_ENV, _DESCRIPTION)
        if network is None:
            with torch.device("meta"):
                network = SynchformerNetwork()
        state = load_synchformer_state_dict(resolved, network)
        network.load_state_dict(state, assign=True)  # adopts the file's tensors; no random init of 200M weights
        self.network = network.eval()
        self.weight_sha256, _ = file_digests(resolved)
        known = file_md5(resolved) == SYNCHFORMER_MD5
        if check_known_hash and not known:
            logger.warning("%s is not MMAudio's synchformer_state_dict.pth (MD5 differs): its offsets are not "
                           "reported as DeSync (pass check_known_hash=False if you trust this file)", resolved)
        self.is_reference = known or not check_known_hash
        self.register_buffer("grid", offset_grid(), persistent=False)

    @property
    def window_seconds(self) -> float:
        """Seconds covered by one comparison window (4.8 s for the published model)."""
        segments = self.network.segments
        return (SEGMENT_FRAMES + (segments - 1) * SEGMENT_STEP_FRAMES) / VIDEO_FPS

    @torch.no_grad()
    def forward(self, video: Tensor, audio: Tensor, fps: float, sample_rate: float) -> Tensor:
        """Signed offsets ``(B, W)`` in seconds of the first and the last window of each clip (``W = 2``).

        Args:
            video: ``(B, T, 3, H, W)`` uint8 or float in ``[-1, 1]``.
            audio: ``(B, C, S)`` float in ``[-1, 1]``.
            fps: video frame rate; sample_rate: audio sample rate.

        Raises:
            ValueError: a clip shorter than one window (4.8 s), or mismatched batch sizes.
        """
        if video.shape[0] != audio.shape[0]:
            raise ValueError(f"{video.shape[0]} videos but {audio.shape[0]} audio tracks")
        fps, rate = check_rate(fps, "fps"), int(check_rate(sample_rate, "sample_rate"))
        net = self.network
        device = self.grid.device
        frames = video_segments(video.to(device), fps, net.image_size)
        mels = audio_segments(audio.to(device), rate, net.mel_bins, net.spec_frames)
        count = min(frames.shape[1], mels.shape[1])
        if count < net.segments:
            seconds = min(video.shape[1] / fps, audio.shape[-1] / rate)
            raise ValueError(f"DeSync needs clips of at least {self.window_seconds:.1f} s (Synchformer's window); "
                             f"got {seconds:.2f} s")
        starts = sorted({0, count - net.segments})
        offsets = []
        for start in starts:
            window = slice(start, start + net.segments)
            logits = net.offset_logits(net.video_features(frames[:, window]), net.audio_features(mels[:, window]))
            offsets.append(self.grid[logits.argmax(dim=-1)])
        if len(starts) == 1:
            offsets.append(offsets[0])  # a clip of exactly one window: both windows are that window
        return torch.stack(offsets, dim=1)
