"""Tiny synthetic audio-visual clips with exactly known event times (numpy/torch only).

A textured square moves in a 64x64 frame; every impact produces a short click in the audio at the exact
(continuous) impact time. Three motions:

* ``"gravity"`` — the square falls and bounces elastically on the floor (speed peaks at the impact);
* ``"wall"`` — it moves at constant speed and reverses at the left/right walls;
* ``"jumps"`` — it rests and jumps a few pixels in one frame at each event frame (motion-magnitude peaks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import torch
from torch import Tensor

SQUARE = 12


@dataclass
class SyntheticClip:
    """One clip: ``video`` (1, T, 3, H, W) uint8, ``audio`` (1, 1, S) float, ``events`` (E,) seconds."""

    video: Tensor
    audio: Tensor
    events: Tensor
    fps: float
    sample_rate: int


def _gravity_track(times: np.ndarray, size: int, first: float, period: float) -> tuple[np.ndarray, np.ndarray]:
    floor = size - SQUARE - 2
    height = size * 0.6
    gravity = 8 * height / period**2
    phase = np.mod(times - first, period)
    before = times < first
    fall = (first - times) * np.where(before, 1, 0)
    # before the first impact the square is falling towards the floor; afterwards it bounces periodically
    y = np.where(before, floor - (gravity * period / 2 * fall - gravity * fall**2 / 2),
                 floor - (gravity * period / 2 * phase - gravity * phase**2 / 2))
    x = 10 + 12 * times
    return x, y


def _wall_track(times: np.ndarray, size: int, speed: float) -> tuple[np.ndarray, np.ndarray]:
    travel = size - SQUARE - 4
    distance = np.mod(times * speed + travel / 2, 2 * travel)
    x = 2 + np.where(distance < travel, distance, 2 * travel - distance)
    return x, np.full_like(times, (size - SQUARE) / 2)


def _render(xs: np.ndarray, ys: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    texture = rng.integers(40, 255, size=(SQUARE, SQUARE, 3))
    background = np.full((size, size, 3), 20.0)
    frames = []
    for x, y in zip(xs, ys, strict=True):
        frame = background.copy()
        # bilinear splat of the textured square at a sub-pixel position
        ix, iy = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - ix, y - iy
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                region = frame[iy + dy:iy + dy + SQUARE, ix + dx:ix + dx + SQUARE]
                region += wy * wx * (texture - background[:SQUARE, :SQUARE])
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _clicks(events: np.ndarray, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    audio = rng.normal(0, 1e-4, num_samples)
    n = np.arange(int(0.05 * sample_rate))
    click = 0.5 * np.exp(-n / (0.008 * sample_rate)) * (np.sin(2 * np.pi * 1800 * n / sample_rate)
                                                      + 0.5 * rng.normal(0, 1, n.shape))
    for time in events:
        start = round(time * sample_rate)
        stop = min(num_samples, start + len(click))
        if 0 <= start < num_samples:
            audio[start:stop] += click[:stop - start]
    return audio


def make_clip(kind: Literal["gravity", "wall", "jumps"] = "gravity", *, seconds: float = 3.0, fps: float = 24.0,
              size: int = 64, sample_rate: int = 16000, audio_delay: float = 0.0, seed: int = 0) -> SyntheticClip:
    """Render one clip; ``audio_delay`` seconds shifts the clicks later than the visual events."""
    rng = np.random.default_rng(seed)
    num_frames = round(seconds * fps) + 1
    times = np.arange(num_frames) / fps
    if kind == "gravity":
        first, period = 0.37, 0.71
        xs, ys = _gravity_track(times, size, first, period)
        events = np.arange(first, seconds, period)
    elif kind == "wall":
        speed = 70.0
        xs, ys = _wall_track(times, size, speed)
        travel = size - SQUARE - 4
        events = np.arange(travel / 2 / speed, seconds, travel / speed)
    else:
        event_frames = np.array([9, 27, 41, 60])
        steps = np.zeros(num_frames)
        steps[event_frames] = 5.0
        xs = 8 + np.cumsum(steps) % (size - SQUARE - 10)
        ys = np.full(num_frames, 20.0)
        events = event_frames / fps
    video = torch.from_numpy(_render(xs, ys, size, rng)).permute(0, 3, 1, 2)[None]
    audio = _clicks(events + audio_delay, round(seconds * sample_rate), sample_rate, rng)
    return SyntheticClip(video, torch.from_numpy(audio).float()[None, None], torch.from_numpy(events), fps,
                         sample_rate)


@pytest.fixture
def synthetic_clip() -> Callable[..., SyntheticClip]:
    """Factory fixture: ``synthetic_clip(kind, seconds=..., fps=..., audio_delay=..., seed=...)``."""
    return make_clip


@pytest.fixture(autouse=True)
def _single_thread():
    """Run each test with one intra-op thread.

    The machines running the suite are small and shared; oversubscribed threads made the optical flow 10-50x
    slower there.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
