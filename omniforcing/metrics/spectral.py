"""Spectral front ends shared by the audio extractors and the sync metrics: resampling, mel filters, log-mel.

Two log-mel variants live here, on purpose:

* :func:`vggish_log_mel` reproduces Google's VGGish input (``tensorflow/models`` ``audioset/mel_features.py``):
  uncentred 25 ms frames with a 10 ms hop, periodic Hann window, 512-point magnitude FFT, 64 HTK-mel bands
  from 125 to 7500 Hz built as triangles on the mel axis with the DC bin zeroed, and ``log(mel + 0.01)``;
* :func:`log_mel_db` is the librosa-style power log-mel in dB (centred frames) used for onset strength and the
  weight-free audio statistics, where no reference network dictates the details.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import Tensor

# torchaudio's documented equivalent of resampy's "kaiser_best" filter (the resampler of torchvggish);
# fadtk uses the same values.
_KAISER_BEST = dict(lowpass_filter_width=64, rolloff=0.9475937167399596,
                    resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


def resample_audio(audio: Tensor, orig_rate: int, target_rate: int) -> Tensor:
    """Resample ``(..., S)`` audio from ``orig_rate`` to ``target_rate`` Hz with a Kaiser-windowed sinc filter.

    torchaudio's equivalent of resampy ``kaiser_best``; the input is returned unchanged when the rates agree.
    """
    if int(orig_rate) != orig_rate or int(target_rate) != target_rate:
        raise ValueError(f"sample rates must be whole numbers of Hz, got {orig_rate} -> {target_rate}")
    if orig_rate == target_rate:
        return audio
    return AF.resample(audio, int(orig_rate), int(target_rate), **_KAISER_BEST)


def frame_signal(signal: Tensor, length: int, hop: int) -> Tensor:
    """Split ``(..., S)`` into ``(..., F, length)`` frames, ``F = 1 + (S - length) // hop`` (0 if ``S < length``)."""
    if signal.shape[-1] < length:
        return signal.new_zeros(*signal.shape[:-1], 0, length)
    return signal.unfold(-1, length, hop)


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(hz / 700.0)


def htk_mel_matrix(num_mel_bins: int, num_fft_bins: int, sample_rate: float, lower_hz: float,
                   upper_hz: float) -> Tensor:
    """``(num_fft_bins, num_mel_bins)`` float64 mel weights, built as in Google's ``mel_features.py``.

    Triangles are linear on the mel axis, unnormalised (peak 1), band edges evenly spaced in mel between
    ``lower_hz`` and ``upper_hz``; the DC bin gets zero weight.
    """
    if not 0 <= lower_hz < upper_hz <= sample_rate / 2:
        raise ValueError(f"need 0 <= lower_hz < upper_hz <= nyquist, got {lower_hz}, {upper_hz}, sr={sample_rate}")
    bins_mel = hz_to_mel(torch.linspace(0, sample_rate / 2, num_fft_bins, dtype=torch.float64))
    edges = torch.linspace(hz_to_mel(torch.tensor(float(lower_hz))).item(),
                           hz_to_mel(torch.tensor(float(upper_hz))).item(), num_mel_bins + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0)
    weights[0] = 0.0
    return weights


def vggish_log_mel(waveform: Tensor, sample_rate: int = 16000) -> Tensor:
    """VGGish log-mel spectrogram of ``(B, S)`` audio at 16 kHz.

    Returns ``(B, F, 64)`` float32 with ``F = 1 + (S - 400) // 160`` frames of 10 ms (0 below 25 ms of audio).
    """
    if sample_rate != 16000:
        raise ValueError(f"the VGGish front end expects 16 kHz audio, got {sample_rate} Hz; resample first")
    window_length, hop, fft_length = 400, 160, 512
    frames = frame_signal(waveform.float(), window_length, hop)
    window = torch.hann_window(window_length, periodic=True, dtype=frames.dtype, device=frames.device)
    magnitude = torch.fft.rfft(frames * window, n=fft_length).abs()
    mel = htk_mel_matrix(64, fft_length // 2 + 1, sample_rate, 125.0, 7500.0).to(magnitude)
    return torch.log(magnitude @ mel + 0.01)


def log_mel_db(waveform: Tensor, sample_rate: int, *, n_fft: int, hop: int, num_mel_bins: int,
               top_db: float = 80.0) -> Tensor:
    """Power log-mel spectrogram in dB with centred frames (librosa ``melspectrogram`` + ``power_to_db`` style).

    Args:
        waveform: ``(B, S)`` float audio.
        sample_rate: Hz.
        n_fft: FFT and Hann window length in samples.
        hop: hop in samples; frame ``f`` is centred on sample ``f * hop``.
        num_mel_bins: HTK-mel bands from 0 Hz to Nyquist.
        top_db: values are floored at ``max - top_db`` per clip (librosa's default 80 dB).

    Returns:
        ``(B, 1 + S // hop, num_mel_bins)`` float32 dB values.
    """
    window = torch.hann_window(n_fft, periodic=True, device=waveform.device)
    spectrum = torch.stft(waveform.float(), n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                          return_complex=True).abs().square()
    mel = htk_mel_matrix(num_mel_bins, n_fft // 2 + 1, sample_rate, 0.0, sample_rate / 2).to(spectrum)
    power = spectrum.transpose(1, 2) @ mel
    decibels = 10 * torch.log10(power.clamp(min=1e-10))
    floor = decibels.amax(dim=(1, 2), keepdim=True) - top_db
    return torch.maximum(decibels, floor)


def mfcc_from_log_mel(log_mel: Tensor, num_coefficients: int) -> Tensor:
    """MFCCs as the orthonormal DCT-II of the log-mel bands: ``(..., M)`` -> ``(..., num_coefficients)``."""
    num_bands = log_mel.shape[-1]
    if not 1 <= num_coefficients <= num_bands:
        raise ValueError(f"num_coefficients must be in [1, {num_bands}], got {num_coefficients}")
    n = torch.arange(num_bands, dtype=log_mel.dtype, device=log_mel.device)
    k = torch.arange(num_coefficients, dtype=log_mel.dtype, device=log_mel.device)[:, None]
    basis = torch.cos(math.pi / num_bands * (n + 0.5) * k) * math.sqrt(2.0 / num_bands)
    basis[0] /= math.sqrt(2.0)
    return log_mel @ basis.T
