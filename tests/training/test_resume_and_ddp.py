"""Reliability: a SIGKILLed run resumes exactly where it was; 2-process DDP on CPU reads disjoint data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.cli import main

from training_recipes import recipe_args, TINY_TEACHER

REPO = Path(__file__).resolve().parents[2]
PROBES = Path(__file__).resolve().parent

OVERFIT = ["--trainer.max_steps=24", "--trainer.log_every_n_steps=1", "--trainer.val_check_interval=1000",
           "--trainer.limit_val_batches=0", "--data.init_args.train_clips=4",
           "--model.init_args.optimizer.init_args.lr=0.003", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false"]

# checkpoints every 4 steps, EMA from the first step; a later -c file replaces the whole callbacks list
CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, save_top_k: -1, every_n_train_steps: 4, filename: "step{step:07d}",
                  auto_insert_metric_name: false}
    - class_path: omniforcing.callbacks.EMA
      init_args: {decay: 0.9, start_step: 0}
"""


def _losses(run_dir: Path) -> dict[int, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def _run_dirs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "teacher_joint").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.mark.slow
def test_sigkilled_run_resumes_with_state_and_loss_curve(tmp_path):
    (tmp_path / "callbacks.yaml").write_text(CALLBACKS)
    base = [*recipe_args(TINY_TEACHER), "-c", str(tmp_path / "callbacks.yaml"), *OVERFIT]
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    main(["fit", *base, f"--trainer.logger.init_args.save_dir={reference_dir}"])
    reference = _losses(_run_dirs(reference_dir)[0])

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PROBES}", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "omniforcing", "fit", *base,
                                f"--trainer.logger.init_args.save_dir={killed_dir}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(killed_dir.rglob("step0000008.ckpt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # resume from the newest complete checkpoint (the kill may land between writing step N and last.ckpt)
    last = max(killed_dir.rglob("step*.ckpt"), key=lambda p: p.name)
    saved = torch.load(last, weights_only=True)
    assert 8 <= saved["global_step"] < 24

    probe = tmp_path / "probe.pt"
    main(["fit", *base, f"--trainer.logger.init_args.save_dir={killed_dir}", f"--ckpt_path={last}",
          "--trainer.callbacks+=probes.ResumeProbe", f"--trainer.callbacks.init_args.out={probe}"])
    resumed_run = _run_dirs(killed_dir)[-1]
    assert torch.load(next(resumed_run.rglob("last.ckpt")), weights_only=True)["global_step"] == 24

    state = torch.load(probe, weights_only=True)
    assert state["global_step"] == saved["global_step"]
    for key, value in saved["callbacks"]["EMA"]["ema_state"].items():
        assert torch.equal(state["ema"][key], value), key
    for group_saved, group_now in zip(saved["optimizer_states"][0]["state"].values(),
                                      state["optimizer"]["state"].values()):
        assert torch.equal(group_saved["exp_avg"], group_now["exp_avg"])
        assert torch.equal(group_saved["exp_avg_sq"], group_now["exp_avg_sq"])

    # Step-indexed data and step-seeded noise: the resumed curve is the uninterrupted one, not a restart.
    resumed = _losses(resumed_run)
    assert min(resumed) >= saved["global_step"]
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-3, abs=1e-4), step


@pytest.mark.slow
def test_two_process_ddp_on_cpu_reads_disjoint_shards_and_reduces_val_losses(tmp_path):
    shards = tmp_path / "shards"
    main(["data", "synth", "--out", str(shards), "--clips", "8", "--seconds", "1", "--shard-size", "2"])
    keys_dir = tmp_path / "keys"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PROBES}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "omniforcing", "fit", *recipe_args(["base.yaml", "data/shards.yaml",
               "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml"]),
               "--data.init_args.clip.seconds=1", "--model.init_args.sample_steps=2",
               f"--data.init_args.train_shards={shards}", f"--data.init_args.val_shards={shards}",
               "--data.init_args.resampled=false", "--data.init_args.epoch_length=null",
               "--data.init_args.num_workers=0", "--data.init_args.batch_size=1",
               "--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.val_check_interval=null",
               "--trainer.check_val_every_n_epoch=1", "--trainer.limit_val_batches=1",
               "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
               "--trainer.callbacks+=probes.BatchKeyRecorder", f"--trainer.callbacks.init_args.out_dir={keys_dir}",
               "--trainer.enable_progress_bar=false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((keys_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 for s in seen) and seen[0]["pid"] != seen[1]["pid"]
    rank0, rank1 = set(seen[0]["keys"]), set(seen[1]["keys"])
    assert rank0 and rank1 and not rank0 & rank1
    assert len(rank0 | rank1) == 8  # every clip once per epoch
    # validation losses are reduced across ranks: both ranks report the mean over every validation batch of
    # both ranks (batch size 1), not their own mean
    local = [s["local_val_losses"] for s in seen]
    assert local[0] and local[1] and sum(local[0]) / len(local[0]) != sum(local[1]) / len(local[1])
    everything = local[0] + local[1]
    for s in seen:
        assert s["reported_val_loss"] == pytest.approx(sum(everything) / len(everything), rel=1e-5), seen
