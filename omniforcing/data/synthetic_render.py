"""Anti-aliased rendering of the synthetic scene: flat shapes over a background, one frame per time.

Each shape is drawn from its signed distance ``d`` (box units, negative inside) with a one-pixel ramp:
coverage ``= clip(0.5 - d * size, 0, 1)``, which is the area-coverage of a straight edge through the pixel.
Every shape fits exactly in the square of half-side ``r`` around its centre (the physics' half-extent),
so an object touches the frame border exactly when the simulation records an impact.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 50, 50),
    "green": (60, 200, 80),
    "blue": (60, 110, 245),
    "yellow": (240, 220, 60),
    "magenta": (220, 70, 220),
    "cyan": (60, 215, 225),
    "orange": (245, 150, 40),
    "white": (235, 235, 235),
}

PLAIN_BACKGROUND = (24, 24, 32)

_SQRT5 = math.sqrt(5.0)


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (negative inside) from points ``(dx, dy)`` relative to the centre to a shape.

    Polygons use the maximum of their edges' half-plane distances: exact inside and along edges, slightly
    under-estimated beyond corners, which only affects the anti-aliasing ramp there.

    Args:
        shape: one of :data:`SHAPES`; the triangle points up (apex at ``-r``, base at ``+r``).
        dx, dy: offsets from the centre in box units (any broadcastable shapes).
        r: half-extent in box units.
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - r) / math.sqrt(2.0)
    if shape == "triangle":
        # Base edge y = +r; side edges from (+-r, +r) to the apex (0, -r), outward normals (+-2, -1)/sqrt(5).
        side = (2.0 * (np.abs(dx) - r) - (dy - r)) / _SQRT5
        return np.maximum(dy - r, side)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def background_image(size: int, colour: tuple[int, int, int], gradient: float) -> np.ndarray:
    """``(size, size, 3)`` float32 background: ``colour`` brightened by ``gradient`` towards the bottom."""
    ramp = np.linspace(0.0, gradient, size, dtype=np.float32)[:, None, None]
    base = np.asarray(colour, dtype=np.float32)[None, None, :]
    return np.broadcast_to(np.clip(base * (1.0 + ramp), 0, 255), (size, size, 3)).copy()


def render_frames(positions: np.ndarray, shapes: list[str], radii: list[float], colours: list[tuple[int, int, int]],
                  background: np.ndarray) -> np.ndarray:
    """Draw the objects over the background at each time.

    Args:
        positions: ``(T, K, 2)`` object centres ``(x, y)`` in box units.
        shapes: ``K`` shape names.
        radii: ``K`` half-extents in box units.
        colours: ``K`` RGB colours.
        background: ``(H, W, 3)`` float32 background with ``H == W``.

    Returns:
        ``(T, H, W, 3)`` uint8 frames; later objects are drawn over earlier ones.
    """
    size = background.shape[0]
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    frames = np.repeat(background[None].astype(np.float32), len(positions), axis=0)
    for k, (shape, r, colour) in enumerate(zip(shapes, radii, colours, strict=True)):
        dx = centres[None, None, :] - positions[:, k, 0, None, None]
        dy = centres[None, :, None] - positions[:, k, 1, None, None]
        coverage = np.clip(0.5 - signed_distance(shape, dx, dy, r) * size, 0.0, 1.0).astype(np.float32)[..., None]
        frames += coverage * (np.asarray(colour, dtype=np.float32) - frames)
    return np.rint(frames).clip(0, 255).astype(np.uint8)
