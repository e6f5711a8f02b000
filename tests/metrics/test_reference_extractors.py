"""I3D and VGGish loaders and preprocessing, with stand-in weight files built in the test.

The reference-number checks at the end need the real files and are skipped with a reason otherwise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from omniforcing.metrics.extractors import (
    I3DFeatures,
    InvalidWeightsError,
    MissingWeightsError,
    VGGishFeatures,
    VGGishNetwork,
)
from omniforcing.metrics.extractors.vggish import vggish_examples
from omniforcing.metrics.frechet import frechet_distance_from_features
from omniforcing.metrics.frechet_metric import FrechetAudioDistance, FrechetVideoDistance
from omniforcing.metrics.spectral import vggish_log_mel


class RecordingI3D(torch.nn.Module):
    """Mimics the I3D TorchScript interface and reports what it received in its 400 outputs."""

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> Tensor:
        out = torch.zeros(x.shape[0], 400)
        out[:, 0] = 1.0 if rescale else 0.0
        out[:, 1] = 1.0 if resize else 0.0
        out[:, 2] = 1.0 if return_features else 0.0
        out[:, 3] = x.flatten(1).max(dim=1).values
        out[:, 4] = x.flatten(1).min(dim=1).values
        out[:, 5] = float(x.shape[1])
        out[:, 6] = float(x.shape[2])
        out[:, 7] = float(x.shape[3])
        out[:, 8] = float(x.shape[4])
        return out


class WrongInterface(torch.nn.Module):
    def forward(self, video: Tensor) -> Tensor:
        return video.flatten(1)[:, :400]


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture
def i3d_file(tmp_path: Path) -> Path:
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(RecordingI3D()).save(str(path))
    return path


def test_i3d_stylegan_v_preset_passes_uint8_range_bcthw_16_frames(i3d_file: Path):
    extractor = I3DFeatures(i3d_file, check_known_hash=False)
    video = torch.full((2, 20, 3, 32, 48), 255, dtype=torch.uint8)
    video[:, :, :, 0, 0] = 0
    features = extractor(video, 24.0)
    assert features.shape == (2, 400) and features.dtype == torch.float32
    rescale, resize, return_features, high, low, channels, frames, height, width = features[0, :9].tolist()
    assert (rescale, resize, return_features) == (1.0, 1.0, 1.0)
    assert (high, low) == (255.0, 0.0)
    assert (channels, frames, height, width) == (3, 16, 32, 48)


def test_i3d_google_preset_resizes_to_224_and_scales_to_minus_one_one(i3d_file: Path):
    extractor = I3DFeatures(i3d_file, preset="google", check_known_hash=False)
    video = torch.linspace(-1, 1, 16 * 3 * 20 * 30).view(1, 16, 3, 20, 30)
    rescale, resize, _, high, low, channels, frames, height, width = extractor(video, 24.0)[0, :9].tolist()
    assert (rescale, resize) == (0.0, 0.0)
    assert (channels, frames, height, width) == (3, 16, 224, 224)
    assert -1.0 <= low < -0.9 and 0.9 < high <= 1.0


def test_i3d_unknown_file_is_not_a_reference_and_is_named_fd_i3d(i3d_file: Path, caplog):
    with caplog.at_level(logging.WARNING):
        extractor = I3DFeatures(i3d_file)
    assert not extractor.is_reference and "git blob id" in caplog.text
    assert FrechetVideoDistance(extractor).name == "fd_i3d"
    assert FrechetVideoDistance(I3DFeatures(i3d_file, check_known_hash=False)).name == "fvd"
    assert len(extractor.weight_sha256) == 64


def test_i3d_rejects_wrong_files_with_clear_messages(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OMNIFORCING_I3D_PATH", raising=False)
    with pytest.raises(MissingWeightsError, match="OMNIFORCING_I3D_PATH"):
        I3DFeatures()
    monkeypatch.setenv("OMNIFORCING_I3D_PATH", str(tmp_path / "absent.pt"))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        I3DFeatures()
    wrong = tmp_path / "wrong.pt"
    torch.jit.script(WrongInterface()).save(str(wrong))
    with pytest.raises(InvalidWeightsError, match=r"forward\(x, rescale, resize, return_features\)"):
        I3DFeatures(wrong)
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, state_dict)
    with pytest.raises(InvalidWeightsError, match="not a TorchScript module"):
        I3DFeatures(state_dict)


def test_i3d_rejects_too_short_clips(i3d_file: Path):
    with pytest.raises(ValueError, match="T >= 16"):
        I3DFeatures(i3d_file)(torch.zeros(1, 8, 3, 16, 16, dtype=torch.uint8), 24.0)


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory) -> Path:
    """A state dict with torchvggish's keys and shapes and random weights (about 289 MB)."""
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in VGGishNetwork().state_dict().items()}
    state = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(state, path)
    return path


