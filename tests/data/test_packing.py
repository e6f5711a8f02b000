"""Packing real media into shards: conversions on real files, captions, skipped files with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from omniforcing.data.inspection import format_summary, inspect_shards
from omniforcing.data.media import read_av
from omniforcing.data.mp4_writers import encode_mp4, write_mp4
from omniforcing.data.packing import caption_for, cut_clips, pack_folder
from omniforcing.data.shards import iter_tar_samples
from omniforcing.types import ClipSpec

SPEC = ClipSpec(seconds=2)


def _packed(out: Path) -> list[tuple[dict, object]]:
    samples = []
    for shard in sorted(out.glob("*.tar")):
        for _, members in iter_tar_samples(shard):
            samples.append((json.loads(members["json"]), read_av(members["mp4"])))
    return samples


def test_pack_real_media_converts_rates_and_skips_the_silent_clip(shared_media, tmp_path):
    report = pack_folder(shared_media, tmp_path / "out", SPEC, shard_size=3, workers=0, progress=False)
    assert report.files == 3
    assert report.skipped == [("bikes.mp4", "no audio stream")]
    samples = _packed(tmp_path / "out")
    sources = [meta["source"] for meta, _ in samples]
    assert sources.count("bigbuckbunny.mp4") == 2  # 5.3 s -> two 2-s clips (each needs 2.042 s)
    assert sources.count("webcam_talk.avi") == 2  # 4.5 s at 15 fps -> two clips at 24 fps
    for meta, clip in samples:
        assert clip.video.shape == (SPEC.num_frames, 32, 32, 3) and clip.fps == 24
        assert clip.audio.shape == (1, SPEC.num_samples) and clip.sample_rate == 16000
        assert meta["caption"] == {"bigbuckbunny.mp4": "bigbuckbunny", "webcam_talk.avi": "webcam talk"}[meta["source"]]
        assert "width" not in meta  # square frames: the json is what it was before frames could be wider
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["samples"] == 4


@pytest.mark.parametrize(("name", "channels", "rate"), [("bigbuckbunny.mp4", 6, 48000), ("webcam_talk.avi", 1, 11024)])
def test_packed_audio_is_the_source_mixed_down_and_resampled(shared_media, name, channels, rate):
    source = read_av(shared_media / name, short_side=32)
    assert source.audio.shape[0] == channels and source.sample_rate == rate
    start, video, audio = cut_clips(source, SPEC)[1]
    # Independent reference: mean of channels, then torchaudio's resampler over the whole track.
    reference = AF.resample(source.audio.double().mean(0), rate, 16000).float()
    first = round((start - source.audio_start) * 16000)
    expected = reference[first : first + SPEC.num_samples]
    assert torch.corrcoef(torch.stack([audio, expected]))[0, 1] > 0.99
    assert video.shape == (SPEC.num_frames, 32, 32, 3)


def test_pack_skips_short_undecodable_and_silent_files_with_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (60, 48, 64, 3), dtype=np.uint8)
    write_mp4(src / "good_clip.mp4", frames, 24, np.zeros(40000, np.float32), 16000)
    (src / "good_clip.txt").write_text("a dog barks\n")
    write_mp4(src / "sub" / "json_caption.mp4", frames, 24, np.zeros(40000, np.float32), 16000)
    (src / "sub" / "json_caption.json").write_text(json.dumps({"caption": "rain on a roof"}))
    write_mp4(src / "short.mp4", frames[:30], 24, np.zeros(20000, np.float32), 16000)
    (src / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3 definitely not a matroska file")
    (src / "silent.mov").write_bytes(encode_mp4(frames, 24))
    report = pack_folder(src, tmp_path / "out", SPEC, workers=0, progress=False)
    reasons = dict(report.skipped)
    assert set(reasons) == {"short.mp4", "broken.mkv", "silent.mov"}
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["broken.mkv"].startswith("undecodable")
    assert reasons["silent.mov"] == "no audio stream"
    captions = sorted(meta["caption"] for meta, _ in _packed(tmp_path / "out"))
    assert captions == ["a dog barks", "rain on a roof"]


def test_caption_falls_back_to_the_file_name(tmp_path):
    assert caption_for(tmp_path / "door_slam-02.mp4") == "door slam 02"


def test_inspect_reports_counts_rates_and_unreadable_samples(tiny_shards, tmp_path):
    summary = inspect_shards(tiny_shards)
    assert summary.media_samples == 8 and not summary.unreadable
    assert summary.seconds == pytest.approx(8 * SPEC.duration)
    assert dict(summary.sample_rates) == {16000: 8} and dict(summary.sizes) == {"32x32": 8}
    text = format_summary(summary)
    assert "samples: 8" in text and "bounce" in text
    damaged = tmp_path / "damaged.tar"
    data = (tiny_shards / "shard-000000.tar").read_bytes()
    damaged.write_bytes(data[: int(len(data) * 0.75)])  # cuts into the second sample's mp4
    bad = inspect_shards(damaged)
    # the cut sample (its json survived, its mp4 not) and the shard, as the datamodule counts them
    assert bad.media_samples == 1 and [key for _, key, _ in bad.unreadable] == ["00000001", "-"]
    assert bad.damaged == ["damaged.tar"] and "mp4 unreadable (unexpected end of data)" in bad.unreadable[1][2]
