"""Mutual Forcing results: the few-step vs multi-step modes of the same weights, and training cost per step.

``quality``: generate clips for held-out synthetic prompts with each sampler of one Mutual Forcing model
(few-step 4 and 8, streamed by the engine every causal student uses; multi-step ~50; optionally a
bidirectional teacher and a causal student such as OmniForcing's Stage III), score them with
:class:`~omniforcing.metrics.MetricSuite` (weight-free stats FDs against held-out real clips, AV-Align, event
F1, AV offset) and time the generation::

    python -m omniforcing.bench.mutual_forcing quality --checkpoint runs/.../last.ckpt --clips 32

``cost``: Mutual Forcing's training step vs OmniForcing Stage III (Self-Forcing DMD) at the same size, built
from their recipes as ``omniforcing bench --suite training`` does: step time, memory, backbone forwards with
and without autograd, and the bytes autograd saves for backward::

    python -m omniforcing.bench.mutual_forcing cost --preset tiny --seconds 2

``summarize``: the tables of ``benchmarks/mutual_forcing_seeds.sh`` (one ``quality`` run per seed and
variant) as mean ± seed spread, and the differences next to their seed noise floor::

    python -m omniforcing.bench.mutual_forcing summarize --runs runs/mutual_forcing_seeds

All print markdown tables (``omniforcing.bench.report``) and can save them as JSON.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from omniforcing.bench.report import Report, Table
from omniforcing.bench.seeds import aggregate_rows, compare_rows, read_seed_reports
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import GeneratedClips, decode_latents, latent_noise
from omniforcing.inference.dual_mode import DualModes, concat_blocks, dual_modes_from_config, stream_blocks
from omniforcing.inference.export import load_model
from omniforcing.inference.generation import modalities
from omniforcing.inference.stream_settings import settings_from_config
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.metrics import MetricSuite
from omniforcing.models.layout import BlockLayout
from omniforcing.models.protocol import AVBackbone
from omniforcing.types import AVBatch, AVLatents, ClipSpec

SCENE = SceneSettings(min_objects=1, max_objects=1, fixed_size=True, background_sound=False)  # data/synthetic.yaml
REFERENCE_FIRST, PROMPT_FIRST = 2_000_000, 3_000_000  # clip indices far from any training pool


def real_batches(first: int, count: int, clip: ClipSpec, batch_size: int, seed: int = 0) -> list[AVBatch]:
    """Synthetic clips ``first .. first + count - 1`` as batches of raw media."""
    batches = []
    for start in range(first, first + count, batch_size):
        made = [synthesize_clip(seed, i, clip, SCENE) for i in range(start, min(start + batch_size, first + count))]
        video = torch.stack([torch.from_numpy(c.video).float().div(127.5).sub(1).permute(0, 3, 1, 2) for c in made])
        audio = torch.stack([torch.from_numpy(c.audio).float()[None] for c in made])
        batches.append(AVBatch([c.metadata["caption"] for c in made], video=video, audio=audio))
    return batches


def score(suite: MetricSuite, clips: list[GeneratedClips]) -> dict[str, float]:
    """Metric values of generated clips (video ``(B, T, H, W, 3)`` uint8, audio ``(B, S)``)."""
    suite.reset()
    for c in clips:
        suite.update(c.video.permute(0, 1, 4, 2, 3), c.audio[:, None], fps=c.fps, sample_rate=c.sample_rate)
    return suite.compute()


def streaming_sampler(network, codec, config: dict, steps: int | None):
    """Few-step streaming with the engine every causal student uses, one caption at a time (batch 1).

    :class:`~omniforcing.inference.streaming.StreamingGenerator` with the settings the model recorded
    (few-step times, step size of a Mutual Forcing model, window); ``steps`` subsamples or regrids the times.
    Returns ``(generate(captions, seconds, seed) -> (clips, seconds of latent generation), NFE per block)``.
    """
    engine = StreamingGenerator(network, codec, settings_from_config(config, video_steps=steps))

    def generate(captions: list[str], seconds: int, seed: int) -> tuple[GeneratedClips, float]:
        latents, start = [], time.perf_counter()
        for index, caption in enumerate(captions):
            latents.append(engine.generate_latents(caption, seconds, seed + index))
        elapsed = time.perf_counter() - start
        joined = AVLatents(*(None if parts[0] is None else torch.cat(parts) for parts in
                             ([x.video for x in latents], [x.audio for x in latents])))
        return decode_latents(codec, joined, captions), elapsed

    return generate, engine.settings.forwards_per_block


def multi_step_sampler(network, codec, config: dict, steps: int):
    """The multi-step mode of a Mutual Forcing model (Euler with ``steps`` steps per block, CFG as recorded)."""
    modes: DualModes = dual_modes_from_config(config)
    has_video, has_audio = modalities(config)

    def generate(captions: list[str], seconds: int, seed: int) -> tuple[GeneratedClips, float]:
        num_blocks = BlockLayout.for_seconds(seconds, network.prefix).num_blocks
        start = time.perf_counter()
        blocks = list(stream_blocks(network, captions, num_blocks, modes, video=has_video, audio=has_audio,
                                    mode="multi_step", generator=torch.Generator().manual_seed(seed),
                                    multi_steps=steps))
        elapsed = time.perf_counter() - start
        return decode_latents(codec, concat_blocks(blocks), captions), elapsed

    return generate, steps * (2 if modes.guided else 1) + 1


def teacher_sampler(network, codec, config: dict, steps: int, cfg: float):
    """The bidirectional teacher's whole-clip Euler sampler with CFG ``cfg``."""
    has_video, has_audio = modalities(config)

    def generate(captions: list[str], seconds: int, seed: int) -> tuple[GeneratedClips, float]:
        noise = latent_noise(codec, seconds, len(captions), video=has_video, audio=has_audio,
                             generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        latents = generate_bidirectional(network, captions, noise, steps=steps,
                                         shift=config.get("method_args", {}).get("sample_shift", 1.0),
                                         video_scale=cfg, audio_scale=cfg)
        elapsed = time.perf_counter() - start
        return decode_latents(codec, latents, captions), elapsed

    return generate, steps * (2 if cfg != 1.0 else 1)


def quality(*, checkpoint: Path, teacher: Path | None = None, student: Path | None = None, clips: int = 32, seconds: int = 2,
            few_steps: list[int] | None = None, multi_steps: int = 48, teacher_steps: int = 48,
            teacher_cfg: list[float] | None = None, batch_size: int = 8,
            threads: int = 1, seed: int = 0, cache_dir: Path = Path("runs/metric_cache"),
            json_out: Path | None = None) -> Report:
    """Few-step vs multi-step generation of one Mutual Forcing model on held-out synthetic prompts.

    Args:
        checkpoint: the Mutual Forcing model (``.ckpt`` from ``omniforcing fit`` or an exported folder).
        teacher: optional bidirectional teacher checkpoint to add as a row.
        student: optional causal student checkpoint (e.g. OmniForcing Stage III) to add as a row, streamed
            with its recorded few-step times.
        clips: generated clips per sampler (and real reference clips).
        seconds: clip length after the lead.
        few_steps: few-step sampler step counts (default 4 and 8): the recorded times, subsampled, or a
            uniform grid from 1 for more steps than recorded.
        multi_steps: Euler steps of the multi-step sampler.
        teacher_steps: Euler steps of the teacher (whole clip at once, so the same NFE per block).
        teacher_cfg: CFG scales of the teacher rows (default: 1, as the Mutual Forcing recipes).
        batch_size: clips generated together.
        threads: torch CPU threads.
        seed: noise seed.
        cache_dir: where the real-set statistics are cached.
        json_out: also save the report as JSON here.
    """
    torch.set_num_threads(threads)
    clip = ClipSpec(seconds=seconds)
    network, codec, config = load_model(checkpoint)
    suite = MetricSuite(["video_stats", "audio_stats", "sync"])
    suite.prepare_real_stats(real_batches(REFERENCE_FIRST, clips, clip, batch_size), fps=clip.fps,
                             sample_rate=clip.sample_rate, cache_dir=cache_dir,
                             description=f"synthetic {SCENE} clips {REFERENCE_FIRST}+{clips}, {seconds} s")
    prompts = real_batches(PROMPT_FIRST, clips, clip, batch_size)
    samplers = {f"few-step {k}": streaming_sampler(network, codec, config, k) for k in few_steps or (4, 8)}
    samplers[f"multi-step {multi_steps}"] = multi_step_sampler(network, codec, config, multi_steps)
    if student is not None:
        s_network, s_codec, s_config = load_model(student)
        samplers[f"OmniForcing student {len(settings_from_config(s_config).video_times)}-step (streaming)"] = \
            streaming_sampler(s_network, s_codec, s_config, None)
    if teacher is not None:
        t_network, t_codec, t_config = load_model(teacher)
        for cfg in teacher_cfg or [1.0]:
            samplers[f"teacher {teacher_steps}, cfg {cfg:g} (bidirectional)"] = teacher_sampler(
                t_network, t_codec, t_config, teacher_steps, cfg)
    table = Table(f"Mutual Forcing samplers on held-out synthetic prompts ({clips} clips of {seconds} s + lead)",
                  ["sampler", "NFE/block", "fd_video_stats", "fd_audio_stats", "av_align", "event_f1_av",
                   "event_timing_ms", "s per generated s"])
    real = score(suite, [GeneratedClips(((b.video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                                        .permute(0, 1, 3, 4, 2), b.audio[:, 0], clip.fps, clip.sample_rate,
                                        b.captions) for b in prompts])
    _add_row(table, "real clips (held out)", "-", real, float("nan"))
    for name, (generate, nfe) in samplers.items():
        made, elapsed = [], 0.0
        for index, batch in enumerate(prompts):
            clips_out, seconds_spent = generate(batch.captions, seconds, seed + index)
            made.append(clips_out)
            elapsed += seconds_spent
        generated_seconds = sum(c.video.shape[0] * c.video.shape[1] / c.fps for c in made)
        _add_row(table, name, nfe, score(suite, made), elapsed / generated_seconds)
    table.notes = (f"model: {checkpoint} (step {config.get('global_step')}); FDs are weight-free stats features "
                   f"(not FVD/FAD), N={clips} real vs N={clips} generated; time = latent generation on "
                   f"{threads} CPU thread(s), decoding excluded; the real row is a second "
                   "held-out real set (the FD floor at this N).")
    report = Report("mutual_forcing_quality", [table])
    if json_out is not None:
        report.save_json(json_out)
    return report


def _add_row(table: Table, name: str, nfe: Any, values: dict[str, float], seconds_per_second: float) -> None:
    table.add(name, nfe, *(values.get(k, float("nan")) for k in ("fd_video_stats", "fd_audio_stats", "av_align",
                                                                 "event_f1_audio_visual", "event_timing_error_ms")),
              seconds_per_second)


class StepCostProbe(L.Callback):
    """Per training batch after ``warmup``: backbone forwards with/without autograd, bytes saved for backward.

    Every backbone (:class:`~omniforcing.models.protocol.AVBackbone`) of the module is counted (network, and a
    teacher or critic if any).
    Saved bytes count the unique storages autograd keeps for backward outside activation-checkpointed regions.

    Args:
        warmup: batches ignored at the start.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[dict[str, float]] = []
        self.forwards = {"grad": 0, "no_grad": 0}
        self.saved: dict[int, int] = {}
        self._hooks: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def count(*_: Any) -> None:
            self.forwards["grad" if torch.is_grad_enabled() else "no_grad"] += 1

        for module in pl_module.modules():
            if isinstance(module, AVBackbone):
                module.register_forward_pre_hook(count)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.saved, self.forwards = {}, {"grad": 0, "no_grad": 0}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            self.saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self._hooks.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._hooks.__exit__(None, None, None)
        if batch_idx >= self.warmup:
            self.steps.append({"saved_mib": sum(self.saved.values()) / 2**20, **self.forwards})


def cost(*, methods: list[str] | None = None, preset: str = "tiny", seconds: int = 2, batch_size: int = 2,
         steps: int = 6, warmup: int = 1, threads: int = 1, json_out: Path | None = None) -> Report:
    """Training cost per step of Mutual Forcing vs OmniForcing Stage III (Self-Forcing DMD) at the same size.

    Both are built from their recipes exactly as ``omniforcing bench --suite training`` builds them (random
    weights; a random teacher of the same size for Stage III) and measured with its step timer and memory
    figures, plus the forwards and saved activations of :class:`StepCostProbe`.

    Args:
        methods: keys of ``omniforcing.bench.training.METHODS`` to measure (default ``self_forcing`` and
            ``mutual_forcing``); the resident-memory figures are only clean for the first method of a process,
            so measure one method per run when memory matters.
        preset: model size (``recipes/model/<preset>.yaml``).
        seconds: clip length.
        batch_size: clips per step.
        steps: measured steps (6 covers one Stage III generator update and five critic updates).
        warmup: steps before measuring.
        threads: torch CPU threads.
        json_out: also save the report as JSON here.
    """
    from omniforcing.bench import training

    torch.set_num_threads(threads)
    config = training.TrainingBenchConfig(preset, seconds, batch_size, warmup, steps)
    table = Table(f"Training cost per step ({preset} preset, batch {batch_size}, {seconds}-s clips, patch latents)",
                  ["method", "mean step (s)", "max step (s)", "held after warm-up (MiB)", "step peak (MiB)",
                   "saved for backward (MiB)", "forwards with grad", "forwards without grad"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = training.export_teacher(config, root)
        paths = {"teacher": str(teacher), "teacher_weights": str(teacher / training.NETWORK_NAME)}
        for method in (m for m in training.METHODS if m.key in (methods or ("self_forcing", "mutual_forcing"))):
            reason = training.available(method)
            if reason is not None:
                table.add(method.name, "not available", reason, "", "", "", "", "")
                continue
            training.release_memory()
            before = training.current_memory(device)
            module, datamodule, trainer, _ = training.build(method, config, paths, root / "runs")
            timer, probe = training.StepTimer(warmup), StepCostProbe(warmup)
            trainer.callbacks += [timer, probe]
            trainer.fit(module, datamodule=datamodule)
            table.add(method.name, statistics.mean(timer.seconds), max(timer.seconds),
                      (timer.baseline_bytes - before) / 2**20, max(0, timer.peak_bytes - timer.baseline_bytes) / 2**20,
                      *(statistics.mean(s[k] for s in probe.steps) for k in ("saved_mib", "grad", "no_grad")))
    table.notes = (f"mean over {steps} steps after {warmup} warm-up; {threads} CPU thread(s). Memory as in "
                   "omniforcing.bench.training (CPU: resident set size; step peak = peak during the measured steps "
                   "above the memory held after warm-up). Forwards count every backbone call per step (student, "
                   "teacher, critic); Stage III alternates 5 critic steps and 1 generator step; Mutual Forcing's "
                   "history length is random per step.")
    report = Report("mutual_forcing_cost", [table])
    if json_out is not None:
        report.save_json(json_out)
    return report


VARIANTS = {"quality_history_from_clip": "", "quality_history_from_noise": "history from noise: ",
            "quality_history_from_clip_low_noise": "history from clip, s in {0.75, 0.5, 0.25}: "}
"""``quality`` reports of ``benchmarks/mutual_forcing_seeds.sh`` per seed folder, and their rows' prefixes."""
COMPARED = [("few-step 4", "history from noise: few-step 4"), ("few-step 8", "history from noise: few-step 8"),
            ("multi-step 48", "history from noise: multi-step 48"),
            ("history from clip, s in {0.75, 0.5, 0.25}: few-step 4", "few-step 4"),
            ("history from clip, s in {0.75, 0.5, 0.25}: few-step 8", "few-step 8"),
            ("history from clip, s in {0.75, 0.5, 0.25}: multi-step 48", "multi-step 48"),
            ("few-step 4", "multi-step 48"),
            ("few-step 8", "multi-step 48"), ("few-step 4", "OmniForcing student 4-step (streaming)"),
            ("multi-step 48", "teacher 48, cfg 1 (bidirectional)")]
METRICS = ["fd_video_stats", "fd_audio_stats", "av_align", "event_f1_av", "event_timing_ms"]
SHARED_ROWS = ("real clips (held out)", "OmniForcing student 4-step (streaming)", "teacher 48, cfg 1 (bidirectional)",
               "teacher 48, cfg 3 (bidirectional)")
"""Rows that do not depend on the Mutual Forcing variant: kept under their own names, from whichever report
holds them (the script measures the teacher and the student once per seed)."""


def summarize(*, runs: Path = Path("runs/mutual_forcing_seeds"), json_out: Path | None = None) -> Report:
    """The seed summary of ``benchmarks/mutual_forcing_seeds.sh``: every row's mean ± seed spread, and the
    differences docs/mutual_forcing.md reads, each next to its seed noise floor (``omniforcing.bench.seeds``).

    Args:
        runs: the script's output folder (``seed<N>/quality_*.json``).
        json_out: also save the report as JSON here.
    """
    rows = read_seed_reports(runs, VARIANTS, shared_rows=SHARED_ROWS)
    report = Report("mutual_forcing_seeds", [
        aggregate_rows(rows, f"Mutual Forcing samplers over seeds (mean ± sample std), {runs}"),
        compare_rows(rows, COMPARED, METRICS, "Differences a - b (mean over seeds) and their seed noise floor")])
    if json_out is not None:
        report.save_json(json_out)
    return report


def main() -> None:
    """``python -m omniforcing.bench.mutual_forcing quality|cost|summarize ...``: print the tables as markdown."""
    from jsonargparse import CLI

    print(CLI({"quality": quality, "cost": cost, "summarize": summarize}, as_positional=False).to_markdown())


if __name__ == "__main__":
    main()
