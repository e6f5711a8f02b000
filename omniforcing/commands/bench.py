"""``omniforcing bench``: measured tables (markdown on stdout) and their JSON."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from omniforcing.bench.report import Report

log = logging.getLogger(__name__)

Suite = Literal["streaming", "training", "data", "model", "codec", "all"]

# suite -> "module:function(quick) -> Report"; imported when run, so a suite whose module is absent is skipped
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


def _runner(suite: str) -> Callable[..., Report] | None:
    module, _, name = SUITES[suite].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        print(f"suite '{suite}' is not available in this checkout ({error}); skipped")
        return None


def _run(suite: str, quick: bool, threads: int | None) -> Report | None:
    runner = _runner(suite)
    if runner is None:
        return None
    if threads is not None:  # every suite measures with the requested threads (some set their own default)
        torch.set_num_threads(threads)
    start = time.perf_counter()
    report = runner(quick=quick, **({"threads": threads} if suite in ("streaming", "training", "model") else {}))
    report.summary["suite_seconds"] = time.perf_counter() - start
    return report


def bench(*, suite: Suite = "streaming", out: Path | None = None, quick: bool = False, threads: int | None = 1) -> None:
    """Run benchmark suites, print their tables as markdown and optionally save them as JSON.

    Args:
        suite: ``streaming`` (student vs teacher, latency vs stream position, time to first block, FLOPs and
            utilisation), ``training`` (step time and memory per method, loader rate vs consumption),
            ``data`` (loader clips/s by workers), ``model`` (backbone decode latency and throughput),
            ``codec`` (codec quality and speed), or ``all`` (streaming, training and data).
        out: JSON file for the results (tables, summary numbers, machine).
        quick: small sizes and short runs (a smoke test; the numbers mean little).
        threads: torch CPU threads (``None``: torch's default). One thread gives stable numbers on a shared CPU.
    """
    names = list(ALL_SUITES) if suite == "all" else [suite]
    reports: list[Report] = []
    try:
        for name in names:  # each suite's tables print as soon as it ends: a long run shows progress
            report = _run(name, quick, threads)
            if report is not None:
                report.machine["threads"] = torch.get_num_threads()
                print(report.to_markdown(), flush=True)
                reports.append(report)
    finally:  # a failing suite still leaves the JSON of those that finished
        if out is not None and reports:
            _combine(suite, reports).save_json(out)
            print(f"wrote {out}")
    if not reports:
        raise SystemExit(f"no benchmark suite could run for '{suite}'")


def _combine(suite: str, reports: list[Report]) -> Report:
    """One report; with several suites the summary is keyed by suite (``summary["streaming"][...]``)."""
    if len(reports) == 1:
        return reports[0]
    return Report(suite, tables=[t for r in reports for t in r.tables], summary={r.suite: r.summary for r in reports},
                  machine=reports[0].machine)
