"""``omniforcing bench``: measured tables (markdown on stdout) and their JSON, kept table by table.

The JSON (``--out``) is rewritten after every table with ``"status": "running"``, so a crash, an out-of-memory
or a SIGTERM loses nothing already measured. A table that raises is recorded with its error (``failures`` in
the JSON, "not measured" in the markdown) and the suite goes on with its next table; a suite whose set-up
raises is recorded the same way and the next suite runs. SIGTERM stops the run within seconds (exit code 143,
``"status": "interrupted by SIGTERM"``); failures give exit code 1 after everything else has run. Invalid
flags are user errors (:class:`~omniforcing.errors.InvalidInputError`: one line, exit code 2).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from omniforcing.bench.flops import ModelDtype
from omniforcing.bench.report import Report, Table, error_line, release_device_memory
from omniforcing.bench.signals import BenchInterrupted, stop_on_sigterm
from omniforcing.errors import InvalidInputError
from omniforcing.models.presets import PRESETS

log = logging.getLogger(__name__)

Suite = Literal["streaming", "training", "data", "model", "codec", "all"]

# suite -> "module:function(quick, ...) -> Report"; imported when run, so a suite whose module is absent is skipped
SUITES: dict[str, str] = {
    "streaming": "omniforcing.bench.streaming:run_streaming_bench",
    "training": "omniforcing.bench.training:run_training_bench",
    "data": "omniforcing.bench.data:run_data_bench",
    "model": "omniforcing.bench.model:run_model_bench",
    "codec": "omniforcing.bench.codec:run_codec_bench",
}

ALL_SUITES = ("streaming", "training", "data")
"""What ``--suite all`` runs: the suites of the command contract. ``model`` (backbone-only latency, overlapping
the streaming suite) and ``codec`` (codec quality, docs/codecs.md) run when named."""

SIGTERM_EXIT_CODE = 128 + 15
"""The shell's convention for a process ended by SIGTERM."""


def parse_video_grid(text: str) -> tuple[int, int]:
    """``"16x24"`` -> ``(16, 24)``: latent tokens per video frame (height x width)."""
    height, sep, width = text.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise InvalidInputError(f"--video-grid must be HxW with positive integers (e.g. 16x24), got {text!r}")
    return int(height), int(width)


def _runner(suite: str) -> Callable[..., Report] | None:
    module, _, name = SUITES[suite].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        print(f"suite '{suite}' is not available in this checkout ({error}); skipped")
        return None


@dataclass
class BenchRun:
    """Reports of one ``omniforcing bench`` call; writes the JSON after every table and every suite.

    Args:
        suite: the ``--suite`` value.
        out: JSON file (``None``: print only).
        reports: finished suites' reports.
        current: the running suite's report as of its last table.
        printed: tables of the running suite already printed.
    """

    suite: str
    out: Path | None
    reports: list[Report] = field(default_factory=list)
    current: Report | None = None
    printed: int = 0

    def table_done(self, report: Report) -> None:
        """A table of the running suite finished (or failed): print it and rewrite the JSON."""
        self.current = report
        self._print_new(report)
        self.save("running")

    def suite_done(self, report: Report) -> None:
        """A suite finished: print the tables not printed yet and rewrite the JSON."""
        report.machine["threads"] = torch.get_num_threads()
        self._print_new(report)
        self.reports.append(report)
        self.current, self.printed = None, 0
        self.save("running")

    def _print_new(self, report: Report) -> None:
        if self.printed == 0:
            print(report.heading(), flush=True)
        for table in report.tables[self.printed:]:
            print(table.to_markdown(), flush=True)
        self.printed = len(report.tables)

    def save(self, status: str) -> None:
        """Write every finished suite and the running one's tables so far, with ``status``."""
        reports = self.reports + ([self.current] if self.current is not None else [])
        if self.out is None or not reports:
            return
        combined = combine(self.suite, reports)
        combined.status = status
        combined.save_json(self.out)

    @property
    def failures(self) -> list[str]:
        """``"suite: table: error"`` of every table (or suite set-up) that failed."""
        return [f"{r.suite}: {f['table']}: {f['error']}" for r in self.reports for f in r.failures]


def _options(runner: Callable[..., Report], options: dict[str, Any]) -> dict[str, Any]:
    """The options ``runner`` takes (suites differ: only some take a preset, a video grid, a dtype)."""
    accepted = inspect.signature(runner).parameters
    return {name: value for name, value in options.items() if name in accepted}


