"""Data benchmark: decoded clips per second through the AVDataModule loader, and synthetic generation rates.

Run: ``python -c "from omniforcing.bench.data import run_data_bench; print(run_data_bench().to_markdown())"``.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from omniforcing.bench.report import Report, Table
from omniforcing.data.datamodule import AVDataModule, SyntheticDataModule
from omniforcing.data.synthetic import SceneSettings, synthesize_clip, write_synthetic_shards
from omniforcing.types import ClipSpec

STORED = ClipSpec(seconds=2)
WINDOW = ClipSpec(seconds=1)
BATCH_SIZE = 8


def _loader_rate(shards: Path, workers: int, clips: int) -> tuple[float, float]:
    """(time to first batch in s, clips/s after the first batch) over ``clips`` resampled training clips."""
    module = AVDataModule(str(shards), clip=WINDOW, batch_size=BATCH_SIZE, num_workers=workers, resampled=True,
                          epoch_length=clips)
    start = time.perf_counter()
    first: float | None = None
    seen = 0
    for batch in module.train_dataloader():
        if first is None:
            first = time.perf_counter()
        else:
            seen += len(batch)
    end = time.perf_counter()
    assert first is not None
    return first - start, seen / max(end - first, 1e-9)


def _timed(count: int, make: object) -> float:
    start = time.perf_counter()
    for index in range(count):
        make(index)  # type: ignore[operator]
    return count / (time.perf_counter() - start)


def _generation_table(quick: bool, shards: Path) -> tuple[Table, dict[str, float]]:
    count = 8 if quick else 32
    table = Table("Synthetic data generation (in this process)", ["what", "clips/s"],
                  notes=f"{STORED.seconds}-s clips, {STORED.size}x{STORED.size} px, {STORED.fps} fps, "
                        f"{STORED.sample_rate} Hz, default scene settings.")
    in_memory = _timed(count, lambda i: synthesize_clip(1, i, STORED, SceneSettings()))
    module = SyntheticDataModule(clip=STORED, train_clips=count, batch_size=BATCH_SIZE)
    start = time.perf_counter()  # the synthetic training stream is endless: take one pass over the pool
    loaded = sum(len(batch) for batch in itertools.islice(module.train_dataloader(), count // BATCH_SIZE))
    loader = loaded / (time.perf_counter() - start)
    start = time.perf_counter()
    write_synthetic_shards(shards / "gen", count, STORED, seed=2, shard_size=count, workers=0, progress=False)
    to_shards = count / (time.perf_counter() - start)
    table.add("synthesize_clip (arrays)", in_memory)
    table.add("SyntheticDataModule loader, 0 workers", loader)
    table.add("data synth to mp4 shards, 0 workers", to_shards)
    return table, {"synth_in_memory_clips_per_s": in_memory, "synth_to_shards_clips_per_s": to_shards}


def _loader_table(shards: Path, clips: int) -> tuple[Table, dict[str, float]]:
    table = Table("AVDataModule train loader (decode mp4 + crop + collate)",
                  ["workers", "first batch (s)", "clips/s", "batches/s"],
                  notes=f"Stored {STORED.seconds}-s clips, {STORED.size}x{STORED.size} px H.264 + AAC, cropped "
                        f"to {WINDOW.seconds}-s windows ({WINDOW.num_frames} frames, {WINDOW.num_samples} "
                        f"samples); batch {BATCH_SIZE}; resampled stream of {clips} clips; rate measured after "
                        f"the first batch.")
    summary = {}
    for workers in (0, 1, 2):
        first, rate = _loader_rate(shards, workers, clips)
        table.add(workers, first, rate, rate / BATCH_SIZE)
        summary[f"loader_clips_per_s_workers_{workers}"] = rate
    return table, summary


def run_data_bench(quick: bool = False, on_table: Callable[[Report], None] | None = None) -> Report:
    """Measure the data path and return a report with suite ``"data"``.

    Args:
        quick: fewer clips (for a smoke run); the numbers are then noisier.
        on_table: called with the report after every table (see :meth:`Report.measure`); a table that raises
            is recorded with its error and the next one runs.

    Returns:
        Tables: AVDataModule train-loader throughput with 0, 1 and 2 workers, and synthetic generation rates.
    """
    clips = 48 if quick else 256
    report = Report(suite="data", on_table=on_table)
    with tempfile.TemporaryDirectory() as folder:
        shards = Path(folder)
        write_synthetic_shards(shards / "train", 32, STORED, seed=0, shard_size=4, workers=0, progress=False)
        report.measure("AVDataModule train loader (decode mp4 + crop + collate)",
                       lambda: _loader_table(shards / "train", clips))
        report.measure("Synthetic data generation (in this process)", lambda: _generation_table(quick, shards))
    return report
