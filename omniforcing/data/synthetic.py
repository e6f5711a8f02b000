"""Deterministic synthetic paired clips with known audio-visual events.

One to three objects (circle, square, triangle, diamond; eight colours) bounce under gravity in a box
(:mod:`.synthetic_physics`, exact impact times); every impact makes a sound whose timbre depends on the
object (:mod:`.synthetic_audio`); frames are rendered anti-aliased (:mod:`.synthetic_render`). A caption is
generated from the scene. The json of a clip holds the scene and the event list, so audio-visual sync can be
measured against ground truth.

Clip ``i`` of a dataset with seed ``s`` draws everything from ``numpy.random.SeedSequence([s, i])``: the
same ``(s, i)`` gives the same clip on any machine, independently of how many clips or workers there are.
Times are relative to frame 0 (``t = 0``); frame ``k`` shows the scene at ``k / fps``, audio sample ``n``
plays at ``n / sample_rate``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from omniforcing.data.mp4_writers import DEFAULT_CRF, encode_mp4
from omniforcing.data.parallel import default_workers, map_ordered
from omniforcing.data.shards import ShardSink, json_bytes, sample_key, write_manifest
from omniforcing.data.synthetic_audio import ImpactSound, background_noise, loudness_for, mix_impacts, sound_for
from omniforcing.data.synthetic_physics import Body, Trajectory, simulate
from omniforcing.data.synthetic_render import COLOURS, PLAIN_BACKGROUND, SHAPES, background_image, render_frames
from omniforcing.types import ClipSpec, frame_label

REFERENCE_HALF_EXTENT = 0.1
"""Half-extent of a reference-size object in box units (a 32 px frame shows it 6.4 px from centre to edge)."""

SIZE_RANGE = (0.07, 0.13)
"""Range of random half-extents in box units when sizes are not fixed."""


@dataclass(frozen=True)
class SceneSettings:
    """Difficulty knobs of the synthetic scenes.

    Args:
        min_objects: fewest objects per clip (>= 1).
        max_objects: most objects per clip (<= 8, one colour each).
        fixed_size: every object has the reference size (otherwise sizes vary, and with them the pitch).
        background_sound: add quiet room tone and hum under the impacts.
        plain_background: a fixed dark background; otherwise a random dark colour with a vertical gradient.
        object_collisions: objects also bounce off each other (as discs); otherwise they pass through.
    """

    min_objects: int = 1
    max_objects: int = 3
    fixed_size: bool = False
    background_sound: bool = True
    plain_background: bool = True
    object_collisions: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= len(COLOURS):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLOURS)}, "
                             f"got {self.min_objects}, {self.max_objects}")


@dataclass
class SceneObject:
    """One object: its look, its sound and its initial state."""

    shape: str
    colour: str
    half_extent: float
    sound: ImpactSound
    body: Body

    def to_json(self, size: int) -> dict[str, Any]:
        """Metadata record (size in box units and in pixels of a ``size`` frame)."""
        return {"shape": self.shape, "colour": self.colour, "rgb": list(COLOURS[self.colour]),
                "size": round(2 * self.half_extent, 6), "size_px": round(2 * self.half_extent * size, 3),
                "sound": self.sound.to_json()}


@dataclass
class SyntheticClip:
    """A synthesised clip.

    Args:
        video: ``(T, H, W, 3)`` uint8 frames, ``T = spec.num_frames``.
        audio: ``(S,)`` float32 mono in ``[-1, 1]``, ``S = spec.num_samples``.
        metadata: the json record (caption, rates, seed, objects, events, ...).
    """

    video: np.ndarray
    audio: np.ndarray
    metadata: dict[str, Any]

    @property
    def event_times(self) -> np.ndarray:
        """``(E,)`` float64 event times in seconds."""
        return np.array([e["time"] for e in self.metadata["events"]], dtype=np.float64)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of clip ``index`` in a dataset with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _place(rng: np.random.Generator, radii: list[float]) -> list[tuple[float, float]]:
    """Non-overlapping starting centres in the upper part of the box (rejection sampling)."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(200):
            x, y = rng.uniform(r + 0.02, 1 - r - 0.02), rng.uniform(r + 0.05, 0.6)  # not touching a wall at t = 0
            if all((x - cx) ** 2 + (y - cy) ** 2 > (r + cr + 0.01) ** 2 for (cx, cy), cr in zip(centres, radii)):
                break
        centres.append((x, y))
    return centres


