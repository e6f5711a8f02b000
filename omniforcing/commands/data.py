"""``omniforcing data synth|pack|inspect``: thin wrappers over :mod:`omniforcing.data`."""

from __future__ import annotations

import logging
from pathlib import Path

from omniforcing.data.inspection import format_summary, inspect_shards
from omniforcing.data.packing import pack_folder
from omniforcing.data.synthetic import SceneSettings, write_synthetic_shards
from omniforcing.errors import InvalidInputError, check_positive
from omniforcing.types import ClipSpec


def clip_spec(seconds: int, fps: int, sample_rate: int, size: int, width: int | None = None) -> ClipSpec:
    """The clip geometry of the flags; a combination :class:`ClipSpec` refuses is an ``InvalidInputError``."""
    try:
        return ClipSpec(seconds=seconds, fps=fps, sample_rate=sample_rate, size=size, width=width)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error


def check_workers(workers: int | None) -> None:
    """``--workers``: a count of processes, 0 for none, or unset for the default."""
    if workers is not None and workers < 0:
        raise InvalidInputError(f"--workers must be >= 0 (0: no worker processes), got {workers}")


def synth(*, out: Path, clips: int, seconds: int, seed: int = 0, shard_size: int = 100, fps: int = 24, size: int = 32,
          sample_rate: int = 16000, min_objects: int = 1, max_objects: int = 3, fixed_size: bool = False,
          background_sound: bool = True, plain_background: bool = True, object_collisions: bool = False,
          workers: int | None = None) -> None:
    """Synthesise paired clips of bouncing objects with impact sounds into WebDataset shards.

    Writes ``OUT/shard-000000.tar ...`` (one sample = ``mp4`` + ``json`` with caption and event times) and
    ``OUT/dataset.json``. The same seed gives the same clips.

    Args:
        out: output folder.
        clips: number of clips.
        seconds: seconds per clip after the lead frame (a clip has 1 + fps * seconds frames).
        seed: dataset seed.
        shard_size: clips per shard.
        fps: video frame rate.
        size: frame side in pixels (even).
        sample_rate: audio sample rate in Hz (a multiple of 25).
        min_objects: fewest objects per clip.
        max_objects: most objects per clip.
        fixed_size: all objects have the same size.
        background_sound: add quiet room tone under the impacts.
        plain_background: plain dark background instead of random colour gradients.
        object_collisions: objects bounce off each other too.
        workers: worker processes (default: chosen from the number of clips; 0 = none).
    """
    check_positive(clips=clips, seconds=seconds, shard_size=shard_size, fps=fps, size=size, sample_rate=sample_rate)
    check_workers(workers)
    spec = clip_spec(seconds, fps, sample_rate, size)
    try:
        scene = SceneSettings(min_objects, max_objects, fixed_size, background_sound, plain_background,
                              object_collisions)
    except ValueError as error:  # object counts out of range
        raise InvalidInputError(f"--min-objects/--max-objects: {error}") from error
    manifest = write_synthetic_shards(out, clips, spec, seed, shard_size, scene, workers)
    print(f"wrote {manifest['samples']} clips of {spec.duration:.3f} s in {len(manifest['shards'])} shards to {out}")


def pack(src: Path, *, out: Path, seconds: int = 2, fps: int = 24, sample_rate: int = 16000, size: int = 32,
         width: int | None = None, shard_size: int = 100, workers: int | None = None) -> None:
    """Cut every media file under SRC into clips, convert rates and size, and write WebDataset shards.

    Captions come from a sidecar ``NAME.txt`` or ``NAME.json`` (key ``caption``) beside each file, else from
    the file name. Files without audio, undecodable or too short files are skipped and listed. A folder without
    media files, or one where every file is skipped, is an error (exit code 2) and writes nothing.

    Args:
        src: folder of media files (mp4, mov, mkv, webm, avi), searched recursively.
        out: output folder.
        seconds: seconds per clip after the lead frame.
        fps: output frame rate.
        sample_rate: output audio rate in Hz (mono).
        size: output frame height in pixels, and width unless ``width`` is given (scaled to cover the frame,
            then centre-cropped).
        width: output frame width in pixels for frames that are not square (LTX-2: ``--size 512 --width 768``).
        shard_size: clips per shard.
        workers: worker processes (default: chosen from the number of files; 0 = none).
    """
    logging.getLogger("omniforcing.data.packing").setLevel(logging.ERROR)  # skips are listed in the summary below
    check_positive(seconds=seconds, fps=fps, sample_rate=sample_rate, size=size, width=width, shard_size=shard_size)
    check_workers(workers)
    spec = clip_spec(seconds, fps, sample_rate, size, width)
    report = pack_folder(src, out, spec, shard_size, workers)
    print(f"packed {report.clips} clips from {report.files - len(report.skipped)} of {report.files} files "
          f"into {len(report.shards)} shards in {out}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:")
        for path, reason in report.skipped:
            print(f"  - {path}: {reason}")


def inspect(path: Path) -> None:
    """Summarise a shard folder: samples, duration, rates, sizes, captions, unreadable samples, latents.

    Args:
        path: shard folder, brace pattern or glob.
    """
    print(format_summary(inspect_shards(str(path))))
