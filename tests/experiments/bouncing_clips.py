"""In-memory bouncing-shape clips with impact sounds, for codec tests and codec training experiments.

A small, vectorised stand-in for the project's synthetic dataset (``omniforcing.data.synthetic``): 1-3 coloured
shapes (disc, square, diamond) bounce under gravity in a box on a plain background; each wall impact plays a
decaying tone (pitch and decay fixed per object) plus a short noise burst. Everything is generated on the fly
with torch from a ``torch.Generator``, so training scripts never touch the disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SUBSTEPS = 8  # physics steps per video frame; bounce times are resolved to 1/(fps * SUBSTEPS) s


@dataclass
class BouncingClips:
    """A batch of rendered clips.

    Args:
        video: ``(B, T, 3, H, W)`` float32 in ``[-1, 1]``, ``T = 1 + fps * seconds``.
        audio: ``(B, 1, S)`` float32 in ``[-1, 1]``, ``S = sample_rate * seconds + sample_rate // 25``.
        event_times: per clip, the impact times in seconds (sorted).
        object_masks: ``(B, T, 1, H, W)`` float32 in ``[0, 1]``: coverage of any object (for weighted losses).
    """

    video: Tensor
    audio: Tensor
    event_times: list[list[float]]
    object_masks: Tensor


def render_bouncing_clips(
    batch: int,
    seconds: int,
    *,
    fps: int = 24,
    size: int = 32,
    sample_rate: int = 16000,
    min_objects: int = 1,
    max_objects: int = 3,
    dark_background: bool = False,
    generator: torch.Generator | None = None,
) -> BouncingClips:
    """Render ``batch`` clips of ``1 + fps * seconds`` frames with their impact sounds.

    Backgrounds are random dark or light tints, or all the same dark grey with ``dark_background``.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    num_frames = 1 + fps * seconds
    k = max_objects
    present = torch.arange(k)[None] < torch.randint(min_objects, max_objects + 1, (batch, 1), generator=g)
    radius = size * (0.09 + 0.08 * torch.rand(batch, k, generator=g))
    pos = radius[..., None] + (size - 2 * radius[..., None]) * torch.rand(batch, k, 2, generator=g)
    speed = size * (0.6 + 1.4 * torch.rand(batch, k, generator=g))
    angle = 2 * math.pi * torch.rand(batch, k, generator=g)
    vel = torch.stack([speed * angle.cos(), speed * angle.sin()], -1)
    gravity = size * (1.0 + 2.0 * torch.rand(batch, 1, generator=g))
    positions, impacts = _simulate(pos, vel, radius, gravity, num_frames, fps, size)
    shape = torch.randint(0, 3, (batch, k), generator=g)
    colour = _random_colours(batch, k, g)
    background = 0.15 * torch.rand(batch, 3, generator=g) + torch.where(
        torch.rand(batch, 1, generator=g) < 0.5, 0.0, 0.55)
    if dark_background:
        background = torch.full((batch, 3), 0.1)
    video, masks = _render(positions, radius, shape, colour, background, present, size)
    audio, events = _sonify(impacts, present, num_frames, fps, sample_rate, seconds, g)
    return BouncingClips(video=video * 2 - 1, audio=audio, event_times=events, object_masks=masks)


def _random_colours(batch: int, k: int, g: torch.Generator) -> Tensor:
    hue = torch.rand(batch, k, 1, generator=g)
    phase = torch.tensor([0.0, 1 / 3, 2 / 3])
    rgb = 0.5 + 0.5 * torch.cos(2 * math.pi * (hue + phase))
    return (0.15 + 0.85 * rgb).clamp(0, 1)


def _simulate(pos: Tensor, vel: Tensor, radius: Tensor, gravity: Tensor, num_frames: int, fps: int,
              size: int) -> tuple[Tensor, Tensor]:
    """Positions ``(B, T, K, 2)`` per frame and impact flags ``(B, T * SUBSTEPS, K)`` per substep."""
    dt = 1.0 / (fps * SUBSTEPS)
    lo = radius[..., None]
    hi = size - lo
    accel = torch.stack([torch.zeros_like(gravity), gravity], -1)
    frames, impacts = [], []
    for step in range(num_frames * SUBSTEPS):
        if step % SUBSTEPS == 0:
            frames.append(pos.clone())
        vel = vel + accel * dt
        pos = pos + vel * dt
        hit_lo, hit_hi = pos < lo, pos > hi
        pos = torch.where(hit_lo, 2 * lo - pos, torch.where(hit_hi, 2 * hi - pos, pos))
        vel = torch.where(hit_lo | hit_hi, -vel, vel)
        impacts.append((hit_lo | hit_hi).any(-1))
    return torch.stack(frames, 1), torch.stack(impacts, 1)


def _render(positions: Tensor, radius: Tensor, shape: Tensor, colour: Tensor, background: Tensor,
            present: Tensor, size: int) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx = xx - positions[..., 0, None, None]  # (B, T, K, H, W)
    dy = yy - positions[..., 1, None, None]
    r = radius[:, None, :, None, None]
    disc = (dx.square() + dy.square()).sqrt()
    square = torch.maximum(dx.abs(), dy.abs()) * 1.15
    diamond = (dx.abs() + dy.abs()) * 0.8
    dist = torch.stack([disc, square, diamond], 0)
    dist = torch.gather(dist, 0, shape[None, :, None, :, None, None].expand(1, *disc.shape))[0]
    cover = (r - dist + 0.5).clamp(0, 1) * present[:, None, :, None, None]
    frame = background[:, None, :, None, None].expand(-1, positions.shape[1], 3, size, size).clone()
    for j in range(positions.shape[2]):
        a = cover[:, :, j, None]
        frame = frame * (1 - a) + colour[:, None, j, :, None, None] * a
    return frame, cover.amax(2, keepdim=True)


def _sonify(impacts: Tensor, present: Tensor, num_frames: int, fps: int, sample_rate: int, seconds: int,
            g: torch.Generator) -> tuple[Tensor, list[list[float]]]:
    batch, _, k = impacts.shape
    num_samples = sample_rate * seconds + sample_rate // 25
    pitch = 200 * 2 ** (3 * torch.rand(batch, k, generator=g))
    decay = 0.015 + 0.06 * torch.rand(batch, k, generator=g)
    noisiness = torch.rand(batch, k, generator=g)
    length = int(0.3 * sample_rate)
    t = torch.arange(length) / sample_rate
    env = torch.exp(-t / decay[..., None])
    tone = torch.sin(2 * math.pi * pitch[..., None] * t)
    noise = torch.randn(batch, k, length, generator=g) * torch.exp(-t / 0.008)
    grain = 0.5 * env * ((1 - noisiness[..., None]) * tone + noisiness[..., None] * noise)
    audio = torch.zeros(batch, num_samples + length)
    events: list[list[float]] = [[] for _ in range(batch)]
    dt = 1.0 / (fps * SUBSTEPS)
    last_hit = torch.full((batch, k), -1.0)
    for step in range(impacts.shape[1]):
        for b, j in (impacts[:, step] & present).nonzero().tolist():
            time = (step + 1) * dt
            start = round(time * sample_rate)
            # an object grazing a wall re-triggers every substep: one sound per object per 50 ms
            if time - last_hit[b, j] < 0.05:
                continue
            last_hit[b, j] = time
            if start < num_samples and time < (num_frames - 0.5) / fps:
                audio[b, start:start + length] += grain[b, j]
                events[b].append(time)
    events = [sorted(set(e)) for e in events]
    return audio[:, None, :num_samples].clamp(-1, 1), events
