"""Benchmark tables: printed as markdown, saved as JSON; measured values only."""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class Table:
    """One benchmark table.

    Args:
        title: what was measured.
        columns: column headers.
        rows: one list of cell values per row (numbers are formatted with ``fmt``).
        notes: free text printed under the table (settings, caveats).
        error: why the table could not be measured (the exception's type and first line); ``None`` when it was.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: str = ""
    error: str | None = None

    def add(self, *cells: Any) -> None:
        """Append a row; the number of cells must match the columns."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table '{self.title}' has {len(self.columns)} columns")
        self.rows.append(list(cells))

    def to_markdown(self) -> str:
        """Render as a GitHub markdown table with the title as a heading."""
        if self.error is not None:
            return f"### {self.title}\n\n**not measured**: {self.error}\n"
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags of bf16 matrix/vector units; without them PyTorch emulates bf16 matmuls (far slower than fp32)."""


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, torch threads, bf16 units, load, GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    for line in cpuinfo:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["cpu_bf16_units"] = ",".join(f for f in BF16_CPU_FLAGS if f in flags) or "none"
            break
    if hasattr(os, "getloadavg"):  # other processes on the machine at the start of the run (shared CPUs)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def error_line(error: BaseException) -> str:
    """``"OutOfMemoryError: CUDA out of memory. ..."``: the exception's type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


TableMeasurement = Callable[[], tuple[Table, dict[str, Any]]]
"""Measures one table: returns it and the headline numbers it adds to the report's summary."""


@dataclass
class Report:
    """Tables of one ``omniforcing bench`` run plus the headline numbers as JSON fields.

    Args:
        suite: the suite's name.
        tables: measured tables, and tables that failed (their ``error`` set), in the order they ran.
        summary: headline numbers (JSON keys such as ``speedup_vs_teacher``).
        machine: what the numbers were measured on.
        status: ``complete``, or for a JSON written while the run goes on or after it stopped early
            ``running`` / ``interrupted by SIGTERM``.
        on_table: called with the report after every table :meth:`measure` adds (the CLI saves the JSON
            there, so a later failure or a SIGTERM loses nothing measured); not part of the JSON.
    """

    suite: str
    tables: list[Table] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_description)
    status: str = "complete"
    on_table: Callable[[Report], None] | None = field(default=None, repr=False, compare=False)

    def measure(self, title: str, measurement: TableMeasurement) -> bool:
        """Run one table's measurement and add its table and numbers; returns whether it succeeded.

        A measurement that raises (a CUDA error, out of memory, any ``Exception``) is recorded as a table
        titled ``title`` with its error, and the suite goes on with its next table. ``BaseException``s that
        are not ``Exception``s (``KeyboardInterrupt``, ``SystemExit``, the bench's SIGTERM) end the run.
        """
        try:
            table, numbers = measurement()
        except Exception as error:  # noqa: BLE001 - recorded in the report; the next table still runs
            log.exception("bench table '%s' failed", title)
            table, numbers = Table(title, [], error=error_line(error)), {}
            release_device_memory()
        self.tables.append(table)
        self.summary.update(numbers)
        if self.on_table is not None:
            self.on_table(self)
        return table.error is None

    @property
    def failures(self) -> list[dict[str, str]]:
        """``[{"table": title, "error": message}]`` of the tables that could not be measured."""
        return [{"table": t.title, "error": t.error} for t in self.tables if t.error is not None]

    def heading(self) -> str:
        """The suite's heading and the machine line."""
        return f"## bench suite `{self.suite}`\n\nmachine: " + ", ".join(f"{k}={v}" for k, v in self.machine.items())

    def to_markdown(self) -> str:
        """All tables, with the machine line first."""
        return self.heading() + "\n\n" + "\n".join(t.to_markdown() for t in self.tables)

    def save_json(self, path: str | Path) -> None:
        """Write the report (tables, summary, machine) as JSON."""
        payload = {"suite": self.suite, "status": self.status, "summary": self.summary, "machine": self.machine,
                   "failures": self.failures, "tables": [asdict(t) for t in self.tables]}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # written whole, then renamed: never half a file
        partial.write_text(json.dumps(payload, indent=2, default=float))
        partial.replace(path)


def release_device_memory() -> None:
    """Hand cached CUDA blocks back after a failed table (an out-of-memory one leaves them held); no-op on CPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