def sample_objects(rng: np.random.Generator, settings: SceneSettings) -> list[SceneObject]:
    """Draw the objects of one scene: count, shapes, distinct colours, sizes, sounds and initial motion."""
    count = int(rng.integers(settings.min_objects, settings.max_objects + 1))
    names = list(COLOURS)
    colour_ids = rng.choice(len(names), size=count, replace=False)
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=count)]
    radii = [REFERENCE_HALF_EXTENT if settings.fixed_size else float(rng.uniform(*SIZE_RANGE)) for _ in range(count)]
    objects = []
    for shape, colour_id, r, (x, y) in zip(shapes, colour_ids, radii, _place(rng, radii), strict=True):
        vx = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.7))
        body = Body(x=float(x), y=float(y), vx=vx, vy=float(rng.uniform(-1.5, 1.0)), r=r)
        sound = sound_for(shape, r / REFERENCE_HALF_EXTENT, int(colour_id))
        objects.append(SceneObject(shape, names[colour_id], r, sound, body))
    return objects


def _pitch_word(sound: ImpactSound, shape: str) -> str:
    ratio = sound.pitch_hz / sound_for(shape, 1.0, 0).pitch_hz
    # Pitch factors span about 0.8 .. 1.9 of the shape's reference pitch (size and colour together).
    return " high" if ratio >= 1.35 else " low" if ratio < 0.95 else ""


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def make_caption(objects: list[SceneObject], background_sound: bool) -> str:
    """Describe the scene, e.g. ``"a red circle and a blue square bounce; the circle rings high, the square thuds"``."""
    names = [_with_article(f"{o.colour} {o.shape}") for o in objects]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "bounces" if len(objects) == 1 else "bounce"
    shapes = [o.shape for o in objects]
    parts = []
    for o in objects:
        subject = f"the {o.shape}" if shapes.count(o.shape) == 1 else f"the {o.colour} {o.shape}"
        parts.append(f"{subject} {o.sound.verb}{_pitch_word(o.sound, o.shape)}")
    caption = f"{listed} {verb}; " + ", ".join(parts)
    return caption + (", over a low hum" if background_sound else "")


def _render(rng: np.random.Generator, objects: list[SceneObject], trajectory: Trajectory, spec: ClipSpec,
            settings: SceneSettings) -> tuple[np.ndarray, list[int]]:
    if settings.plain_background:
        colour, gradient = PLAIN_BACKGROUND, 0.0
    else:
        colour, gradient = tuple(int(c) for c in rng.integers(10, 70, size=3)), float(rng.uniform(0.2, 0.8))
    times = np.arange(spec.num_frames, dtype=np.float64) / spec.fps
    frames = render_frames(trajectory.positions(times), [o.shape for o in objects], [o.half_extent for o in objects],
                           [COLOURS[o.colour] for o in objects], background_image(spec.size, colour, gradient))
    return frames, list(colour)


