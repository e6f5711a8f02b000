"""The OmniForcing chain in one command: teacher -> Stage I -> ODE pairs -> Stage II -> Stage III -> stream.

::

    python -m omniforcing.pipelines.omniforcing --out runs/omniforcing_pipeline            # tiny, minutes on a CPU
    python -m omniforcing.pipelines.omniforcing --out runs/omniforcing_small --model small --seconds 2 \\
        --teacher_steps 1500 --stage1_steps 300 --pairs 256 --stage2_steps 600 --stage3_steps 300 \\
        --ablations '[no_sinks, sinks_with_rope, no_prefix, naive_causal, v2]'

Every stage is ``omniforcing fit`` with its recipe (``recipes/omniforcing/*.yaml``) on synthetic data, chained
by checkpoint paths; the ODE pairs come from ``omniforcing data ode-pairs`` on the teacher. With the patch
latents (the default) the codecs' latent statistics are fitted on synthetic clips first. A stage whose
``last.ckpt`` exists is not run again, so an interrupted pipeline continues where it stopped (the folder of the
interrupted stage is removed and that stage starts over). Ablations reuse
the teacher, Stage I and the pairs and run Stage II + III with the ablation file (``v2``: the official code's
pipeline, Stage II from the teacher with the v2 layout). The final Stage III student streams a clip with its
rolling KV cache (:class:`omniforcing.inference.streaming.StreamingGenerator`) into ``clip.mp4``. Everything
is recorded in ``pipeline.json``, which ``omniforcing.pipelines.omniforcing_results`` reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Literal

import torch

from omniforcing.data.mp4_writers import write_mp4
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.pipelines.mutual_forcing import fit_patch_codec_statistics, write_trainer_overrides
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES
from omniforcing.types import ClipSpec

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
Ablation = Literal["no_sinks", "sinks_with_rope", "no_prefix", "naive_causal", "v2"]

STAGE_FILES = {
    "teacher": ["data/synthetic.yaml", "teacher/joint.yaml"],
    "stage1": ["data/synthetic.yaml", "omniforcing/stage1_dmd.yaml"],
    "stage2": ["omniforcing/data/ode_pairs.yaml", "omniforcing/stage2_ode.yaml"],
    "stage3": ["data/synthetic.yaml", "omniforcing/stage3_self_forcing.yaml"],
}


def run_cli(args: list[str]) -> None:
    """``omniforcing <args>`` in this process (``omniforcing.cli.main`` keeps the pipeline's own flags away from
    LightningCLI)."""
    from omniforcing.cli import main

    main(args)


def logged_wall_seconds(version: Path) -> float:
    """Wall seconds between the first and last TensorBoard event of a finished run (0 without events)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    times = [e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    return max(times) - min(times) if times else 0.0


def fit_stage(run: str, stage: str, out: Path, shared: list[str], extra: list[str]) -> tuple[Path, float]:
    """``omniforcing fit`` of one stage into ``out/runs/<run>/version_0``; skipped when its checkpoint exists.

    A ``version_0`` folder without ``last.ckpt`` is an interrupted run (its stage restarts from the start, not
    from a mid-run checkpoint); it is removed first so the new run's event file is the only one there.

    Returns:
        ``(last.ckpt, wall seconds)`` (when skipped: the span of its TensorBoard events).
    """
    version = out / "runs" / run / "version_0"
    checkpoint = version / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        log.info("%s: %s exists, not run again", run, checkpoint)
        return checkpoint, logged_wall_seconds(version)
    if version.exists():
        log.warning("%s: %s has no last.ckpt (interrupted run); removing it and training again", run, version)
        shutil.rmtree(version)
    files = ["base.yaml", *STAGE_FILES[stage]]
    args = [a for name in files for a in ("-c", str(RECIPES / name))]
    start = time.perf_counter()
    run_cli(["fit", *args, *shared, *extra, f"--trainer.logger.init_args.name={run}",
             "--trainer.logger.init_args.version=0"])
    if not checkpoint.is_file():
        raise RuntimeError(f"stage {run} wrote no {checkpoint}")
    return checkpoint, time.perf_counter() - start


def make_pairs(teacher: Path, out: Path, count: int, seconds: int, steps: int, times: list[float],
               first: int = 0) -> tuple[Path, float]:
    """``omniforcing data ode-pairs`` (resumable itself); returns the folder and the wall seconds."""
    start = time.perf_counter()
    run_cli(["data", "ode-pairs", "--teacher", str(teacher), "--out", str(out), "--count", str(count), "--seconds",
          str(seconds), "--steps", str(steps), "--student-times", json.dumps(times), "--first", str(first),
          "--shard-size", "64", "--batch-size", "8"])
    return out, time.perf_counter() - start


def stream_clip(checkpoint: Path, prompt: str, seconds: int, window: float | None, out_file: Path,
                seed: int = 0) -> dict:
    """Stream one clip from a causal student with its rolling cache; write it as an mp4; return the timings."""
    generator = StreamingGenerator.from_pretrained(checkpoint, window_seconds=window)
    blocks = list(generator.stream(prompt, seconds, seed))
    video = torch.cat([b.video for b in blocks]).numpy()
    audio = torch.cat([b.audio for b in blocks]).numpy()
    write_mp4(out_file, video, generator.codec.video.fps, audio, generator.codec.audio.sample_rate,
              pixel_format="yuv420p")
    return {"clip": str(out_file), "blocks": len(blocks), "time_to_first_block_s": blocks[0].ready_seconds,
            "block_generate_ms": [b.generate_ms for b in blocks], "block_decode_ms": [b.decode_ms for b in blocks],
            "real_time_factor": [b.real_time_factor for b in blocks], "cache_bytes": [b.cache_bytes for b in blocks],
            "seconds_streamed": video.shape[0] / generator.codec.video.fps}


def overlay_args(variant: Ablation | None, recipe: str) -> list[str]:
    """``-c`` of the file switching a variant on top of a stage recipe (``recipe``: the stage file's stem)."""
    if variant is None:
        return []
    name = f"v2/{recipe}.yaml" if variant == "v2" else f"ablations/{variant}.yaml"
    return ["-c", str(RECIPES / "omniforcing" / name)]


def stage_overrides(stage: str, steps: int, lr: float) -> list[str]:
    """Step count and learning rate(s) of one stage (the DMD stages set generator and critic alike)."""
    every = 1 if stage in ("stage2", "stage3") else max(1, min(10, steps // 20))  # students: full curves
    args = [f"--trainer.max_steps={steps}", f"--trainer.log_every_n_steps={every}",
            f"--model.init_args.optimizer.init_args.lr={lr}"]
    if stage in ("stage1", "stage3"):
        args.append(f"--model.init_args.critic_optimizer.init_args.lr={lr}")
    if stage in ("teacher", "stage2"):  # warm-up no longer than a fifth of the run
        args.append(f"--model.init_args.scheduler.init_args.total_iters={max(1, min(100, steps // 5))}")
    return args


def evaluation_args(every: int | None, clips: int) -> list[str]:
    """``fit`` arguments appending a :class:`~omniforcing.callbacks.PeriodicEvaluation` (none without ``every``)."""
    if every is None:
        return []
    return ["--trainer.callbacks+=omniforcing.callbacks.PeriodicEvaluation",
            f"--trainer.callbacks.init_args.every_n_steps={every}", f"--trainer.callbacks.init_args.clips={clips}"]


def run_pipeline(out: Path = Path("runs/omniforcing_pipeline"), *, model: str = "tiny", latents: str = "patch",
                 seconds: int = 1, batch_size: int = 2, teacher: str | None = None, teacher_steps: int = 20,
                 stage1_steps: int = 12, pairs: int = 8, ode_steps: int = 16, stage2_steps: int = 12,
                 stage3_steps: int = 12, teacher_lr: float = 3e-4, distill_lr: float = 1e-4, ode_lr: float = 2e-4,
                 times: list[float] | None = None, ablations: list[Ablation] | None = None,
                 stream_seconds: int = 3, window: float | None = 2.0, ema_decay: float = 0.99,
                 prompt: str = "a red circle bounces; the circle rings", seed: int = 0, threads: int | None = 1,
                 overrides: list[str] | None = None, evaluate_every: int | None = None,
                 evaluate_clips: int = 8) -> dict:
    """Train the whole OmniForcing chain and stream a clip from the Stage III student.

    Args:
        out: output folder (``runs/``, ``codec/``, ``pairs/``, ``clip.mp4``, ``pipeline.json``).
        model: size recipe ``recipes/model/<model>.yaml``.
        latents: latent recipe ``recipes/latents/<latents>.yaml`` (``patch`` fits its statistics first).
        seconds: training clip length after the lead (>= 2 gives the students more than one block to roll out).
        batch_size: clips per step in every stage.
        teacher: an existing teacher ``.ckpt`` to distil (``None``: train one; it must use ``latents``/``model``).
        teacher_steps: teacher optimiser steps.
        stage1_steps: Stage I optimiser steps (generator and critic steps counted together).
        pairs: ODE pairs for Stage II.
        ode_steps: Euler steps of the teacher's sampler for the pairs.
        stage2_steps: Stage II optimiser steps.
        stage3_steps: Stage III optimiser steps (generator and critic together).
        teacher_lr: teacher learning rate.
        distill_lr: learning rate of generator and critic in Stage I and III.
        ode_lr: Stage II learning rate.
        times: the students' few-step times (default ``DEFAULT_FEW_STEP_TIMES``: 1.0 0.75 0.5 0.25).
        ablations: variants run after the main chain (Stage II + III each, sharing teacher, Stage I and pairs).
        stream_seconds: length of the streamed clip.
        window: KV-cache window of the stream in seconds (``None``: never evict).
        ema_decay: EMA decay cap of every stage (the EMA weights are what the next stage loads); the EMA warms up
            (``min(decay, (1 + n) / (10 + n))``, callbacks/ema.py), so a 12-step stage exports an average of its
            last steps, not mostly its starting weights.
        prompt: caption of the streamed clip.
        seed: run seed (data, noise, pairs).
        threads: torch CPU threads (``None``: torch's default; 1 on a shared machine).
        overrides: extra ``omniforcing fit`` arguments for every stage.
        evaluate_every: add :class:`omniforcing.callbacks.PeriodicEvaluation` to the stages trained on synthetic
            clips (teacher, Stage I, Stage III) every this many optimiser steps: metrics of the module's own
            samples (the students' streamed clips) under ``val/`` in TensorBoard (``None``: off). Stage II's data
            are ODE pairs, not media, so it is not evaluated during training.
        evaluate_clips: clips per evaluation.

    Returns:
        The summary written to ``pipeline.json``: checkpoints, pair folders, wall seconds per stage, stream.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    times = times or list(DEFAULT_FEW_STEP_TIMES)
    shared = ["-c", str(RECIPES / "latents" / f"{latents}.yaml"), "-c", str(RECIPES / "model" / f"{model}.yaml"),
              "-c", str(write_trainer_overrides(out, ema_decay)), "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false", f"--seed_everything={seed}",
              f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--data.init_args.clip.seconds={seconds}",
              f"--data.init_args.batch_size={batch_size}", "--data.init_args.num_workers=0", *(overrides or [])]
    if latents == "patch":
        shared += fit_patch_codec_statistics(out, ClipSpec(seconds=seconds), seed=seed)
    steps = {"teacher": teacher_steps if teacher is None else None, "stage1": stage1_steps, "stage2": stage2_steps,
             "stage3": stage3_steps, "pairs": pairs, "ode_steps": ode_steps}
    summary: dict = {"settings": {"model": model, "latents": latents, "seconds": seconds, "batch_size": batch_size,
                                  "times": times, "threads": threads, "steps": steps},
                     "checkpoints": {}, "wall_seconds": {}}

    def record(name: str, result: tuple[Path, float]) -> Path:
        summary["checkpoints"][name], summary["wall_seconds"][name] = str(result[0]), result[1]
        return result[0]

    times_arg = f"--model.init_args.times={json.dumps(times)}"
    evaluate = evaluation_args(evaluate_every, evaluate_clips)
    if teacher is None:
        teacher = record("teacher", fit_stage("teacher", "teacher", out, shared,
                                              [*stage_overrides("teacher", teacher_steps, teacher_lr), *evaluate]))
    else:
        summary["checkpoints"]["teacher"] = str(teacher)
    teacher_arg = f"--model.init_args.teacher_from={teacher}"
    stage1 = record("stage1", fit_stage("stage1", "stage1", out, shared, [
        *stage_overrides("stage1", stage1_steps, distill_lr), teacher_arg, times_arg, *evaluate]))
    train_pairs, summary["wall_seconds"]["pairs"] = make_pairs(Path(teacher), out / "pairs" / "train", pairs,
                                                               seconds, ode_steps, times)
    pair_args = [f"--data.init_args.train_shards={train_pairs}", "--data.init_args.val_shards=null"]
    for variant in [None, *(ablations or [])]:
        suffix = "" if variant is None else f"_{variant}"
        init2 = teacher if variant == "v2" else stage1  # v2 has no Stage I
        stage2 = record(f"stage2{suffix}", fit_stage(f"stage2{suffix}", "stage2", out, shared, [
            *overlay_args(variant, "stage2_ode"), *stage_overrides("stage2", stage2_steps, ode_lr), *pair_args,
            times_arg, f"--model.init_args.init_from={init2}"]))
        record(f"stage3{suffix}", fit_stage(f"stage3{suffix}", "stage3", out, shared, [
            *overlay_args(variant, "stage3_self_forcing"), *stage_overrides("stage3", stage3_steps, distill_lr),
            teacher_arg, times_arg, f"--model.init_args.init_from={stage2}", *evaluate]))
    summary["stream"] = stream_clip(Path(summary["checkpoints"]["stage3"]), prompt, stream_seconds, window,
                                    out / "clip.mp4", seed)
    (out / "pipeline.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    """Command line: ``python -m omniforcing.pipelines.omniforcing --out DIR [--model small] ...``."""
    from jsonargparse import CLI

    summary = CLI(run_pipeline, as_positional=False)
    stream = summary["stream"]
    later = stream["block_generate_ms"][1:] or stream["block_generate_ms"]
    print(f"stage III student streamed {stream['blocks']} blocks ({stream['seconds_streamed']:.2f} s) with its KV "
          f"cache -> {stream['clip']}; first block after {stream['time_to_first_block_s']:.3f} s, later blocks "
          f"{sum(later) / len(later):.0f} ms each; summary in {Path(stream['clip']).parent / 'pipeline.json'}")


if __name__ == "__main__":
    main()
