"""The WebDataset pipeline: shards -> split by node and worker -> samples -> shuffle -> decode/crop -> batches.

:class:`ClipStream` is an ``IterableDataset`` that builds a fresh ``webdataset.DataPipeline`` for every pass,
seeded from ``(seed, epoch, step)`` of that pass and the ``(rank, worker)`` it runs in:

* finite mode: the shard list is permuted with ``(seed, epoch, step)`` identically on every rank, then
  ``webdataset.split_by_node`` and ``webdataset.split_by_worker`` partition it, so every sample is seen
  exactly once per pass across all ranks and workers (given at least ``world_size * num_workers`` shards);
* resampled mode: each rank and worker draws shards with replacement from its own seeded generator, an
  infinite stream cut into epochs of ``batches_per_worker`` batches.

Bad samples (unreadable tar member, truncated or audio-less mp4, wrong rates or sizes, short clips) are
skipped and counted by :class:`SkipCounter`, which logs the reason; nothing is ever unpickled. A shard that
cannot be read to its end (:class:`~omniforcing.data.shards.ShardDamageError`) counts once per pass, is named
in the log, and the samples lost after the damage are counted.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import webdataset as wds
from torch.utils.data import IterableDataset

from omniforcing.data.decoding import (
    BadSampleError,
    ClipExample,
    SampleKind,
    collate_examples,
    decode_sample,
    sample_kind,
)
from omniforcing.data.shards import ShardDamageError, shard_samples
from omniforcing.types import AVBatch, ClipSpec

log = logging.getLogger(__name__)

UNREADABLE_SHARD = "unreadable shard data"
"""The skip reason of a shard that could not be read to its end."""

MAX_LEADING_SKIPS = 200
"""A resampled stream that skips this many samples before its first good one stops with an error."""


def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes, unlike ``hash``)."""
    return random.Random(" ".join(str(int(p)) for p in parts)).getrandbits(63)


@dataclass
class SkipCounter:
    """Counts skipped samples by reason and logs them (every skip up to ``verbose``, then every 100th).

    Counts are per process: with DataLoader workers each worker logs its own running count.
    """

    verbose: int = 10
    skipped: int = 0
    good: int = 0
    lost: int = 0
    reasons: Counter = field(default_factory=Counter)
    damaged: list[str] = field(default_factory=list)

    def skip(self, key: str, reason: str) -> None:
        """Record one skipped sample."""
        self.skipped += 1
        self.reasons[reason.split(":")[0]] += 1
        if self.skipped <= self.verbose or self.skipped % 100 == 0:
            log.warning("skipping bad sample %r: %s (%d skipped so far in this process)", key, reason, self.skipped)

    def damaged_shard(self, shard: str, error: Exception) -> None:
        """Record a shard that could not be read to its end: one skip, plus the samples lost after the damage
        (:class:`~omniforcing.data.shards.ShardDamageError`; unknown, so 0, when not even its start reads)."""
        lost = error.lost if isinstance(error, ShardDamageError) else 0
        self.skipped += 1
        self.lost += lost
        self.reasons[UNREADABLE_SHARD] += 1
        self.damaged.append(shard)
        log.warning("skipping damaged shard %s: %s: %s (%d samples lost in %d damaged shards so far in this "
                    "process)", shard, UNREADABLE_SHARD, error, self.lost, len(self.damaged))

    def summary(self) -> str:
        """``"N skipped (reason: count, ...)"``, then the samples lost in damaged shards and their names."""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.reasons.most_common(5))
        text = f"{self.skipped} skipped ({reasons})" if self.skipped else "0 skipped"
        if self.damaged:
            names = ", ".join(dict.fromkeys(self.damaged))
            text += f"; {self.lost} samples lost in damaged shards ({names})"
        return text


