"""Training benchmark: step time and peak memory of every method at one model size, the bidirectional teacher's
training throughput (samples/s, latent tokens/s) per model preset, and the data loader's rate against what a
training step consumes.

Each method is built from its own recipe exactly as ``omniforcing fit`` builds it (``recipes/base.yaml`` +
synthetic data + the method file + ``recipes/latents/patch.yaml`` + the model preset), with logging,
checkpointing and callbacks switched off, and trained for a few steps by a Lightning ``Trainer``. A
method whose module or recipe is not in this checkout gets a "not available" row. Teacher and critic
checkpoints the distillation stages load are a randomly initialised teacher of the same size, exported
to a temporary folder (timings do not depend on the weights); Stage II reads ODE pairs that this teacher
writes with ``omniforcing data ode-pairs`` (8 Euler steps on the bench's device; not timed). The
per-preset throughput table builds the joint teacher the same way but with the default learned latents
(``recipes/latents/learned.yaml``, codec weights shipped in ``checkpoints/reference/codec``, read relative to
the working directory: run from the repository root), so its tokens are those ``omniforcing fit`` trains on;
tokens are counted as the ``Throughput`` callback counts them (``AVLitModule.tokens_in_last_batch``: video +
audio latent positions).

Memory on CPU is the process's resident set size after ``gc.collect()`` and glibc ``malloc_trim`` (so freed
heap pages do not count): "held" is the size after the warm-up step over the size before the module was
built (weights, the teacher and critic a stage holds, gradients, optimiser state); "step peak" is the peak
resident size during the measured steps (``VmHWM``, reset through ``/proc/self/clear_refs`` after the
warm-up) over the held size (activations and temporaries of a step). On CUDA the same two figures come from
``torch.cuda.memory_allocated`` and ``max_memory_allocated``. Step times on CUDA come from CUDA events
(untested here: this machine has no GPU).
This module uses Lightning because it benchmarks the Lightning training modules.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from omniforcing.bench.report import Report, Table, error_line, release_device_memory
from omniforcing.bench.timing import DeviceTimer, synchronize
from omniforcing.inference.export import NETWORK_NAME, save_exported
from omniforcing.models.presets import PRESETS

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class Method:
    """One training method: its row name, JSON key, recipe files and the overrides that detach it from earlier
    runs."""

    name: str
    key: str
    recipes: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    data: str = "data/synthetic.yaml"


METHODS = (
    Method("teacher: flow matching (bidirectional)", "teacher", ("teacher/joint.yaml",)),
    Method("OmniForcing I: DMD (bidirectional, few-step)", "dmd", ("omniforcing/stage1_dmd.yaml",),
           ("--model.init_args.teacher_from={teacher}", "--model.init_args.init_from={teacher_weights}")),
    Method("OmniForcing II: ODE regression (causal)", "ode_regression", ("omniforcing/stage2_ode.yaml",),
           ("--model.init_args.init_from=null", "--data.init_args.train_shards={ode_pairs}",
            "--data.init_args.val_shards=null"), data="omniforcing/data/ode_pairs.yaml"),
    Method("OmniForcing III: Self-Forcing DMD (causal rollout)", "self_forcing",
           ("omniforcing/stage3_self_forcing.yaml",),
           ("--model.init_args.teacher_from={teacher}", "--model.init_args.init_from=null")),
    Method("Mutual Forcing (causal, dual mode)", "mutual_forcing", ("mutual_forcing/joint.yaml",),
           ("--model.init_args.init_video_from=null", "--model.init_args.init_audio_from=null")),
)


@dataclass
class StepTimer(L.Callback):
    """Records the time, clips and latent tokens of every training batch after ``warmup`` batches (CUDA events
    on GPU) and the peak memory. The module must be an ``AVLitModule`` (it counts ``tokens_in_last_batch``)."""

    warmup: int
    seconds: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    baseline_bytes: int = 0
    peak_bytes: int = 0
    _timer: DeviceTimer | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.baseline_bytes = reset_peak_memory(pl_module.device)
        synchronize(pl_module.device)  # work queued before the step is not the step's
        self._timer = DeviceTimer(pl_module.device).start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        elapsed_ms = self._timer.stop()
        if batch_idx >= self.warmup:
            self.seconds.append(elapsed_ms / 1e3)
            self.samples.append(len(batch))
            self.tokens.append(pl_module.tokens_in_last_batch)
        self.peak_bytes = peak_memory(pl_module.device)


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the resident
    size reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident size then also holds freed pages
        log.info("malloc_trim unavailable; memory figures include freed heap pages")


def current_memory(device: torch.device) -> int:
    """Bytes in use now: allocated CUDA memory, or the process's resident size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_kib("VmRSS") * 1024


