"""Per-window evaluation of long streams: window geometry, event shifting, and ``evaluate --per-window``."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.cli import main
from omniforcing.data.mp4_writers import write_mp4
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.metrics.windows import StreamWindow, cut_window, stream_windows
from omniforcing.types import AVBatch, ClipInfo, ClipSpec

SCENE = SceneSettings(max_objects=1, fixed_size=True, background_sound=False)


def test_whole_windows_only_and_clear_errors():
    assert stream_windows(5, 2) == [StreamWindow(0, 0, 2), StreamWindow(1, 2, 2)]  # the last second is dropped
    with pytest.raises(ValueError, match="streams of 1 s hold no window of 2 s"):
        stream_windows(1, 2)
    with pytest.raises(ValueError, match="at least 1 s"):
        stream_windows(4, 0)


def test_a_window_is_a_training_clip_cut_at_its_start_second():
    spec = ClipSpec(seconds=1, fps=4, sample_rate=400, size=2)
    video = torch.arange(13, dtype=torch.float32).view(1, 13, 1, 1, 1).expand(1, 13, 3, 2, 2) / 13
    audio = torch.arange(3 * 400 + 16, dtype=torch.float32).view(1, 1, -1)
    info = [ClipInfo("k", "c", event_times=torch.tensor([0.5, 1.25, 2.0, 2.9]))]
    part = cut_window(AVBatch(["c"], video=video, audio=audio, info=info), spec, StreamWindow(1, 1, 1))
    assert part.video.shape == (1, spec.num_frames, 3, 2, 2) and part.audio.shape == (1, 1, spec.num_samples)
    assert part.video[0, 0, 0, 0, 0] * 13 == pytest.approx(4) and part.audio[0, 0, 0] == 400  # frame 4, sample 400
    assert part.info[0].event_times.tolist() == pytest.approx([0.25, 1.0])  # [0, 1.25 s) of the window
    with pytest.raises(ValueError, match="runs past the stream"):
        cut_window(AVBatch(["c"], video=video, audio=audio, info=info), spec, StreamWindow(3, 3, 1))


def test_evaluate_per_window_writes_one_row_per_window(tmp_path):
    main(["data", "synth", "--out", str(tmp_path / "real"), "--clips", "2", "--seconds", "1", "--seed", "0",
          "--max_objects", "1", "--fixed_size", "true", "--background_sound", "false", "--workers", "0"])
    fake = tmp_path / "streams"
    for index in range(2):  # 3-s "streams" of the same distribution
        clip = synthesize_clip(3, index, ClipSpec(seconds=3, fps=24, size=32), SCENE)
        write_mp4(fake / f"stream_{index}.mp4", clip.video, 24, clip.audio, 16000, pixel_format="yuv420p")
    out = tmp_path / "windows.json"
    main(["evaluate", "--real", str(tmp_path / "real"), "--fake", str(fake), "--per-window", "1",
          "--extractors", "video_stats,audio_stats,sync", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["windows"]
    assert [(row["start_s"], row["end_s"]) for row in rows] == [(0, 1), (1, 2), (2, 3)]
    assert result["stream_seconds"] == 3 and result["n_streams"] == 2
    for row in rows:
        assert row["n_streams"] == 2
        assert {"fd_video_stats", "fd_audio_stats", "av_offset_median_ms", "event_f1_audio_visual"} <= set(
            row["metrics"]), row["metrics"].keys()
    assert len({row["metrics"]["fd_video_stats"] for row in rows}) == 3  # each window is scored on its own frames
    events = EventAccumulator(str(out.with_suffix(".tensorboard")))
    events.Reload()
    assert [event.step for event in events.Scalars("per_window/fd_video_stats")] == [0, 1, 2]
