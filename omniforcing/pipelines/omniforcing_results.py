"""Results of an OmniForcing pipeline run: quality, sync and speed of every model, and the ablations' training health.

::

    python -m omniforcing.pipelines.omniforcing_results --run runs/omniforcing_small --clips 32 --seconds 2

Reads ``pipeline.json`` of :mod:`omniforcing.pipelines.omniforcing` and prints two markdown tables (also saved
as ``results.md`` / ``results.json`` in the run folder):

1. teacher (multi-step Euler + CFG, whole clip) vs Stage I (few-step, bidirectional, whole clip) vs the causal
   students (Stage II, Stage III and the ablations; few-step, streamed block by block with the KV cache):
   weight-free Fréchet distances against synthetic reference clips, AV-Align, AV offset, audio-visual event
   F1 (``omniforcing.metrics.MetricSuite``), and the time to generate one clip (batch 1, latents only) with
   the speed-up over the teacher;
2. per student run: the training curves read back from TensorBoard (Stage II loss, Stage III generator and
   sink gradient norms, critic loss) and whether anything was non-finite.

Every number is measured when the script runs; nothing is copied from elsewhere.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.bench.report import Report, Table
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.inference.clips import GeneratedClips, decode_latents, latent_noise
from omniforcing.inference.export import load_model
from omniforcing.inference.generation import generate_teacher_clips, method_arg
from omniforcing.inference.streaming import StreamingGenerator, generate_streaming_clips
from omniforcing.inference.stream_settings import settings_from_config
from omniforcing.metrics import MetricSuite
from omniforcing.sampling.few_step import sample_few_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES
from omniforcing.types import AVBatch, ClipSpec

SCENE = SceneSettings(min_objects=1, max_objects=1, fixed_size=True, background_sound=False)
EVAL_SEED = 7_000_000
"""Dataset seed of the reference clips and prompts (not the training clips of seed 0)."""

Generate = Callable[[list[str], int, int], GeneratedClips]


def reference_batches(clip: ClipSpec, count: int, batch_size: int = 8) -> tuple[list[AVBatch], list[str]]:
    """Synthetic reference clips (the training distribution, other seeds) and their captions."""
    made = [synthesize_clip(EVAL_SEED, i, clip, SCENE) for i in range(count)]
    batches = []
    for start in range(0, count, batch_size):
        part = made[start:start + batch_size]
        video = torch.stack([torch.from_numpy(c.video).permute(0, 3, 1, 2) for c in part])  # uint8 (B, T, 3, H, W)
        audio = torch.stack([torch.from_numpy(c.audio)[None] for c in part])
        batches.append(AVBatch([c.metadata["caption"] for c in part], video=video, audio=audio))
    return batches, [c.metadata["caption"] for c in made]


def few_step_clips(path: str) -> Generate:
    """Whole-clip few-step generation of a bidirectional Stage I generator (its recorded times)."""
    network, codec, config = load_model(path)
    times = method_arg(config, "times", list(DEFAULT_FEW_STEP_TIMES))

    @torch.no_grad()
    def generate(captions: list[str], seconds: int, seed: int) -> GeneratedClips:
        generator = torch.Generator().manual_seed(seed)
        denoiser = GuidedDenoiser(network, network.encode_text(captions), causal=False)
        latents = sample_few_step(denoiser, latent_noise(codec, seconds, len(captions), generator=generator),
                                  times, generator)
        return decode_latents(codec, latents, captions)

    return generate


def teacher_clips(path: str, steps: int | None) -> tuple[Generate, str]:
    """Whole-clip Euler generation of the teacher with its recorded CFG, and a description of that sampler."""
    network, codec, config = load_model(path)
    described = (f"Euler {steps or method_arg(config, 'sample_steps', 32)} steps, CFG video "
                 f"{method_arg(config, 'video_cfg', 1.0)} / audio {method_arg(config, 'audio_cfg', 1.0)}")
    return (lambda captions, seconds, seed: generate_teacher_clips(network, codec, config, captions, seconds, seed,
                                                                   steps)), described


def streamed_clips(path: str) -> Generate:
    """Block-by-block generation of a causal student with its KV cache (the streaming engine)."""
    network, codec, config = load_model(path)
    return lambda captions, seconds, seed: generate_streaming_clips(network, codec, config, captions, seconds, seed)


def latency(generate: Generate, seconds: int, repeats: int = 3) -> float:
    """Median wall seconds to generate and decode one clip (batch 1)."""
    values = []
    for repeat in range(repeats):
        start = time.perf_counter()
        generate(["a red circle bounces; the circle rings"], seconds, repeat)
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def first_block_seconds(path: str, seconds: int) -> float:
    """Time to the first decoded block of a stream (batch 1)."""
    network, codec, config = load_model(path)
    engine = StreamingGenerator(network, codec, settings_from_config(config))
    return next(iter(engine.stream("a red circle bounces; the circle rings", seconds, 0))).ready_seconds


def evaluate(suite: MetricSuite, generate: Generate, captions: list[str], seconds: int, fps: int,
             sample_rate: int, batch_size: int = 8) -> dict[str, float]:
    """Metric values of the clips ``generate`` makes for ``captions``."""
    suite.reset()
    for start in range(0, len(captions), batch_size):
        clips = generate(captions[start:start + batch_size], seconds, start)
        suite.update(clips.video.permute(0, 1, 4, 2, 3), clips.audio[:, None], fps=fps, sample_rate=sample_rate)
    return suite.compute()


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Logged scalars of a TensorBoard run; consecutive repeats are dropped (Lightning re-logs the last value
    of a metric that was not logged in a step, e.g. the generator's on critic-only batches)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["scalars"]:
        values = [e.value for e in events.Scalars(tag)]
        out[tag] = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1] or not math.isfinite(v)]
    return out


def tenths(series: list[float]) -> tuple[float, float]:
    """Means of the first and the last tenth of a curve (at least one value each; NaN when empty)."""
    if not series:
        return float("nan"), float("nan")
    width = max(1, len(series) // 10)
    return statistics.fmean(series[:width]), statistics.fmean(series[-width:])


DIVERGENCE_GROWTH = 10.0
"""A run counts as diverged when it logged a non-finite value or its generator gradient norm's last tenth is
this many times its first tenth."""


def span(series: list[float]) -> str:
    """``"first → last"`` tenth means of a curve, ``"-"`` when it was not logged (e.g. sinks of a sink-less run)."""
    return "{:.3g} → {:.3g}".format(*tenths(series)) if series else "-"


def training_health(run_dir: Path) -> dict[str, float | str]:
    """Summary of a stage's curves: loss at the start and end, gradient norm (generator, sinks, audio) at the
    start, end and peak, critic loss at the end, non-finite values and a divergence verdict."""
    values = scalars(run_dir)
    loss = values.get("train/loss", values.get("train/loss_dmd", []))
    grad = values.get("train/grad_norm", [])
    grad_start, grad_end = tenths(grad)
    nonfinite = sum(1 for series in values.values() for v in series if not math.isfinite(v))
    nonfinite += int(max(values.get("train/skipped_nonfinite", [0.0])))  # steps dropped by on_nonfinite: skip
    diverged = nonfinite > 0 or grad_end > DIVERGENCE_GROWTH * grad_start
    critic = values.get("train/loss_critic", [])
    return {"loss": span(loss), "critic_loss_end": tenths(critic)[1] if critic else "-",
            "grad_norm": span(grad), "grad_norm_max": max(grad, default=float("nan")),
            "sinks_grad_norm": span(values.get("train/grad_norm/sinks", [])),
            "audio_grad_norm": span(values.get("train/grad_norm/audio", [])),
            "nonfinite": nonfinite, "diverged": "yes" if diverged else "no"}


def quality_table(run: dict, clips: int, seconds: int, teacher_steps: int | None) -> Table:
    """Table 1: every model's metrics and generation time."""
    clip = ClipSpec(seconds=seconds)
    batches, captions = reference_batches(clip, clips)
    suite = MetricSuite(["video_stats", "audio_stats", "sync"])
    suite.prepare_real_stats(batches, fps=clip.fps, sample_rate=clip.sample_rate,
                             cache_dir=Path(run["dir"]) / "metric_cache",
                             description=f"synthetic seed {EVAL_SEED}, {clips} clips of {seconds} s, {SCENE}")
    table = Table(f"Teacher vs distilled students ({clips} synthetic prompts, {seconds}-s clips)",
                  ["model", "sampler", "FD video stats", "FD audio stats", "AV-Align", "AV offset (ms)",
                   "event F1 (audio-visual)", "s per clip", "speed-up", "first block (s)"])
    checkpoints = run["checkpoints"]
    teacher, described = teacher_clips(checkpoints["teacher"], teacher_steps)
    models: list[tuple[str, str, Generate, str | None]] = [
        ("teacher", described, teacher, None),
        ("stage1", "few-step, bidirectional, whole clip", few_step_clips(checkpoints["stage1"]), None)]
    for name in (n for n in checkpoints if n.startswith(("stage2", "stage3"))):
        models.append((name, "few-step, streamed with KV cache", streamed_clips(checkpoints[name]),
                       checkpoints[name]))
    base = None
    for name, sampler, generate, causal in models:
        values = evaluate(suite, generate, captions, seconds, clip.fps, clip.sample_rate)
        seconds_per_clip = latency(generate, seconds)
        base = base or seconds_per_clip
        table.add(name, sampler, values.get("fd_video_stats", float("nan")),
                  values.get("fd_audio_stats", float("nan")), values.get("av_align", float("nan")),
                  values.get("av_offset_ms", float("nan")), values.get("event_f1_audio_visual", float("nan")),
                  seconds_per_clip, base / seconds_per_clip,
                  first_block_seconds(causal, seconds) if causal else "-")
    table.notes = ("FD: Fréchet distance of the weight-free statistics extractors (not FVD/FAD). Times: one clip, "
                   "batch 1, generation + decoding, median of 3, on this machine with the run's torch threads.")
    return table


