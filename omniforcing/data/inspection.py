"""Summarise a shard folder: counts, durations, rates and sizes, captions, unreadable samples, latent shapes.

Every sample is fully decoded (mp4 with PyAV, latents with ``numpy.load(allow_pickle=False)``), so a sample
listed as readable here is one the datamodule can use.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omniforcing.data.decoding import AUDIO_LATENTS, VIDEO_LATENTS, BadSampleError, parse_metadata
from omniforcing.data.media import MediaError, read_av
from omniforcing.data.shards import MANIFEST_NAME, ShardDamageError, iter_tar_samples, resolve_shards


@dataclass
class ShardSummary:
    """What :func:`inspect_shards` found.

    Args:
        shards: shard files read.
        media_samples: readable ``mp4`` samples.
        latent_samples: readable latent samples.
        seconds: total duration of the readable samples (video length for media, ``seconds`` for latents).
        frame_rates, sample_rates, sizes: how many samples had each value (media samples).
        latent_shapes: how many latent samples had each ``(video shape, audio shape)``.
        captions: up to ``max_captions`` example captions.
        unreadable: ``(shard, key, reason)`` of each unusable sample or shard.
        lost: samples lost after the damage in shards that could not be read to their end.
        damaged: names of those shards.
        seen: samples met in the shards, readable or not (not counting ``lost``).
        expected: samples the folder's ``dataset.json`` records (``None``: no manifest, or not a folder).
        missing: shards the manifest lists that are not in the folder.
    """

    shards: list[str] = field(default_factory=list)
    media_samples: int = 0
    latent_samples: int = 0
    seconds: float = 0.0
    frame_rates: Counter = field(default_factory=Counter)
    sample_rates: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    latent_shapes: Counter = field(default_factory=Counter)
    captions: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    lost: int = 0
    damaged: list[str] = field(default_factory=list)
    seen: int = 0
    expected: int | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """Readable samples of both kinds."""
        return self.media_samples + self.latent_samples


def _inspect_media(summary: ShardSummary, data: bytes) -> None:
    clip = read_av(data)
    assert clip.audio is not None
    summary.media_samples += 1
    summary.seconds += clip.video.shape[0] / clip.fps
    summary.frame_rates[round(clip.fps, 3)] += 1
    summary.sample_rates[clip.sample_rate] += 1
    summary.sizes[f"{clip.video.shape[1]}x{clip.video.shape[2]}"] += 1


def _inspect_latents(summary: ShardSummary, members: dict[str, bytes], seconds: float) -> None:
    shapes = []
    for name in (VIDEO_LATENTS, AUDIO_LATENTS):
        if name not in members:
            raise BadSampleError(f"missing {name}")
        shapes.append(tuple(np.load(io.BytesIO(members[name]), allow_pickle=False).shape))
    summary.latent_samples += 1
    summary.seconds += seconds
    summary.latent_shapes[f"video {shapes[0]} audio {shapes[1]}"] += 1


def _inspect_sample(summary: ShardSummary, key: str, members: dict[str, bytes], max_captions: int) -> None:
    meta = parse_metadata(members)
    if VIDEO_LATENTS in members or AUDIO_LATENTS in members:
        _inspect_latents(summary, members, float(meta.get("seconds", 0.0)))
    elif "mp4" in members:
        _inspect_media(summary, members["mp4"])
    else:
        raise BadSampleError(f"no mp4 or latent members (has {sorted(members)})")
    caption = meta.get("caption")
    if isinstance(caption, str) and len(summary.captions) < max_captions:
        summary.captions.append(caption)


def inspect_shards(spec: str | Path, max_captions: int = 5) -> ShardSummary:
    """Read every sample of the shards named by ``spec`` (folder, brace pattern, glob) and summarise them."""
    summary = ShardSummary(shards=resolve_shards(str(spec)))
    for shard in summary.shards:
        name = Path(shard).name
        try:
            for key, members in iter_tar_samples(shard):
                summary.seen += 1
                try:
                    _inspect_sample(summary, key, members, max_captions)
                except (BadSampleError, MediaError, ValueError, OSError, EOFError) as error:
                    summary.unreadable.append((name, key, str(error)))
        except (tarfile.TarError, OSError, EOFError) as error:
            summary.unreadable.append((name, "-", f"unreadable shard data: {error}"))
            summary.damaged.append(name)
            summary.lost += error.lost if isinstance(error, ShardDamageError) else 0
    if Path(spec).is_dir():
        _compare_with_manifest(summary, Path(spec))
    return summary


def _compare_with_manifest(summary: ShardSummary, folder: Path) -> None:
    """Record what the folder's ``dataset.json`` promises: its sample count and the shards it lists."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    if isinstance(manifest.get("samples"), int):
        summary.expected = manifest["samples"]
    listed = manifest.get("shards")
    if isinstance(listed, list):
        summary.missing = [str(name) for name in listed if not (folder / str(name)).is_file()]


def _counts(counter: Counter, unit: str = "") -> str:
    return ", ".join(f"{value}{unit} ({count})" for value, count in sorted(counter.items())) or "-"


def format_summary(summary: ShardSummary) -> str:
    """Human-readable report of a :class:`ShardSummary`."""
    lines = [
        f"shards: {len(summary.shards)}",
        f"samples: {summary.samples} ({summary.media_samples} media, {summary.latent_samples} latent)",
        f"total duration: {summary.seconds:.1f} s ({summary.seconds / 3600:.3f} h)",
        f"frame rates: {_counts(summary.frame_rates, ' fps')}",
        f"sample rates: {_counts(summary.sample_rates, ' Hz')}",
        f"frame sizes: {_counts(summary.sizes)}",
    ]
    if summary.latent_shapes:
        lines.append(f"latent shapes: {_counts(summary.latent_shapes)}")
    lines.append("captions:")
    lines += [f"  - {caption}" for caption in summary.captions] or ["  (none)"]
    lines.append(f"unreadable: {len(summary.unreadable)}")
    lines += [f"  - {shard} {key}: {reason}" for shard, key, reason in summary.unreadable[:20]]
    if len(summary.unreadable) > 20:
        lines.append(f"  ... and {len(summary.unreadable) - 20} more")
    if summary.damaged:
        lines.append(f"damaged shards: {len(summary.damaged)} ({', '.join(summary.damaged)}), "
                     f"{summary.lost} samples lost after the damage")
    if summary.missing:
        lines.append(f"missing shards: {len(summary.missing)} listed in {MANIFEST_NAME} ({', '.join(summary.missing)})")
    if summary.expected is not None:
        unaccounted = summary.expected - summary.seen - summary.lost
        lines.append(f"{MANIFEST_NAME}: {summary.expected} samples"
                     + (f"; {unaccounted} of them not found in the shards" if unaccounted > 0 else ""))
    return "\n".join(lines)
