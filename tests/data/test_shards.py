"""Shard reading: a tar that stops being readable mid-file is detected, its lost samples counted and named."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from omniforcing.data import AVDataModule
from omniforcing.data.inspection import format_summary, inspect_shards
from omniforcing.data.latent_shards import plan_windows
from omniforcing.data.ode_pairs import ODEPairStream, encode_pair
from omniforcing.data.shards import ShardDamageError, ShardSink, iter_tar_samples
from omniforcing.types import AVLatents, ClipSpec


def _one_shard_of_eight(tiny_shards: Path, out: Path) -> Path:
    """The 8 samples of ``tiny_shards`` rewritten into one shard (``out/shard-000000.tar``)."""
    samples = [sample for shard in sorted(tiny_shards.glob("*.tar")) for sample in iter_tar_samples(shard)]
    assert len(samples) == 8
    with ShardSink(out, 100) as sink:
        for key, members in samples:
            sink.write(key, members)
    return out / "shard-000000.tar"


def _member_offset(shard: Path, member: int) -> int:
    with tarfile.open(shard) as archive:
        return archive.getmembers()[member].offset


def _corrupt_header(shard: Path, member: int) -> None:
    """Overwrite the header block of tar member number ``member`` (its checksum no longer matches)."""
    offset = _member_offset(shard, member)
    data = bytearray(shard.read_bytes())
    data[offset:offset + 512] = b"\xff" * 512
    shard.write_bytes(bytes(data))


def test_a_corrupt_header_after_the_first_sample_counts_the_lost_rest(tiny_shards, tmp_path):
    shard = _one_shard_of_eight(tiny_shards, tmp_path)
    _corrupt_header(shard, 2)  # members: 0.json 0.mp4 1.json ...: the second sample's first header
    read = []
    with pytest.raises(ShardDamageError, match="unreadable tar header at byte .*; 7 samples after it lost") as caught:
        for key, members in iter_tar_samples(shard):
            read.append((key, sorted(members)))
    assert read == [(read[0][0], ["json", "mp4"])]
    assert caught.value.lost == 7 and caught.value.shard == str(shard)


def test_a_member_header_inside_a_sample_leaves_that_sample_partial(tiny_shards, tmp_path):
    shard = _one_shard_of_eight(tiny_shards, tmp_path)
    _corrupt_header(shard, 3)  # the second sample's mp4: its json was read, the 6 samples after are lost
    read = []
    with pytest.raises(ShardDamageError, match="6 samples after it lost"):
        for _, members in iter_tar_samples(shard):
            read.append(sorted(members))
    assert read == [["json", "mp4"], ["json"]]


def test_a_shard_cut_at_a_member_boundary_is_detected(tiny_shards, tmp_path):
    shard = _one_shard_of_eight(tiny_shards, tmp_path)
    with tarfile.open(shard) as archive:
        boundary = archive.getmembers()[4].offset  # end of the second sample: no end-of-archive blocks after it
    shard.write_bytes(shard.read_bytes()[:boundary])
    with pytest.raises(ShardDamageError, match="no end-of-archive blocks"):
        assert len(list(iter_tar_samples(shard))) == 2


def test_intact_shards_read_without_damage(tiny_shards):
    summary = inspect_shards(tiny_shards)
    assert summary.samples == 8 and not summary.damaged and summary.lost == 0
    assert "damaged shards" not in format_summary(summary)


def test_inspect_and_datamodule_report_the_lost_samples_and_the_shard(tiny_shards, tmp_path, caplog):
    shard = _one_shard_of_eight(tiny_shards, tmp_path)
    _corrupt_header(shard, 2)
    summary = inspect_shards(tmp_path)
    assert summary.media_samples == 1 and summary.lost == 7 and summary.damaged == ["shard-000000.tar"]
    text = format_summary(summary)
    assert "unreadable: 1" in text and "damaged shards: 1 (shard-000000.tar), 7 samples lost" in text

    module = AVDataModule(str(tmp_path), clip=ClipSpec(seconds=1), batch_size=4, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="omniforcing.data.pipeline"):
        batches = list(module.train_dataloader())
    assert sum(len(batch) for batch in batches) == 1
    counter = module._streams["train"].counter
    assert module.skipped_samples() == 1 and counter.lost == 7 and counter.damaged == [str(shard)]
    assert f"skipping damaged shard {shard}" in caplog.text and "7 samples after it lost" in caplog.text
    assert counter.summary().endswith(f"7 samples lost in damaged shards ({shard})")


def test_encode_planning_names_the_damaged_shard(tiny_shards, tmp_path):
    shard = _one_shard_of_eight(tiny_shards, tmp_path)
    offset = _member_offset(shard, 2)
    _corrupt_header(shard, 2)
    windows, skipped = plan_windows([str(shard)], seconds=1, stride_seconds=1, fps=24, sample_rate=16000,
                                    frame_size=(32, 32))
    assert {window.key for window in windows} == {"00000000"}
    assert skipped == [f"shard-000000.tar: unreadable shard data after {len(windows)} windows (unreadable tar "
                       f"header at byte {offset}; 7 samples after it lost)"]


def test_ode_pair_stream_counts_the_pairs_lost_in_a_damaged_shard(tmp_path, caplog):
    times = [1.0, 0.5, 0.0]
    with ShardSink(tmp_path, 100) as sink:
        for index in range(4):
            states = AVLatents(None, torch.full((3, 2, 4), float(index)))
            sink.write(f"{index:08d}", encode_pair(f"clip {index}", times, states, {"index": index}))
    _corrupt_header(tmp_path / "shard-000000.tar", 4)  # members: json, audio_states per pair: pair 2's first
    stream = ODEPairStream([str(tmp_path / "shard-000000.tar")], batch_size=8, shuffle=False)
    with caplog.at_level(logging.WARNING, logger="omniforcing.data.pipeline"):
        (batch,) = list(stream)
    assert batch.keys == ["00000000", "00000001"]
    assert stream.counter.lost == 2 and stream.counter.damaged == [str(tmp_path / "shard-000000.tar")]
    assert "skipping damaged shard" in caplog.text and "2 samples after it lost" in caplog.text


def test_inspect_compares_the_folder_with_its_manifest(tiny_shards, tmp_path):
    intact = format_summary(inspect_shards(tiny_shards))
    assert "dataset.json: 8 samples" in intact and "not found" not in intact and "missing shards" not in intact
    folder = tmp_path / "copy"
    shutil.copytree(tiny_shards, folder)
    (folder / "shard-000002.tar").unlink()
    summary = inspect_shards(folder)
    assert summary.samples == 6 and summary.expected == 8 and summary.missing == ["shard-000002.tar"]
    text = format_summary(summary)
    assert "missing shards: 1 listed in dataset.json (shard-000002.tar)" in text
    assert "dataset.json: 8 samples; 2 of them not found in the shards" in text


def test_a_corrupt_header_behind_a_pax_header_is_reported_as_a_header(tmp_path):
    """tarfile raises (instead of stopping) when the header after a pax extended header is bad."""
    shard = tmp_path / "pax.tar"
    with tarfile.open(shard, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(3):
            for extension in ("json", "mp4"):
                info = tarfile.TarInfo(f"{index:08d}.{extension}")
                info.size, info.pax_headers = 700, {"comment": "forces a pax header"}
                archive.addfile(info, io.BytesIO(bytes(700)))
    with tarfile.open(shard) as archive:
        header = archive.getmembers()[2].offset_data - 512  # the ustar header behind member 2's pax header
    data = bytearray(shard.read_bytes())
    data[header:header + 512] = b"\xff" * 512
    shard.write_bytes(bytes(data))
    read = []
    with pytest.raises(ShardDamageError, match=r"unreadable tar header \(bad checksum\) at byte \d+; 2 samples"):
        for key, members in iter_tar_samples(shard):
            read.append((key, sorted(members)))
    assert read == [("00000000", ["json", "mp4"])]
