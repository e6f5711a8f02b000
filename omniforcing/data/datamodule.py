"""LightningDataModules: WebDataset shards (:class:`AVDataModule`) and on-the-fly synthetic clips
(:class:`SyntheticDataModule`). Both yield :class:`~omniforcing.types.AVBatch`.

Resume guarantee (AVDataModule): every pass over the training loader is seeded from
``(seed, epoch, global_step)`` of the attached Trainer at the moment the pass starts (plus rank and worker).
A run resumed from a checkpoint therefore continues with a fresh, reproducible shard order, shuffle and
window draw instead of replaying the samples it had already consumed in that epoch. It does not resume in
the middle of a pass: in finite mode the interrupted epoch restarts from a new permutation, so samples seen
before the interruption can be seen again in that epoch. Without a Trainer the pass counter in
``state_dict()`` plays the role of the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from omniforcing.codecs.base import AVCodec
from omniforcing.data.decoding import ClipExample, collate_examples, decode_sample, uint8_to_unit
from omniforcing.data.latent_shards import check_latent_shards
from omniforcing.data.pipeline import ClipStream
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.types import AVBatch, ClipInfo, ClipSpec


class StreamLoader(DataLoader):
    """DataLoader over a self-batching stream that seeds each pass and fails clearly when a pass yields nothing.

    Args:
        stream: the batch stream with ``set_position(epoch, step)`` (``batch_size=None``: it batches itself),
            e.g. a :class:`ClipStream` or an ODE-pair stream.
        position: returns ``(epoch, step)`` for the pass about to start.
        num_workers: DataLoader worker processes.
        length: batches per pass, if known.
        empty_message: says why a pass yielded nothing (default: the shard diagnosis of a :class:`ClipStream`).
    """

    def __init__(self, stream: IterableDataset, position: Callable[[], tuple[int, int]], num_workers: int = 0,
                 length: int | None = None, empty_message: Callable[[], str] | None = None) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.position = position
        self.length = length
        self.empty_message = empty_message or (lambda: f"no readable sample in {len(stream.urls)} shards "
                                                       f"({stream.urls[0]} ...): "
                                                       f"{diagnose_shards(stream.urls, stream.spec)}")

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this stream has no fixed length (finite mode: it ends with the data)")
        return self.length

    def __iter__(self) -> Iterator:
        self.dataset.set_position(*self.position())  # type: ignore[attr-defined]
        batches = 0
        for batch in super().__iter__():
            batches += 1
            yield batch
        if batches == 0:
            raise RuntimeError(self.empty_message())


def diagnose_shards(urls: list[str], spec: ClipSpec, limit: int = 5) -> str:
    """Reasons why the first samples of ``urls`` cannot be used (for the error when nothing is readable)."""
    reasons: list[str] = []
    for url in urls[:limit]:
        try:
            for key, members in iter_tar_samples(url):
                try:
                    decode_sample({"__key__": key, **members}, spec, None, None)
                except Exception as error:  # noqa: BLE001 - collecting reasons for the report
                    reasons.append(f"{key}: {error}")
                if len(reasons) >= limit:
                    break
        except Exception as error:  # noqa: BLE001
            reasons.append(f"{url}: unreadable shard ({error})")
        if len(reasons) >= limit:
            break
    return "; ".join(reasons) or "the shards hold no samples"


class AVDataModule(L.LightningDataModule):
    """Paired audio-video clips from WebDataset shards (``mp4`` + ``json``, or pre-encoded latents).

    Args:
        train_shards: training shards: a folder, brace pattern, glob, or comma-separated list of these.
        val_shards: validation shards (windows start at frame 0, no shuffling), or ``None``.
        clip: window cut from each stored clip; stored clips must have its fps, sample rate and size.
        batch_size: examples per batch (per rank).
        num_workers: DataLoader worker processes per rank (decoding happens in them).
        shuffle_buffer: samples held for shuffling in each worker.
        resampled: draw training shards with replacement, forever (multi-node friendly, no uneven epochs).
        epoch_length: with ``resampled``, training samples per epoch *per rank* (rounded up to whole batches per
            worker); ``None`` makes the training epoch infinite (use ``max_steps``).
        seed: base seed of all data randomness.
        latents: ``True`` reads latent samples (``video_latents.npy``/``audio_latents.npy``), ``False`` media
            samples (``mp4``); ``None`` follows the first good sample of each worker's stream. Samples of the
            other kind are skipped as bad.
        video_latent_rate: video latents per second after the first (3 for the package's codecs).
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, clip: ClipSpec = ClipSpec(),
                 batch_size: int = 8, num_workers: int = 2, shuffle_buffer: int = 256, resampled: bool = False,
                 epoch_length: int | None = None, seed: int = 0, latents: bool | None = None,
                 video_latent_rate: int = 3) -> None:
        super().__init__()
        if epoch_length is not None and not resampled:
            raise ValueError("epoch_length only applies to resampled=True (a finite pass ends with the data)")
        self.train_shards, self.val_shards, self.clip = train_shards, val_shards, clip
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.resampled, self.epoch_length, self.seed = resampled, epoch_length, seed
        self.expect = None if latents is None else ("latents" if latents else "media")
        self.video_latent_rate = video_latent_rate
        self.passes = 0
        self._streams: dict[str, ClipStream] = {}

    def setup(self, stage: str) -> None:
        """Check latent shards against the clip and the trained module's codec before the first step.

        Latents only mean something to the codec that made them, so a module whose ``codec`` is not the one
        that encoded the shards is a :class:`ValueError` here (see
        :func:`~omniforcing.data.latent_shards.check_latent_shards`), not a silently wrong run.
        """
        if self.expect == "media":
            return
        for shards in (self.train_shards, self.val_shards):
            if shards is not None:
                check_latent_shards(resolve_shards(shards), self.clip, self.video_latent_rate, self.module_codec(),
                                    require_latents=self.expect == "latents")

    def module_codec(self) -> AVCodec | None:
        """The attached training module's child module ``codec`` when it is an :class:`AVCodec`."""
        if self.trainer is None:
            return None
        codec = dict(self.trainer.lightning_module.named_children()).get("codec")
        return codec if isinstance(codec, AVCodec) else None

    def _position(self) -> tuple[int, int]:
        self.passes += 1
        trainer = self.trainer
        if trainer is not None:
            return trainer.current_epoch, trainer.global_step
        return self.passes - 1, 0

    def train_stream(self) -> ClipStream:
        """The training :class:`ClipStream` (shuffled, random windows)."""
        per_worker = None
        if self.epoch_length is not None:
            per_worker = math.ceil(self.epoch_length / (self.batch_size * max(1, self.num_workers)))
        return ClipStream(resolve_shards(self.train_shards), self.clip, self.batch_size, self.seed, shuffle=True,
                          resampled=self.resampled, shuffle_buffer=self.shuffle_buffer, batches_per_worker=per_worker,
                          expect=self.expect, video_latent_rate=self.video_latent_rate)

    def train_dataloader(self) -> StreamLoader:
        """Training batches; length known only with ``resampled`` and ``epoch_length``."""
        stream = self._streams["train"] = self.train_stream()
        length = None if stream.batches_per_worker is None else stream.batches_per_worker * max(1, self.num_workers)
        return StreamLoader(stream, self._position, self.num_workers, length)

    def val_dataloader(self) -> StreamLoader:
        """Validation batches: every validation sample once, windows at the clip start."""
        if self.val_shards is None:
            raise ValueError("AVDataModule has no val_shards")
        stream = self._streams["val"] = ClipStream(
            resolve_shards(self.val_shards), self.clip, self.batch_size, self.seed, shuffle=False,
            expect=self.expect, video_latent_rate=self.video_latent_rate)
        return StreamLoader(stream, lambda: (0, 0), self.num_workers)

    def skipped_samples(self, split: str = "train") -> int:
        """Bad samples skipped by the last ``split`` stream in this process, summed over its passes.

        With ``num_workers=0`` that is every skip; DataLoader workers count and log their own.
        """
        stream = self._streams.get(split)
        return 0 if stream is None else stream.counter.skipped

    def state_dict(self) -> dict[str, Any]:
        """Pass counter (seeds passes when no Trainer is attached)."""
        return {"passes": self.passes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pass counter."""
        self.passes = int(state_dict["passes"])


class SyntheticClips(Dataset):
    """Synthetic clips ``first .. first + count - 1`` of the dataset with ``seed``, made on demand (no files)."""

    def __init__(self, first: int, count: int, seed: int, spec: ClipSpec, settings: SceneSettings) -> None:
        self.first, self.count, self.seed, self.spec, self.settings = first, count, seed, spec, settings

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> ClipExample:
        if not 0 <= index < self.count:
            raise IndexError(index)
        clip = synthesize_clip(self.seed, self.first + index, self.spec, self.settings)
        info = ClipInfo(f"{self.first + index:08d}", clip.metadata["caption"], "synthetic", 0.0,
                        torch.from_numpy(clip.event_times).float())
        video = uint8_to_unit(torch.from_numpy(clip.video))
        return ClipExample(info.caption, info, video=video, audio=torch.from_numpy(clip.audio)[None])


class SyntheticStream(IterableDataset):
    """Infinite, step-indexed stream of training batches over a pool of synthetic clips.

    Batch ``b`` of rank ``r`` holds the clips at positions ``((b * world + r) * B + i)`` of an endless sequence of
    seeded permutations of the pool, so the data of every optimiser step is a function of the step alone: a run
    resumed from a checkpoint (``start_batch`` = its ``global_step``) sees exactly the batches the uninterrupted
    run would have seen, and ranks never share a clip within a step. Workers take batches round-robin, which
    is the order in which the DataLoader returns them.
    """

    def __init__(self, clips: SyntheticClips, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.clips, self.batch_size, self.seed = clips, batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def index_at(self, position: int) -> int:
        """Pool index of the clip at stream ``position`` (epoch ``position // pool`` is a fresh permutation)."""
        epoch, offset = divmod(position, len(self.clips))
        order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return int(order[offset])

    def batch(self, number: int) -> AVBatch:
        """Training batch ``number`` of this rank."""
        first = (number * self.world_size + self.rank) * self.batch_size
        return collate_examples([self.clips[self.index_at(first + i)] for i in range(self.batch_size)])

    def __iter__(self) -> Iterator[AVBatch]:
        worker = get_worker_info()
        shard, shards = (0, 1) if worker is None else (worker.id, worker.num_workers)
        number = self.start_batch + shard
        while True:
            yield self.batch(number)
            number += shards


class SyntheticDataModule(L.LightningDataModule):
    """Synthetic paired clips generated on the fly: deterministic, no files, for tests and tiny CPU recipes.

    Training uses clip indices ``0 .. train_clips - 1`` and validation the next ``val_clips``, so the splits
    are disjoint. Clips are not compressed (no mp4 round trip), and a clip is exactly one window of ``clip``.
    Resume guarantee: the training stream is indexed by optimiser step (:class:`SyntheticStream`), so a resumed
    run continues with exactly the batches an uninterrupted run would have used.

    Args:
        clip: clip geometry.
        train_clips: number of training clips.
        val_clips: number of validation clips.
        batch_size: examples per batch.
        num_workers: DataLoader workers.
        seed: dataset seed (clip ``i`` is ``synthesize_clip(seed, i, ...)``); also seeds the training order.
        scene: difficulty knobs of the synthetic scenes.
    """

    def __init__(self, clip: ClipSpec = ClipSpec(), train_clips: int = 64, val_clips: int = 8, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0, scene: SceneSettings = SceneSettings()) -> None:
        super().__init__()
        self.clip, self.train_clips, self.val_clips = clip, train_clips, val_clips
        self.batch_size, self.num_workers, self.seed, self.scene = batch_size, num_workers, seed, scene

    def train_dataloader(self) -> DataLoader:
        """Endless shuffled training batches, indexed by optimiser step (see :class:`SyntheticStream`)."""
        trainer = self.trainer
        stream = SyntheticStream(SyntheticClips(0, self.train_clips, self.seed, self.clip, self.scene),
                                 self.batch_size, self.seed,
                                 start_batch=trainer.global_step if trainer else 0,
                                 rank=trainer.global_rank if trainer else 0,
                                 world_size=trainer.world_size if trainer else 1)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in index order."""
        data = SyntheticClips(self.train_clips, self.val_clips, self.seed, self.clip, self.scene)
        return DataLoader(data, self.batch_size, num_workers=self.num_workers, collate_fn=collate_examples)
