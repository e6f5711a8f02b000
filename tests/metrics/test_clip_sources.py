"""Clip sources for evaluation: conforming media files, shard batches, checkpoint versions and watcher state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omniforcing.data.decoding import BadSampleError
from omniforcing.data.media import read_av
from omniforcing.data.mp4_writers import write_mp4
from omniforcing.data.pipeline import SkipCounter
from omniforcing.metrics import checkpoint_watch
from omniforcing.metrics.checkpoint_watch import EvaluationState, find_run_dirs, stable_checkpoints
from omniforcing.metrics.clip_sources import conform_media, iter_clip_batches, probe_spec
from omniforcing.types import ClipSpec

SPEC = ClipSpec(seconds=1, fps=24, sample_rate=16000, size=32)


def _clip_file(path, seconds: float, fps: int = 30, height: int = 48, width: int = 64, rate: int = 22050):
    """A moving bright bar, and a click exactly at 0.5 s."""
    frames = np.zeros((round(seconds * fps) + 1, height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        frame[:, (2 * i) % width] = 255
    audio = np.zeros(round((seconds + 0.04) * rate), np.float32)
    audio[rate // 2 : rate // 2 + 64] = 0.8
    write_mp4(path, frames, fps, audio, rate)
    return path


def test_conform_media_converts_rates_size_and_keeps_timing(tmp_path):
    video, audio = conform_media(read_av(_clip_file(tmp_path / "a.mp4", 1.0)), SPEC)
    assert video.shape == (SPEC.num_frames, 3, 32, 32) and audio.shape == (1, SPEC.num_samples)
    assert -1 <= video.min() and video.max() <= 1
    click = int(audio[0].abs().argmax())
    assert abs(click / SPEC.sample_rate - 0.5) < 0.01  # the click stays at 0.5 s after resampling and cutting


def test_conform_media_rejects_short_files_with_the_reason(tmp_path):
    with pytest.raises(BadSampleError, match="too short"):
        conform_media(read_av(_clip_file(tmp_path / "b.mp4", 0.5)), SPEC)


def test_media_folder_batches_count_skips_and_split_by_rank(tmp_path):
    for name in ("a", "b", "c"):
        _clip_file(tmp_path / f"{name}.mp4", 1.0)
    _clip_file(tmp_path / "short.mp4", 0.4)
    assert probe_spec(tmp_path, seconds=1) == ClipSpec(seconds=1, fps=30, sample_rate=22050, size=48, width=64)
    counter = SkipCounter()
    batches = list(iter_clip_batches(tmp_path, SPEC, 2, counter=counter))
    assert [len(b) for b in batches] == [2, 1] and counter.skipped == 1 and "too short" in counter.summary()
    ranks = [[c for b in iter_clip_batches(tmp_path, SPEC, 2, rank=r, world_size=2) for c in b.captions]
             for r in (0, 1)]
    assert ranks == [["a", "c"], ["b"]]
    assert sum(len(b) for b in iter_clip_batches(tmp_path, SPEC, 2, limit=2)) == 2


def test_checkpoint_that_changes_while_settling_is_not_taken(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "a"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "checkpoints").mkdir(parents=True)
    (run / "eval" / "checkpoints").mkdir(parents=True)  # the watcher's own folder is never a run
    (run / "checkpoints" / "done.ckpt").write_bytes(b"1234")
    growing = run / "checkpoints" / "growing.ckpt"
    growing.write_bytes(b"12")
    (run / "checkpoints" / ".last.ckpt.tmp-1").write_bytes(b"partial")  # atomic writer's temporary name
    monkeypatch.setattr(checkpoint_watch.time, "sleep", lambda seconds: growing.write_bytes(b"12345"))
    runs = find_run_dirs(tmp_path / "runs")
    assert runs == [run, tmp_path / "runs" / "b"]
    stable = stable_checkpoints(runs, settle=1.0)
    assert [v.path.name for v in stable[run]] == ["done.ckpt"] and stable[runs[1]] == []


def test_state_file_remembers_outcomes_and_retries_failures_after_restart(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3}, path)
    (version,) = stable_checkpoints([tmp_path], settle=0)[tmp_path]
    assert checkpoint_watch.read_global_step(path) == 3
    state = EvaluationState(tmp_path)
    state.record(version, 3, "failed", error="boom")
    assert state.is_done(version)  # not again in this process
    restarted = EvaluationState(tmp_path)
    assert not restarted.is_done(version) and restarted.evaluated_step(3) is None
    restarted.record(version, 3, "evaluated", metrics={"fd_audio_stats": 1.5})
    again = EvaluationState(tmp_path)
    assert again.is_done(version) and again.evaluated_step(3) == version.key(tmp_path)
    saved = json.loads((tmp_path / "eval" / "evaluated.json").read_text())["checkpoints"]
    assert saved[version.key(tmp_path)]["metrics"] == {"fd_audio_stats": 1.5}