def synthesize_clip(seed: int, index: int, spec: ClipSpec, settings: SceneSettings | None = None) -> SyntheticClip:
    """Synthesise clip ``index`` of the dataset with ``seed``, directly as arrays (no files).

    Args:
        seed: dataset seed.
        index: clip index; the clip depends only on ``(seed, index, spec, settings)``.
        spec: clip geometry (``1 + fps * seconds`` frames, ``sample_rate * seconds + sample_rate // 25`` samples).
        settings: difficulty knobs (defaults: :class:`SceneSettings`).

    Returns:
        The clip with its metadata (events sorted by time, times in seconds from frame 0).

    Raises:
        ValueError: ``spec`` has frames that are not square (the scenes are drawn in a unit square).
    """
    if spec.width is not None:
        raise ValueError(f"synthetic clips are square: got {frame_label(spec.frame_size)} frames; leave width unset")
    settings = settings or SceneSettings()
    rng = clip_rng(seed, index)
    objects = sample_objects(rng, settings)
    end = max(spec.num_frames / spec.fps, spec.num_samples / spec.sample_rate)
    trajectory = simulate([Body(**vars(o.body)) for o in objects], end, collide=settings.object_collisions)
    frames, background = _render(rng, objects, trajectory, spec, settings)
    impacts = trajectory.impacts
    audio = mix_impacts([i.time for i in impacts], [objects[i.obj].sound for i in impacts],
                        [loudness_for(i.speed) for i in impacts], spec.num_samples, spec.sample_rate, rng)
    if settings.background_sound:
        audio += background_noise(spec.num_samples, spec.sample_rate, rng)
    peak = float(np.abs(audio).max())
    audio = audio * (0.9 / peak) if peak > 0.9 else audio
    metadata = {
        "caption": make_caption(objects, settings.background_sound), "source": "synthetic",
        "seed": seed, "index": index, "fps": spec.fps, "sample_rate": spec.sample_rate, "seconds": spec.seconds,
        "size": spec.size, "num_frames": spec.num_frames, "num_samples": spec.num_samples,
        "objects": [o.to_json(spec.size) for o in objects],
        "events": [{"time": i.time, "object": i.obj, "surface": i.surface, "speed": round(i.speed, 6),
                    **({"other": i.other} if i.other >= 0 else {})} for i in impacts],
        "background": {"rgb": background, "sound": settings.background_sound}, "scene": asdict(settings),
    }
    return SyntheticClip(frames, audio.astype(np.float32), metadata)


def encode_synthetic_sample(index: int, seed: int, spec: ClipSpec, settings: SceneSettings,
                            crf: int = DEFAULT_CRF) -> tuple[str, dict[str, bytes]]:
    """Synthesise clip ``index`` and encode it as a shard sample: ``(key, {"mp4": ..., "json": ...})``."""
    clip = synthesize_clip(seed, index, spec, settings)
    mp4 = encode_mp4(clip.video, spec.fps, clip.audio, spec.sample_rate, crf)
    return sample_key(index), {"mp4": mp4, "json": json_bytes(clip.metadata)}


def write_synthetic_shards(out: str | Path, clips: int, spec: ClipSpec, seed: int = 0, shard_size: int = 100,
                           settings: SceneSettings | None = None, workers: int | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Synthesise ``clips`` clips into WebDataset shards ``out/shard-000000.tar ...`` plus ``out/dataset.json``.

    Args:
        out: output folder.
        clips: number of clips (indices ``0 .. clips - 1``).
        spec: clip geometry.
        seed: dataset seed.
        shard_size: clips per shard.
        settings: difficulty knobs.
        workers: worker processes (``None``: chosen from the job size; 0: in this process).
        progress: show a progress bar.

    Returns:
        The manifest written to ``dataset.json``.
    """
    settings = settings or SceneSettings()
    workers = default_workers(clips) if workers is None else workers
    encode = partial(encode_synthetic_sample, seed=seed, spec=spec, settings=settings)
    with ShardSink(out, shard_size) as sink:
        for key, members in tqdm(map_ordered(encode, range(clips), workers), total=clips, disable=not progress,
                                 desc="synth", unit="clip"):
            sink.write(key, members)
    manifest = {"kind": "synthetic", "samples": sink.count, "shards": sink.shards, "seed": seed,
                "seconds": spec.seconds, "fps": spec.fps, "sample_rate": spec.sample_rate, "size": spec.size,
                "num_frames": spec.num_frames, "num_samples": spec.num_samples, "scene": asdict(settings)}
    write_manifest(out, manifest)
    return manifest
