"""Rotary position embeddings in physical units (LTX-2's fractional RoPE, ALGORITHMS.md §1.4).

Each token has one coordinate per axis (time in seconds; for video also the latent row and column). The
angle of frequency ``i`` on an axis is ``theta_i * (2 * pos / max_pos - 1)`` with
``theta_i = (pi / 2) * base ** u_i``, ``u_i`` evenly spaced in ``[0, 1]``. Position 0 is therefore *not* angle 0,
which is why audio sink tokens get an explicit identity rotation (cos 1, sin 0; ALGORITHMS.md §6.3) instead of
"position 0". Head dimensions left over after splitting the frequency pairs between axes are not rotated.

Angles are computed in float64: absolute times of a long stream (minutes) times the highest frequencies give
angles of ~1e7 rad, where float32 would lose the phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RopeTables:
    """Rotations for ``N`` tokens, ``(N, head_dim // 2)`` each.

    Args:
        cos: cosines in the compute dtype.
        sin: sines in the compute dtype.
        rotation: ``cos + i sin`` (complex64; complex128 for float64 tables), what :func:`apply_rope` uses eagerly.
        rotation_pairs: the same rotation as real ``(N, head_dim // 2, 2)`` (cos, sin) pairs in float32 (float64
            for float64 tables), what :func:`apply_rope` uses inside ``torch.compile``.
    """

    cos: Tensor
    sin: Tensor
    rotation: Tensor
    rotation_pairs: Tensor

    @classmethod
    def from_angles(cls, angle: Tensor, dtype: torch.dtype) -> RopeTables:
        """Tables from float64 angles ``(N, pairs)``."""
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        rotation = torch.polar(torch.ones_like(angle), angle).to(complex_dtype)
        return cls(angle.cos().to(dtype), angle.sin().to(dtype), rotation, torch.view_as_real(rotation).clone())


class RotaryEmbedding:
    """Fractional RoPE over ``len(max_positions)`` axes for heads of width ``head_dim``.

    Args:
        head_dim: width of one attention head (even).
        max_positions: per axis, the coordinate that maps to the top of the frequency range (time: the trained
            length in seconds, e.g. 20; space: the latent grid size).
        base: ratio between the highest and lowest frequency.
    """

    def __init__(self, head_dim: int, max_positions: tuple[float, ...], base: float = 10000.0) -> None:
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        pairs = head_dim // 2
        per_axis = pairs // len(max_positions)
        if per_axis < 1:
            raise ValueError(f"head dimension {head_dim} is too small for {len(max_positions)} RoPE axes")
        self.head_dim = head_dim
        self.max_positions = tuple(float(m) for m in max_positions)
        self.per_axis = per_axis
        self.pairs = pairs
        self.frequencies = (math.pi / 2) * base ** torch.linspace(0, 1, per_axis, dtype=torch.float64)
        self._on_device: dict[torch.device, Tensor] = {}

    def frequencies_on(self, device: torch.device) -> Tensor:
        """The frequencies on ``device``, copied there once (later tables need no host-to-device copy)."""
        if device not in self._on_device:
            with torch.inference_mode(False):
                self._on_device[device] = self.frequencies.to(device)
        return self._on_device[device]

    def angles(self, positions: Tensor) -> Tensor:
        """``(N, pairs)`` float64 angles for ``(N, axes)`` coordinates; unused pairs get angle 0."""
        positions = positions.to(torch.float64)
        freqs = self.frequencies_on(positions.device)
        parts = [freqs * (2 * positions[:, axis, None] / top - 1) for axis, top in enumerate(self.max_positions)]
        pad = positions.new_zeros(positions.shape[0], self.pairs - self.per_axis * len(self.max_positions))
        return torch.cat([*parts, pad], dim=-1)

    def tables(self, positions: Tensor, identity: Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> RopeTables:
        """Tables for ``positions`` ``(N, axes)``; rows where ``identity`` ``(N,)`` is True get cos 1, sin 0."""
        angle = self.angles(positions)
        if identity is not None:
            angle = angle.masked_fill(identity[:, None], 0.0)
        return RopeTables.from_angles(angle, dtype)

    def time_shift(self, seconds: float, device: torch.device, dtype: torch.dtype) -> RopeTables:
        """``(1, pairs)`` tables rotating the time axis (axis 0) by ``seconds``; other axes untouched.

        Rotating a key that was rotated at time ``p`` by this gives exactly the key rotated at ``p + seconds``
        (the angle is affine in the position), which is how the "relative" prefix policy re-places pinned keys.
        """
        angle = torch.zeros(1, self.pairs, dtype=torch.float64, device=device)
        angle[0, : self.per_axis] = self.frequencies_on(device) * (2 * seconds / self.max_positions[0])
        return RopeTables.from_angles(angle, dtype)


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate consecutive pairs of ``x`` ``(..., N, head_dim)`` by ``tables`` ``(N, head_dim // 2)``.

    Eager: one complex multiplication (the fastest form on CPU). Inside ``torch.compile`` the same product
    written on real pairs, because inductor generates no code for complex operators (it falls back to an
    unfused ATen kernel, with a warning, in the middle of every compiled layer); the two agree to float32
    rounding. Half precision inputs rotate in float32.
    """
    if torch.compiler.is_compiling():
        return _apply_rope_real(x, tables.rotation_pairs)
    rotation = tables.rotation
    real = torch.float64 if rotation.dtype == torch.complex128 else torch.float32
    pairs = x.to(real).unflatten(-1, (-1, 2))
    return torch.view_as_real(torch.view_as_complex(pairs) * rotation).flatten(-2).to(x.dtype)


def _apply_rope_real(x: Tensor, rotation_pairs: Tensor) -> Tensor:
    """:func:`apply_rope` on real pairs: ``(a + ib)(c + id) = (ac - bd) + i(ad + bc)`` per pair."""
    a, b = x.to(rotation_pairs.dtype).unflatten(-1, (-1, 2)).unbind(-1)
    c, d = rotation_pairs.unbind(-1)
    return torch.stack([a * c - b * d, a * d + b * c], dim=-1).flatten(-2).to(x.dtype)