def _run_suite(name: str, run: BenchRun, quick: bool, options: dict[str, Any]) -> None:
    runner = _runner(name)
    if runner is None:
        return
    if options.get("threads") is not None:  # every suite measures with the requested threads
        torch.set_num_threads(options["threads"])
    start = time.perf_counter()
    try:
        report = runner(quick=quick, **_options(runner, {**options, "on_table": run.table_done}))
    except Exception as error:  # noqa: BLE001 - set-up failed (e.g. out of memory building the models): recorded
        log.exception("bench suite '%s' failed", name)
        release_device_memory()
        tables = run.current.tables if run.current is not None else []
        report = Report(name, tables=[*tables, Table(f"suite {name}", [], error=error_line(error))],
                        summary=run.current.summary if run.current is not None else {})
    report.summary["suite_seconds"] = time.perf_counter() - start
    run.suite_done(report)


def _check_options(names: list[str], preset: str | None, video_grid: str | None, dtype: ModelDtype,
                   compile: bool | None) -> dict[str, Any]:
    """The model options as the suites take them; a user error if one is invalid or no suite takes it."""
    if preset is not None and preset not in PRESETS:
        raise InvalidInputError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
    grid = None if video_grid is None else parse_video_grid(video_grid)
    accepted = {p for runner in map(_runner, names) if runner for p in inspect.signature(runner).parameters}
    for flag, value, parameter in (("--preset", preset, "preset"), ("--video-grid", grid, "video_grid"),
                                   ("--dtype", None if dtype == "auto" else dtype, "dtype"),
                                   ("--compile", compile, "compile")):
        if value is not None and parameter not in accepted:
            raise InvalidInputError(f"{flag} does not apply to suite {' / '.join(names)}")
    return {"preset": preset, "video_grid": grid, "dtype": dtype, "compile": compile}


def bench(*, suite: Suite = "streaming", out: Path | None = None, quick: bool = False, threads: int | None = 1,
          preset: str | None = None, video_grid: str | None = None, dtype: ModelDtype = "auto",
          compile: bool | None = None) -> None:
    """Run benchmark suites, print their tables as markdown and save them as JSON after every table.

    Args:
        suite: ``streaming`` (student vs teacher, latency vs stream position, time to first block, FLOPs and
            utilisation), ``training`` (step time and memory per method, loader rate vs consumption),
            ``data`` (loader clips/s by workers), ``model`` (backbone decode latency and throughput),
            ``codec`` (codec quality and speed), or ``all`` (streaming, training and data).
        out: JSON file for the results (tables, summary numbers, machine, failures), rewritten after every table.
        quick: small sizes and short runs (a smoke test; the numbers mean little).
        threads: torch CPU threads (``None``: torch's default). One thread gives stable numbers on a shared CPU.
        preset: model preset of the streaming, model and training-method tables (``tiny``, ``small``, ``base``,
            ``large``; default ``small``, ``tiny`` with ``--quick``).
        video_grid: latent tokens per video frame as ``HxW`` for the streaming and model suites (default 4x4,
            the shipped codec's; 16x24 is LTX-2's grid at 512x768).
        dtype: the streaming suite's backbone dtype (``auto``: the dtype with the higher measured matmul peak
            on this device; on CPUs with AMX that is bf16 even where small models run faster in fp32, see the
            suite's dtype table).
        compile: run the streaming suite's student block steps captured (``--compile true``) or eager
            (``--compile false``), the teacher's whole-clip forwards compiled alike; default: captured on CUDA,
            eager elsewhere, as ``omniforcing generate``. The training suite trains with every backbone
            compiled (``CompileBackbones``) when true, eager otherwise.
    """
    names = list(ALL_SUITES) if suite == "all" else [suite]
    options = {"threads": threads, **_check_options(names, preset, video_grid, dtype, compile)}
    run = BenchRun(suite, out)
    try:
        with stop_on_sigterm():
            for name in names:  # each suite's tables print as soon as it ends: a long run shows progress
                _run_suite(name, run, quick, options)
    except BenchInterrupted as signal_name:
        run.save(f"interrupted by {signal_name}")
        print(f"omniforcing bench: stopped by {signal_name}" + (f"; measured tables kept in {out}" if out else ""),
              file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    run.save("complete")
    if out is not None and run.reports:
        print(f"wrote {out}")
    if not run.reports:
        raise SystemExit(f"no benchmark suite could run for '{suite}'")
    if run.failures:
        raise SystemExit(f"omniforcing bench: {len(run.failures)} table(s) not measured: " + "; ".join(run.failures))


def combine(suite: str, reports: list[Report]) -> Report:
    """One report; with several suites the summary is keyed by suite (``summary["streaming"][...]``)."""
    if len(reports) == 1:
        return reports[0]
    return Report(suite, tables=[t for r in reports for t in r.tables], summary={r.suite: r.summary for r in reports},
                  machine=reports[0].machine)