def reset_peak_memory(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the current memory in bytes (see the module docstring)."""
    release_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux)
    return current_memory(device)


def peak_memory(device: torch.device) -> int:
    """Peak memory in bytes since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


@dataclass(frozen=True)
class TrainingBenchConfig:
    """Sizes of one run (``latents``: the latent-space recipe under ``recipes/``)."""

    preset: str
    clip_seconds: int
    batch_size: int
    warmup: int
    steps: int
    latents: str = "latents/patch.yaml"
    compile: bool = False

    @classmethod
    def make(cls, quick: bool) -> TrainingBenchConfig:
        # 6 measured steps cover one generator update and five critic updates of the DMD stages
        return cls("tiny", 1, 2, 1, 2) if quick else cls("small", 2, 2, 1, 6)

    def compiled(self) -> TrainingBenchConfig:
        """The same run with the backbones compiled (``CompileBackbones``) and enough untimed steps that each
        kind of step has compiled before timing starts."""
        return replace(self, compile=True, warmup=max(self.warmup, COMPILED_WARMUP))

    @property
    def label(self) -> str:
        """How the backbones ran, for table titles."""
        return "compiled" if self.compile else "eager"


COMPILED_WARMUP = 6
"""Untimed steps of a compiled run: the DMD stages' 5:1 schedule runs one generator and five critic steps in
six batches, so every kind of step (and its graphs) has compiled before the measured ones."""


def cli_args(method: Method, config: TrainingBenchConfig, paths: dict[str, str], root: Path) -> list[str]:
    """LightningCLI arguments that build ``method`` from its recipes at the bench's size."""
    files = ["base.yaml", method.data, *method.recipes, config.latents, f"model/{config.preset}.yaml"]
    args = [a for f in files for a in ("-c", str(RECIPES / f))]
    args += [o.format(**paths) for o in method.overrides]
    args += [f"--data.init_args.clip.seconds={config.clip_seconds}", f"--data.init_args.batch_size={config.batch_size}",
             "--data.init_args.num_workers=0", "--trainer.logger=false", "--trainer.callbacks=[]",
             "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0", "--trainer.max_steps=-1",
             "--trainer.max_epochs=1", f"--trainer.limit_train_batches={config.warmup + config.steps}",
             f"--trainer.default_root_dir={root}"]
    if config.compile:
        args.append("--trainer.callbacks+=omniforcing.callbacks.CompileBackbones")
    if method.data == "data/synthetic.yaml":
        args.append(f"--data.init_args.train_clips={config.batch_size * (config.warmup + config.steps + 1)}")
    return args


def build(method: Method, config: TrainingBenchConfig, paths: dict[str, str], root: Path):
    """``(module, datamodule, trainer)`` from the method's recipes (nothing runs)."""
    from omniforcing.training.cli import OmniCLI
    from omniforcing.training.base import AVLitModule

    with warnings.catch_warnings():  # it warns that sys.argv (the bench's own) is not what it parses
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = OmniCLI(AVLitModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=cli_args(method, config, paths, root), run=False, save_config_callback=None)
    return cli.model, cli.datamodule, cli.trainer, cli.config


def export_teacher(config: TrainingBenchConfig, root: Path) -> Path:
    """A randomly initialised teacher of the bench's size, exported so the distillation stages can load it."""
    model, _, _, parsed = build(METHODS[0], config, {}, root)
    trees = parsed["model"]["init_args"]
    tree = {"network": trees["network"].as_dict(), "codec": trees["codec"].as_dict(),
            "method_args": model.generation_settings()}  # what `omniforcing export` records for this method
    return save_exported(root / "teacher", model.network, model.codec, tree)


def bench_device() -> torch.device:
    """Where the training suite runs: the GPU when there is one (Lightning's ``accelerator: auto`` picks the
    same), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def write_ode_pairs(teacher: Path, config: TrainingBenchConfig, root: Path, device: torch.device) -> Path:
    """ODE-pair shards for Stage II from ``teacher`` on ``device`` (enough pairs for the bench's steps)."""
    from omniforcing.commands.ode_pairs import ode_pairs

    out = root / "ode_pairs"
    with contextlib.redirect_stdout(io.StringIO()):  # the command reports progress; the bench prints tables
        ode_pairs(teacher=str(teacher), out=out, count=config.batch_size * (config.warmup + config.steps + 1),
                  seconds=config.clip_seconds, steps=8, batch_size=config.batch_size, device=device.type)
    return out


@dataclass
class MethodTiming:
    """Measured training steps of one method.

    Args:
        seconds: wall time of each measured step.
        resident_bytes: memory held after the warm-up step, over the memory before the module was built
            (weights, teacher and critic, gradients, optimiser state).
        step_peak_bytes: peak during the measured steps over the memory held after warm-up (activations and
            temporaries of one step).
        parameters: parameters of the trained network.
        samples: clips trained on in the measured steps.
        tokens: latent tokens (video + audio positions) the backbone processed in the measured steps.
    """

    seconds: list[float]
    resident_bytes: int
    step_peak_bytes: int
    parameters: int
    samples: int
    tokens: int


def time_method(method: Method, config: TrainingBenchConfig, paths: dict[str, str], root: Path) -> MethodTiming:
    """Train ``warmup + steps`` batches (one epoch limited to them: the DMD stages step two optimisers per
    batch, so ``max_steps`` would count differently) and time the last ``steps``."""
    device = bench_device()
    release_memory()
    before = current_memory(device)
    module, datamodule, trainer, _ = build(method, config, paths, root / "runs")
    timer = StepTimer(config.warmup)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    if len(timer.seconds) != config.steps:
        raise RuntimeError(f"{method.name}: measured {len(timer.seconds)} steps, expected {config.steps}")
    parameters = sum(p.numel() for p in module.network.parameters())
    return MethodTiming(timer.seconds, timer.baseline_bytes - before,
                        max(0, timer.peak_bytes - timer.baseline_bytes), parameters, sum(timer.samples),
                        sum(timer.tokens))


def available(method: Method) -> str | None:
    """``None`` if the method can be built here, else why not (its recipe or module is missing)."""
    missing = [f for f in (method.data, *method.recipes) if not (RECIPES / f).is_file()]
    return f"recipe {', '.join(missing)} not in this checkout" if missing else None


def failure_reason(error: Exception) -> str:
    """One line saying why a method could not be built or run: the first nested error of a jsonargparse
    validation message (its first line only says that no subtype validated), else the error's first line."""
    lines = f"{type(error).__name__}: {error}".splitlines()
    nested = [line.strip()[2:] for line in lines if line.strip().startswith("- ")]
    return nested[0] if nested else lines[0]


def methods_table(config: TrainingBenchConfig, root: Path) -> tuple[Table, dict[str, float]]:
    """(d): step time and memory per method at one size."""
    table = Table(f"Training step time and memory per method ({config.preset} preset, batch {config.batch_size}, "
                  f"{config.clip_seconds}-s clips, {config.label})",
                  ["method", "network parameters", "mean step (s)", "max step (s)", "clips/s",
                   "held after warm-up (MiB)", "step peak above that (MiB)"])
    teacher = export_teacher(config, root)
    paths = {"teacher": str(teacher), "teacher_weights": str(teacher / NETWORK_NAME)}
    summary: dict[str, float] = {}
    for method in METHODS:
        reason = available(method)
        try:
            if reason is None and "{ode_pairs}" in " ".join(method.overrides):
                paths["ode_pairs"] = str(write_ode_pairs(teacher, config, root, bench_device()))
            timing = None if reason else time_method(method, config, paths, root)
        except (ImportError, ValueError, FileNotFoundError) as error:
            timing, reason = None, failure_reason(error)
        except SIGTERMException:  # Lightning's SIGTERM (a SystemExit): the run is being stopped, not a bad recipe
            raise
        except SystemExit:  # LightningCLI exits when a recipe does not parse (its message is on stderr)
            timing, reason = None, "its recipe does not parse in this checkout"
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: this row fails, the other methods run
            log.exception("%s failed", method.name)
            release_device_memory()
            timing, reason = None, f"failed: {error_line(error)}"
        if timing is None:
            log.warning("%s not benchmarked: %s", method.name, reason)
            table.add(method.name, "not available", reason, "", "", "", "")
            continue
        mean = statistics.mean(timing.seconds)
        table.add(method.name, timing.parameters, mean, max(timing.seconds), config.batch_size / mean,
                  timing.resident_bytes / 2**20, timing.step_peak_bytes / 2**20)
        summary[f"step_seconds_{method.key}"] = mean
        summary[f"held_mib_{method.key}"] = timing.resident_bytes / 2**20
        summary[f"step_peak_mib_{method.key}"] = timing.step_peak_bytes / 2**20
    table.notes = (f"{config.steps} measured steps after {config.warmup} warm-up step(s), each method built from its "
                   "recipe with the patch latents (recipes/latents/patch.yaml). The DMD stages alternate critic and "
                   "generator updates (5:1), so their mean covers both and max is the slower kind. Memory (CPU: "
                   "resident set size after gc and malloc_trim): held after warm-up = over the size before the "
                   "module was built (weights incl. the teacher and critic a stage holds, gradients, optimiser "
                   "state); step peak = peak resident size during the measured steps (VmHWM, reset after "
                   "warm-up) over the held size (activations, temporaries).")
    return table, summary


FULL_RUN_STEPS = {"tiny": 6, "small": 6, "base": 3, "large": 2}
"""Measured steps per preset in the full run: fewer for the big presets, whose CPU steps take seconds to tens
of seconds (the model is never shrunk to save time)."""


def preset_configs(config: TrainingBenchConfig, quick: bool) -> list[TrainingBenchConfig]:
    """One teacher run per preset at the bench's batch and clip with the learned latents (``tiny`` only, at the
    quick step count, when ``quick``)."""
    if quick:
        return [replace(config, preset="tiny", latents="latents/learned.yaml")]
    return [replace(config, preset=name, latents="latents/learned.yaml", steps=FULL_RUN_STEPS[name])
            for name in PRESETS]


def presets_table(config: TrainingBenchConfig, quick: bool, root: Path) -> tuple[Table, dict[str, float]]:
    """Training throughput of the bidirectional joint teacher per model preset (issue 5, "Measure")."""
    table = Table(f"Teacher training throughput per model preset (batch {config.batch_size}, "
                  f"{config.clip_seconds}-s clips, learned latents, {config.label})",
                  ["preset", "parameters", "measured steps", "mean step (s)", "samples/s", "tokens/sample",
                   "tokens/s", "held after warm-up (MiB)", "step peak above that (MiB)"])
    summary: dict[str, float] = {}
    for run in preset_configs(config, quick):
        try:
            timing = time_method(METHODS[0], run, {}, root / run.preset)
        except (ImportError, ValueError, FileNotFoundError) as error:  # e.g. codec weights not found from here
            reason = failure_reason(error)
            log.warning("teacher at preset %s not benchmarked: %s", run.preset, reason)
            table.add(run.preset, "not available", reason, "", "", "", "", "", "")
            continue
        seconds = sum(timing.seconds)
        table.add(run.preset, timing.parameters, len(timing.seconds), statistics.mean(timing.seconds),
                  timing.samples / seconds, timing.tokens // timing.samples, timing.tokens / seconds,
                  timing.resident_bytes / 2**20, timing.step_peak_bytes / 2**20)
        summary[f"teacher_samples_per_s_{run.preset}"] = timing.samples / seconds
        summary[f"teacher_tokens_per_s_{run.preset}"] = timing.tokens / seconds
        summary[f"teacher_step_seconds_{run.preset}"] = statistics.mean(timing.seconds)
        summary[f"teacher_held_mib_{run.preset}"] = timing.resident_bytes / 2**20
    table.notes = (f"The joint teacher built from recipes/base.yaml + data/synthetic.yaml + teacher/joint.yaml + "
                   f"latents/learned.yaml + model/<preset>.yaml (AdamW, fp32), trained on synthetic clips; "
                   f"{config.warmup} warm-up step(s), then the measured steps. A step includes encoding the raw "
                   "clips with the frozen learned codec. samples/s and tokens/s = clips and latent tokens of the "
                   "measured steps over their total time; tokens/sample = video + audio latent positions of one "
                   "clip, counted as the Throughput callback counts them. Memory as in the per-method table.")
    return table, summary


def loader_rate(datamodule: L.LightningDataModule, batches: int) -> float:
    """Clips per second the training loader delivers, after its first batch."""
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    next(loader)
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        clips += len(next(loader))
    return clips / (time.perf_counter() - start)


def data_table(config: TrainingBenchConfig, teacher_step: float | None) -> tuple[Table, dict[str, float]]:
    """(e): clips/s the synthetic loader delivers vs clips/s a teacher step consumes at this size."""
    from omniforcing.data.datamodule import SyntheticDataModule
    from omniforcing.types import ClipSpec

    table = Table("Data loader rate vs training consumption", ["what", "clips/s", "headroom"])
    consumed = None if teacher_step is None else config.batch_size / teacher_step
    summary: dict[str, float] = {}
    batches = 4 if config.steps < 6 else 16
    for workers in (0, 1):
        module = SyntheticDataModule(clip=ClipSpec(seconds=config.clip_seconds), train_clips=8 * (batches + 2),
                                     batch_size=8, num_workers=workers)
        rate = loader_rate(module, batches)
        table.add(f"SyntheticDataModule, {workers} worker(s)", rate, "" if consumed is None else rate / consumed)
        summary[f"synthetic_loader_clips_per_s_{workers}_workers"] = rate
    if consumed is not None:
        table.add(f"teacher training step consumes ({config.preset}, batch {config.batch_size})", consumed, 1.0)
        summary["teacher_clips_per_s"] = consumed
    table.notes = (f"{config.clip_seconds}-s synthetic clips made on the fly, batch 8, rate after the first batch. "
                   "headroom = loader rate / consumption (> 1: the loader keeps up; the loader's workers compete "
                   "with training for the same cores, so the in-process (0 worker) rate is the safe bound). "
                   "Shard decoding rates: the data suite.")
    return table, summary


def run_training_bench(quick: bool = False, threads: int | None = 1, preset: str | None = None,
                       compile: bool | None = None, on_table: Callable[[Report], None] | None = None) -> Report:
    """Run the training suite (see the module docstring); returns a :class:`Report`.

    Args:
        quick: tiny preset, 1-s clips, 2 measured steps (a smoke run); the per-preset table then has only
            ``tiny``.
        threads: torch CPU threads (``None`` keeps the current setting).
        preset: model preset of the per-method table (default ``small``, ``tiny`` when ``quick``); the
            per-preset table measures every preset regardless.
        compile: train with every backbone compiled (``omniforcing.callbacks.CompileBackbones``, inductor), after
            :data:`COMPILED_WARMUP` untimed steps; default (``None``/False) eager.
        on_table: called with the report after every table (see :meth:`Report.measure`); a table that raises
            is recorded with its error and the next one runs.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    config = TrainingBenchConfig.make(quick)
    if preset is not None:
        config = replace(config, preset=preset)
    if compile:
        config = config.compiled()
    report = Report("training", on_table=on_table)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report.measure("Training step time and memory per method", lambda: methods_table(config, Path(tmp)))
            report.measure("Teacher training throughput per model preset",
                           lambda: presets_table(config, quick, Path(tmp)))
    finally:
        quiet.setLevel(level)
    report.measure("Data loader rate vs training consumption",
                   lambda: data_table(config, report.summary.get("step_seconds_teacher")))
    return report
