"""Measuring helpers for the data tests: onset detection, PSNR, audio lag."""

from __future__ import annotations

import numpy as np


def detect_onsets(audio: np.ndarray, rate: int, threshold_db: float = 6.0, min_gap: float = 0.03) -> np.ndarray:
    """Onset times in seconds: where the mean energy of the next 10 ms exceeds that of the previous 20 ms by
    ``threshold_db`` (and is above -30 dBFS, over any background sound); peaks closer than ``min_gap`` keep the
    strongest. The first 20 ms have no past to compare with and are not searched."""
    hop = 16
    n = len(audio) // hop
    energy = (audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(energy)])
    ahead, behind = int(0.01 * rate / hop), int(0.02 * rate / hop)
    k = np.arange(n)
    future = (cumulative[np.minimum(k + ahead, n)] - cumulative[k]) / ahead
    past = (cumulative[k] - cumulative[np.maximum(k - behind, 0)]) / behind
    strength = 10 * np.log10((future + 1e-7) / (past + 1e-7))
    candidates = [i for i in np.argsort(-strength) if strength[i] > threshold_db and future[i] > 1e-3 and i >= behind]
    kept: list[int] = []
    for i in candidates:
        if all(abs(i - j) * hop / rate >= min_gap for j in kept):
            kept.append(int(i))
    return np.sort(np.array(kept, dtype=np.float64)) * hop / rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def lag_samples(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 2048) -> int:
    """Lag of ``decoded`` behind ``reference`` (positive = late), by FFT cross-correlation over +-max_lag samples."""
    n = min(len(reference), len(decoded))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    ref = np.fft.rfft(reference[:n].astype(np.float64), size)
    spectrum = np.fft.rfft(decoded[:n].astype(np.float64), size) * np.conj(ref)
    correlation = np.fft.irfft(spectrum, size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    return int(lags[np.argmax(correlation[lags])])
