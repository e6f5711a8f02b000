"""The quickstart: its measurement helpers (fast) and the whole demo at tiny size (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omniforcing.commands.data import synth
from omniforcing.data.media import read_av
from omniforcing.demo import ROOT, run_demo
from omniforcing.demo_steps import codec_preview, codec_psnr

CODEC = ROOT / "checkpoints" / "reference" / "codec"


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("val")
    synth(out=out, clips=2, seconds=2, seed=1, max_objects=1, fixed_size=True, background_sound=False, workers=1)
    return out


def test_codec_preview_writes_original_and_reconstruction_side_by_side(val_shards, tmp_path):
    out = tmp_path / "preview.mp4"
    value = codec_preview(CODEC / "video_ae.safetensors", CODEC / "mel.safetensors", val_shards, out)
    clip = read_av(out)
    assert clip.video.shape[1:] == (32, 64, 3) and clip.video.shape[0] == 49  # 2 s + the lead frame, 2 x width
    assert clip.audio is not None and abs(clip.audio.shape[-1] / clip.sample_rate - 2.04) < 0.03
    # the shipped codec reconstructs far above the mean-frame baseline (about 19 dB on these clips)
    assert value > 24 and codec_psnr(CODEC / "video_ae.safetensors", val_shards) > 24


@pytest.mark.slow
def test_tiny_demo_runs_every_step_and_reports(tmp_path):
    summary = run_demo(tmp_path, model="tiny", stream_seconds=3, clips=8, codec_steps=3, teacher_steps=3,
                       stage1_steps=2, pairs=4, stage2_steps=2, stage3_steps=2, batch_size=2, eval_clips=2,
                       threads=1, skip_reference=True)
    assert summary["streams"]["student_stream"]["video_seconds"] == pytest.approx(3 + 1 / 24, abs=0.05)
    assert summary["streams"]["student_stream"]["audio_seconds"] == pytest.approx(3.04, abs=0.05)
    names = [row[0] for row in summary["table"]]
    assert names == ["demo teacher", "demo student (Stage III)"]
    assert json.loads((tmp_path / "demo.json").read_text())["student"].endswith("last.ckpt")
    assert (tmp_path / "results.md").read_text().count("|") > 20
