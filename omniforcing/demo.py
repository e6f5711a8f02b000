"""The quickstart (``make demo``): the whole story on built-in synthetic data, on a CPU, in about 10 minutes.

::

    python -m omniforcing.demo --out runs/demo            # what `make demo` runs
    python -m omniforcing.demo --help                     # schedules, sizes, what to skip

1. streams 20 s from the shipped reference student (``checkpoints/reference/student``) to an mp4;
2. synthesises a small paired dataset into WebDataset shards and inspects it;
3. pushes a clip through the shipped codec (preview mp4: original | reconstruction) and trains a codec briefly
   to show codec training (the teacher keeps the shipped codec: a few minutes of codec training is not enough);
4. trains a small joint teacher on the shards and generates a clip with it (``omniforcing generate``);
5. distils it into a streaming student: Stage I (DMD) -> ODE pairs -> Stage II -> Stage III (short schedules);
6. streams 20 s from that student;
7. prints one table of metrics and speed: reference student vs the demo's teacher and student.

Every step is the command a user would type (printed before it runs), so the demo doubles as a tour of the
command line. Each step's outputs land in ``--out``; the paths are printed at the end. Schedules are short on
purpose: the from-scratch models are a demonstration of the pipeline, the reference checkpoints (trained with
the same recipes for longer, docs/results.md) show what the methods reach.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

import torch

from omniforcing.bench.report import Table, machine_description
from omniforcing.cli import main as omniforcing
from omniforcing.demo_steps import codec_preview, codec_psnr, evaluation_table, stream_summary

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PROMPT = "a red circle bounces; the circle rings"
SCENE_FLAGS = ["--max-objects", "1", "--fixed-size", "true", "--background-sound", "false"]
"""The quickstart scene (one fixed-size object, no room tone): learnable in CPU minutes (docs/data.md)."""


def run(args: list[str]) -> None:
    """Print an ``omniforcing`` command, then run it in this process."""
    print(f"\n$ omniforcing {shlex.join(args)}", flush=True)
    omniforcing(args)


def recipe_args(*names: str) -> list[str]:
    """``-c recipes/<name>.yaml`` for each name."""
    return [a for name in names for a in ("-c", str(RECIPES / f"{name}.yaml"))]


def banner(step: int, text: str) -> float:
    """Announce a step; returns its start time."""
    print(f"\n{'=' * 100}\n[{step}/7] {text}\n{'=' * 100}", flush=True)
    return time.perf_counter()


def trainer_args(out: Path, name: str, steps: int, batch_size: int) -> list[str]:
    """Overrides shared by the demo's ``omniforcing fit`` runs: short schedule, run folder, batch size."""
    return [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
            f"--trainer.log_every_n_steps={max(1, steps // 20)}", f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.logger.init_args.name={name}", "--trainer.logger.init_args.version=0",
            f"--data.init_args.batch_size={batch_size}", "--data.init_args.num_workers=1"]


def last_checkpoint(out: Path, name: str) -> Path:
    """``out/name/version_0/checkpoints/last.ckpt`` (an error naming the run when it is missing)."""
    path = out / name / "version_0" / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{name} finished without writing {path}")
    return path


