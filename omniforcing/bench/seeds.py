"""Benchmark tables repeated over seeds: the mean, the seed-to-seed spread, and differences against that floor.

One results table measured once is one draw: training a tiny model on a 2-core CPU and scoring 32 clips moves
its numbers by more than many of the differences between its rows. Given the JSON reports of the same
benchmark run once per seed (``seed<N>/<name>.json``, each with tables of ``Report.save_json``), this module

* aggregates every row over the seeds: mean and sample standard deviation per numeric column
  (:func:`aggregate_rows`);
* compares two rows per column: the mean of the per-seed differences, next to the **noise floor** — the larger
  of the two rows' seed standard deviations. A difference whose magnitude does not exceed its floor is
  reported as "within noise", never as a result (:func:`compare_rows`).

Used for docs/mutual_forcing.md's results (``python -m omniforcing.bench.mutual_forcing summarize``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniforcing.bench.report import Table

SEED_FOLDER = re.compile(r"^seed(\d+)$")


@dataclass(frozen=True)
class SeedRows:
    """One benchmark's rows over seeds.

    Args:
        columns: the table's columns; the first names the row.
        values: ``values[row][column]`` = the per-seed numbers, in seed order.
        seeds: the seeds each row was measured with.
    """

    columns: list[str]
    values: dict[str, dict[str, list[float]]]
    seeds: dict[str, list[int]]


def read_seed_reports(runs: Path, prefixes: dict[str, str], shared_rows: tuple[str, ...] = ()) -> SeedRows:
    """Read ``runs/seed<N>/<file>.json`` for every seed folder and every file named in ``prefixes``.

    Args:
        runs: the folder holding one ``seed<N>`` folder per seed.
        prefixes: report file stem -> prefix of its row names (``""``: keep the names), so rows of two variants
            of one benchmark (say the default objective and an ablation) stay apart.
        shared_rows: rows that do not depend on the variant (the real clips, a baseline measured once per
            seed): kept once per seed under their own name, from the first file that holds them.

    Raises:
        FileNotFoundError: no seed folder holds any of the reports.
    """
    columns: list[str] = []
    values: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[int]] = {}
    folders = sorted((p for p in Path(runs).iterdir() if p.is_dir() and SEED_FOLDER.match(p.name)),
                     key=lambda p: int(SEED_FOLDER.match(p.name).group(1))) if Path(runs).is_dir() else []
    for folder in folders:
        seed = int(SEED_FOLDER.match(folder.name).group(1))
        taken: set[str] = set()
        for stem, prefix in prefixes.items():
            path = folder / f"{stem}.json"
            if not path.is_file():
                continue
            table = json.loads(path.read_text())["tables"][0]
            columns = columns or table["columns"]
            for row in table["rows"]:
                name = row[0] if row[0] in shared_rows else f"{prefix}{row[0]}"
                if name in taken:
                    continue
                taken.add(name)
                seeds.setdefault(name, []).append(seed)
                cells = values.setdefault(name, {})
                for column, cell in zip(table["columns"][1:], row[1:]):
                    cells.setdefault(column, []).append(_number(cell))
    if not values:
        raise FileNotFoundError(f"no {sorted(prefixes)} reports under {runs}/seed<N>/")
    return SeedRows(columns, values, seeds)


def _number(cell: Any) -> float:
    """A table cell as a float (``"-"`` and other text: NaN)."""
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def mean_and_spread(samples: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one sample) of the finite samples; NaN when there are none."""
    finite = [s for s in samples if math.isfinite(s)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def aggregate_rows(rows: SeedRows, title: str) -> Table:
    """One row per benchmark row: ``mean ± std`` per numeric column and the number of seeds."""
    table = Table(title, [rows.columns[0], "seeds", *rows.columns[1:]])
    for name, cells in rows.values.items():
        shown = []
        for column in rows.columns[1:]:
            mean, spread = mean_and_spread(cells.get(column, []))
            shown.append("-" if math.isnan(mean) else f"{mean:.4g} ± {spread:.2g}")
        table.add(name, len(rows.seeds[name]), *shown)
    return table


def compare_rows(rows: SeedRows, pairs: list[tuple[str, str]], columns: list[str], title: str) -> Table:
    """Per pair ``(a, b)`` and column: mean over common seeds of ``a - b``, its noise floor, and the verdict.

    The floor is the larger of the two rows' seed-to-seed standard deviations: the difference two runs of the
    *same* row show. ``|a - b| <= floor`` reads "within noise". Pairs whose rows are missing are skipped.
    """
    table = Table(title, ["a", "b", *columns])
    for a, b in pairs:
        if a not in rows.values or b not in rows.values:
            continue
        common = sorted(set(rows.seeds[a]) & set(rows.seeds[b]))
        cells = []
        for column in columns:
            by_seed_a = dict(zip(rows.seeds[a], rows.values[a][column]))
            by_seed_b = dict(zip(rows.seeds[b], rows.values[b][column]))
            difference, _ = mean_and_spread([by_seed_a[s] - by_seed_b[s] for s in common])
            floor = max(mean_and_spread(rows.values[a][column])[1], mean_and_spread(rows.values[b][column])[1])
            if math.isnan(difference) or math.isnan(floor):
                cells.append("-")
                continue
            if len(common) < 2:  # one draw has no spread to compare with
                cells.append(f"{difference:+.3g} (one seed; no floor)")
                continue
            verdict = "within noise" if abs(difference) <= floor else ("a higher" if difference > 0 else "a lower")
            cells.append(f"{difference:+.3g} (floor {floor:.2g}; {verdict})")
        table.add(a, b, *cells)
    return table
