"""AVDataModule / SyntheticDataModule: batches, rank x worker splitting, crop alignment, bad samples, latents."""

from __future__ import annotations

import itertools
import io
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from omniforcing.data import AVDataModule, SyntheticDataModule
from omniforcing.data.mp4_writers import encode_mp4
from omniforcing.data.shards import ShardSink, json_bytes
from omniforcing.data.synthetic import synthesize_clip
from omniforcing.types import AVBatch, ClipSpec

STORED = ClipSpec(seconds=2)


def _keys(loader) -> list[str]:
    return [info.key for batch in loader for info in batch.info]


def test_batches_have_the_documented_shapes_and_ranges(tiny_shards):
    module = AVDataModule(str(tiny_shards), val_shards=str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=3,
                          num_workers=0)
    batch = next(iter(module.train_dataloader()))
    assert isinstance(batch, AVBatch) and len(batch) == 3
    assert batch.video.shape == (3, 25, 3, 32, 32) and batch.video.dtype == torch.float32
    assert batch.video.min() >= -1 and batch.video.max() <= 1
    assert batch.audio.shape == (3, 1, 16640) and batch.video_latents is None
    assert all(isinstance(c, str) and c for c in batch.captions)
    val = list(module.val_dataloader())
    assert [len(b) for b in val] == [3, 3, 2] and all(info.offset == 0.0 for b in val for info in b.info)


