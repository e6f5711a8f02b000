"""Clips to evaluate, conformed to one :class:`~omniforcing.types.ClipSpec`: shards, media folders, generated clips.

Offline evaluation (``omniforcing evaluate``) and the evaluation callback compare real and generated clips
with the same geometry: the same frame rate, sample rate, frame size and length. This module turns every
source into :class:`~omniforcing.types.AVBatch` batches of that geometry (video ``(B, T, 3, H, W)`` float in
``[-1, 1]``, audio ``(B, 1, S)``):

* WebDataset media shards are decoded with the data pipeline's own :func:`decode_sample` (window at the clip
  start, json parsed with :mod:`json`, nothing unpickled); samples with other rates or sizes are skipped;
* media files (e.g. generated mp4s) are decoded with :func:`read_av` and *conformed*: resized and centre
  cropped to the frame size, resampled by timestamps to the frame rate from their first frame on, audio mixed
  to mono, resampled and cut from the same instant. AAC encoding ends the audio up to a frame early, so a
  shortfall of at most one video frame is padded with silence; shorter files are skipped with the reason.

Skips are counted in a :class:`~omniforcing.data.pipeline.SkipCounter` and logged, never silent.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from omniforcing.data.decoding import (
    BadSampleError,
    ClipExample,
    collate_examples,
    decode_sample,
    parse_metadata,
    uint8_to_unit,
)
from omniforcing.data.media import (
    MEDIA_SUFFIXES,
    MediaClip,
    MediaError,
    read_av,
    resample_audio,
    resize_center_crop,
    retime_video,
    to_mono,
)
from omniforcing.data.pipeline import SkipCounter
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.types import AVBatch, ClipInfo, ClipSpec

if TYPE_CHECKING:
    from omniforcing.inference.clips import GeneratedClips


def generated_media(clips: GeneratedClips) -> tuple[Tensor | None, Tensor | None]:
    """Generated clips in the metrics' layout.

    Args:
        clips: video ``(B, T, H, W, 3)`` uint8 and/or audio ``(B, S)`` float.

    Returns:
        ``(video (B, T, 3, H, W) uint8 | None, audio (B, 1, S) float32 | None)``.
    """
    video = None if clips.video is None else clips.video.permute(0, 1, 4, 2, 3).contiguous()
    audio = None if clips.audio is None else clips.audio.float()[:, None]
    return video, audio


def is_shard_source(source: str | Path) -> bool:
    """True when ``source`` names WebDataset shards (``.tar`` files, a folder of them, a pattern or a list)."""
    text = str(source)
    if Path(text).is_dir():
        return any(Path(text).glob("*.tar"))
    return ".tar" in text


def media_files(source: str | Path) -> list[Path]:
    """Media files (:data:`MEDIA_SUFFIXES`) under a folder, recursively and sorted, or the single file given."""
    root = Path(source)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise MissingInputError(f"{root} is neither a media file nor a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    if not files:
        raise MissingInputError(f"no media files ({', '.join(MEDIA_SUFFIXES)}) under {root}")
    return files


def source_files(source: str | Path) -> list[Path]:
    """The files a source reads: shard files or media files."""
    return [Path(p) for p in resolve_shards(str(source))] if is_shard_source(source) else media_files(source)


def describe_source(source: str | Path, spec: ClipSpec, limit: int | None) -> str:
    """A description of the clips a source yields, for cache keys of reference statistics.

    It names the files with their sizes and modification times (so rewritten data gets new statistics), the
    clip geometry and the clip limit.
    """
    files = sorted(source_files(source))
    listing = "\n".join(f"{p.resolve()} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    return f"clips of {source} ({len(files)} files, listing {digest}); {spec}; at most {limit} clips"


def probe_spec(source: str | Path, seconds: int | None = None) -> ClipSpec:
    """Clip geometry of the first readable clip of a source (shards or media files).

    Args:
        source: shards or media files.
        seconds: clip length to use; ``None`` takes the whole seconds the first clip holds after its lead frame.

    Raises:
        InvalidInputError: no readable clip, or ``seconds`` longer than the stored clip (a ``ValueError``).
    """
    reasons = []
    for media, _ in _iter_raw(source, max_reads=5, reasons=reasons):
        fps = round(media.fps)
        stored = int((len(media.video) - 1) // fps)
        if seconds is not None and seconds > stored:
            raise InvalidInputError(f"--seconds {seconds} is longer than the clips of {source} ({stored} s after the "
                                    "lead)")
        return ClipSpec(seconds=stored if seconds is None else seconds, fps=fps, sample_rate=media.sample_rate,
                        size=media.video.shape[1], width=media.video.shape[2])
    raise InvalidInputError(f"no readable clip in {source}: {'; '.join(reasons) or 'empty'}")


def _iter_raw(source: str | Path, max_reads: int, reasons: list[str]) -> Iterator[tuple[MediaClip, dict]]:
    """Decoded media (and shard metadata) of the first ``max_reads`` members, collecting failure reasons."""
    if is_shard_source(source):
        members = ((f"{shard}:{key}", sample) for shard in resolve_shards(str(source))
                   for key, sample in iter_tar_samples(shard))
    else:
        members = ((str(path), {"mp4": path.read_bytes(), "json": b"{}"}) for path in media_files(source))
    for count, (name, sample) in enumerate(members):
        if count >= max_reads:
            return
        try:
            meta = parse_metadata(sample)
            yield read_av(sample["mp4"]), meta
        except (BadSampleError, MediaError, KeyError) as error:
            reasons.append(f"{name}: {error}")


def conform_media(media: MediaClip, spec: ClipSpec) -> tuple[Tensor, Tensor]:
    """Cut the first clip of ``spec`` from decoded media, converting rates and size.

    Args:
        media: decoded file with audio.
        spec: target geometry.

    Returns:
        ``(video (num_frames, 3, height, width) float32 in [-1, 1], audio (1, num_samples) float32)``, the
        frames scaled to cover ``spec.frame_size`` and centre-cropped.

    Raises:
        BadSampleError: no audio, or the file is shorter than the clip (beyond the one-frame AAC tolerance).
    """
    if media.audio is None:
        raise BadSampleError("no audio stream")
    start = media.video_start
    video_span = media.video_end - start
    if video_span < (spec.num_frames - 0.5) / spec.fps:
        raise BadSampleError(f"too short: {video_span:.3f} s of video, "
                             f"the clip needs {spec.num_frames / spec.fps:.3f} s")
    frames = retime_video(resize_center_crop(media.video, spec.frame_size), media.frame_times, spec.fps, start,
                          spec.num_frames)
    audio = resample_audio(to_mono(media.audio), media.sample_rate, spec.sample_rate)
    first = round((start - media.audio_start) * spec.sample_rate)
    if first < 0:  # audio starts after the first frame: silence until it does
        audio, first = F.pad(audio, (-first, 0)), 0
    audio = audio[:, first : first + spec.num_samples]
    shortfall = spec.num_samples - audio.shape[-1]
    if shortfall > spec.sample_rate // spec.fps:
        raise BadSampleError(f"too short: {audio.shape[-1] / spec.sample_rate:.3f} s of audio from the first frame, "
                             f"the clip needs {spec.num_samples / spec.sample_rate:.3f} s")
    return uint8_to_unit(frames), F.pad(audio, (0, shortfall)).contiguous()


def _media_examples(files: Iterable[Path], spec: ClipSpec, counter: SkipCounter) -> Iterator[ClipExample]:
    for path in files:
        try:
            video, audio = conform_media(read_av(path), spec)
        except (BadSampleError, MediaError) as error:
            counter.skip(str(path), str(error))
            continue
        counter.good += 1
        caption = " ".join(path.stem.replace("_", " ").replace("-", " ").split())
        yield ClipExample(caption, ClipInfo(path.stem, caption, str(path)), video=video, audio=audio)


def _shard_examples(shards: str, spec: ClipSpec, counter: SkipCounter) -> Iterator[ClipExample]:
    for shard in resolve_shards(shards):
        try:
            for key, members in iter_tar_samples(shard):
                try:
                    example = decode_sample({"__key__": key, **members}, spec, None, "media")
                except BadSampleError as error:
                    counter.skip(f"{shard}:{key}", str(error))
                    continue
                counter.good += 1
                yield example
        except (tarfile.TarError, OSError, EOFError) as error:  # a damaged shard ends that shard, not the run
            counter.skip(shard, f"unreadable shard data: {error}")


def iter_clip_batches(source: str | Path, spec: ClipSpec, batch_size: int, *, limit: int | None = None,
                      counter: SkipCounter | None = None, rank: int = 0, world_size: int = 1) -> Iterator[AVBatch]:
    """Batches of clips of ``spec`` from shards or media files, in order.

    Args:
        source: shards (folder of ``.tar``, pattern, list) or a folder of media files / one file.
        spec: clip geometry every clip is conformed to.
        batch_size: clips per batch (the last batch may be smaller).
        limit: stop after this many clips in total (over all ranks); ``None``: all.
        counter: receives skipped clips and their reasons.
        rank: this process' index; clip ``i`` (counting usable clips) goes to rank ``i % world_size``.
        world_size: number of processes sharing the source.
    """
    counter = counter if counter is not None else SkipCounter()
    examples = (_shard_examples(str(source), spec, counter) if is_shard_source(source)
                else _media_examples(media_files(source), spec, counter))
    batch: list[ClipExample] = []
    for index, example in enumerate(examples):
        if limit is not None and index >= limit:
            break
        if index % world_size != rank:
            continue
        batch.append(example)
        if len(batch) == batch_size:
            yield collate_examples(batch)
            batch = []
    if batch:
        yield collate_examples(batch)


def conform_batch(batch: AVBatch, spec: ClipSpec) -> AVBatch:
    """Trim a batch's media to ``spec``'s frame and sample counts (for metrics on a shorter clip length).

    Raises:
        ValueError: the batch is shorter than the spec.
    """
    video, audio = batch.video, batch.audio
    if video is not None:
        if video.shape[1] < spec.num_frames:
            raise ValueError(f"batch has {video.shape[1]} frames, the evaluation clip needs {spec.num_frames}")
        video = video[:, : spec.num_frames]
    if audio is not None:
        if audio.shape[-1] < spec.num_samples:
            raise ValueError(f"batch has {audio.shape[-1]} samples, the evaluation clip needs {spec.num_samples}")
        audio = audio[..., : spec.num_samples]
    return AVBatch(batch.captions, video, audio, info=batch.info)


def first_captions(batches: Iterable[AVBatch], count: int) -> list[str]:
    """The captions of the first ``count`` clips of ``batches`` (fewer if the data ends)."""
    captions: list[str] = []
    for batch in batches:
        captions += batch.captions[: count - len(captions)]
        if len(captions) >= count:
            break
    return captions


def event_times_of(batch: AVBatch) -> list[Tensor] | None:
    """Ground-truth event times per clip, or ``None`` when no clip of the batch has any (real footage)."""
    times = [info.event_times for info in batch.info]
    return times if times and any(len(t) for t in times) else None


def real_batches_with_media(batches: Iterable[AVBatch], counter: SkipCounter) -> Iterator[AVBatch]:
    """Pass through batches that hold raw media; count latent-only batches (reference statistics need media)."""
    for batch in batches:
        if batch.video is None and batch.audio is None:
            counter.skip("<batch>", "no raw media (latent shards): give media shards for reference statistics")
            continue
        yield batch

