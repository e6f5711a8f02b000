"""Impact sounds for the synthetic scene: timbre by shape, pitch by size and colour, loudness by speed.

Each shape has its own sound model, so what is heard identifies what hit:

* ``circle``   rings:   a struck bar, inharmonic sine partials (1, 2.76, 5.40, 8.93) with long decay;
* ``triangle`` clinks:  bright inharmonic partials (1, 1.5, 2.43) with a short decay;
* ``square``   thuds:   a low sine plus low-passed noise, very short;
* ``diamond``  rattles: band-passed noise around the object's pitch, short.

Every sound starts at its event's sample ``round(t * sample_rate)`` with a 1 ms raised-cosine attack, so the
audible onset is the physical impact time (within one sample).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import butter, lfilter


@dataclass(frozen=True)
class Timbre:
    """Sound model of one shape: caption verb, tonal or noisy, pitch of the reference size, decay."""

    verb: str
    tonal: bool
    base_hz: float
    decay_s: float


TIMBRES: dict[str, Timbre] = {
    "circle": Timbre("rings", True, 660.0, 0.15),
    "triangle": Timbre("clinks", True, 1500.0, 0.08),
    "square": Timbre("thuds", False, 110.0, 0.06),
    "diamond": Timbre("rattles", False, 900.0, 0.07),
}

_PARTIALS = {  # (frequency ratio, gain) of each sine partial
    "circle": ((1.0, 1.0), (2.76, 0.5), (5.40, 0.25), (8.93, 0.12)),
    "triangle": ((1.0, 1.0), (1.5, 0.6), (2.43, 0.4)),
}


@dataclass(frozen=True)
class ImpactSound:
    """Sound parameters of one object (stored in the clip's json).

    Args:
        kind: the sound model (the object's shape).
        pitch_hz: fundamental or centre frequency in Hz.
        decay_s: time constant of the exponential decay in seconds.
        tonal: sine partials (True) or filtered noise (False).
        verb: the word captions use for it.
    """

    kind: str
    pitch_hz: float
    decay_s: float
    tonal: bool
    verb: str

    def to_json(self) -> dict[str, object]:
        """Plain dict for the clip metadata."""
        return asdict(self)


def sound_for(shape: str, size_factor: float, colour_index: int) -> ImpactSound:
    """Sound of an object: smaller objects sound higher; each colour shifts the pitch by a whole tone.

    Args:
        shape: the object's shape (selects the sound model).
        size_factor: object half-extent divided by the reference half-extent (1 = reference size).
        colour_index: index of the object's colour in the palette.
    """
    timbre = TIMBRES[shape]
    pitch = timbre.base_hz * size_factor ** (-0.8) * 2.0 ** ((colour_index % 4) / 6.0)
    return ImpactSound(shape, round(pitch, 2), timbre.decay_s, timbre.tonal, timbre.verb)


def _tonal(sound: ImpactSound, n: np.ndarray, rate: int) -> np.ndarray:
    t = n / rate
    out = np.zeros_like(t)
    for ratio, gain in _PARTIALS[sound.kind]:
        freq = sound.pitch_hz * ratio
        if freq < 0.45 * rate:
            # Higher partials of a struck object die away faster.
            out += gain * np.sin(2 * np.pi * freq * t) * np.exp(-t * ratio / sound.decay_s)
    return out


def _noisy(sound: ImpactSound, n: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = n / rate
    noise = rng.standard_normal(len(n))
    if sound.kind == "square":
        body = np.sin(2 * np.pi * sound.pitch_hz * t) * np.exp(-t / sound.decay_s)
        b, a = butter(2, min(0.99, 600.0 / (rate / 2)))
        return body + 0.6 * lfilter(b, a, noise) * np.exp(-t / (0.5 * sound.decay_s))
    low, high = 0.7 * sound.pitch_hz / (rate / 2), min(0.99, 1.4 * sound.pitch_hz / (rate / 2))
    b, a = butter(2, (low, high), btype="bandpass")
    return 3.0 * lfilter(b, a, noise) * np.exp(-t / sound.decay_s)


def impact_waveform(sound: ImpactSound, loudness: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One impact's waveform, float64 of about six decay times, peak near ``loudness``."""
    n = np.arange(int(6 * sound.decay_s * rate) + 1, dtype=np.float64)
    wave = _tonal(sound, n, rate) if sound.tonal else _noisy(sound, n, rate, rng)
    wave /= np.abs(wave).max() + 1e-12
    # A 2 ms broadband contact click marks every impact, even when a ringing object is struck again and the
    # new partials happen to cancel the old ones.
    click = min(len(n), rate // 100)
    wave[:click] += 0.5 * rng.standard_normal(click) * np.exp(-n[:click] / (0.002 * rate))
    attack = max(1, rate // 1000)
    wave[:attack] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    return loudness * wave / (np.abs(wave).max() + 1e-12)


def loudness_for(speed: float) -> float:
    """Loudness from the normal impact speed (box units per second), compressed to ``[0.5, 1]``.

    The floor of 0.5 keeps slow wall and ceiling touches clearly audible over a still-ringing earlier impact.
    """
    return float(np.clip((speed / 4.0) ** 0.5, 0.5, 1.0))


def background_noise(num_samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Quiet room tone: low-passed noise plus a mains-like hum with a random fundamental, peak about 0.04."""
    b, a = butter(1, 400.0 / (rate / 2))
    rumble = lfilter(b, a, rng.standard_normal(num_samples))
    rumble *= 0.02 / (np.abs(rumble).max() + 1e-12)
    hum_hz = rng.uniform(50.0, 120.0)
    t = np.arange(num_samples) / rate
    return rumble + 0.015 * np.sin(2 * np.pi * hum_hz * t + rng.uniform(0, 2 * np.pi))


def mix_impacts(times: list[float], sounds: list[ImpactSound], loudness: list[float], num_samples: int, rate: int,
                rng: np.random.Generator) -> np.ndarray:
    """Sum impact sounds starting at the sample of each event time into a ``(num_samples,)`` float64 track."""
    track = np.zeros(num_samples)
    for time, sound, gain in zip(times, sounds, loudness, strict=True):
        start = round(time * rate)
        if start >= num_samples:
            continue
        wave = impact_waveform(sound, gain, rate, rng)[: num_samples - start]
        track[start : start + len(wave)] += wave
    return track