def test_two_ranks_by_two_workers_see_every_sample_once_per_epoch(tiny_shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # read by webdataset.split_by_node in the main process and the workers
    ranks = {rank: AVDataModule(str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=2, num_workers=2)
             for rank in ("0", "1")}  # one datamodule per rank, as in one process per rank under DDP
    loaders = {rank: module.train_dataloader() for rank, module in ranks.items()}
    per_epoch = []
    for _ in range(2):  # two epochs, each a new shard permutation
        seen = {}
        for rank, loader in loaders.items():
            monkeypatch.setenv("RANK", rank)
            seen[rank] = _keys(loader)
        assert sorted(seen["0"] + seen["1"]) == [f"{i:08d}" for i in range(8)]
        per_epoch.append(seen)
    assert per_epoch[0] != per_epoch[1]


def test_shuffling_changes_with_the_pass_and_is_reproducible(tiny_shards):
    def order(position: tuple[int, int]) -> list[str]:
        stream = AVDataModule(str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=8, num_workers=0).train_stream()
        stream.set_position(*position)
        return [info.key for batch in stream for info in batch.info]

    assert order((0, 0)) == order((0, 0))
    assert sorted(order((0, 0))) == sorted(order((1, 0)))
    assert len({tuple(order((epoch, step))) for epoch in range(3) for step in (0, 50)}) > 1


def test_resampled_epochs_have_the_requested_length_and_state(tiny_shards):
    module = AVDataModule(str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=4, num_workers=0, resampled=True,
                          epoch_length=10, seed=5)
    loader = module.train_dataloader()
    first, second = _keys(loader), _keys(loader)
    assert len(loader) == 3 and len(first) == len(second) == 12 and first != second
    restored = AVDataModule(str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=4, num_workers=0, resampled=True,
                            epoch_length=10, seed=5)
    restored.load_state_dict({"passes": 0})
    assert _keys(restored.train_dataloader()) == first
    assert module.state_dict() == {"passes": 2}
    with pytest.raises(ValueError, match="epoch_length"):
        AVDataModule(str(tiny_shards), epoch_length=10)


def _flash_click_sample(path: Path, event_frames: list[int]) -> None:
    """A 3-s clip with a white frame and an audio click at each event frame, events listed in the json."""
    spec = ClipSpec(seconds=3)
    video = np.zeros((spec.num_frames, 32, 32, 3), np.uint8)
    audio = np.zeros(spec.num_samples, np.float32)
    for frame in event_frames:
        video[frame] = 255
        start = round(frame * spec.sample_rate / spec.fps)
        audio[start : start + 16] = 0.9
    meta = {"caption": "flash and click", "fps": 24, "sample_rate": 16000, "seconds": 3,
            "events": [{"time": f / spec.fps} for f in event_frames]}
    with ShardSink(path, 10) as sink:
        sink.write("00000000", {"mp4": encode_mp4(video, 24, audio, 16000), "json": json_bytes(meta)})


def test_crops_keep_video_audio_and_event_times_aligned(tmp_path):
    _flash_click_sample(tmp_path, [30, 50])
    spec = ClipSpec(seconds=1)
    module = AVDataModule(str(tmp_path), clip=spec, batch_size=4, num_workers=0, resampled=True, epoch_length=24)
    checked, offsets = 0, set()
    for batch in module.train_dataloader():
        for video, audio, info in zip(batch.video, batch.audio, batch.info):
            offsets.add(info.offset)
            assert info.offset * spec.fps == pytest.approx(round(info.offset * spec.fps))  # starts on a frame
            flashes = torch.nonzero(video.mean(dim=(1, 2, 3)) > 0.5)[:, 0] / spec.fps
            loud = torch.nonzero(audio[0].abs() > 0.3)[:, 0]
            clicks = torch.cat([loud[:1], loud[1:][loud[1:] - loud[:-1] > 100]]) / spec.sample_rate
            events = info.event_times.double()
            assert len(flashes) == len(clicks) == len(events)
            torch.testing.assert_close(flashes.double(), events, atol=1e-4, rtol=0)  # same frame
            torch.testing.assert_close(clicks.double(), events, atol=1e-3, rtol=0)  # same sample within 1 ms
            checked += len(events)
    assert checked >= 5 and len(offsets) >= 3


def _bad_shard(path: Path, good: list[tuple[str, dict[str, bytes]]]) -> None:
    frames = np.zeros((STORED.num_frames, 32, 32, 3), np.uint8)
    silence = np.zeros(STORED.num_samples, np.float32)
    meta = json_bytes({"caption": "x", "fps": 24, "sample_rate": 16000, "seconds": 2})
    mp4 = encode_mp4(frames, 24, silence, 16000)
    bad = {
        "truncated": {"mp4": mp4[: len(mp4) // 2], "json": meta},
        "badjson": {"mp4": mp4, "json": b"{not json"},
        "noaudio": {"mp4": encode_mp4(frames, 24), "json": meta},
        "wrongfps": {"mp4": encode_mp4(frames, 25, silence, 16000), "json": json_bytes({"caption": "x", "fps": 25})},
        "wrongsize": {"mp4": encode_mp4(frames[:, :16, :16], 24, silence, 16000), "json": meta},
        "short": {"mp4": encode_mp4(frames[:12], 24, silence[:8000], 16000), "json": meta},
    }
    with ShardSink(path, 100) as sink:
        sink.write(*good[0])
        for key, members in bad.items():
            sink.write(key, members)
        sink.write(*good[1])


def _good_samples(count: int) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for index in range(count):
        clip = synthesize_clip(0, index, STORED)
        out.append((f"good{index}", {"mp4": encode_mp4(clip.video, 24, clip.audio, 16000),
                                     "json": json_bytes(clip.metadata)}))
    return out


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    good = _good_samples(4)
    _bad_shard(tmp_path / "a", good[:2])
    with ShardSink(tmp_path / "b", 100) as sink:
        for key, members in good[2:]:
            sink.write(key, members)
    whole = (tmp_path / "b" / "shard-000000.tar").read_bytes()
    (tmp_path / "b" / "shard-000000.tar").write_bytes(whole[: int(len(whole) * 0.75)])  # corrupt tar tail
    module = AVDataModule(f"{tmp_path}/a,{tmp_path}/b", clip=ClipSpec(seconds=1), batch_size=1, num_workers=0)
    keys = _keys(module.train_dataloader())
    assert sorted(keys) == ["good0", "good1", "good2"]
    stream = module._streams["train"]
    # 6 bad samples, the broken shard once, and the sample cut in half by it (its json survived, its mp4 not)
    assert module.skipped_samples() == 8 and stream.counter.good == 3
    assert "skipping bad sample 'wrongfps': fps 25 != expected 24" in caplog.text
    reasons = " ".join(stream.counter.reasons)
    for reason in ("cannot decode media", "unreadable json", "no audio stream", "frame size", "too short",
                   "unreadable shard data", "no mp4 or latent members"):
        assert reason in reasons


def test_nothing_readable_is_a_clear_error(tmp_path):
    with ShardSink(tmp_path, 100) as sink:
        sink.write("only", {"mp4": b"\x00" * 100, "json": json_bytes({"caption": "x"})})
    module = AVDataModule(str(tmp_path), batch_size=1, num_workers=0)
    with pytest.raises(RuntimeError, match="no readable sample in 1 shards.*only: cannot decode media"):
        list(module.train_dataloader())
    endless = AVDataModule(str(tmp_path), batch_size=1, num_workers=0, resampled=True)
    with pytest.raises(RuntimeError, match="no readable sample in the first 200"):
        next(iter(endless.train_dataloader()))
    with pytest.raises(FileNotFoundError, match="no shard files"):
        AVDataModule(str(tmp_path / "missing" / "*.tar")).train_dataloader()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_latent_shards_are_read_and_truncated_to_the_clip(tmp_path):
    rng = np.random.default_rng(0)
    video = rng.standard_normal((10, 4, 2, 2)).astype(np.float16)  # 3 s: 1 + 3 * 3 video latents
    audio = rng.standard_normal((76, 8)).astype(np.float32)  # 1 + 25 * 3 audio latents
    meta = {"caption": "latent clip", "fps": 24, "sample_rate": 16000, "seconds": 3, "latent_offset_seconds": 0.25,
            "events": [{"time": 0.5}, {"time": 2.5}]}
    with ShardSink(tmp_path, 100) as sink:
        sink.write("lat0", {"video_latents.npy": _npy(video), "audio_latents.npy": _npy(audio),
                            "json": json_bytes(meta)})
        sink.write("pickled", {"video_latents.npy": _npy(np.array([{"x": 1}], dtype=object), allow_pickle=True),
                               "audio_latents.npy": _npy(audio), "json": json_bytes(meta)})
    module = AVDataModule(str(tmp_path), clip=ClipSpec(seconds=2), batch_size=2, num_workers=0)
    (batch,) = list(module.train_dataloader())
    assert batch.video is None and batch.audio is None and len(batch) == 1
    assert batch.video_latents.shape == (1, 7, 4, 2, 2) and batch.audio_latents.shape == (1, 51, 8)
    torch.testing.assert_close(batch.video_latents[0], torch.from_numpy(video[:7].astype(np.float32)))
    torch.testing.assert_close(batch.audio_latents[0], torch.from_numpy(audio[:51]))
    torch.testing.assert_close(batch.info[0].event_times, torch.tensor([0.25]))
    assert module.skipped_samples() == 1  # the pickled array is refused, never unpickled
    media_only = AVDataModule(str(tmp_path), clip=ClipSpec(seconds=2), batch_size=2, num_workers=0, latents=False)
    with pytest.raises(RuntimeError, match="no readable sample"):
        list(media_only.train_dataloader())


def test_synthetic_datamodule_is_deterministic_with_disjoint_splits():
    module = SyntheticDataModule(clip=ClipSpec(seconds=1), train_clips=6, val_clips=3, batch_size=3)
    first, again = next(iter(module.train_dataloader())), next(iter(module.train_dataloader()))
    torch.testing.assert_close(first.video, again.video)
    assert first.video.shape == (3, 25, 3, 32, 32) and first.audio.shape == (3, 1, 16640)
    # the training stream is endless; its first pool-sized stretch is one permutation of the pool
    train = {info.key for b in itertools.islice(module.train_dataloader(), 2) for info in b.info}
    val = {info.key for b in module.val_dataloader() for info in b.info}
    assert len(train) == 6 and len(val) == 3 and not train & val
    assert all(len(info.event_times) for b in module.val_dataloader() for info in b.info)


class _MeanModule(L.LightningModule):
    """Consumes AVBatch through a Trainer (checks batch transfer and loader handling)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: Counter = Counter()

    def training_step(self, batch: AVBatch, batch_idx: int) -> torch.Tensor:
        self.seen["train"] += len(batch)
        return (self.scale * batch.video.mean() + batch.audio.mean()) ** 2

    def validation_step(self, batch: AVBatch, batch_idx: int) -> None:
        self.seen["val"] += len(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_runs_on_the_datamodule(tiny_shards, tmp_path):
    module = AVDataModule(str(tiny_shards), val_shards=str(tiny_shards), clip=ClipSpec(seconds=1), batch_size=4,
                          num_workers=0, resampled=True, epoch_length=8)
    model = _MeanModule()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=module)
    assert model.seen == {"train": 8, "val": 8}
    assert module.state_dict() == {"passes": 1}  # one training pass (validation passes are not counted)


def test_synthetic_stream_is_indexed_by_step_and_rank():
    from omniforcing.data.datamodule import SyntheticClips, SyntheticStream
    from omniforcing.data.synthetic import SceneSettings

    clips = SyntheticClips(0, 5, 0, ClipSpec(seconds=1), SceneSettings(max_objects=1))
    whole = SyntheticStream(clips, 2, seed=3)
    resumed = SyntheticStream(clips, 2, seed=3, start_batch=4)
    keys = [[i.key for i in b.info] for b in itertools.islice(iter(whole), 6)]
    assert [[i.key for i in b.info] for b in itertools.islice(iter(resumed), 2)] == keys[4:6]
    rank0 = SyntheticStream(clips, 2, seed=3, rank=0, world_size=2)
    rank1 = SyntheticStream(clips, 2, seed=3, rank=1, world_size=2)
    assert [i.key for i in rank0.batch(1).info] == keys[2] and [i.key for i in rank1.batch(1).info] == keys[3]
    assert sorted(k for b in keys[:2] for k in b) == sorted(set(k for b in keys[:2] for k in b))  # no repeats
