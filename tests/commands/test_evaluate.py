"""``omniforcing evaluate``: real shards vs a folder of mp4s, and watching a run for new checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.cli import main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.mp4_writers import write_mp4
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.models.presets import PRESETS, build_preset
from omniforcing.types import ClipSpec
from user_errors import user_error

SCENE = SceneSettings(max_objects=1, fixed_size=True, background_sound=False)


def _synth(out: Path, clips: int, seed: int) -> None:
    main(["data", "synth", "--out", str(out), "--clips", str(clips), "--seconds", "1", "--seed", str(seed),
          "--max_objects", "1", "--fixed_size", "true", "--background_sound", "false", "--workers", "0"])


def test_real_shards_vs_mp4_folder_writes_metrics_json(tmp_path, capsys):
    _synth(tmp_path / "real", clips=2, seed=0)
    fake = tmp_path / "fake"
    for index in range(2):  # other clips of the same distribution, at another size and frame rate
        clip = synthesize_clip(5, index, ClipSpec(seconds=1, fps=30, size=48), SCENE)
        write_mp4(fake / f"clip_{index}.mp4", clip.video, 30, clip.audio, 16000, pixel_format="yuv420p")
    short = synthesize_clip(5, 9, ClipSpec(seconds=0, fps=30, size=48), SCENE)
    write_mp4(fake / "nested" / "short.mp4", short.video, 30, short.audio, 16000)
    out = tmp_path / "metrics.json"
    main(["evaluate", "--real", str(tmp_path / "real"), "--fake", str(fake), "--seconds", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["clip"] == {"seconds": 1, "fps": 24, "sample_rate": 16000, "size": 32, "width": None}
    assert (result["n_real"], result["n_fake"]) == (2, 2)
    assert "too short" in result["skipped_fake"] and result["skipped_real"] == "0 skipped"
    metrics = result["metrics"]
    for key in ("fd_video_stats", "fd_video_stats_n_real", "fd_video_stats_n_fake", "fd_audio_stats", "av_align",
                "av_offset_ms", "event_f1_audio_visual"):
        assert key in metrics, key
    assert metrics["fd_video_stats_n_fake"] == 2 and metrics["fd_video_stats"] > 0
    assert "fvd" not in metrics and "fad" not in metrics
    assert result["real_sync"]["event_f1_audio_truth"] > 0.5  # the synthetic shards carry their event times
    info = result["extractors"]["fd_video_stats"]
    assert len(info["fingerprint"]) == 64 and info["reference"] is False
    printed = capsys.readouterr().out
    assert "| fd_video_stats |" in printed and "N real 2, N fake 2" in printed


def test_evaluate_needs_a_mode(capsys):
    assert "--real SHARDS and --fake" in user_error(capsys, ["evaluate", "--real", "somewhere"])


# ---------------------------------------------------------------------------- --watch
NETWORK = {"class_path": "omniforcing.models.DualStreamTransformer",
           "init_args": {**PRESETS["tiny"], "video_channels": 1536, "audio_channels": 256}}
CODEC = {"class_path": "omniforcing.codecs.AVCodec",
         "init_args": {"video": {"class_path": "omniforcing.codecs.PatchVideoCodec"},
                       "audio": {"class_path": "omniforcing.codecs.MelAudioCodec",
                                 "init_args": {"griffin_lim_iters": 4, "nnls_iters": 5}}}}
DATA = {"class_path": "omniforcing.data.SyntheticDataModule",
        "init_args": {"clip": {"seconds": 1, "fps": 24, "sample_rate": 16000, "size": 32}, "train_clips": 4,
                      "val_clips": 2, "batch_size": 2, "scene": {"max_objects": 1, "fixed_size": True,
                                                                  "background_sound": False}}}


def _save_checkpoint(path: Path, step: int, seed: int) -> None:
    """A checkpoint laid out as ``omniforcing fit`` writes one (LightningCLI hyperparameters, prefixed state)."""
    torch.manual_seed(seed)
    network = build_preset("tiny", video_channels=1536, audio_channels=256)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.02 * torch.randn_like(param))  # a fresh model outputs zero velocity
    codec = AVCodec(PatchVideoCodec(), MelAudioCodec(griffin_lim_iters=4, nnls_iters=5))
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    state |= {f"codec.{k}": v for k, v in codec.state_dict().items()}
    hparams = {"_class_path": "omniforcing.training.TeacherLitModule", "network": NETWORK, "codec": CODEC,
               "modality": "joint", "sample_steps": 2, "video_cfg": 1.0, "audio_cfg": 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"global_step": step, "state_dict": state, "hyper_parameters": hparams}, tmp)
    os.replace(tmp, path)


def _watch(root: Path, capsys) -> str:
    main(["evaluate", "--watch", str(root), "--once", "true", "--clips", "2", "--batch_size", "2", "--settle", "0",
          "--extractors", "audio_stats"])
    return capsys.readouterr().out


def _eval_steps(run: Path, tag: str = "eval/fd_audio_stats") -> list[int]:
    events = EventAccumulator(str(run / "eval"))
    events.Reload()
    return sorted(e.step for e in events.Scalars(tag)) if tag in events.Tags()["scalars"] else []


def test_watch_once_evaluates_each_new_checkpoint_once(tmp_path, capsys):
    run = tmp_path / "runs" / "teacher" / "version_0"
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": DATA}))
    last = run / "checkpoints" / "last.ckpt"
    _save_checkpoint(last, step=10, seed=0)
    (run / "checkpoints" / "broken.ckpt").write_bytes(b"not a checkpoint")

    assert "evaluated 1 new checkpoint" in _watch(tmp_path / "runs", capsys)
    assert _eval_steps(run) == [10]
    state = json.loads((run / "eval" / "evaluated.json").read_text())["checkpoints"]
    by_path = {record["path"]: record for record in state.values()}
    assert by_path["checkpoints/last.ckpt"]["status"] == "evaluated"
    assert by_path["checkpoints/last.ckpt"]["global_step"] == 10
    assert by_path["checkpoints/last.ckpt"]["metrics"]["fd_audio_stats_n_real"] == 2
    assert by_path["checkpoints/broken.ckpt"]["status"] == "failed" and by_path["checkpoints/broken.ckpt"]["error"]
    assert list((tmp_path / "runs" / "metric_cache").glob("real_fd_audio_stats_*.npz"))

    assert "evaluated 0 new checkpoint" in _watch(run, capsys)  # a restart: nothing new for this run
    assert _eval_steps(run) == [10]

    shutil.copy2(last, run / "checkpoints" / "step0000010.ckpt")  # same step: a duplicate, not re-evaluated
    _save_checkpoint(last, step=20, seed=1)  # last.ckpt rewritten in place by training
    assert "evaluated 1 new checkpoint" in _watch(tmp_path / "runs", capsys)
    assert _eval_steps(run) == [10, 20]
    statuses = {(r["path"], r["global_step"]): r["status"]
                for r in json.loads((run / "eval" / "evaluated.json").read_text())["checkpoints"].values()}
    assert statuses[("checkpoints/step0000010.ckpt", 10)] == "duplicate"
    assert statuses[("checkpoints/last.ckpt", 20)] == "evaluated"
    assert statuses[("checkpoints/last.ckpt", 10)] == "evaluated"


@pytest.mark.slow
def test_watch_picks_up_the_checkpoints_of_a_real_fit(tmp_path, capsys):
    recipe = ["-c", "recipes/base.yaml", "-c", "recipes/data/synthetic.yaml", "-c", "recipes/teacher/joint.yaml",
              "-c", "recipes/latents/patch.yaml", "-c", "recipes/model/tiny.yaml", "-c", "recipes/debug/tiny_cpu.yaml",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=0"]
    main(["fit", *recipe, "--trainer.max_steps=2"])
    run = tmp_path / "teacher_joint" / "version_0"
    assert "evaluated 1 new checkpoint" in _watch(tmp_path, capsys)
    assert _eval_steps(run) == [2]
    assert "evaluated 0 new checkpoint" in _watch(tmp_path, capsys)
    main(["fit", *recipe, "--trainer.max_steps=4", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert "evaluated 1 new checkpoint" in _watch(tmp_path, capsys)
    assert _eval_steps(run) == [2, 4]
    np.testing.assert_array_equal(sorted(r["global_step"] for r in json.loads(
        (run / "eval" / "evaluated.json").read_text())["checkpoints"].values()), [2, 4])