def test_vggish_loads_reference_structure_and_embeds_one_vector_per_example(vggish_file: Path, caplog):
    with caplog.at_level(logging.WARNING):
        extractor = VGGishFeatures(vggish_file)
    assert "sha256" in caplog.text and not extractor.is_reference
    assert FrechetAudioDistance(extractor).name == "fd_vggish"
    audio = torch.randn(2, 1, 3 * 16000) * 0.1
    features = extractor(audio, 16000)
    assert features.shape == (2 * 3, 128) and torch.isfinite(features).all()
    assert (features < 0).any()  # no final ReLU
    assert VGGishFeatures(vggish_file, check_known_hash=False).is_reference


def test_vggish_rejects_wrong_files_with_clear_messages(tmp_path: Path):
    # tiny tensors under the reference names: every message below must name the specific problem
    with torch.device("meta"):
        state = {name: torch.zeros(1) for name in VGGishNetwork().state_dict()}
    renamed = {key.replace("embeddings.4", "embeddings.5"): value for key, value in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InvalidWeightsError, match=r"missing keys \['embeddings.4.bias', 'embeddings.4.weight'\]"):
        VGGishFeatures(tmp_path / "renamed.pth")
    state["features.0.weight"] = torch.zeros(32, 1, 3, 3)
    torch.save(state, tmp_path / "reshaped.pth")
    expected_message = r"features.0.weight has shape \(32, 1, 3, 3\), expected \(64, 1, 3, 3\)"
    with pytest.raises(InvalidWeightsError, match=expected_message):
        VGGishFeatures(tmp_path / "reshaped.pth")
    torch.save({"pca_eigen_vectors": torch.zeros(128, 128), "pca_means": torch.zeros(128, 1)}, tmp_path / "pca.pth")
    with pytest.raises(InvalidWeightsError, match="PCA parameter file"):
        VGGishFeatures(tmp_path / "pca.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidWeightsError, match="cannot be read"):
        VGGishFeatures(tmp_path / "garbage.pth")


def _google_log_mel_numpy(signal: np.ndarray) -> np.ndarray:
    """Independent float64 re-derivation of Google's mel_features.log_mel_spectrogram defaults."""
    window, hop, fft = 400, 160, 512
    count = 1 + (len(signal) - window) // hop
    frames = np.stack([signal[i * hop:i * hop + window] for i in range(count)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / window * np.arange(window))
    magnitude = np.abs(np.fft.rfft(frames * hann, fft))
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    bins = mel(np.linspace(0.0, 8000.0, fft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((fft // 2 + 1, 64))
    for band in range(64):
        low, center, high = edges[band:band + 3]
        weights[:, band] = np.maximum(0.0, np.minimum((bins - low) / (center - low), (high - bins) / (high - center)))
    weights[0, :] = 0.0
    return np.log(magnitude @ weights + 0.01)


def test_vggish_log_mel_matches_an_independent_numpy_derivation():
    signal = np.random.default_rng(0).normal(0, 0.1, 16000 + 123)
    ours = vggish_log_mel(torch.from_numpy(signal).float()[None], 16000)[0].double().numpy()
    reference = _google_log_mel_numpy(signal.astype(np.float32).astype(np.float64))
    assert ours.shape == reference.shape == (1 + (16123 - 400) // 160, 64)
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_vggish_examples_shapes_resampling_and_presets():
    three_seconds = torch.randn(2, 3 * 16000) * 0.3
    assert vggish_examples(three_seconds, 16000).shape == (2, 3, 96, 64)
    assert vggish_examples(three_seconds, 16000, "google_fad").shape == (2, 3, 96, 64)
    stereo_44k = torch.randn(1, 2, 3 * 44100).mean(dim=1) * 0.3
    assert vggish_examples(stereo_44k, 44100).shape == (1, 3, 96, 64)
    # google_fad normalises loudness by the clip maximum, the plain framing does not
    quiet = three_seconds * 0.5
    torch.testing.assert_close(vggish_examples(quiet, 16000, "google_fad"),
                               vggish_examples(three_seconds, 16000, "google_fad"), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(vggish_examples(quiet, 16000), vggish_examples(three_seconds, 16000))
    with pytest.raises(ValueError, match="shorter than one VGGish example"):
        vggish_examples(torch.zeros(1, 8000), 16000)


def _reference_file(variable: str) -> Path:
    path = os.environ.get(variable)
    if not path or not Path(path).is_file():
        pytest.skip(f"reference weights absent: set ${variable} to the real file to run this check")
    return Path(path)


@pytest.mark.slow
@pytest.mark.requires_weights
def test_i3d_reproduces_the_fvd_comparison_vector():
    """The one published cross-implementation vector of the TorchScript I3D (universome/fvd-comparison).

    128 vs 128 uniform videos (numpy RandomState seeds 1 and 2), fed with rescale=False, resize=False, give
    FVD 10.13808 (TF-Hub) / 10.138085 (TorchScript).
    """
    extractor = I3DFeatures(_reference_file("OMNIFORCING_I3D_PATH"), check_known_hash=False)
    features = []
    for seed in (1, 2):
        videos = np.random.RandomState(seed).rand(128, 16, 224, 224, 3).astype(np.float32)
        clips = torch.from_numpy(videos).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            features.append(torch.cat([extractor.network(clips[i:i + 8], rescale=False, resize=False,
                                                         return_features=True) for i in range(0, 128, 8)]))
    assert float(frechet_distance_from_features(features[0], features[1], method="eigh")) == pytest.approx(
        10.138085, abs=2e-3)


@pytest.mark.requires_weights
def test_vggish_fad_on_googles_sine_test_vectors():
    """Google FAD's gen_test_files.py sets (6 s sines, 16 kHz, int16) with the torchvggish weights.

    gudgud96's torchvggish-based FAD gives 12.7398 (test1, noise 1e-4) and 4.9815 (test2, noise 1e-5)
    (Google's TF code: 12.4375 / 4.7680); the noise is unseeded there, so the tolerance is 10%.
    """
    extractor = VGGishFeatures(_reference_file("OMNIFORCING_VGGISH_PATH"), check_known_hash=False)
    rng = np.random.default_rng(0)

    def sines(count: int, noise: float) -> Tensor:
        t = np.linspace(0, 6, 6 * 16000)
        waves = [np.sin(2 * np.pi * t * freq) for freq in np.linspace(100, 1000, count)]
        waves = [wave + rng.normal(0, noise, wave.shape) * np.abs(wave).max() if noise else wave for wave in waves]
        as_int16 = np.stack([np.asarray(2**15 * wave, dtype=np.int16) for wave in waves])
        return torch.from_numpy(as_int16 / 32768.0).float()[:, None]

    background = extractor(sines(10, 0.0), 16000)
    for noise, expected in ((1e-4, 12.7398), (1e-5, 4.9815)):
        value = float(frechet_distance_from_features(background, extractor(sines(5, noise), 16000), method="eigh"))
        assert value == pytest.approx(expected, rel=0.1)