def run_demo(out: Path = Path("runs/demo"), *, reference: Path = ROOT / "checkpoints" / "reference",
             model: str = "small", stream_seconds: int = 20, clips: int = 96, codec_steps: int = 120,
             teacher_steps: int = 300, stage1_steps: int = 40, pairs: int = 48, stage2_steps: int = 100,
             stage3_steps: int = 30, batch_size: int = 8, eval_clips: int = 8, threads: int | None = None,
             skip_reference: bool = False) -> dict:
    """Run the quickstart; returns the summary also written to ``out/demo.json``.

    Args:
        out: output folder (data, runs, mp4s, ``demo.json``, ``results.md``).
        reference: folder of the shipped reference checkpoints (``codec/``, ``teacher/``, ``student/``).
        model: size recipe of the demo's teacher and student (``recipes/model/<model>.yaml``).
        stream_seconds: length of the two streamed clips.
        clips: synthetic training clips (2 s each).
        codec_steps: optimiser steps of the short codec training.
        teacher_steps: optimiser steps of the demo teacher.
        stage1_steps: Stage I optimiser steps (generator and critic together).
        pairs: ODE pairs for Stage II.
        stage2_steps: Stage II optimiser steps.
        stage3_steps: Stage III optimiser steps (generator and critic together).
        batch_size: clips per training step.
        eval_clips: prompts for the metrics table.
        threads: torch CPU threads (``None``: torch's default, all cores).
        skip_reference: do not stream from (or evaluate) the shipped student.
    """
    from omniforcing.pipelines.omniforcing import run_pipeline

    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, timings, paths = time.perf_counter(), {}, {}
    print(f"omniforcing demo -> {out} (machine: {json.dumps(machine_description())})", flush=True)

    student_ref = reference / "student"
    t = banner(1, f"stream {stream_seconds} s from the shipped reference student ({student_ref})")
    if skip_reference or not student_ref.is_dir():
        print("skipped: " + ("--skip_reference" if skip_reference else f"{student_ref} does not exist"))
        student_ref = None
    else:
        paths["reference_stream"] = out / "reference_student.mp4"
        run(["generate", "--checkpoint", str(student_ref), "--prompt", PROMPT, "--seconds", str(stream_seconds),
             "--out", str(paths["reference_stream"])])
    timings["reference_stream"] = time.perf_counter() - t

    t = banner(2, f"synthesise {clips} paired clips (bouncing objects with impact sounds) into shards")
    train, val = out / "data" / "train", out / "data" / "val"
    run(["data", "synth", "--out", str(train), "--clips", str(clips), "--seconds", "2", "--shard-size", "32",
         "--seed", "0", *SCENE_FLAGS])
    run(["data", "synth", "--out", str(val), "--clips", "16", "--seconds", "2", "--shard-size", "16",
         "--seed", "1", *SCENE_FLAGS])
    run(["data", "inspect", str(train)])
    timings["data"] = time.perf_counter() - t

    t = banner(3, "codec: a clip through the shipped codec, then a short codec training run")
    codec_dir = reference / "codec"
    paths["codec_preview"] = out / "codec_preview.mp4"
    shipped_psnr = codec_preview(codec_dir / "video_ae.safetensors", codec_dir / "mel.safetensors", val,
                                 paths["codec_preview"])
    print(f"shipped codec: video PSNR {shipped_psnr:.2f} dB on the first val clip; preview (original | "
          f"reconstruction, reconstructed sound) -> {paths['codec_preview']}")
    # the codec recipe draws its own scenes (1-3 objects, varied sizes, room tone: every scene a method may
    # see), so it trains on clips synthesised on the fly rather than on the quickstart's one-object shards
    run(["fit", *recipe_args("base", "data/synthetic", "codec/video_ae"),
         *trainer_args(out / "runs", "codec", codec_steps, batch_size),
         f"--model.init_args.scheduler.init_args.total_steps={codec_steps}",
         # one validation at the end fits the latent statistics stored with the checkpoint
         f"--trainer.val_check_interval={codec_steps}", "--trainer.limit_val_batches=2"])
    demo_psnr = codec_psnr(last_checkpoint(out / "runs", "codec"), val)
    print(f"codec trained for {codec_steps} steps: {demo_psnr:.2f} dB on the val clips vs the shipped codec's "
          f"{codec_psnr(codec_dir / 'video_ae.safetensors', val):.2f} dB; the teacher uses the shipped codec")
    timings["codec"] = time.perf_counter() - t

    t = banner(4, f"train a {model} joint audio-video teacher on the shards ({teacher_steps} steps)")
    run(["fit", *recipe_args("base", "data/shards", "teacher/joint", "latents/learned", f"model/{model}"),
         *trainer_args(out / "runs", "teacher", teacher_steps, batch_size),
         f"--data.init_args.train_shards={train}", f"--data.init_args.val_shards={val}"])
    teacher = last_checkpoint(out / "runs", "teacher")
    paths["teacher_clip"] = out / "teacher.mp4"
    run(["generate", "--checkpoint", str(teacher), "--prompt", PROMPT, "--seconds", "4",
         "--out", str(paths["teacher_clip"])])
    timings["teacher"] = time.perf_counter() - t

    t = banner(5, "distil the teacher into a streaming student: Stage I -> ODE pairs -> Stage II -> Stage III")
    print("$ python -m omniforcing.pipelines.omniforcing " + shlex.join([
        "--out", str(out / "omniforcing"), "--model", model, "--latents", "learned", "--teacher", str(teacher),
        "--stage1_steps", str(stage1_steps), "--pairs", str(pairs), "--stage2_steps", str(stage2_steps),
        "--stage3_steps", str(stage3_steps)]), flush=True)
    chain = run_pipeline(out / "omniforcing", model=model, latents="learned", seconds=2, batch_size=batch_size,
                         teacher=str(teacher), stage1_steps=stage1_steps, pairs=pairs, ode_steps=24,
                         stage2_steps=stage2_steps, stage3_steps=stage3_steps, stream_seconds=2, threads=threads)
    student = Path(chain["checkpoints"]["stage3"])
    timings["distillation"] = time.perf_counter() - t

    t = banner(6, f"stream {stream_seconds} s from the demo's student")
    paths["student_stream"] = out / "student.mp4"
    run(["generate", "--checkpoint", str(student), "--prompt", PROMPT, "--seconds", str(stream_seconds),
         "--out", str(paths["student_stream"])])
    timings["student_stream"] = time.perf_counter() - t

    t = banner(7, f"metrics and speed on {eval_clips} held-out prompts (2-s clips)")
    models = {"demo teacher": (str(teacher), False), "demo student (Stage III)": (str(student), True)}
    if student_ref is not None:
        models = {"reference student": (str(student_ref), True), **models}
    table = evaluation_table(models, eval_clips, out / "metric_cache")
    print(table.to_markdown())
    timings["evaluation"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - start
    summary = {"paths": {k: str(v) for k, v in paths.items()}, "teacher": str(teacher), "student": str(student),
               "seconds": timings, "streams": {k: stream_summary(Path(v)) for k, v in paths.items()
                                               if k.endswith(("stream", "clip"))}, "table": table.rows}
    (out / "results.md").write_text(table.to_markdown())
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print_paths(out, paths, teacher, student, timings)
    return summary


def print_paths(out: Path, paths: dict[str, Path], teacher: Path, student: Path, timings: dict[str, float]) -> None:
    """The closing summary: what was written where, and how long each step took."""
    times = Table("demo steps", ["step", "wall seconds"], [[k, v] for k, v in timings.items()])
    print(times.to_markdown())
    print("results:")
    for name, path in {**paths, "teacher checkpoint": teacher, "student checkpoint": student,
                       "metrics table": out / "results.md", "summary": out / "demo.json",
                       "TensorBoard": out / "runs"}.items():
        print(f"  {name:<20} {path}")
    print(f"\nnext: tensorboard --logdir {out / 'runs'}   |   omniforcing generate --checkpoint {student} "
          f"--prompt '...' --seconds 60 --out long.mp4")


def main() -> None:
    """Command line: ``python -m omniforcing.demo [--out DIR] [--model small] ...``."""
    from jsonargparse import CLI

    logging.basicConfig(level=logging.WARNING)
    CLI(run_demo, as_positional=False)


if __name__ == "__main__":
    main()
