"""Exact event-driven simulation of objects bouncing under gravity in a unit box.

Between impacts every object follows a parabola, so the time of the next impact with a wall, the floor, the
ceiling or (optionally) another object is the root of a polynomial and is computed in closed form. The
simulation jumps from impact to impact, so event times are exact real numbers, not multiples of a frame or
of a simulation step; positions at any time (e.g. frame times) are then evaluated on the parabolas.

Coordinates: the box is ``[0, 1] x [0, 1]`` with ``x`` to the right and ``y`` downwards (image convention),
gravity points to ``+y``. Each object has a half-extent ``r``: its shape fits exactly in the square of side
``2r`` around its centre and touches a wall with that square's side (see ``synthetic_render``). Impacts
with walls and floor are elastic (restitution 1), so objects keep bouncing for any clip length. Object-object
impacts treat the objects as discs of radius ``r`` (exact for circles, approximate for the other shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

GRAVITY = 9.0
"""Box heights per second squared: a drop over the whole box takes about 0.47 s."""

SURFACES = ("floor", "ceiling", "left", "right", "object")

_EPS = 1e-9


@dataclass
class Body:
    """One object's state at time ``t`` of its current parabola.

    Args:
        x, y: centre in box units.
        vx, vy: velocity in box units per second.
        r: half-extent in box units.
        t: time of this state in seconds.
    """

    x: float
    y: float
    vx: float
    vy: float
    r: float
    t: float = 0.0

    def at(self, time: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre position at ``time`` (>= ``self.t``, before the next impact)."""
        dt = np.asarray(time, dtype=np.float64) - self.t
        return self.x + self.vx * dt, self.y + self.vy * dt + 0.5 * GRAVITY * dt * dt

    def advance(self, time: float) -> None:
        """Move the state along the parabola to ``time``."""
        dt = time - self.t
        x, y = self.at(time)
        self.x, self.y, self.vy, self.t = float(x), float(y), self.vy + GRAVITY * dt, time


@dataclass
class Impact:
    """One impact: time in seconds, the object, the surface and the normal speed at impact."""

    time: float
    obj: int
    surface: str
    speed: float
    other: int = -1


@dataclass
class Trajectory:
    """Piecewise-parabolic motion of every object; ``segments[k]`` holds object k's states after each impact."""

    segments: list[list[Body]] = field(default_factory=list)
    impacts: list[Impact] = field(default_factory=list)

    def positions(self, times: np.ndarray) -> np.ndarray:
        """Centres at the given times: ``(len(times), num_objects, 2)`` float64 ``(x, y)``."""
        out = np.zeros((len(times), len(self.segments), 2))
        for k, states in enumerate(self.segments):
            starts = np.array([s.t for s in states])
            which = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(states) - 1)
            for j in np.unique(which):
                mask = which == j
                out[mask, k, 0], out[mask, k, 1] = states[j].at(times[mask])
        return out


def _time_to_wall(body: Body) -> tuple[float, str]:
    if body.vx > _EPS:
        return (1.0 - body.r - body.x) / body.vx, "right"
    if body.vx < -_EPS:
        return (body.r - body.x) / body.vx, "left"
    return math.inf, "right"


def _time_to_floor(body: Body) -> float:
    # y + vy t + g t^2 / 2 = 1 - r; the larger root is the next floor contact whether moving up or down.
    disc = body.vy**2 + 2.0 * GRAVITY * (1.0 - body.r - body.y)
    return (-body.vy + math.sqrt(max(disc, 0.0))) / GRAVITY


def _time_to_ceiling(body: Body) -> float:
    disc = body.vy**2 - 2.0 * GRAVITY * (body.y - body.r)
    if body.vy >= 0 or disc < 0:
        return math.inf
    time = (-body.vy - math.sqrt(disc)) / GRAVITY
    return time if time > _EPS else math.inf


def _time_to_contact(a: Body, b: Body) -> float:
    # Gravity acts on both, so their relative motion is a straight line: |p + v t| = ra + rb.
    px, py, vx, vy = a.x - b.x, a.y - b.y, a.vx - b.vx, a.vy - b.vy
    approach = px * vx + py * vy
    speed2 = vx * vx + vy * vy
    if approach >= 0 or speed2 < _EPS:
        return math.inf
    disc = approach**2 - speed2 * (px * px + py * py - (a.r + b.r) ** 2)
    if disc < 0:
        return math.inf
    time = (-approach - math.sqrt(disc)) / speed2
    return time if time > _EPS else math.inf


def _next_impact(bodies: list[Body], now: float, collide: bool) -> tuple[float, int, str, int]:
    best = (math.inf, -1, "", -1)
    for k, body in enumerate(bodies):
        wall_time, wall = _time_to_wall(body)
        for dt, surface in ((wall_time, wall), (_time_to_floor(body), "floor"), (_time_to_ceiling(body), "ceiling")):
            if now + dt < best[0]:
                best = (now + dt, k, surface, -1)
        if collide:
            for j in range(k + 1, len(bodies)):
                dt = _time_to_contact(body, bodies[j])
                if now + dt < best[0]:
                    best = (now + dt, k, "object", j)
    return best


def _bounce_pair(a: Body, b: Body) -> float:
    """Elastic impact of two discs with masses proportional to area; returns the normal approach speed."""
    nx, ny = b.x - a.x, b.y - a.y
    norm = math.hypot(nx, ny) or 1.0
    nx, ny = nx / norm, ny / norm
    approach = (a.vx - b.vx) * nx + (a.vy - b.vy) * ny
    ma, mb = a.r**2, b.r**2
    impulse = 2.0 * approach / (ma + mb)
    a.vx, a.vy = a.vx - impulse * mb * nx, a.vy - impulse * mb * ny
    b.vx, b.vy = b.vx + impulse * ma * nx, b.vy + impulse * ma * ny
    return abs(approach)


def _bounce(bodies: list[Body], obj: int, surface: str, other: int) -> float:
    body = bodies[obj]
    if surface == "object":
        return _bounce_pair(body, bodies[other])
    if surface in ("left", "right"):
        body.vx = -body.vx
        return abs(body.vx)
    body.vy = -body.vy
    return abs(body.vy)


def simulate(bodies: list[Body], duration: float, collide: bool = False) -> Trajectory:
    """Run the bodies from time 0 to ``duration`` and record every impact.

    Args:
        bodies: initial states at ``t = 0`` (inside the box, not overlapping); modified in place.
        duration: seconds to simulate.
        collide: also simulate object-object impacts (as discs).

    Returns:
        The trajectory: per object, its state after each impact, and the impacts in time order.
    """
    trajectory = Trajectory(segments=[[Body(**vars(b))] for b in bodies])
    now = 0.0
    while True:
        time, obj, surface, other = _next_impact(bodies, now, collide)
        if time >= duration or obj < 0:
            return trajectory
        for body in bodies:
            body.advance(time)
        speed = _bounce(bodies, obj, surface, other)
        trajectory.impacts.append(Impact(time, obj, surface, speed, other))
        for k in (obj, other) if other >= 0 else (obj,):
            trajectory.segments[k].append(Body(**vars(bodies[k])))
        now = time