def health_table(run: dict) -> Table:
    """Table 2: training curves of every student run (main chain and ablations)."""
    table = Table("Training health of the causal students (TensorBoard curves of each run)",
                  ["run", "train wall (s)", "loss (first → last tenth)", "critic loss (end)",
                   "grad norm (first → last tenth)", "grad norm max", "sinks grad norm", "audio grad norm",
                   "non-finite values", "diverged"])
    for name, path in run["checkpoints"].items():
        if name.startswith(("stage2", "stage3")):
            health = training_health(Path(path).parents[1])
            table.add(name, run.get("wall_seconds", {}).get(name, float("nan")), *health.values())
    table.notes = ("Stage II rows: ODE-regression loss and the student's gradient norms; Stage III rows: DMD "
                   "surrogate loss, generator gradient norms (raw, before clipping; logged on generator steps) and "
                   "critic flow loss. 'first → last tenth': means over the first and last 10 % of the logged "
                   f"values. Diverged: a non-finite value, or the last tenth's gradient norm above "
                   f"{DIVERGENCE_GROWTH:g}× the first tenth's.")
    return table


def results(run: Path, clips: int = 16, seconds: int | None = None, teacher_steps: int | None = None,
            threads: int | None = 1) -> Report:
    """Measure every model of a pipeline run and the students' training health.

    Args:
        run: the pipeline's output folder (holds ``pipeline.json``).
        clips: prompts / reference clips for the metrics.
        seconds: clip length (default: the training length of the run).
        teacher_steps: Euler steps of the teacher (default: its recorded setting).
        threads: torch CPU threads (``None``: torch's default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    summary = json.loads((Path(run) / "pipeline.json").read_text())
    summary["dir"] = str(run)
    seconds = seconds or summary["settings"]["seconds"]
    report = Report("omniforcing_results", [quality_table(summary, clips, seconds, teacher_steps),
                                            health_table(summary)])
    report.summary = {"run": str(run), "settings": summary["settings"], "stream": summary.get("stream")}
    (Path(run) / "results.md").write_text(report.to_markdown())
    report.save_json(Path(run) / "results.json")
    return report


def main() -> None:
    """Command line: ``python -m omniforcing.pipelines.omniforcing_results --run DIR [--clips N]``."""
    from jsonargparse import CLI

    print(CLI(results, as_positional=False).to_markdown())


if __name__ == "__main__":
    main()
