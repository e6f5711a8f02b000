"""``omniforcing data synth|pack|inspect`` through the real command line entry point."""

from __future__ import annotations

import json

import numpy as np

from omniforcing.cli import main
from omniforcing.data.latent_shards import plan_windows
from omniforcing.data.mp4_writers import encode_mp4, write_mp4
from omniforcing.data.shards import iter_tar_samples
from omniforcing.metrics.clip_sources import probe_spec


def test_data_synth_then_inspect(tmp_path, capsys):
    out = tmp_path / "synth"
    main(["data", "synth", "--out", str(out), "--clips", "3", "--seconds", "1", "--seed", "4", "--shard-size", "2",
          "--max-objects", "1", "--fixed-size", "true", "--background-sound", "false", "--workers", "0"])
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "shard-000000.tar", "shard-000001.tar"]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["samples"] == 3 and manifest["scene"]["max_objects"] == 1 and manifest["scene"]["fixed_size"]
    assert "wrote 3 clips" in capsys.readouterr().out
    main(["data", "inspect", str(out)])
    report = capsys.readouterr().out
    assert "samples: 3 (3 media, 0 latent)" in report and "16000 Hz (3)" in report and "unreadable: 0" in report


def test_data_pack_lists_skipped_files(tmp_path, capsys):
    src = tmp_path / "src"
    frames = np.random.default_rng(0).integers(0, 255, (40, 40, 60, 3), dtype=np.uint8)
    write_mp4(src / "street_music.mp4", frames, 20, np.zeros(44100 * 2, np.float32), 44100)
    (src / "no_sound.mp4").write_bytes(encode_mp4(frames, 20))
    out = tmp_path / "packed"
    main(["data", "pack", str(src), "--out", str(out), "--seconds", "1", "--size", "16", "--sample-rate", "16000",
          "--workers", "0"])
    printed = capsys.readouterr().out
    assert "packed 1 clips from 1 of 2 files" in printed
    assert "no_sound.mp4: no audio stream" in printed
    main(["data", "inspect", str(out)])
    report = capsys.readouterr().out
    assert "16x16 (1)" in report and "street music" in report


def test_data_pack_writes_frames_that_are_not_square_and_a_codec_reads_them(tmp_path, capsys):
    src = tmp_path / "src"
    frames = np.random.default_rng(0).integers(0, 255, (40, 40, 60, 3), dtype=np.uint8)
    write_mp4(src / "street_music.mp4", frames, 20, np.zeros(44100 * 2, np.float32), 44100)
    out = tmp_path / "packed"
    main(["data", "pack", str(src), "--out", str(out), "--seconds", "1", "--size", "16", "--width", "24",
          "--sample-rate", "16000", "--workers", "0"])
    assert "packed 1 clips" in capsys.readouterr().out
    main(["data", "inspect", str(out)])
    assert "16x24 (1)" in capsys.readouterr().out
    shards = sorted(str(p) for p in out.glob("*.tar"))
    wide, _ = plan_windows(shards, 1, 1, 24, 16000, frame_size=(16, 24))
    square, skipped = plan_windows(shards, 1, 1, 24, 16000, frame_size=(16, 16))
    assert len(wide) == 1 and not square and "frame size 16x24 != the codec's 16x16" in skipped[0]
    (_, members), = iter_tar_samples(shards[0])
    assert json.loads(members["json"])["width"] == 24 and json.loads((out / "dataset.json").read_text())["width"] == 24
    assert probe_spec(out).frame_size == (16, 24)  # evaluate reads these clips as they are, not as squares