class ClipStream(IterableDataset):
    """Batches of :class:`~omniforcing.types.AVBatch` from WebDataset shards.

    Args:
        urls: shard paths.
        spec: window to cut from each stored clip.
        batch_size: examples per batch.
        seed: base seed of shard order, shuffle buffer and window starts.
        shuffle: shuffle shards and samples and draw random windows (training); otherwise windows start at 0.
        resampled: draw shards with replacement forever (cut by ``batches_per_worker``).
        shuffle_buffer: sample shuffle buffer size.
        batches_per_worker: batches each worker yields per pass (``None``: until the data ends).
        expect: ``"media"``, ``"latents"`` or ``None`` (take the kind of the first good sample).
        video_latent_rate: video latents per second after the first.
        partial: yield a last incomplete batch.
    """

    def __init__(self, urls: list[str], spec: ClipSpec, batch_size: int, seed: int = 0, shuffle: bool = True,
                 resampled: bool = False, shuffle_buffer: int = 256, batches_per_worker: int | None = None,
                 expect: SampleKind | None = None, video_latent_rate: int = 3, partial: bool = True) -> None:
        super().__init__()
        self.urls, self.spec, self.batch_size, self.seed = list(urls), spec, batch_size, seed
        self.shuffle, self.resampled, self.shuffle_buffer = shuffle, resampled, shuffle_buffer
        self.batches_per_worker, self.expect, self.video_latent_rate = batches_per_worker, expect, video_latent_rate
        self.partial = partial
        self.epoch = 0
        self.step = 0
        self.counter = SkipCounter()
        self._broken: set[str] = set()

    def set_position(self, epoch: int, step: int) -> None:
        """Seed the next pass from the training position (so a resumed run draws fresh samples)."""
        self.epoch, self.step = epoch, step

    def _shard_source(self, rank: int, worker: int) -> list:
        if self.resampled:
            seed = stream_seed(self.seed, self.epoch, self.step)
            shards = wds.ResampledShards(self.urls, seed=seed, deterministic=True,
                                         worker_seed=lambda: stream_seed(rank, worker))
            return [shards]
        urls = list(self.urls)
        if self.shuffle:
            # Same permutation on every rank and worker, so the splits below are a partition.
            random.Random(stream_seed(self.seed, self.epoch, self.step)).shuffle(urls)
        return [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]

    def _tar_error(self, shard: str, error: Exception) -> None:
        """A shard that could not be read to its end: counted once per pass (a resampled pass may draw it again)."""
        if shard not in self._broken:
            self._broken.add(shard)
            self.counter.damaged_shard(shard, error)

    def __iter__(self) -> Iterator[AVBatch]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        self._broken = set()
        rng = random.Random(stream_seed(self.seed, self.epoch, self.step, rank, worker))
        stages = [*self._shard_source(rank, worker), lambda sources: shard_samples(sources, self._tar_error)]
        if self.shuffle and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 32), rng=rng))
        stages += [lambda samples: self._decode(samples, rng if self.shuffle else None),
                   wds.batched(self.batch_size, collation_fn=collate_examples, partial=self.partial)]
        pipeline = wds.DataPipeline(*stages)
        if self.batches_per_worker is not None:
            pipeline = pipeline.with_epoch(self.batches_per_worker)
        return iter(pipeline)

    def _decode(self, samples: Iterator[dict], rng: random.Random | None) -> Iterator[ClipExample]:
        expect = self.expect
        for sample in samples:
            key = str(sample.get("__key__", "?"))
            try:
                kind = sample_kind(sample)
                example = decode_sample(sample, self.spec, rng, expect, self.video_latent_rate)
            except BadSampleError as error:
                self.counter.skip(key, str(error))
                if self.resampled and self.counter.good == 0 and self.counter.skipped >= MAX_LEADING_SKIPS:
                    raise RuntimeError(f"no readable sample in the first {self.counter.skipped} of the stream over "
                                       f"{len(self.urls)} shards: {self.counter.summary()}") from error
                continue
            self.counter.good += 1
            expect = expect or kind  # a batch holds one kind: the first good sample decides
            yield example
