"""ODE-pair shards: the teacher's sampler states at the student's times, for causal ODE regression (Stage II).

Format (a WebDataset folder, written by ``omniforcing data ode-pairs``):

* ``OUT/shard-000000.tar ...``; one sample per clip, key = 8-digit clip index:
  ``KEY.video_states.npy`` float32/float16 ``(K+1, Tv, C, h, w)``, ``KEY.audio_states.npy`` ``(K+1, Ta, C)``
  (either may be absent for a uni-modal teacher) and ``KEY.json`` with ``caption``, ``times`` (``K+1`` floats:
  the student's times ``t_0 > ... > t_{K-1}`` then ``0``; state ``k`` is the teacher's Euler state at exactly
  ``times[k]``, the last one the final sample), ``index``, ``seed`` and ``seconds``;
* ``OUT/dataset.json``: the generation settings (teacher, grid, guidance, count, shard size, ...) and
  ``complete``.

Shards are written to a hidden temporary file and renamed, so a shard with its final name is complete; a
rerun with the same settings skips complete shards and rewrites the rest (every clip's noise and caption
depend only on ``(seed, index)``, so the result is the same as an uninterrupted run). Arrays are read with
``numpy.load(allow_pickle=False)`` and metadata with :mod:`json`; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset

from omniforcing.data.decoding import BadSampleError, load_float_npy
from omniforcing.data.pipeline import SkipCounter, stream_seed
from omniforcing.data.shards import (
    MANIFEST_NAME,
    SHARD_NAME,
    iter_tar_samples,
    json_bytes,
    sample_key,
    shard_samples,
    write_manifest,
)
from omniforcing.errors import InvalidInputError
from omniforcing.types import AVLatents

VIDEO_STATES = "video_states.npy"
AUDIO_STATES = "audio_states.npy"
PAIRS_KIND = "ode_pairs"


@dataclass
class ODEPair:
    """One decoded ODE pair.

    Args:
        key: sample key.
        caption: the prompt the teacher generated from.
        times: ``(K+1,)`` float32, decreasing, last 0.
        video_states: ``(K+1, Tv, C, h, w)`` float32, or ``None``.
        audio_states: ``(K+1, Ta, C)`` float32, or ``None``.
    """

    key: str
    caption: str
    times: Tensor
    video_states: Tensor | None
    audio_states: Tensor | None


@dataclass
class ODEPairBatch:
    """A batch of ODE pairs sharing one time grid.

    Args:
        captions: ``B`` prompts.
        times: ``(K+1,)`` float32, decreasing, last 0.
        video_states: ``(B, K+1, Tv, C, h, w)`` float32, or ``None``.
        audio_states: ``(B, K+1, Ta, C)`` float32, or ``None``.
        keys: sample keys.
    """

    captions: list[str]
    times: Tensor
    video_states: Tensor | None
    audio_states: Tensor | None
    keys: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def states(self) -> AVLatents:
        """The states as an :class:`AVLatents` pair."""
        return AVLatents(self.video_states, self.audio_states)


def _npy_bytes(array: Tensor, dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.detach().cpu().numpy().astype(dtype), allow_pickle=False)
    return buffer.getvalue()


def encode_pair(caption: str, times: list[float], states: AVLatents, record: dict[str, Any],
                dtype: str = "float32") -> dict[str, bytes]:
    """Shard members of one pair (``states`` video ``(K+1, Tv, ...)`` / audio ``(K+1, Ta, C)`` of ONE clip)."""
    members = {"json": json_bytes({**record, "caption": caption, "times": [float(t) for t in times]})}
    for name, member in (("video", VIDEO_STATES), ("audio", AUDIO_STATES)):
        value = getattr(states, name)
        if value is not None:
            if value.shape[0] != len(times):
                raise ValueError(f"{name} states have {value.shape[0]} levels, times {len(times)}")
            members[member] = _npy_bytes(value, np.dtype(dtype))
    return members


def decode_pair(sample: dict[str, Any]) -> ODEPair:
    """Decode one raw shard sample (``{"__key__", "json", "video_states.npy"?, "audio_states.npy"?}``).

    Raises:
        BadSampleError: with the reason when the sample is unusable.
    """
    key = str(sample.get("__key__", "?"))
    try:
        meta = json.loads(sample["json"])
        caption, times = str(meta["caption"]), torch.tensor(meta["times"], dtype=torch.float32)
    except (KeyError, ValueError, TypeError) as error:
        raise BadSampleError(f"bad json of an ODE pair: {error}") from error
    video = load_float_npy(sample[VIDEO_STATES], VIDEO_STATES, 5) if VIDEO_STATES in sample else None
    audio = load_float_npy(sample[AUDIO_STATES], AUDIO_STATES, 3) if AUDIO_STATES in sample else None
    if video is None and audio is None:
        raise BadSampleError("an ODE pair needs video_states.npy or audio_states.npy")
    levels = {x.shape[0] for x in (video, audio) if x is not None}
    if times.dim() != 1 or times.numel() < 2 or float(times[-1]) != 0.0 or levels != {times.numel()}:
        raise BadSampleError(f"times {times.tolist()} do not match the states' {sorted(levels)} levels "
                             "(K student times then 0)")
    return ODEPair(key, caption, times, video, audio)


def collate_pairs(pairs: list[ODEPair]) -> ODEPairBatch:
    """Stack pairs into an :class:`ODEPairBatch`; they must share one time grid (one dataset does)."""
    times = pairs[0].times
    for pair in pairs[1:]:
        if not torch.equal(pair.times, times):
            raise ValueError(f"pairs {pairs[0].key} and {pair.key} have different time grids "
                             f"({times.tolist()} vs {pair.times.tolist()}): mixed ODE-pair datasets")

    def stack(values: list[Tensor | None]) -> Tensor | None:
        return None if values[0] is None else torch.stack(values)  # type: ignore[arg-type]

    return ODEPairBatch([p.caption for p in pairs], times, stack([p.video_states for p in pairs]),
                        stack([p.audio_states for p in pairs]), [p.key for p in pairs])


# -------------------------------------------------------------------- resumable writing
def shard_file(out: str | Path, shard: int) -> Path:
    """Final path of shard number ``shard``."""
    return Path(out) / SHARD_NAME.format(shard)


def count_samples(path: str | Path) -> int:
    """Samples (``json`` members) in a shard; -1 if the tar cannot be read to the end."""
    try:
        return sum("json" in members for _, members in iter_tar_samples(path))
    except (tarfile.TarError, OSError, EOFError):
        return -1


def shard_ranges(first: int, count: int, shard_size: int) -> list[range]:
    """Clip indices of every shard: shard ``s`` holds ``first + s * shard_size ...`` (the last may be short)."""
    if count < 1 or shard_size < 1:
        raise ValueError(f"count and shard_size must be >= 1, got {count} and {shard_size}")
    return [range(first + start, first + min(start + shard_size, count)) for start in range(0, count, shard_size)]


def pending_shards(out: str | Path, ranges: list[range]) -> list[int]:
    """Shards still to write: missing or incomplete ones. Leftover temporary files are removed."""
    for leftover in Path(out).glob(".shard-*.tmp"):
        leftover.unlink()
    return [s for s, indices in enumerate(ranges) if count_samples(shard_file(out, s)) != len(indices)]


def write_shard(out: str | Path, shard: int, samples: Iterable[tuple[int, dict[str, bytes]]]) -> Path:
    """Write ``(clip index, members)`` samples as shard ``shard`` atomically (temporary file, then rename)."""
    final = shard_file(out, shard)
    tmp = final.with_name(f".{final.name}.tmp")
    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as writer:
        for index, members in samples:
            writer.write({"__key__": sample_key(index), **members})
    tmp.replace(final)
    return final


def start_manifest(out: str | Path, settings: dict[str, Any]) -> None:
    """Record the settings of a pair folder, or check that a rerun uses the same ones.

    Raises:
        InvalidInputError: the folder holds pairs made with different settings (resuming would mix datasets).
    """
    path = Path(out) / MANIFEST_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        differing = sorted(k for k in set(old) | set(settings)
                           if k not in ("complete", "shards", "kind") and old.get(k) != settings.get(k))
        if differing:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in differing)
            raise InvalidInputError(f"{out} holds ODE pairs made with other settings ({details}); use a new folder")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_manifest(out, {**settings, "kind": PAIRS_KIND, "complete": False})


def finish_manifest(out: str | Path, settings: dict[str, Any], shards: list[str]) -> None:
    """Mark a pair folder complete."""
    write_manifest(out, {**settings, "kind": PAIRS_KIND, "complete": True, "shards": shards})


# -------------------------------------------------------------------- reading
class ODEPairStream(IterableDataset):
    """Batches of :class:`ODEPairBatch` from ODE-pair shards.

    Shards are split between ranks and DataLoader workers when there are at least as many shards as
    ``ranks * workers``; otherwise every rank/worker reads all shards and keeps every ``n``-th sample, so
    small pair sets still give every process data. Bad samples are skipped and counted.

    Args:
        urls: shard paths.
        batch_size: pairs per batch.
        seed: seed of the shard order and the shuffle buffer (mixed with the pass position).
        shuffle: shuffle shards and samples (training).
        shuffle_buffer: samples held for shuffling per worker.
    """

    def __init__(self, urls: list[str], batch_size: int, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 64) -> None:
        super().__init__()
        self.urls, self.batch_size, self.seed = list(urls), batch_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.epoch = self.step = 0
        self.counter = SkipCounter()

    def set_position(self, epoch: int, step: int) -> None:
        """Seed the next pass from the training position."""
        self.epoch, self.step = epoch, step

    def _slots(self) -> tuple[int, int]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        return rank * workers + worker, world * workers

    def _samples(self) -> Iterator[dict[str, Any]]:
        slot, slots = self._slots()
        urls = list(self.urls)
        if self.shuffle:
            random.Random(stream_seed(self.seed, self.epoch, self.step)).shuffle(urls)
        read = lambda sources: shard_samples(sources, self.counter.damaged_shard)
        if len(urls) >= slots:
            yield from read(iter([{"url": u} for u in urls[slot::slots]]))
            return
        for position, sample in enumerate(read(iter([{"url": u} for u in urls]))):
            if position % slots == slot:
                yield sample

    def _decode(self, samples: Iterator[dict[str, Any]]) -> Iterator[ODEPair]:
        for sample in samples:
            try:
                yield decode_pair(sample)
            except BadSampleError as error:
                self.counter.skip(str(sample.get("__key__", "?")), str(error))

    def __iter__(self) -> Iterator[ODEPairBatch]:
        slot, _ = self._slots()
        rng = random.Random(stream_seed(self.seed, self.epoch, self.step, slot))
        stages: list = [self._samples]
        if self.shuffle and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 16), rng=rng))
        stages += [self._decode, wds.batched(self.batch_size, collation_fn=collate_pairs, partial=True)]
        return iter(wds.DataPipeline(*stages))
