"""``omniforcing evaluate``: metrics of generated clips against real ones, once or for every new checkpoint of a run.

Two modes (docs/metrics.md, "Continuous evaluation"):

* ``--real SHARDS --fake DIR_OR_SHARDS``: a folder of generated media files (or shards) against media shards;
  prints a table and writes JSON;
* ``--watch RUN_DIR``: evaluates each new checkpoint of a run (or of every run under a folder) as it appears
  and writes the values into the run's TensorBoard (``RUN_DIR/eval``, tags ``eval/<metric>`` at the
  checkpoint's global step), remembering what it evaluated in ``RUN_DIR/eval/evaluated.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from omniforcing.bench.report import Table
from omniforcing.callbacks.evaluation import datamodule_description, log_generated_media
from omniforcing.codecs.base import AVCodec
from omniforcing.commands.generate import resolve_device
from omniforcing.data.pipeline import SkipCounter
from omniforcing.errors import InvalidInputError, MissingInputError, UserError
from omniforcing.inference.clips import GeneratedClips
from omniforcing.inference.export import instantiate, load_model
from omniforcing.inference.generation import generate_teacher_clips
from omniforcing.inference.streaming import generate_streaming_clips
from omniforcing.metrics import MetricSuite
from omniforcing.metrics.suite import check_metric_specs
from omniforcing.metrics.checkpoint_watch import (
    EVAL_DIR,
    CheckpointVersion,
    EvaluationState,
    find_run_dirs,
    read_global_step,
    stable_checkpoints,
)
from omniforcing.metrics.clip_sources import (
    conform_batch,
    describe_source,
    event_times_of,
    first_captions,
    generated_media,
    iter_clip_batches,
    probe_spec,
    real_batches_with_media,
)
from omniforcing.metrics.windows import evaluate_per_window, format_window_table
from omniforcing.types import AVBatch, ClipSpec, frame_label

log = logging.getLogger(__name__)


def metric_names(extractors: list[str] | str) -> list[str]:
    """``"video_stats,sync"`` or ``["video_stats", "sync"]`` -> a list of suite metric names."""
    names = extractors.split(",") if isinstance(extractors, str) else extractors
    return [name.strip() for name in names if name.strip()]


def evaluate(
    *,
    real: str | None = None,
    fake: str | None = None,
    watch: Path | None = None,
    extractors: list[str] | str = "video_stats,audio_stats,sync",
    out: Path | None = None,
    seconds: int | None = None,
    max_clips: int | None = None,
    batch_size: int = 8,
    i3d_path: str | None = None,
    vggish_path: str | None = None,
    cache_dir: Path | None = None,
    interval: float = 60.0,
    settle: float = 2.0,
    prompts: list[str] | None = None,
    clips: int = 8,
    seed: int = 0,
    steps: int | None = None,
    once: bool = False,
    device: str = "auto",
    per_window: int | None = None,
) -> None:
    """Evaluate generated clips: a folder against real shards, or every new checkpoint of a run.

    Args:
        real: media shards of the reference set (a folder of ``.tar``, a pattern or a list). With ``--watch``
            it replaces the run's validation data as the reference.
        fake: generated clips: a folder of media files (mp4 ...) or shards.
        watch: a run folder (with ``checkpoints/``) or a folder of runs: evaluate each new checkpoint.
        extractors: metrics, comma-separated or a list: ``video_stats``, ``audio_stats``, ``sync``, ``i3d``
            (FVD), ``vggish`` (FAD), or the class path of any ``FeatureExtractor`` (docs/extending.md).
        out: JSON file for ``--real/--fake`` (default: print only).
        seconds: clip length after the lead frame (default: the shorter of the real and fake clips, or the
            run's clip length).
        max_clips: at most this many real and this many fake clips (N; compare values only at equal N).
        batch_size: clips per batch.
        i3d_path: ``i3d_torchscript.pt`` (default ``$OMNIFORCING_I3D_PATH``).
        vggish_path: ``vggish-10086976.pth`` (default ``$OMNIFORCING_VGGISH_PATH``).
        cache_dir: cache of reference statistics (``--watch`` default: ``WATCH/metric_cache``; ``--real/--fake``
            default: none).
        interval: ``--watch``: seconds between scans.
        settle: ``--watch``: a checkpoint must keep its size and time for this many seconds before it is read.
        prompts: ``--watch``: captions to generate (default: the first ``clips`` reference captions).
        clips: ``--watch``: clips generated per checkpoint (K).
        seed: ``--watch``: base seed (the batch starting at clip ``i`` uses ``seed + i``, as the callback).
        steps: ``--watch``: sampler steps (default: the model's recorded setting).
        once: ``--watch``: process the checkpoints present now and exit.
        device: ``auto``, ``cpu`` or ``cuda``.
        per_window: ``--real/--fake``: metrics per window of this many seconds along long generated streams, one
            row per window in the JSON and curves in TensorBoard at ``OUT.tensorboard`` (docs/metrics.md).
    """
    names = metric_names(extractors)
    try:
        check_metric_specs(names)
    except InvalidInputError as error:
        raise InvalidInputError(f"--extractors: {error}") from error
    settings = dict(i3d_path=i3d_path, vggish_path=vggish_path)
    if watch is not None:
        if fake is not None:
            raise UserError("--watch generates its own clips; do not pass --fake")
        if not Path(watch).is_dir():
            raise MissingInputError(f"--watch {watch}: no such run folder")
        watcher = RunWatcher(names, settings, reference=real, cache_dir=cache_dir or Path(watch) / "metric_cache",
                             seconds=seconds, max_clips=max_clips or 256, batch_size=batch_size, prompts=prompts,
                             clips=clips, seed=seed, steps=steps, device=resolve_device(device))
        watcher.watch(Path(watch), interval=interval, settle=settle, once=once)
        return
    if real is None or fake is None:
        raise UserError("give --real SHARDS and --fake DIR_OR_SHARDS, or --watch RUN_DIR")
    if per_window is not None:
        result = evaluate_per_window(real, fake, names, settings, window_seconds=per_window, max_clips=max_clips,
                                     batch_size=batch_size, cache_dir=cache_dir, device=resolve_device(device),
                                     tensorboard_dir=None if out is None else out.with_suffix(".tensorboard"))
        print(format_window_table(result))
    else:
        result = compare_sets(real, fake, names, settings, seconds=seconds, max_clips=max_clips,
                              batch_size=batch_size, cache_dir=cache_dir, device=resolve_device(device))
        print(format_result(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


# ---------------------------------------------------------------------------- --real / --fake
class RealPass:
    """The real clips, read on demand: counts them and feeds the real clips' own sync metrics on the way.

    The Fréchet statistics may come from the cache, in which case :meth:`MetricSuite.prepare_real_stats` does
    not iterate; :attr:`read` tells whether a pass happened.
    """

    def __init__(self, source: str, spec: ClipSpec, batch_size: int, limit: int | None,
                 sync: MetricSuite | None) -> None:
        self.source, self.spec, self.batch_size, self.limit, self.sync = source, spec, batch_size, limit, sync
        self.clips, self.read, self.skipped = 0, False, SkipCounter()

    def __iter__(self) -> Iterator[AVBatch]:
        self.read, self.clips = True, 0
        for batch in iter_clip_batches(self.source, self.spec, self.batch_size, limit=self.limit,
                                       counter=self.skipped):
            self.clips += len(batch)
            if self.sync is not None:
                self.sync.update(batch.video, batch.audio, fps=self.spec.fps, sample_rate=self.spec.sample_rate,
                                 event_times=event_times_of(batch))
            yield batch


def compare_sets(real: str, fake: str, names: list[str], settings: dict[str, Any], *, seconds: int | None,
                 max_clips: int | None, batch_size: int, cache_dir: Path | None,
                 device: torch.device) -> dict[str, Any]:
    """Metrics of ``fake`` against ``real``, and the sync metrics of ``real`` itself as the baseline.

    Returns:
        The JSON record (keys in docs/metrics.md, "Continuous evaluation").
    """
    spec = probe_spec(real, seconds)
    if seconds is None:
        spec = replace(spec, seconds=min(spec.seconds, probe_spec(fake).seconds))
    suite = MetricSuite(names, **settings).to(device)
    real_sync = MetricSuite(["sync"]).to(device) if "sync" in names else None
    reals = RealPass(real, spec, batch_size, max_clips, real_sync)
    if suite.frechet and cache_dir is not None:
        suite.prepare_real_stats(reals, fps=spec.fps, sample_rate=spec.sample_rate, cache_dir=cache_dir,
                                 description=describe_source(real, spec, max_clips))
    elif suite.frechet:
        for batch in reals:
            suite.update(batch.video, batch.audio, fps=spec.fps, sample_rate=spec.sample_rate, real=True)
    if real_sync is not None and not reals.read:
        for _ in reals:
            pass
    skipped_fake, n_fake = SkipCounter(), 0
    for batch in iter_clip_batches(fake, spec, batch_size, limit=max_clips, counter=skipped_fake):
        suite.update(batch.video, batch.audio, fps=spec.fps, sample_rate=spec.sample_rate,
                     event_times=event_times_of(batch))
        n_fake += len(batch)
    values = suite.compute()
    n_real = reals.clips if reals.read else int(next((v for k, v in values.items() if k.endswith("_n_real")), 0))
    return {"real": str(real), "fake": str(fake), "clip": asdict(spec), "n_real": n_real, "n_fake": n_fake,
            "metrics": values, "real_sync": {} if real_sync is None else real_sync.compute(),
            "extractors": suite.extractor_info(), "skipped_metrics": dict(suite.skipped),
            "failures": dict(suite.failures), "skipped_real": reals.skipped.summary(),
            "skipped_fake": skipped_fake.summary()}


def format_result(result: dict[str, Any]) -> str:
    """The values as a markdown table: generated (vs real) and, for sync metrics, the real clips' own values."""
    clip = ClipSpec(**result["clip"])
    table = Table(f"{result['fake']} vs {result['real']}", ["metric", "generated", "real"],
                  notes=f"N real {result['n_real']}, N fake {result['n_fake']}; clips of {clip.seconds} s + lead at "
                        f"{clip.fps} fps / {clip.sample_rate} Hz / {frame_label(clip.frame_size)} px; skipped real: "
                        f"{result['skipped_real']}, fake: {result['skipped_fake']}. Fréchet values are comparable "
                        f"only at equal N and extractor fingerprint.")
    for key, value in result["metrics"].items():
        table.add(key, value, result["real_sync"].get(key, ""))
    for key, value in result["real_sync"].items():
        if key not in result["metrics"]:
            table.add(key, "", value)
    return table.to_markdown()


# ---------------------------------------------------------------------------- --watch
def generate_for_model(network: torch.nn.Module, codec: AVCodec, config: dict[str, Any], captions: list[str],
                       seconds: int, seed: int, steps: int | None) -> GeneratedClips:
    """Generate with the model's own sampler: whole clips for bidirectional models, streaming for causal ones.

    Causal models (OmniForcing students, Mutual Forcing's few-step mode) stream through the one engine,
    :func:`omniforcing.inference.streaming.generate_streaming_clips`, with the settings they recorded.
    """
    if not network.causal:
        return generate_teacher_clips(network, codec, config, captions, seconds, seed, steps)
    return generate_streaming_clips(network, codec, config, captions, seconds, seed, steps)


class RunEvaluator:
    """Reference statistics, prompts and a TensorBoard writer for one run; evaluates its checkpoints."""

    def __init__(self, run_dir: Path, watcher: RunWatcher) -> None:
        self.run_dir, self.watcher = run_dir, watcher
        self.suite = MetricSuite(watcher.names, **watcher.settings).to(watcher.device)
        self.spec, self.captions = self._prepare_reference()

    def _data_config(self) -> dict[str, Any]:
        config_file = self.run_dir / "config.yaml"
        if not config_file.is_file():
            raise MissingInputError(f"{config_file} is missing: pass --real SHARDS as the reference set")
        data = (yaml.safe_load(config_file.read_text()) or {}).get("data")
        if not isinstance(data, dict) or "class_path" not in data:
            raise InvalidInputError(f"{config_file} has no data section: pass --real SHARDS as the reference set")
        return data

    def _prepare_reference(self) -> tuple[ClipSpec, list[str]]:
        w = self.watcher
        counter = SkipCounter()
        if w.reference is not None:
            spec = probe_spec(w.reference, w.seconds)

            def batches() -> Iterator[AVBatch]:
                return iter_clip_batches(w.reference, spec, w.batch_size, limit=w.max_clips, counter=counter)

            description = describe_source(w.reference, spec, w.max_clips)
        else:
            datamodule = instantiate(self._data_config(), L.LightningDataModule)
            spec = datamodule.clip if w.seconds is None else replace(datamodule.clip, seconds=w.seconds)

            def batches() -> Iterator[AVBatch]:
                limited = _first_clips(real_batches_with_media(datamodule.val_dataloader(), counter), w.max_clips)
                return (conform_batch(batch, spec) for batch in limited)

            description = datamodule_description(datamodule, spec, w.max_clips)
        captions = w.prompts or first_captions(batches(), w.clips)
        if self.suite.frechet:
            self.suite.prepare_real_stats(batches(), fps=spec.fps, sample_rate=spec.sample_rate,
                                          cache_dir=w.cache_dir, description=description)
        if counter.skipped:
            log.warning("reference set of %s: %s", self.run_dir, counter.summary())
        if not captions:
            raise InvalidInputError(f"no reference clips (and no --prompts) for {self.run_dir}")
        return spec, captions

    def evaluate(self, checkpoint: Path, step: int) -> dict[str, float]:
        """Generate ``clips`` clips from ``checkpoint``, compute the metrics, write them to ``RUN/eval`` at ``step``."""
        w = self.watcher
        network, codec, config = load_model(checkpoint, w.device)
        self.suite.reset()
        first: GeneratedClips | None = None
        with torch.no_grad():
            for start in range(0, w.clips, w.batch_size):
                stop = min(start + w.batch_size, w.clips)
                captions = [self.captions[i % len(self.captions)] for i in range(start, stop)]
                clips = generate_for_model(network, codec, config, captions, self.spec.seconds, w.seed + start,
                                           w.steps)
                video, audio = generated_media(clips)
                self.suite.update(video, audio, fps=clips.fps, sample_rate=clips.sample_rate)
                first = clips if first is None else first
        values = self.suite.compute()
        with SummaryWriter(log_dir=str(self.run_dir / EVAL_DIR)) as writer:
            for key, value in values.items():
                writer.add_scalar(f"eval/{key}", value, step)
            if first is not None:
                log_generated_media(writer, "eval_media", first, 1, step)
        return values


def _first_clips(batches: Iterator[AVBatch], limit: int) -> Iterator[AVBatch]:
    seen = 0
    for batch in batches:
        if seen >= limit:
            return
        seen += len(batch)
        yield batch


class RunWatcher:
    """Scans runs for new checkpoint versions and evaluates each once (state in ``RUN/eval/evaluated.json``)."""

    def __init__(self, names: list[str], settings: dict[str, Any], *, reference: str | None, cache_dir: Path,
                 seconds: int | None, max_clips: int, batch_size: int, prompts: list[str] | None, clips: int,
                 seed: int, steps: int | None, device: torch.device) -> None:
        self.names, self.settings, self.reference, self.cache_dir = names, settings, reference, cache_dir
        self.seconds, self.max_clips, self.batch_size, self.prompts = seconds, max_clips, batch_size, prompts
        self.clips, self.seed, self.steps, self.device = clips, seed, steps, device
        self.evaluators: dict[Path, RunEvaluator] = {}
        self.states: dict[Path, EvaluationState] = {}

    def watch(self, root: Path, *, interval: float, settle: float, once: bool) -> None:
        """Scan ``root`` every ``interval`` seconds (or once) and evaluate what is new."""
        while True:
            evaluated = self.scan(root, settle)
            if once:
                print(f"evaluated {evaluated} new checkpoint(s) under {root}")
                return
            time.sleep(interval)

    def scan(self, root: Path, settle: float) -> int:
        """One pass over every run under ``root``; returns the number of checkpoints evaluated."""
        runs = find_run_dirs(root)
        count = 0
        for run, versions in stable_checkpoints(runs, settle).items():
            state = self.states.setdefault(run, EvaluationState(run))
            for version in versions:
                if not state.is_done(version):
                    count += self._process(run, state, version)
        return count

    def _process(self, run: Path, state: EvaluationState, version: CheckpointVersion) -> int:
        try:
            step = read_global_step(version.path)
        except Exception as error:  # noqa: BLE001 - one unreadable file must not stop the watcher
            log.warning("cannot read %s: %s", version.path, error)
            state.record(version, -1, "failed", error=f"{type(error).__name__}: {error}")
            return 0
        same = state.evaluated_step(step)
        if same is not None:
            state.record(version, step, "duplicate", same_as=same)
            return 0
        try:
            if run not in self.evaluators:
                self.evaluators[run] = RunEvaluator(run, self)
            values = self.evaluators[run].evaluate(version.path, step)
        except Exception as error:  # noqa: BLE001 - report, remember, and go on with the other checkpoints
            log.exception("evaluating %s failed", version.path)
            state.record(version, step, "failed", error=f"{type(error).__name__}: {error}")
            return 0
        state.record(version, step, "evaluated", metrics=values)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if not k.endswith(("_n_real", "_n_fake", "_clips")))
        print(f"{version.path} (step {step}): {shown}")
        return 1
