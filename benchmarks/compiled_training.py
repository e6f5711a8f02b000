"""Training steps with the backbones compiled (``omniforcing.callbacks.CompileBackbones``) against eager, per
method, side by side in one process: the training suite's own builder and step timer
(:func:`omniforcing.bench.training.time_method`), so each row is the per-method table's measurement run twice.

    python benchmarks/compiled_training.py --preset small --methods teacher mutual_forcing dmd

Prints one markdown table; compilation is in the untimed warm-up steps (``COMPILED_WARMUP``), reported as the
warm-up wall time. ``omniforcing bench --suite training --compile true`` measures every method and preset
compiled; this script exists to put eager and compiled of a few methods in one table quickly.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from omniforcing.bench.training import METHODS, TrainingBenchConfig, export_teacher, time_method
from omniforcing.inference.export import NETWORK_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--methods", nargs="+", default=["teacher", "mutual_forcing", "dmd"],
                        choices=[m.key for m in METHODS if m.key != "ode_regression"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    eager = TrainingBenchConfig(args.preset, 2, 2, 1, 6)
    warmup = eager.compiled().warmup
    print(f"| method | eager step (s) | compiled step (s) | compiled / eager | compiled warm-up ({warmup} steps, s) |"
          "\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = export_teacher(eager, root)
        paths = {"teacher": str(teacher), "teacher_weights": str(teacher / NETWORK_NAME)}
        for method in (m for m in METHODS if m.key in args.methods):
            timings = {}
            for config in (eager, eager.compiled()):
                torch._dynamo.reset()
                start = time.perf_counter()
                timing = time_method(method, config, paths, root / config.label)
                timings[config.label] = (statistics.mean(timing.seconds), time.perf_counter() - start
                                         - sum(timing.seconds))
            (e, _), (c, warm) = timings["eager"], timings["compiled"]
            print(f"| {method.name} | {e:.4g} | {c:.4g} | {c / e:.3f} | {warm:.0f} |", flush=True)


if __name__ == "__main__":
    main()
