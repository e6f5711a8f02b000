"""Weight-free audio features (``audio_stats``): spectral, cepstral and onset statistics of each clip.

They need no downloaded network, so a Fréchet distance on them (``fd_audio_stats``) always works offline.
They respond to changes of timbre, loudness, spectral balance and rhythm, but have no published scale:
never compare ``fd_audio_stats`` with FAD numbers from papers.

Audio is mixed to mono and resampled to 16 kHz (Kaiser sinc). Log-mel values are in bels (dB / 10) so that
they are on a scale similar to the other features. Features, in order (:data:`AUDIO_STATS_FEATURES`, 111
values with the defaults):

1. log-mel (512-point FFT, 10 ms hop, ``num_mel_bins`` = 32 HTK bands 0-8 kHz, power in B, floored 8 B below
   the clip's maximum): per-band mean and per-band standard deviation over time (64);
2. MFCC (orthonormal DCT-II of that log-mel, ``num_mfcc`` = 13): mean, std, and std of the first-order
   frame difference ("delta") per coefficient (39);
3. spectral flux (the onset strength of :mod:`omniforcing.metrics.onsets`, dB per frame): mean, std, max (3);
4. onset rate: detected onsets per second (1);
5. frame RMS level in B (25 ms frames, 10 ms hop): mean, std (2);
6. spectral centroid as a fraction of 8 kHz: mean, std (2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniforcing.metrics.extractors.base import FeatureExtractor, PreprocessingSpec
from omniforcing.metrics.inputs import audio_to_mono, check_rate
from omniforcing.metrics.onsets import ENVELOPE_RATE, detect_onsets, onset_strength
from omniforcing.metrics.spectral import frame_signal, log_mel_db, mfcc_from_log_mel, resample_audio

ANALYSIS_RATE = 16000
_N_FFT = 512
_HOP = 160


def audio_stats_feature_names(num_mel_bins: int = 32, num_mfcc: int = 13) -> tuple[str, ...]:
    """Names of the ``audio_stats`` features, in output order."""
    return (
        *(f"log_mel_mean_{b}" for b in range(num_mel_bins)),
        *(f"log_mel_std_{b}" for b in range(num_mel_bins)),
        *(f"mfcc_{stat}_{k}" for stat in ("mean", "std", "delta_std") for k in range(num_mfcc)),
        "flux_mean", "flux_std", "flux_max", "onset_rate", "rms_mean", "rms_std", "centroid_mean", "centroid_std",
    )


AUDIO_STATS_FEATURES = audio_stats_feature_names()
"""Feature names with the default 32 mel bands and 13 MFCCs."""


def _spectral_centroid(waveform: Tensor) -> Tensor:
    """Per-frame spectral centroid ``(B, F)`` as a fraction of the Nyquist frequency."""
    window = torch.hann_window(_N_FFT, device=waveform.device)
    power = torch.stft(waveform, _N_FFT, hop_length=_HOP, window=window, center=True, pad_mode="reflect",
                       return_complex=True).abs().square()
    frequencies = torch.linspace(0, 1, power.shape[1], device=waveform.device)[:, None]
    return (power * frequencies).sum(dim=1) / power.sum(dim=1).clamp(min=1e-10)


class AudioStatistics(FeatureExtractor):
    """Weight-free per-clip audio features (module docstring lists them).

    Args:
        num_mel_bins: log-mel bands summarised.
        num_mfcc: MFCC coefficients summarised.
    """

    name = "audio_stats"
    modality = "audio"
    is_reference = False
    weight_sha256 = None

    def __init__(self, *, num_mel_bins: int = 32, num_mfcc: int = 13) -> None:
        super().__init__()
        if not 1 <= num_mfcc <= num_mel_bins:
            raise ValueError(f"need 1 <= num_mfcc <= num_mel_bins, got {num_mfcc} and {num_mel_bins}")
        self.num_mel_bins = num_mel_bins
        self.num_mfcc = num_mfcc
        self.dim = len(audio_stats_feature_names(num_mel_bins, num_mfcc))

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """Sample rate, STFT and band settings and feature-list version."""
        return {"version": 1, "sample_rate": ANALYSIS_RATE, "n_fft": _N_FFT, "hop": _HOP,
                "mel_bins": self.num_mel_bins, "mfcc": self.num_mfcc, "features": self.dim}

    @torch.no_grad()
    def forward(self, media: Tensor, rate: float) -> Tensor:
        """Features ``(B, dim)`` of audio ``(B, 1, S)`` float in ``[-1, 1]`` at ``rate`` Hz (at least 50 ms)."""
        sample_rate = int(check_rate(rate, "sample_rate"))
        waveform = resample_audio(audio_to_mono(media), sample_rate, ANALYSIS_RATE)
        if waveform.shape[1] < ANALYSIS_RATE // 20:
            raise ValueError(f"audio_stats needs at least 50 ms of audio, got {media.shape[-1]} samples")
        log_mel = log_mel_db(waveform, ANALYSIS_RATE, n_fft=_N_FFT, hop=_HOP, num_mel_bins=self.num_mel_bins) / 10
        mfcc = mfcc_from_log_mel(log_mel, self.num_mfcc)
        flux = onset_strength(waveform, ANALYSIS_RATE)
        seconds = waveform.shape[1] / ANALYSIS_RATE
        onset_rate = torch.tensor([len(detect_onsets(flux[i].cpu(), ENVELOPE_RATE)) / seconds
                                   for i in range(flux.shape[0])], device=waveform.device)
        frames = frame_signal(waveform, 400, _HOP)
        rms = torch.log10(frames.square().mean(dim=2).clamp(min=1e-10))
        centroid = _spectral_centroid(waveform)
        features = [
            log_mel.mean(dim=1), log_mel.std(dim=1),
            mfcc.mean(dim=1), mfcc.std(dim=1), mfcc.diff(dim=1).std(dim=1),
            torch.stack([flux.mean(dim=1), flux.std(dim=1), flux.amax(dim=1), onset_rate], dim=1),
            torch.stack([rms.mean(dim=1), rms.std(dim=1), centroid.mean(dim=1), centroid.std(dim=1)], dim=1),
        ]
        return torch.cat(features, dim=1).float()
