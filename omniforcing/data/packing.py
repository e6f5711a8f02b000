"""Pack a folder of real media files into WebDataset shards of fixed-length clips.

Each file is decoded once, its audio mixed to mono and resampled, and cut into consecutive clips of
``seconds`` seconds over the time span where both video and audio exist. Clip ``k`` starts at
``t_k = start + k * seconds``; its frames are the source frames nearest to ``t_k + i / fps`` (no drift) and
its audio starts at sample ``round((t_k - audio_start) * sample_rate)``. A stored clip has the lengths of
:class:`~omniforcing.types.ClipSpec`: ``1 + fps * seconds`` frames and ``sample_rate * seconds +
sample_rate // 25`` samples. Files that cannot be used are skipped with a reason; one bad file never stops
the run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from omniforcing.data.media import (
    MEDIA_SUFFIXES,
    MediaClip,
    MediaError,
    NoAudioStreamError,
    read_av,
    resample_audio,
    resize_center_crop,
    retime_video,
    to_mono,
)
from omniforcing.data.mp4_writers import DEFAULT_CRF, encode_mp4
from omniforcing.data.parallel import default_workers, map_ordered
from omniforcing.data.shards import ShardSink, json_bytes, sample_key, write_manifest
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.types import ClipSpec

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    """Clips cut from one file (``members`` per clip), or the reason it was skipped."""

    path: str
    clips: list[dict[str, bytes]] = field(default_factory=list)
    reason: str | None = None


@dataclass
class PackReport:
    """Outcome of :func:`pack_folder`: files seen, clips written, skipped files with reasons."""

    files: int = 0
    clips: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def find_media(src: str | Path) -> list[Path]:
    """Media files under ``src`` (recursive, sorted), by file name ending (:data:`MEDIA_SUFFIXES`)."""
    root = Path(src)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise MissingInputError(f"source folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


def caption_for(path: Path) -> str:
    """Caption from a sidecar ``<name>.txt`` or ``<name>.json`` (key ``"caption"``), else from the file name."""
    text_file, json_file = path.with_suffix(".txt"), path.with_suffix(".json")
    if text_file.is_file() and text_file.read_text().strip():
        return text_file.read_text().strip()
    if json_file.is_file():
        try:
            caption = json.loads(json_file.read_text()).get("caption")
        except (json.JSONDecodeError, AttributeError):
            caption = None
        if isinstance(caption, str) and caption.strip():
            return caption.strip()
    return " ".join(path.stem.replace("_", " ").replace("-", " ").split())


def needed_seconds(spec: ClipSpec) -> float:
    """Source time one clip covers: the longer of its video (``num_frames / fps``) and audio spans."""
    return max(spec.num_frames / spec.fps, spec.num_samples / spec.sample_rate)


def cut_clips(media: MediaClip, spec: ClipSpec) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """Cut decoded media into clips of ``spec``.

    Args:
        media: decoded file with audio.
        spec: clip geometry (target fps, sample rate, size, seconds).

    Returns:
        ``(start_time, video (T, height, width, 3) uint8, audio (S,) float32 mono)`` per clip; empty if too short.
    """
    assert media.audio is not None
    audio = resample_audio(to_mono(media.audio), media.sample_rate, spec.sample_rate)[0]
    start = max(media.video_start, media.audio_start)
    end = min(media.video_end, media.audio_start + audio.shape[-1] / spec.sample_rate)
    spare = end - start - needed_seconds(spec)
    if spare < 0:
        return []
    count = int(np.floor(spare / spec.seconds + 1e-9)) + 1 if spec.seconds else 1
    frames = resize_center_crop(media.video, spec.frame_size)
    clips = []
    for k in range(count):
        t0 = start + k * spec.seconds
        video = retime_video(frames, media.frame_times, spec.fps, t0, spec.num_frames)
        first = round((t0 - media.audio_start) * spec.sample_rate)
        piece = audio[first : first + spec.num_samples]
        piece = torch.nn.functional.pad(piece, (0, spec.num_samples - piece.shape[0]))  # at most one sample short
        clips.append((t0, video, piece.contiguous()))
    return clips


def pack_file(path: Path, root: Path, spec: ClipSpec, crf: int = DEFAULT_CRF) -> FileResult:
    """Decode, convert and cut one file into encoded clips (``{"mp4", "json"}`` members); never raises."""
    relative = str(path.relative_to(root))
    try:
        media = read_av(path, short_side=max(spec.frame_size))  # covers the crop for any aspect
        clips = cut_clips(media, spec)
    except NoAudioStreamError:
        return FileResult(relative, reason="no audio stream")
    except MediaError as error:
        return FileResult(relative, reason=f"undecodable: {error}")
    except Exception as error:  # noqa: BLE001 - one bad file must never abort a packing run
        return FileResult(relative, reason=f"failed: {type(error).__name__}: {error}")
    if not clips:
        span = min(media.video_end, media.audio_end) - max(media.video_start, media.audio_start)
        return FileResult(relative, reason=f"too short: {span:.2f} s with both video and audio, "
                                            f"a clip needs {needed_seconds(spec):.3f} s")
    caption = caption_for(path)
    result = FileResult(relative)
    for t0, video, audio in clips:
        meta = {"caption": caption, "source": relative, "source_start": round(t0, 6), "fps": spec.fps,
                "sample_rate": spec.sample_rate, "seconds": spec.seconds, "size": spec.size,
                **spec.width_record(), "num_frames": spec.num_frames, "num_samples": spec.num_samples,
                "events": []}
        mp4 = encode_mp4(video, spec.fps, audio, spec.sample_rate, crf)
        result.clips.append({"mp4": mp4, "json": json_bytes(meta)})
    return result


def pack_folder(src: str | Path, out: str | Path, spec: ClipSpec, shard_size: int = 100, workers: int | None = None,
                progress: bool = True) -> PackReport:
    """Pack every media file under ``src`` into shards in ``out`` and write ``out/dataset.json``.

    Args:
        src: folder to walk (or a single file).
        out: output folder.
        spec: clip geometry of the output.
        shard_size: clips per shard.
        workers: worker processes (``None``: chosen from the number of files; 0: in this process).
        progress: show a progress bar.

    Returns:
        The report with the skipped files and their reasons.

    Raises:
        MissingInputError: ``src`` does not exist.
        InvalidInputError: ``src`` holds no media file, or no file gave a clip (nothing is written then, not
            even ``dataset.json``).
    """
    root = Path(src)
    files = find_media(root)
    if not files:
        raise InvalidInputError(f"no media files ({' '.join(MEDIA_SUFFIXES)}) under {root}")
    workers = default_workers(len(files), per_worker=2) if workers is None else workers
    report = PackReport(files=len(files))
    work = partial(pack_file, root=root if root.is_dir() else root.parent, spec=spec)
    out_existed = Path(out).exists()
    with ShardSink(out, shard_size) as sink:
        for result in tqdm(map_ordered(work, files, workers), total=len(files), disable=not progress, desc="pack",
                           unit="file"):
            if result.reason is not None:
                log.warning("skipping %s: %s", result.path, result.reason)
                report.skipped.append((result.path, result.reason))
            for members in result.clips:
                sink.write(sample_key(sink.count), members)
    report.clips, report.shards = sink.count, sink.shards
    if not report.clips:
        if not out_existed:
            Path(out).rmdir()  # made by the sink, still empty
        reasons = "; ".join(f"{path}: {reason}" for path, reason in report.skipped[:3])
        raise InvalidInputError(f"no clip packed from {root}: all {len(files)} media files were skipped ({reasons}"
                                f"{' ...' if len(report.skipped) > 3 else ''})")
    manifest: dict[str, Any] = {"kind": "packed", "source": str(root), "samples": sink.count, "shards": sink.shards,
                                "files": len(files), "skipped": [list(s) for s in report.skipped],
                                "seconds": spec.seconds, "fps": spec.fps, "sample_rate": spec.sample_rate,
                                "size": spec.size, **spec.width_record(), "num_frames": spec.num_frames,
                                "num_samples": spec.num_samples}
    write_manifest(out, manifest)
    return report
